"""What `Limiter.admit` answers: one value per outcome, never an exception.

One vocabulary from the backend up: `Refused` (a wait too long) and `NeverFits` (a cost above
a limit) are the backend's own values (`model.py`), passed on as they are; the limiter adds
the outcomes only it can know. `Admitted` is the only one that goes upstream; `Unlimited`
goes too, with nothing to settle. `gateway/admission.py` turns the rest into the gateway's
errors, and names each for the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.limits.ledger import OverBudget
from gateway.limits.model import Cost, NeverFits, Refused, Reservation


@dataclass(frozen=True, slots=True)
class Unlimited:
    """No limit applies: no limiter, the model's group sets none, or unmatched models pass."""


UNLIMITED = Unlimited()


@dataclass(slots=True)
class Admitted:
    """Go once `reservation.wait` has passed: the buckets are debited; settle when done."""

    reservation: Reservation
    group: str
    fallback: bool = False
    """Held by the local fail-open backend, not the shared one."""
    reserved_at: float = field(default=0.0, compare=False)
    """This instance's clock when the buckets were debited (before any queue wait)."""
    max_wait: float = field(default=0.0, compare=False)
    """The longest it may wait in the queue (the request's, capped by the limits file)."""
    live: Cost = field(default=Cost(), compare=False, repr=False)
    """Charged while the response ran, beyond the reservation (a stream's output)."""
    settled: bool = field(default=False, compare=False, repr=False)

    @property
    def wait(self) -> float:
        """Seconds to wait in the queue before going upstream (0 = now)."""
        return self.reservation.wait


@dataclass(frozen=True, slots=True)
class UnknownModel:
    """No group matches the model and `unmatched_models` is `reject`."""

    model: str


@dataclass(frozen=True, slots=True)
class BackendUnavailable:
    """The backend failed (or its breaker is open) and the policy is `fail_closed`."""


@dataclass(frozen=True, slots=True)
class NotBudgeted:
    """The caller's tenant has a budget the request could not be counted against: its model
    has no price (a spend budget) or no group of the limits file covers it."""

    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class HeldBack:
    """A batch-lane request (its own priority, or a tenant over its fair share) that does not
    fit above the priority reserve now: nothing was debited; ask again after
    `refused.retry_after`, while the request's max wait allows."""

    refused: Refused
    reason: str
    """`batch` or `over_share`."""


Admission = (
    Unlimited
    | HeldBack
    | Admitted
    | Refused
    | NeverFits
    | UnknownModel
    | BackendUnavailable
    | OverBudget
    | NotBudgeted
)
