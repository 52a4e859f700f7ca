"""`FairShare`: which tenants took more than an equal share of a group in the last minute.

The scheme (the limits file's `fair_share: true`): a tenant that took more than an equal
share of a group's admissions over the last minute (equal among the file's tenants, or the
tenants active in it when more) is served from the batch lane while it stays over: it may
use only what lies above the file's `priority_reserve` of each bucket, and waits by asking
again rather than queueing into debt. Tenants within their share keep the reserve and the
queue, so a small tenant arriving during a flood is served from the reserve at once. It is
work-conserving above the reserve: a flooding tenant is never held back from room above it
that nobody else wants; it only loses the reserve and its place in the queue.

An interactive-lane request is counted as it is asked for (a burst of concurrent arrivals
sees its own first requests at once), a held one when it is admitted. Counted per
instance, in one-second slots (no Redis call): behind a load balancer that spreads each
tenant's traffic, every instance sees the same proportions.
"""

from __future__ import annotations

import math
from collections import Counter, deque

WINDOW_SECONDS = 60
MAX_GROUPS = 1_024


class _Window:
    """One group's admissions per tenant over the last `WINDOW_SECONDS`."""

    def __init__(self) -> None:
        self.slots: deque[tuple[int, Counter[str]]] = deque()
        self.totals: Counter[str] = Counter()
        self.total = 0

    def expire(self, second: int) -> None:
        while self.slots and self.slots[0][0] <= second - WINDOW_SECONDS:
            _, old = self.slots.popleft()
            self.totals -= old
            self.total -= sum(old.values())

    def note(self, tenant: str, second: int) -> None:
        self.expire(second)
        if not self.slots or self.slots[-1][0] != second:
            self.slots.append((second, Counter()))
        self.slots[-1][1][tenant] += 1
        self.totals[tenant] += 1
        self.total += 1


class FairShare:
    """Admissions per group and tenant; `over_share` answers the scheme's one question."""

    def __init__(self) -> None:
        self._groups: dict[str, _Window] = {}

    def note(self, group: str, tenant: str, at: float) -> None:
        """Count one admission of `tenant` in `group` at clock time `at`."""
        window = self._groups.get(group)
        if window is None:
            if len(self._groups) >= MAX_GROUPS:
                return
            window = self._groups[group] = _Window()
        window.note(tenant, math.floor(at))

    def over_share(self, group: str, tenant: str, at: float, *, tenants: int) -> bool:
        """Whether `tenant` took more than an equal share of `group`'s admissions in the last
        minute, among `tenants` (the file's) or the tenants active, whichever are more
        (never when there is one)."""
        window = self._groups.get(group)
        if window is None:
            return False
        window.expire(math.floor(at))
        sharing = max(tenants, len(window.totals))
        return sharing >= 2 and window.totals[tenant] * sharing > window.total
