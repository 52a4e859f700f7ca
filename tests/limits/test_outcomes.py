"""What `Limiter.admit` answers: values, compared as values."""

from __future__ import annotations

from gateway.limits import Cost, Dimension, Reservation
from gateway.limits.outcomes import UNLIMITED, Admitted, Unlimited
from tests.limits.conftest import bucket

RPM = bucket(Dimension.REQUESTS, 60)


def reservation(wait: float) -> Reservation:
    """A one-request reservation on the test RPM bucket that says to wait `wait` seconds."""
    return Reservation((RPM,), Cost(requests=1), wait, (59.0,))


def test_admitted_waits_what_its_reservation_says() -> None:
    """`Admitted.wait` is the reservation's wait: 0 goes now, more queues first."""
    assert (0.0, 1.5) == (
        Admitted(reservation(0.0), "sonnet").wait,
        Admitted(reservation(1.5), "sonnet").wait,
    )


def test_admitted_compares_by_reservation_group_and_fallback_only() -> None:
    """When it was reserved and whether it was settled are bookkeeping, not identity."""
    first = Admitted(reservation(0.0), "sonnet", reserved_at=1.0)
    second = Admitted(reservation(0.0), "sonnet", reserved_at=2.0, settled=True)
    fallback = Admitted(reservation(0.0), "sonnet", fallback=True)
    assert (True, False) == (first == second, first == fallback)


def test_unlimited_is_one_value() -> None:
    """Any `Unlimited()` equals the shared `UNLIMITED`."""
    assert Unlimited() == UNLIMITED
