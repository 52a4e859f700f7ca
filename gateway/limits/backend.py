"""The `LimitBackend` seam: atomic bucket arithmetic behind one small protocol.

Decision: Redis owns time; waits travel as durations. The Redis scripts read `TIME`, one
clock for the whole fleet; `MemoryBackend` reads its injected `Clock`. Both accept an
explicit `now` that only tests pass, so one contract suite drives every backend with the same
fake clock. Nothing returned is an instant: a reservation carries the seconds to wait.

Exception tree::

    LimitBackendError        the store failed (connection, timeout, script error);
                             over-limit is never an exception, it is a return value
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gateway.limits.learning import Figures, Lesson
from gateway.limits.model import BucketSpec, Cost, NeverFits, Refused, Reservation

ChangeListener = Callable[[str, float, float], None]
"""Told of a change of a bucket in debt: its key, how its level moved (positive: freed), and
when, in the backend's own order (comparable to `Reservation.at`)."""
BackendObserver = Callable[[str, float, bool], None]
"""Told of every backend round trip: operation (`reserve`, `adjust`, `cap`, `learn`), seconds,
success. Feeds `gateway_limiter_backend_seconds` and `..._errors_total`."""


def ignore_backend_call(operation: str, seconds: float, ok: bool) -> None:
    """The default observer: metrics are optional."""


class LimitBackendError(Exception):
    """The backend could not answer; the limiter applies its fail-open/closed policy."""


class LimitBackend(Protocol):
    """Protocol: atomic bucket arithmetic. Over-limit is a value; LimitBackendError means
    infrastructure failed. The backend owns time; `now` is for tests only.

    All buckets of one call share scope and group (one Redis Cluster hash tag).
    """

    async def reserve(
        self,
        buckets: Sequence[BucketSpec],
        cost: Cost,
        *,
        max_wait: float,
        now: float | None = None,
        floor: float = 0.0,
    ) -> Reservation | Refused | NeverFits:
        """Debit every bucket or none, in one atomic step.

        NeverFits when the cost exceeds a bucket's capacity (found without I/O). If every
        bucket has enough, a Reservation with wait 0. Otherwise the wait is the longest time
        any bucket needs to repay its debt after the debit: within `max_wait` every bucket
        is debited anyway (first come, first served) and the Reservation says how long to
        wait; beyond it nothing is debited and Refused names the bucket and the wait.
        With `floor` > 0 (a lower-priority request) a bucket must keep that share of its
        capacity after the debit, and a request that must wait is Refused with that wait
        whatever `max_wait` says: it never queues into debt ahead of higher priorities.
        """
        ...

    def adjust(self, reservation: Reservation, delta: Cost, *, now: float | None = None) -> None:
        """Charge (positive delta) or refund (negative) every bucket of a reservation, in one
        atomic step; a refund never fills a bucket past capacity.

        Never waits, so settling never holds up a response: a remote store may apply it
        later, but before this backend decides its next reserve or cap of the same scope and
        group, and within moments for other instances. A store failure then drops it
        (logged), as if the reservation was used.
        """
        ...

    async def cap(
        self, buckets: Sequence[BucketSpec], ceilings: Sequence[float], *, now: float | None = None
    ) -> None:
        """Lower each bucket to at most its ceiling (a level; negative is debt), in one atomic
        step; a bucket already at or below its ceiling is left alone, never raised."""
        ...

    async def learn(self, group: str, lesson: Lesson, *, now: float | None = None) -> Figures:
        """Merge one instance's lesson into the fleet's learned figures of `group` and return
        them, in one atomic step (`learning.merged`); figures idle for `LEARNED_TTL` expire."""
        ...

    async def share_organizations(
        self, learned: Mapping[str, str]
    ) -> tuple[str | None, dict[str, str]]:
        """Record `learned` (key scope -> organisation id, oldest first), make the first
        organisation any instance learned the fleet's primary, and return the primary and
        every mapping, in one atomic step (`organizations.py`)."""
        ...

    async def share_spend(
        self, charged: Mapping[str, int], periods: Sequence[str]
    ) -> dict[str, int]:
        """Add `charged` (ledger entry -> amount, `ledger.py`) to the fleet's ledger, drop the
        entries of periods not in `periods`, and return every entry left, in one atomic step."""
        ...

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener` whenever a settlement, a live charge, a refund or a pull-down
        changes the level of a bucket that is or becomes in debt (requests are queued on it),
        on every instance sharing the backend (Redis publishes them, from the scripts that make
        them). Best effort: a lost notification leaves a waiter on its original, safe time."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers and accepts writes; raise LimitBackendError when
        it does not (readiness and the circuit breaker count it like any failed call)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the backend is unusable afterwards."""
        ...
