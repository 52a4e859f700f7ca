"""The injectable clock: the only module that reads time or sleeps.

Everything time-dependent (queue waits, retry backoff, access-log durations) takes a
`Clock`, so tests drive it with a fake whose `sleep()` advances `now()` at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Protocol: monotonic seconds and an awaitable sleep on the same timeline."""

    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` (non-positive returns at once) on this clock's timeline."""


class SystemClock:
    """The real clock: `time.monotonic()` and `asyncio.sleep()`."""

    now = staticmethod(time.monotonic)  # no Python frame: it is read several times a request

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)
        else:
            await asyncio.sleep(0)


def wall_time() -> float:
    """Seconds since the epoch, for log timestamps, HTTP dates and metric `_created` times
    only (never for intervals: that is `Clock.now`)."""
    return time.time()


def wall_time_ns() -> int:
    """Nanoseconds since the epoch, the timeline of trace spans (`tracing.py`): when a step's
    span ended, noted then and applied when the request's trace is finished."""
    return time.time_ns()
