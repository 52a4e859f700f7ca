"""`MemoryBackend` beyond the shared contract: its clock and its bounded memory."""

from __future__ import annotations

from gateway.limits import Cost, Dimension, MemoryBackend, Refused, Reservation
from tests.limits.conftest import bucket
from tests.support.fake_clock import FakeClock

ONE_REQUEST = Cost(requests=1)


async def test_time_comes_from_the_injected_clock(clock: FakeClock) -> None:
    """Without an explicit `now`, the backend reads its clock: refill follows `advance`."""
    backend = MemoryBackend(clock)
    rpm = bucket(Dimension.REQUESTS, 1)
    await backend.reserve([rpm], ONE_REQUEST, max_wait=0)
    refused = await backend.reserve([rpm], ONE_REQUEST, max_wait=0)
    clock.advance(60.0)
    admitted = await backend.reserve([rpm], ONE_REQUEST, max_wait=0)
    assert Refused(rpm, retry_after=60.0, remaining=0.0) == refused
    assert Reservation((rpm,), ONE_REQUEST, 0.0, (0.0,)) == admitted


async def test_idle_buckets_are_dropped_once_full_again(clock: FakeClock) -> None:
    """Buckets untouched until refilled are swept, so many one-off scopes cost no memory."""
    backend = MemoryBackend(clock)
    for scope in ("a", "b", "c"):
        await backend.reserve(
            [bucket(Dimension.REQUESTS, 60, scope=scope)], ONE_REQUEST, max_wait=0
        )
    before = len(backend)
    clock.advance(61.0)
    await backend.reserve([bucket(Dimension.REQUESTS, 60, scope="d")], ONE_REQUEST, max_wait=0)
    assert (3, 1) == (before, len(backend))


async def test_bucket_still_refilling_survives_the_sweep(clock: FakeClock) -> None:
    """A bucket that is not yet full keeps its state through a sweep."""
    backend = MemoryBackend(clock)
    tpd = bucket(Dimension.TOKENS_PER_DAY, 86_400)
    await backend.reserve([tpd], Cost(0, 86_400), max_wait=0)
    clock.advance(3_600.0)
    await backend.reserve([bucket(Dimension.REQUESTS, 60, scope="other")], ONE_REQUEST, max_wait=0)
    refused = await backend.reserve([tpd], Cost(0, 7_200), max_wait=0)
    assert (2, Refused(tpd, retry_after=3_600.0, remaining=3_600.0)) == (len(backend), refused)


async def test_aclose_forgets_every_bucket(clock: FakeClock) -> None:
    """After `aclose` no state is held; `ping` always answers."""
    backend = MemoryBackend(clock)
    await backend.ping()
    await backend.reserve([bucket(Dimension.REQUESTS, 60)], ONE_REQUEST, max_wait=0)
    await backend.aclose()
    assert 0 == len(backend)
