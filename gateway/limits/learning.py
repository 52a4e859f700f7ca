"""`Learning`: what settled usage teaches each model group, kept per gateway instance.

Two running figures per group, both moving averages that start as plain means (the first
sample counts fully) and then weigh new samples by `alpha`:

- the input ratio: actual / estimated input tokens, averaged as a log-ratio clipped to
  [1/bound, bound], so one odd request (a huge cached prompt, a tokenizer surprise) moves it
  at most a little; new estimates are multiplied by it;
- the expected output: output tokens of complete responses, for `output_reservation:
  expected`. None until the group has settled one.

Nothing is shared between instances: each learns from the responses it relays.

`LearnedLimits` keeps the limits the API reports in its `-limit` headers, for groups with
`learn_limits` (or every group, with `GATEWAY_LEARN_LIMITS=true`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gateway.limits.model import Dimension
from gateway.limits.policy import GroupLimits

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


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9.-]")
MAX_MODEL_GROUPS = 50
"""Most per-model groups learned when there is no limits file (model names are client input)."""


class LearnedLimits:
    """Per group, the RPM/ITPM/OTPM the API's `anthropic-ratelimit-*-limit` headers reported.

    Per gateway instance, like the figures above; every instance learns the same numbers from
    the same API. Groups are keyed by name only: one organisation's limits per group, so a
    gateway shared by keys of organisations on different tiers should configure limits.
    """

    def __init__(self, *, max_groups: int) -> None:
        self._max_groups = max_groups
        self._limits: dict[str, dict[Dimension, int]] = {}

    def __contains__(self, group: str) -> bool:
        return group in self._limits

    def limits(self, group: str) -> dict[Dimension, int]:
        """What was learned for `group` so far (empty before its first response)."""
        return self._limits.get(group, {})

    def has_room(self) -> bool:
        """Whether one more group may be learned."""
        return len(self._limits) < self._max_groups

    def model_group(self, model: str) -> GroupLimits | None:
        """A learning group of one model, named after it; None when the table is full."""
        name = _UNSAFE_NAME.sub("-", model)[:64] or "model"
        if name not in self._limits and not self.has_room():
            return None
        return GroupLimits.model_construct(name=name, models=(model,), learn_limits=True)

    def learn(self, group: str, reported: dict[Dimension, int]) -> bool:
        """Record `reported` (positive limits only) for `group`; True when anything changed."""
        found = {dim: limit for dim, limit in reported.items() if limit > 0}
        known = self._limits.get(group)
        if not found or known == found or (known is None and not self.has_room()):
            return False
        self._limits[group] = found
        return True
