"""`OutputReservation`: how many output tokens a request reserves at admission.

Settlement corrects the reservation from the real usage; the reservation only decides
admission (and so the queue's timing) before the output exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic_core import PydanticCustomError

COLD_OUTPUT_ESTIMATE = 1_024
"""Output tokens `estimate` reserves before the group has settled a response."""


@dataclass(frozen=True, slots=True)
class OutputReservation:
    """How many output tokens a request reserves at admission; settlement corrects it.

    `estimate` (the default: the API charges output as it is generated, reference §1.4): the
    group's learned high quantile of output (about its 90th percentile; COLD_OUTPUT_ESTIMATE
    until one response settled), at most `max_tokens`; a stream's output past it is charged
    while it is generated. `max_tokens` (accounts whose upstream still pre-charges
    `max_tokens`: safe, wasteful), `expected` (the learned mean output, at most `max_tokens`;
    `max_tokens` until one response settled), a fraction of `max_tokens`, or `fixed N` (at
    most `max_tokens`).
    """

    mode: Literal["estimate", "max_tokens", "expected", "fraction", "fixed"] = "estimate"
    value: float = 0.0

    @property
    def charges_as_generated(self) -> bool:
        """Whether upstream is taken to charge output as it is generated (any mode but
        `max_tokens`): then `max_tokens` alone never makes a request "never fit", and a
        stream's output past its reservation is charged while it runs."""
        return self.mode != "max_tokens"

    def amount(self, max_tokens: int, expected: float | None, high: float | None) -> int:
        """Tokens to reserve for a request asking for `max_tokens` (0: it named none), given
        the group's learned mean (`expected`) and high quantile (`high`) output."""
        asked = max_tokens if max_tokens > 0 else COLD_OUTPUT_ESTIMATE
        if self.mode == "estimate":
            guess = COLD_OUTPUT_ESTIMATE if high is None else max(1, math.ceil(high))
            return min(asked, guess)
        if self.mode == "fraction":
            return math.ceil(self.value * max_tokens)
        if self.mode == "fixed":
            return min(int(self.value), asked)
        if self.mode == "expected" and expected is not None:
            return min(asked, max(1, math.ceil(expected)))
        return max_tokens


def parse_output_reservation(value: object) -> OutputReservation:
    """Parse `estimate`, `max_tokens`, `expected`, a number in [0, 1] or `fixed N`."""
    if isinstance(value, OutputReservation):
        return value
    if value in ("estimate", "max_tokens", "expected"):
        return OutputReservation(value)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return OutputReservation("fraction", float(value))
    if isinstance(value, str):
        word, _, number = value.partition(" ")
        if word == "fixed" and number.strip().isdigit():
            return OutputReservation("fixed", int(number))
    raise PydanticCustomError(
        "output_reservation",
        "must be estimate, max_tokens, expected, a fraction from 0 to 1, or 'fixed N'",
    )
