"""`FlakyBackend`: an in-memory `LimitBackend` a test can make fail, counting every call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.limits import (
    BucketSpec,
    Cost,
    LimitBackendError,
    MemoryBackend,
    NeverFits,
    Refused,
    Reservation,
)
from gateway.limits.backend import ChangeListener
from gateway.limits.learning import Figures, Lesson
from tests.support.fake_clock import FakeClock


class FlakyBackend:
    """A MemoryBackend that raises LimitBackendError while `failing`, counting every call."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryBackend(clock)
        self.failing = False
        self.calls: list[str] = []

    async def reserve(
        self,
        buckets: Sequence[BucketSpec],
        cost: Cost,
        *,
        max_wait: float,
        now: float | None = None,
        floor: float = 0.0,
    ) -> Reservation | Refused | NeverFits:
        self._call("reserve")
        return await self.inner.reserve(buckets, cost, max_wait=max_wait, now=now, floor=floor)

    def adjust(self, reservation: Reservation, delta: Cost, *, now: float | None = None) -> None:
        self._call("adjust")
        self.inner.adjust(reservation, delta, now=now)

    async def cap(
        self, buckets: Sequence[BucketSpec], ceilings: Sequence[float], *, now: float | None = None
    ) -> None:
        self._call("cap")
        await self.inner.cap(buckets, ceilings, now=now)

    async def learn(self, group: str, lesson: Lesson, *, now: float | None = None) -> Figures:
        self._call("learn")
        return await self.inner.learn(group, lesson, now=now)

    async def share_organizations(
        self, learned: Mapping[str, str]
    ) -> tuple[str | None, dict[str, str]]:
        self._call("share_organizations")
        return await self.inner.share_organizations(learned)

    async def share_spend(
        self, charged: Mapping[str, int], periods: Sequence[str]
    ) -> dict[str, int]:
        self._call("share_spend")
        return await self.inner.share_spend(charged, periods)

    def on_change(self, listener: ChangeListener) -> None:
        self.inner.on_change(listener)

    async def ping(self) -> None:
        self._call("ping")

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failing:
            raise LimitBackendError("connection refused")
