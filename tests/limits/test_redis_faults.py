"""`RedisBackend` at the moments Redis trouble makes likely: found by the soak (bench/soak.py).

A flush that fails at once (Redis just killed) lands in the same event-loop turn as a
request arrives; the backend must still hand the loop back. A spin here would hold the
whole gateway, health checks and SIGTERM included, so the test arms a watchdog signal.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from gateway.limits import Cost, Dimension, Reservation
from gateway.limits.redis_backend import RedisBackend
from tests.limits.conftest import bucket
from tests.limits.test_redis_backend import HeldAdjusts


class Spinning(Exception):
    """The event loop did not get control back within the watchdog's time."""


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise `Spinning` in the main thread after `seconds` (a busy loop never yields, so no
    asyncio timeout could fire)."""

    def bark(signum: int, frame: FrameType | None) -> None:
        raise Spinning(f"no yield to the event loop within {seconds} s")

    previous = signal.signal(signal.SIGALRM, bark)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def test_a_reserve_arriving_as_a_flush_lands_goes_on() -> None:
    """A reserve whose first step runs right after its group's flush finished, before the
    loop ran the flush's completion callbacks, waits one turn and then goes: it does not
    spin on the finished flush, holding the event loop forever."""
    client = HeldAdjusts()
    backend = RedisBackend(client, settle_delay=0.001)
    rpm = bucket(Dimension.REQUESTS, 60)
    held = Reservation((rpm,), Cost(1), 0.0, (59.0,))
    backend.adjust(held, Cost(1), now=1000.0)  # a charge: flies at once
    await asyncio.sleep(0)  # the flush is now held in the client
    client.release.set()  # its wake-up is queued ...
    reserving = asyncio.create_task(backend.reserve([rpm], Cost(1), max_wait=0, now=1000.0))
    with watchdog(2.0):  # ... and the reserve's first step right after it
        outcome = await reserving
    await backend.aclose()
    assert (["adjust", "reserve"], (58.0,)) == (client.calls, getattr(outcome, "levels", None))
