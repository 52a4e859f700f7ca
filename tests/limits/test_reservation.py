"""`OutputReservation`: what each mode reserves for a request asking for `max_tokens`."""

from __future__ import annotations

import pytest

from gateway.limits.reservation import COLD_OUTPUT_ESTIMATE, OutputReservation


@pytest.mark.parametrize(
    ("reservation", "asked", "learned", "reserved"),
    [
        (OutputReservation("estimate"), 64_000, (None, None), COLD_OUTPUT_ESTIMATE),
        (OutputReservation("estimate"), 64_000, (200.0, 412.3), 413),
        (OutputReservation("estimate"), 100, (200.0, 412.3), 100),
        (OutputReservation("estimate"), 0, (None, None), COLD_OUTPUT_ESTIMATE),
        (OutputReservation("max_tokens"), 64_000, (200.0, 412.3), 64_000),
        (OutputReservation("expected"), 64_000, (None, None), 64_000),
        (OutputReservation("expected"), 64_000, (199.2, 412.3), 200),
        (OutputReservation("fraction", 0.25), 1_000, (None, None), 250),
        (OutputReservation("fixed", 900.0), 500, (None, None), 500),
    ],
)
def test_each_mode_reserves_what_it_says(
    reservation: OutputReservation,
    asked: int,
    learned: tuple[float | None, float | None],
    reserved: int,
) -> None:
    """estimate: the learned high quantile (cold: 1,024), at most max_tokens; max_tokens:
    max_tokens; expected: the learned mean (cold: max_tokens); a fraction; a fixed number."""
    assert reserved == reservation.amount(asked, *learned)


def test_only_max_tokens_is_not_charged_as_generated() -> None:
    """Every mode but max_tokens takes the upstream to charge output as it is generated."""
    modes = ["estimate", "max_tokens", "expected", "fraction", "fixed"]
    assert [True, False, True, True, True] == [
        OutputReservation(mode).charges_as_generated  # type: ignore[arg-type]
        for mode in modes
    ]
