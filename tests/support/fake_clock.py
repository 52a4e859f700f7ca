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


class ManualClock(FakeClock):
    """A fake clock whose sleepers wake only when a test advances time past their end."""

    def __init__(self, start: float = 1_000.0) -> None:
        super().__init__(start)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, wake))
        await wake

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose end has come."""
        self._now += seconds
        due = [(end, wake) for end, wake in self._sleepers if end <= self._now + 1e-9]
        self._sleepers = [(end, wake) for end, wake in self._sleepers if end > self._now + 1e-9]
        for _, wake in due:
            if not wake.done():
                wake.set_result(None)

    @property
    def sleeping(self) -> int:
        """Sleepers not yet woken (cancelled ones included until time passes them)."""
        return sum(1 for _, wake in self._sleepers if not wake.done())
