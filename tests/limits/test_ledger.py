"""The tenants' spend ledger: calendar periods, checks, charges, and the fleet's totals.

Periods are calendar days and months in the file's time zone (DST included); a charge
counts at once on the instance that made it and reaches the others through
`share_spend`, on every backend (memory, fakeredis, a real redis-server), which also drops
the entries of periods that are over.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.limits import LimitBackend, LimitsConfig
from gateway.limits.ledger import Ledger, OverBudget
from gateway.limits.tenants import MICRO


def config(zone: str = "UTC", /, **budgets: object) -> LimitsConfig:
    """One tenant, `team`, with `budgets`, and sonnet's prices."""
    return LimitsConfig.model_validate({
        "budget_timezone": zone,
        "groups": [{"name": "sonnet", "models": ["claude-sonnet-*"], "requests_per_minute": 50}],
        "prices": [{"models": ["claude-sonnet-*"], "input": 3.0, "output": 15.0}],
        "tenants": [{"name": "team", "budgets": budgets}, {"name": "free"}],
    })  # fmt: skip


def at(text: str, zone: str = "UTC") -> float:
    """Epoch seconds of a local wall time `YYYY-mm-dd HH:MM`."""
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz).timestamp()


class Wall:
    """A settable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_request_is_refused_once_its_estimate_would_pass_a_budget() -> None:
    wall = Wall(at("2026-12-05 10:00"))
    ledger = Ledger(config(usd_per_day=1.0, tokens_per_calendar_day=10_000), wall)
    assert ledger.check("team", 900_000, 1_000) is None
    ledger.charge("team", 900_000, 1_000)
    over = ledger.check("team", 200_000, 100)
    assert isinstance(over, OverBudget)
    assert (over.budget.name, over.budget.spent, over.budget.remaining) == (
        "usd_per_day", 900_000, 100_000,
    )  # fmt: skip
    assert over.budget.resets_at == at("2026-12-06 00:00")
    assert ledger.check("team", 100_000, 9_000) is None
    token_over = ledger.check("team", 0, 9_001)
    assert isinstance(token_over, OverBudget)
    assert token_over.budget.name == "tokens_per_calendar_day"
    assert ledger.check("free", 10**12, 10**12) is None  # no budget, nothing to pass
    wall.now = at("2026-12-06 00:00")  # a new day starts from zero
    assert ledger.check("team", 1_000_000, 10_000) is None


def test_days_and_months_are_the_configured_zones_including_dst() -> None:
    zone = "America/New_York"
    wall = Wall(at("2026-11-01 00:30", zone))  # DST ends at 02:00 this day: a 25-hour day
    ledger = Ledger(config(zone, usd_per_day=1.0, usd_per_month=10.0), wall)
    day, month = ledger.states("team")
    assert day.resets_at - wall.now == 24.5 * 3600
    assert month.resets_at == at("2026-12-01 00:00", zone)
    wall.now = at("2026-11-30 23:59", zone)
    assert ledger.current_periods() == ["2026-11", "2026-11-30"]


def test_the_fleets_totals_replace_this_instances_view_and_a_failed_sync_loses_nothing() -> None:
    wall = Wall(at("2026-12-05 10:00"))
    ledger = Ledger(config(usd_per_day=1.0), wall)
    ledger.charge("team", 100_000, 0)
    sent = ledger.unsent()
    assert sent == {"team|usd_per_day|2026-12-05": 100_000}
    assert ledger.states("team")[0].spent == 0  # in flight to the backend
    ledger.restore(sent)  # the sync failed
    assert ledger.states("team")[0].spent == 100_000
    ledger.adopt({"team|usd_per_day|2026-12-05": 700_000})  # others spent too
    assert ledger.states("team")[0].spent == 800_000


async def test_every_backend_shares_spend_and_forgets_past_periods(
    backend: LimitBackend,
) -> None:
    first = await backend.share_spend({"a|usd_per_day|2026-12-05": 5}, ["2026-12-05"])
    assert first == {"a|usd_per_day|2026-12-05": 5}
    both = await backend.share_spend(
        {"a|usd_per_day|2026-12-05": 7, "b|usd_per_month|2026-12": 1}, ["2026-12-05", "2026-12"]
    )
    assert both == {"a|usd_per_day|2026-12-05": 12, "b|usd_per_month|2026-12": 1}
    later = await backend.share_spend({}, ["2026-12-06", "2026-12"])
    assert later == {"b|usd_per_month|2026-12": 1}


async def test_two_instances_see_each_others_spend_after_a_sync(backend: LimitBackend) -> None:
    wall = Wall(at("2026-12-05 10:00"))
    one, two = Ledger(config(usd_per_day=1.0), wall), Ledger(config(usd_per_day=1.0), wall)
    one.charge("team", 600 * MICRO // 1000, 0)
    two.charge("team", 300 * MICRO // 1000, 0)
    for ledger in (one, two, one):
        ledger.adopt(await backend.share_spend(ledger.unsent(), ledger.current_periods()))
    assert [ledger.states("team")[0].spent for ledger in (one, two)] == [900_000, 900_000]
    assert isinstance(one.check("team", 100_001, 0), OverBudget)


@pytest.mark.parametrize(
    ("budgets", "problem"),
    [
        ({"usd_per_day": 0}, "greater than 0"),
        ({"tokens_per_calendar_day": 1.5}, "valid integer"),
        ({"usd_per_week": 1}, "Extra inputs"),
    ],
)
def test_budget_figures_are_checked(budgets: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        config(**budgets)


def test_a_dollar_budget_needs_prices_and_groups_and_a_zone_must_exist() -> None:
    group = {"name": "s", "models": ["*"], "requests_per_minute": 5}
    with pytest.raises(ValueError, match="a budget in USD needs a prices table"):
        LimitsConfig.model_validate({
            "groups": [group], "tenants": [{"name": "t", "budgets": {"usd_per_day": 1}}],
        })  # fmt: skip
    with pytest.raises(ValueError, match="budgets count the calls a group covers"):
        LimitsConfig.model_validate({"tenants": [{"name": "t", "budgets": {"usd_per_day": 1}}]})
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        config("Mars/Olympus")
