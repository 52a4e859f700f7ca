"""`WaitQueue`: this instance's queued requests, re-timed whenever their buckets' debt moves.

A request that does not fit now is reserved anyway (its buckets go into debt) and waits
until that debt is repaid by the refill: first come, first served across the fleet. Its
wait is fixed at admission; but later a settlement, a refund or a pull-down may move the
level of a bucket in debt, on any instance. The backend reports each such change
(`LimitBackend.on_change`: Redis publishes it from the script that made it), and the queue
shifts the waiters of that bucket by it at once, without a waiter polling anything:

- capacity freed (`delta` > 0: a request used less than it reserved, or left) moves every
  waiter of the bucket earlier by `delta / rate`: the debt ahead of each of them shrank;
- capacity taken (`delta` < 0: a stream charged past its reservation, upstream reported less
  room) moves them later by as much, because the API will see that usage before them;
- a waiter pushed past its deadline (its max wait) is told so at once, as a `Refused`
  naming the bucket and how long it would still need, and is refunded by its caller.

Every waiter of one bucket moves by the same amount, so their order, first come first
served, is kept. A change the backend made before a waiter's own reservation is already in
the levels that reservation read, and is ignored (`Reservation.at`, on the backend's clock).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.clock import Clock
from gateway.limits.model import BucketSpec, Refused
from gateway.limits.outcomes import Admitted

_SLACK = 1e-6
"""Seconds of float noise tolerated before a waiter counts as past its deadline."""


@dataclass(eq=False, slots=True)
class _Waiter:
    """One queued request: its buckets' levels after its debit, as moved since."""

    admitted: Admitted
    deadline: float
    """This instance's clock time by which it must go."""
    levels: dict[str, float]
    """Per bucket key: the level left after its debit, shifted by every change since."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def go_at(self) -> tuple[float, BucketSpec | None]:
        """When every bucket will have repaid its debt (this instance's clock), and the
        bucket that takes longest (None when none owes anything)."""
        reservation = self.admitted.reservation
        worst, latest = None, 0.0
        for bucket in reservation.buckets:
            need = -self.levels[bucket.key] / bucket.rate if bucket.rate > 0 else 0.0
            if need > latest:
                worst, latest = bucket, need
        return self.admitted.reserved_at + latest, worst


class WaitQueue:
    """Waiters by bucket key; `shift` is the backends' `ChangeListener`."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._by_key: dict[str, set[_Waiter]] = {}

    def __len__(self) -> int:
        """Requests of this instance waiting right now."""
        return len({waiter for waiters in self._by_key.values() for waiter in waiters})

    async def wait(self, admitted: Admitted, max_wait: float) -> Refused | None:
        """Wait until the reservation's debt is repaid (None), or until it is known that it
        cannot be within `max_wait` of its reservation (a `Refused`; the caller refunds)."""
        reservation = admitted.reservation
        levels = {
            b.key: level for b, level in zip(reservation.buckets, reservation.levels, strict=True)
        }
        waiter = _Waiter(admitted, admitted.reserved_at + max_wait, levels)
        for key in levels:
            self._by_key.setdefault(key, set()).add(waiter)
        try:
            return await self._wait(waiter)
        finally:
            for key in levels:
                waiting = self._by_key.get(key)
                if waiting is not None:
                    waiting.discard(waiter)
                    if not waiting:
                        del self._by_key[key]

    def shift(self, key: str, delta: float, at: float) -> None:
        """A bucket's level moved by `delta` at backend time `at`: move its waiters."""
        for waiter in self._by_key.get(key, ()):
            if at > waiter.admitted.reservation.at:
                waiter.levels[key] += delta
                waiter.changed.set()

    async def _wait(self, waiter: _Waiter) -> Refused | None:
        while True:
            go_at, worst = waiter.go_at()
            now = self._clock.now()
            if worst is None or go_at <= now:
                return None
            if go_at > waiter.deadline + _SLACK:
                return Refused(worst, go_at - now, waiter.levels[worst.key])
            waiter.changed.clear()
            await self._sleep_or_change(go_at - now, waiter.changed)

    async def _sleep_or_change(self, seconds: float, changed: asyncio.Event) -> None:
        """Return after `seconds` on the clock, or sooner when `changed` is set."""
        sleeping = asyncio.ensure_future(self._clock.sleep(seconds))
        watching = asyncio.ensure_future(changed.wait())
        try:
            await asyncio.wait({sleeping, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, watching):
                task.cancel()
            await asyncio.gather(sleeping, watching, return_exceptions=True)
