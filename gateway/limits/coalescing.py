"""`Coalescer`: one settlement in flight per hash tag; those arriving meanwhile go as one.

Under load, many requests of one `{scope:group}` settle at once, and each adjust costs a
round trip and a script run. The coalescer lets one fly at a time per hash tag; adjustments
arriving while it flies are summed per bucket and applied in one call when it lands. When
idle, a call goes at once in the caller's own task: no added latency. Each caller returns
once its own adjustment is applied, or raises `LimitBackendError` if its batch failed.

The one difference from applying each call alone: a summed delta is clamped to capacity
once, so a refund that would have overflowed a full bucket may offset a charge in the same
batch. Concurrent settlements never had a defined order, so neither result is more right.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from gateway.limits.backend import LimitBackendError
from gateway.limits.model import BucketSpec

Apply = Callable[[Sequence[tuple[BucketSpec, int]], float | None], Awaitable[None]]
"""Apply `(bucket, amount)` adjustments of one hash tag at `now` (None: the store's clock)."""


class _Batch:
    """Adjustments queued behind a flight, summed per bucket, and the callers waiting."""

    __slots__ = ("amounts", "now", "waiters")

    def __init__(self) -> None:
        self.amounts: dict[BucketSpec, int] = {}
        self.now: float | None = None
        self.waiters: list[asyncio.Future[None]] = []

    def add(self, touched: Sequence[tuple[BucketSpec, int]], now: float | None) -> None:
        for bucket, amount in touched:
            self.amounts[bucket] = self.amounts.get(bucket, 0) + amount
        self.now = now  # the latest caller's: the batch is applied after all of them

    def settle(self, error: BaseException | None) -> None:
        for waiter in self.waiters:
            if waiter.done():  # the caller was cancelled; its adjustment still counted
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(LimitBackendError(f"settlement batch failed: {error}"))


class Coalescer:
    """At most one `apply` in flight per hash tag; later calls are summed into the next."""

    def __init__(self, apply: Apply) -> None:
        self._apply = apply
        self._in_flight: dict[str, _Batch | None] = {}
        """Hash tags with a flight, and the batch queued behind it (None: nothing queued)."""
        self._flights: set[asyncio.Task[None]] = set()

    async def adjust(
        self, tag: str, touched: Sequence[tuple[BucketSpec, int]], now: float | None
    ) -> None:
        """Apply `touched` (all under `tag`), at once if idle, else with the next batch."""
        if tag not in self._in_flight:
            self._in_flight[tag] = None
            try:
                await self._apply(touched, now)
            finally:
                self._landed(tag)
            return
        batch = self._in_flight[tag]
        if batch is None:
            batch = self._in_flight[tag] = _Batch()
        batch.add(touched, now)
        waiter = asyncio.get_running_loop().create_future()
        batch.waiters.append(waiter)
        await waiter

    async def drain(self) -> None:
        """Return once every queued batch has landed."""
        while self._flights:
            await asyncio.gather(*self._flights, return_exceptions=True)

    def _landed(self, tag: str) -> None:
        """A flight of `tag` landed: free the tag, or fly the batch queued behind it."""
        batch = self._in_flight[tag]
        if batch is None:
            del self._in_flight[tag]
            return
        self._in_flight[tag] = None  # still taken, now by the batch's flight
        flight = asyncio.get_running_loop().create_task(self._fly(tag, batch))
        self._flights.add(flight)
        flight.add_done_callback(self._flights.discard)

    async def _fly(self, tag: str, batch: _Batch) -> None:
        """Apply a queued batch and tell each of its callers how it went."""
        touched = [(bucket, amount) for bucket, amount in batch.amounts.items() if amount]
        try:
            if touched:
                await self._apply(touched, batch.now)
        except LimitBackendError as exc:
            batch.settle(exc)
        except BaseException as exc:  # cancelled, or a bug: tell the callers, then re-raise
            batch.settle(exc)
            raise
        else:
            batch.settle(None)
        finally:
            self._landed(tag)
