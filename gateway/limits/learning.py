"""`Learning`: what settled usage teaches each model group, kept per gateway instance.

Two running figures per group, both moving averages that start as plain means (the first
sample counts fully) and then weigh new samples by `alpha`:

- the input ratio: actual / estimated input tokens, averaged as a log-ratio clipped to
  [1/bound, bound], so one odd request (a huge cached prompt, a tokenizer surprise) moves it
  at most a little; new estimates are multiplied by it;
- the expected output: output tokens of complete responses, for `output_reservation:
  expected`. None until the group has settled one.

Nothing is shared between instances: each learns from the responses it relays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 0.1
RATIO_BOUND = 4.0


@dataclass(slots=True)
class _Group:
    log_ratio: float = 0.0
    ratio_samples: int = 0
    expected_output: float | None = None
    output_samples: int = 0


class Learning:
    """Per-group input ratio and expected output, learned from settled responses."""

    def __init__(self, *, alpha: float = ALPHA, bound: float = RATIO_BOUND) -> None:
        self._alpha = alpha
        self._clip = math.log(bound)
        self._groups: dict[str, _Group] = {}

    def snapshot(self) -> dict[str, tuple[float, float | None]]:
        """(input ratio, expected output) per group learned so far, for metrics."""
        return {
            name: (math.exp(state.log_ratio), state.expected_output)
            for name, state in self._groups.items()
        }

    def input_ratio(self, group: str) -> float:
        """Actual / estimated input tokens, learned so far (1.0 when nothing is known)."""
        state = self._groups.get(group)
        return 1.0 if state is None else math.exp(state.log_ratio)

    def expected_output(self, group: str) -> float | None:
        """Mean output tokens of this group's complete responses, or None before the first."""
        state = self._groups.get(group)
        return None if state is None else state.expected_output

    def observe_input(self, group: str, estimated: int, actual: int) -> None:
        """Move the group's input ratio toward `actual / estimated` (raw, unscaled estimate)."""
        if estimated <= 0 or actual <= 0:
            return
        state = self._groups.setdefault(group, _Group())
        sample = max(-self._clip, min(self._clip, math.log(actual / estimated)))
        state.ratio_samples += 1
        weight = max(self._alpha, 1.0 / state.ratio_samples)
        state.log_ratio += weight * (sample - state.log_ratio)

    def observe_output(self, group: str, output_tokens: int) -> None:
        """Move the group's expected output toward one complete response's output."""
        state = self._groups.setdefault(group, _Group())
        state.output_samples += 1
        if state.expected_output is None:
            state.expected_output = float(output_tokens)
            return
        weight = max(self._alpha, 1.0 / state.output_samples)
        state.expected_output += weight * (output_tokens - state.expected_output)

    def scaled(self, group: str, estimate: int) -> int:
        """`estimate` times the group's input ratio, rounded up."""
        return math.ceil(estimate * self.input_ratio(group))
