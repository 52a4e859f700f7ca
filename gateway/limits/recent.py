"""`RecentDecisions`: the limiter's decisions of the last minute, per group and tenant.

Prometheus holds the same counts for dashboards; the live view (`GET /gateway/v1/status`)
wants them without a Prometheus in the way, as rates over the last minute. One slot per
second for 60 seconds, per (group, tenant): bounded by the limits file's groups and tenants
(at most `MAX_KEYS` pairs; a pair beyond that is not counted here).
"""

from __future__ import annotations

import math
from collections import Counter

WINDOW_SECONDS = 60
MAX_KEYS = 1_024

Key = tuple[str, str]
"""(group, tenant): tenant "" for callers without a gateway key."""


class RecentDecisions:
    """Counts of each decision in one-second slots over the last `WINDOW_SECONDS`."""

    def __init__(self) -> None:
        self._slots: dict[Key, dict[int, Counter[str]]] = {}

    def note(self, group: str, tenant: str, decision: str, at: float) -> None:
        """Count one decision taken at clock time `at`."""
        key = (group, tenant)
        slots = self._slots.get(key)
        if slots is None:
            if len(self._slots) >= MAX_KEYS:
                return
            slots = self._slots[key] = {}
        second = math.floor(at)
        slot = slots.get(second)
        if slot is None:
            for old in [s for s in slots if s <= second - WINDOW_SECONDS]:
                del slots[old]
            slot = slots[second] = Counter()
        slot[decision] += 1

    def per_minute(self, now: float) -> dict[Key, dict[str, int]]:
        """Each (group, tenant)'s decisions in the last `WINDOW_SECONDS` before `now`."""
        oldest = math.floor(now) - WINDOW_SECONDS
        totals: dict[Key, dict[str, int]] = {}
        for key, slots in self._slots.items():
            counted: Counter[str] = Counter()
            for second, slot in slots.items():
                if second > oldest:
                    counted.update(slot)
            if counted:
                totals[key] = dict(sorted(counted.items()))
        return totals
