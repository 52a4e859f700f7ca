"""`MemoryBackend`: the in-process `LimitBackend`, the embedded default and fail-open fallback.

Same semantics as the Redis scripts because it runs the same arithmetic (`model.py`,
`learning.merged`). Each call runs without awaiting, so it is atomic on the event loop. Idle
buckets and learned figures expire like Redis keys do, swept lazily at most once a minute of
clock time, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.clock import Clock
from gateway.limits.backend import ChangeListener
from gateway.limits.learning import LEARNED_TTL, Figures, Lesson, merged
from gateway.limits.model import (
    MINUTE,
    BucketSpec,
    Cost,
    NeverFits,
    Refused,
    Reservation,
    adjusted,
    changes,
    check_request,
    decide,
    refilled,
    ttl_ms,
)


@dataclass(slots=True)
class _State:
    level: float
    updated_at: float
    expires_at: float


class MemoryBackend:
    """Token buckets in a dict, on an injected clock."""

    def __init__(self, clock: Clock, *, sweep_every: float = MINUTE) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        self._states: dict[str, _State] = {}
        self._learned: dict[str, tuple[Figures, float]] = {}
        """Per group: the fleet's figures and when they expire."""
        self._organizations: dict[str, str] = {}
        self._spend: dict[str, int] = {}
        self._primary: str | None = None
        self._listeners: list[ChangeListener] = []
        self._stamp = 0
        self._next_sweep = clock.now() + sweep_every

    def __len__(self) -> int:
        """How many buckets hold state (the rest are full)."""
        return len(self._states)

    async def reserve(
        self,
        buckets: Sequence[BucketSpec],
        cost: Cost,
        *,
        max_wait: float,
        now: float | None = None,
        floor: float = 0.0,
    ) -> Reservation | Refused | NeverFits:
        """Debit every bucket or none; see `LimitBackend.reserve`."""
        never = check_request(buckets, cost)
        if never is not None:
            return never
        at = self._now(now)
        amounts = [cost.on(bucket.dimension) for bucket in buckets]
        levels = [self._level(bucket, at) for bucket in buckets]
        decision = decide(buckets, amounts, levels, max_wait, floor)
        if isinstance(decision, Refused):
            return decision
        after = tuple(level - amount for level, amount in zip(levels, amounts, strict=True))
        for bucket, level in zip(buckets, after, strict=True):
            self._store(bucket, level, at)
        return Reservation(tuple(buckets), cost, decision / 1000, after, self._next_stamp())

    def adjust(self, reservation: Reservation, delta: Cost, *, now: float | None = None) -> None:
        """Charge or refund every bucket of a reservation; see `LimitBackend.adjust`."""
        at = self._now(now)
        for bucket, amount in changes(reservation.buckets, delta):
            was = self._level(bucket, at)
            level = adjusted(bucket, was, amount)
            self._store(bucket, level, at)
            self._changed(bucket, was, level)

    async def cap(
        self, buckets: Sequence[BucketSpec], ceilings: Sequence[float], *, now: float | None = None
    ) -> None:
        """Lower each bucket to at most its ceiling; see `LimitBackend.cap`."""
        at = self._now(now)
        for bucket, ceiling in zip(buckets, ceilings, strict=True):
            was = self._level(bucket, at)
            if ceiling < was:
                self._store(bucket, ceiling, at)
                self._changed(bucket, was, ceiling)

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener` for every change of a bucket in debt; see `LimitBackend.on_change`."""
        self._listeners.append(listener)

    def _changed(self, bucket: BucketSpec, was: float, level: float) -> None:
        """Tell the listeners, when the change involves debt (someone is or will be queued)."""
        if was < 0 or level < 0:
            stamp = self._next_stamp()
            for listener in self._listeners:
                listener(bucket.key, level - was, stamp)

    def _next_stamp(self) -> float:
        """The order of operations, as `Reservation.at` and change times: a count, which
        (unlike a fake clock) never gives two operations one time."""
        self._stamp += 1
        return float(self._stamp)

    async def learn(self, group: str, lesson: Lesson, *, now: float | None = None) -> Figures:
        """Merge a lesson into the group's figures; see `LimitBackend.learn`."""
        at = self._now(now)
        stored, expires_at = self._learned.get(group, (Figures(), at))
        figures = merged(stored if expires_at > at else Figures(), lesson)
        self._learned[group] = (figures, at + LEARNED_TTL)
        return figures

    async def share_organizations(
        self, learned: Mapping[str, str]
    ) -> tuple[str | None, dict[str, str]]:
        """Keep the mapping in process; see `LimitBackend.share_organizations`."""
        self._organizations.update(learned)
        if self._primary is None and learned:
            self._primary = next(iter(learned.values()))
        return self._primary, dict(self._organizations)

    async def share_spend(
        self, charged: Mapping[str, int], periods: Sequence[str]
    ) -> dict[str, int]:
        """Keep the ledger in process; see `LimitBackend.share_spend`."""
        for entry, amount in charged.items():
            self._spend[entry] = self._spend.get(entry, 0) + amount
        current = set(periods)
        self._spend = {e: n for e, n in self._spend.items() if e.rpartition("|")[2] in current}
        return dict(self._spend)

    async def ping(self) -> None:
        """Always answers: the state is in this process."""

    async def aclose(self) -> None:
        """Drop every bucket and learned figure."""
        self._states.clear()
        self._learned.clear()

    def _now(self, now: float | None) -> float:
        """The explicit test time, or the clock's; sweeps idle buckets when one is due."""
        at = self._clock.now() if now is None else now
        if at >= self._next_sweep:
            self._states = {k: s for k, s in self._states.items() if s.expires_at > at}
            self._learned = {k: v for k, v in self._learned.items() if v[1] > at}
            self._next_sweep = at + self._sweep_every
        return at

    def _level(self, bucket: BucketSpec, now: float) -> float:
        """The bucket's level at `now`; an expired or missing state is a full bucket."""
        state = self._states.get(bucket.key)
        if state is None or state.expires_at <= now:
            return refilled(bucket, None, now)
        return refilled(bucket, (state.level, state.updated_at), now)

    def _store(self, bucket: BucketSpec, level: float, now: float) -> None:
        """Write the bucket's state, in place when it has one (a write per bucket per call)."""
        expires_at = now + ttl_ms(bucket, level) / 1000
        state = self._states.get(bucket.key)
        if state is None:
            self._states[bucket.key] = _State(level, now, expires_at)
        else:
            state.level, state.updated_at, state.expires_at = level, now, expires_at
