"""`LearnedLimits`: the limits the API reports in its `-limit` headers, per model group.

For groups with `learn_limits` (or every group, with `GATEWAY_LEARN_LIMITS=true`): the RPM,
ITPM and OTPM the API's `anthropic-ratelimit-*-limit` headers report are enforced where the
limits file sets none. Without a limits file a group is learned per model pool (`pools.py`),
at most MAX_MODEL_GROUPS of them: model names are client input.
"""

from __future__ import annotations

import re

from gateway.limits.model import Dimension
from gateway.limits.policy import GroupLimits
from gateway.limits.pools import pool_of

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9.-]")
MAX_MODEL_GROUPS = 50
"""Most per-model groups learned when there is no limits file (model names are client input)."""


class LearnedLimits:
    """Per group, the RPM/ITPM/OTPM the API's `anthropic-ratelimit-*-limit` headers reported.

    Per gateway instance, unlike the figures above: every instance learns the same numbers
    from the same API. Groups are keyed by name only: one organisation's limits per group, so a
    gateway shared by keys of organisations on different tiers should configure limits.
    """

    def __init__(self, *, max_groups: int) -> None:
        self._max_groups = max_groups
        self._limits: dict[str, dict[Dimension, int]] = {}

    def resize(self, max_groups: int) -> None:
        """Hold up to `max_groups` groups from now on (a reload changed the file's groups);
        what was learned stays."""
        self._max_groups = max_groups

    def __contains__(self, group: str) -> bool:
        return group in self._limits

    def limits(self, group: str) -> dict[Dimension, int]:
        """What was learned for `group` so far (empty before its first response)."""
        return self._limits.get(group, {})

    def has_room(self) -> bool:
        """Whether one more group may be learned."""
        return len(self._limits) < self._max_groups

    def model_group(self, model: str) -> GroupLimits | None:
        """A learning group named after the pool `model` draws on (`pools.py`: an alias and
        its dated ids share one); None when the table is full."""
        name = _UNSAFE_NAME.sub("-", pool_of(model))[:64] or "model"
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
