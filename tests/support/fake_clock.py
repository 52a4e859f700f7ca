"""`FakeClock`: a `Clock` whose time moves only when a test (or a sleeper) moves it."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Monotonic seconds under test control; `sleep()` advances time at once."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []
        """Every duration passed to `sleep()`, in call order."""

    def now(self) -> float:
        """The current fake time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`."""
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, advance by it (if positive) and yield to the loop once."""
        self.sleeps.append(seconds)
        if seconds > 0:
            self._now += seconds
        await asyncio.sleep(0)


class HeldClock(FakeClock):
    """A fake clock whose sleeps never end, so a test can cancel a queued request."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await asyncio.get_running_loop().create_future()
