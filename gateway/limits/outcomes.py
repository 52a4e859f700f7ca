"""What `Limiter.admit` answers: one value per outcome, never an exception.

`Admitted` is the only one that goes upstream; the handler turns the others into the
gateway's own errors (`gateway/admission.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.limits.model import BucketSpec, Reservation


@dataclass(frozen=True, slots=True)
class Unlimited:
    """No limit applies: the model's group sets none, or unmatched models pass."""


@dataclass(slots=True)
class Admitted:
    """Go: the buckets are debited (and any queue wait is over); settle when done."""

    reservation: Reservation
    waited_seconds: float
    group: str
    fallback: bool = False
    """Held by the local fail-open backend, not the shared one."""
    settled: bool = field(default=False, compare=False, repr=False)
    reserved_at: float = field(default=0.0, compare=False, repr=False)
    """This instance's clock when the buckets were debited (before any queue wait)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """Too busy: the wait would exceed the queue cap; nothing was debited."""

    group: str
    bucket: BucketSpec
    retry_after_seconds: float
    remaining: float
    limit: int


@dataclass(frozen=True, slots=True)
class NeverFitsRejection:
    """The request costs more than a bucket holds: no wait can ever admit it."""

    group: str
    bucket: BucketSpec
    cost: int
    limit: int


@dataclass(frozen=True, slots=True)
class UnknownModel:
    """No group matches the model and `unmatched_models` is `reject`."""

    model: str


@dataclass(frozen=True, slots=True)
class BackendUnavailable:
    """The backend failed (or its breaker is open) and the policy is `fail_closed`."""


Admission = Unlimited | Admitted | Rejected | NeverFitsRejection | UnknownModel | BackendUnavailable
