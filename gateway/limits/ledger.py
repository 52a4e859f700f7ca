"""`Ledger`: what each tenant spent this calendar day and month, against its budgets.

Budgets are not token buckets: they do not refill, they reset at the start of each calendar
day or month (the limits file's `budget_timezone`). Spend is known only from a response's
real usage, after it is over, so the ledger is charged at settlement and checked at
admission: a request is refused when what its tenant has spent, plus what this request is
estimated to cost, passes a budget.

The fleet shares one ledger through the backend (`LimitBackend.share_spend`): each instance
adds what it charged since its last pass and adopts the fleet's totals every sync
(`LearningSync`, every few seconds), so admission costs no extra round trip. The price of
that: a tenant can pass a budget by what the fleet serves it within one sync interval, plus
its requests still running; a budget is a spending cap, not an exact meter (the API bills
after the fact too). The ledger's entries are named `<tenant>|<budget>|<period>`, e.g.
`search|usd_per_day|2026-12-05`: a new period starts from zero by its name alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.clock import wall_time
from gateway.limits.policy import LimitsConfig
from gateway.limits.tenants import zone_named

WallClock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget of one tenant in the current period."""

    tenant: str
    name: str
    """`usd_per_day`, `usd_per_month` or `tokens_per_calendar_day`."""
    limit: int
    """In micro-dollars or tokens."""
    spent: int
    resets_at: float
    """Epoch seconds when the period ends."""

    @property
    def unit(self) -> str:
        """`usd` or `tokens`."""
        return "usd" if self.name.startswith("usd") else "tokens"

    @property
    def remaining(self) -> int:
        """What is left this period (never below 0)."""
        return max(0, self.limit - self.spent)


@dataclass(frozen=True, slots=True)
class OverBudget:
    """Nothing was debited: the tenant's `budget` cannot cover this request's estimate."""

    budget: BudgetState
    needed: int


class Ledger:
    """This instance's view of the fleet's spend, and what it charged since its last sync."""

    def __init__(self, config: LimitsConfig, wall: WallClock = wall_time) -> None:
        self._wall = wall
        self._totals: dict[str, int] = {}
        """The fleet's totals at the last sync."""
        self._unsent: dict[str, int] = {}
        """Charged here since the last sync (counted in `spent` at once)."""
        self.reconfigure(config)

    def reconfigure(self, config: LimitsConfig) -> None:
        """Use `config`'s budgets and time zone (a reload); what was spent stays."""
        self._zone = zone_named(config.budget_timezone)
        self._periods_at: tuple[int, dict[str, tuple[str, float]]] | None = None
        self._budgets = {
            tenant.name: tenant.budgets.limits()
            for tenant in config.tenants
            if tenant.budgets is not None and tenant.budgets.limits()
        }

    def has_budgets(self, tenant: str) -> bool:
        """Whether `tenant` has any budget."""
        return tenant in self._budgets

    def states(self, tenant: str) -> list[BudgetState]:
        """Each budget of `tenant` in the current period."""
        limits = self._budgets.get(tenant)
        if not limits:
            return []
        periods = self._periods()
        states = []
        for name, limit in limits.items():
            period, resets_at = periods[name]
            entry = f"{tenant}|{name}|{period}"
            spent = self._totals.get(entry, 0) + self._unsent.get(entry, 0)
            states.append(BudgetState(tenant, name, limit, spent, resets_at))
        return states

    def check(self, tenant: str, micro_usd: int, tokens: int) -> OverBudget | None:
        """The first budget this request's estimate would pass, or None."""
        for state in self.states(tenant):
            needed = micro_usd if state.unit == "usd" else tokens
            if state.spent + needed > state.limit:
                return OverBudget(state, needed)
        return None

    def charge(self, tenant: str, micro_usd: int, tokens: int) -> None:
        """Add a settled request's real spend to its tenant's budgets of this period."""
        periods = self._periods()
        for state in self.states(tenant):
            amount = micro_usd if state.unit == "usd" else tokens
            if amount > 0:
                entry = f"{tenant}|{state.name}|{periods[state.name][0]}"
                if entry not in self._unsent:
                    self._drop_past(periods)
                self._unsent[entry] = self._unsent.get(entry, 0) + amount

    def unsent(self) -> dict[str, int]:
        """Take what was charged since the last sync (give it back with `restore` when the
        sync fails)."""
        unsent, self._unsent = self._unsent, {}
        return unsent

    def restore(self, unsent: Mapping[str, int]) -> None:
        """Put back charges a failed sync did not deliver."""
        for entry, amount in unsent.items():
            self._unsent[entry] = self._unsent.get(entry, 0) + amount

    def adopt(self, totals: Mapping[str, int]) -> None:
        """Take the fleet's totals (they include what this instance sent)."""
        self._totals = dict(totals)

    def current_periods(self) -> list[str]:
        """The period names in force now (the backend drops entries of any other)."""
        return sorted({period for period, _ in self._periods().values()})

    def _drop_past(self, periods: Mapping[str, tuple[str, float]]) -> None:
        """Forget entries of periods that are over (an instance without a shared backend
        never syncs, so nothing else would)."""
        current = {period for period, _ in periods.values()}
        self._unsent = {e: n for e, n in self._unsent.items() if e.rpartition("|")[2] in current}
        self._totals = {e: n for e, n in self._totals.items() if e.rpartition("|")[2] in current}

    def _periods(self) -> dict[str, tuple[str, float]]:
        """Each budget's current period name and when it ends (epoch seconds), worked out
        once per wall-clock second: every request of a budgeted tenant asks several times
        (admission, headers, charge), and periods only change at a midnight, which falls on
        a whole second."""
        second = math.floor(self._wall())
        if self._periods_at is None or self._periods_at[0] != second:
            self._periods_at = (second, self._periods_of(second))
        return self._periods_at[1]

    def _periods_of(self, second: int) -> dict[str, tuple[str, float]]:
        now = datetime.fromtimestamp(second, self._zone)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        next_day = (day + timedelta(days=1, hours=3)).replace(hour=0)  # DST-proof
        month = day.replace(day=1)
        next_month = (month + timedelta(days=32)).replace(day=1)
        day_id, month_id = day.strftime("%Y-%m-%d"), month.strftime("%Y-%m")
        return {
            "usd_per_day": (day_id, next_day.timestamp()),
            "tokens_per_calendar_day": (day_id, next_day.timestamp()),
            "usd_per_month": (month_id, next_month.timestamp()),
        }
