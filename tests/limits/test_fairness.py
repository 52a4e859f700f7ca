"""Fair share: a tenant over an equal share of the last minute is held to the batch lane."""

from __future__ import annotations

from gateway.limits import Admitted, Cost, LimitBackend, Limiter, LimitsConfig
from gateway.limits.fairness import WINDOW_SECONDS, FairShare
from gateway.limits.outcomes import HeldBack
from tests.limits.conftest import MODEL, SCOPE
from tests.limits.test_backends_contract import subscribed
from tests.support.fake_clock import FakeClock


def test_a_tenant_over_an_equal_share_of_the_last_minute_is_over() -> None:
    fair = FairShare()
    assert not fair.over_share("g", "big", 0.0, tenants=2)  # nothing counted yet
    for second in range(3):
        fair.note("g", "big", float(second))
    assert fair.over_share("g", "big", 3.0, tenants=2)  # 3 of 3, one of two tenants
    assert not fair.over_share("g", "big", 3.0, tenants=1)  # alone: nobody to share with
    assert not fair.over_share("g", "small", 3.0, tenants=2)
    fair.note("g", "small", 3.0)
    fair.note("g", "small", 3.5)
    fair.note("g", "other", 3.5)  # three active: an equal share is a third
    assert fair.over_share("g", "big", 4.0, tenants=2)  # 3 of 6 > 1/3
    assert not fair.over_share("g", "small", 4.0, tenants=2)  # 2 of 6 = 1/3
    assert not fair.over_share("g", "big", 3.0 + WINDOW_SECONDS, tenants=2)  # it aged out
    assert not fair.over_share("h", "big", 4.0, tenants=2)  # per group


async def test_a_flooding_tenant_keeps_the_room_above_the_reserve_only(
    backend: LimitBackend, clock: FakeClock
) -> None:
    config = LimitsConfig.model_validate({
        "headroom": 0, "priority_reserve": 0.5, "fair_share": True,
        "groups": [{"name": "sonnet", "models": ["claude-sonnet-4*"], "requests_per_minute": 10}],
        "tenants": [{"name": "big"}, {"name": "small"}],
    })  # fmt: skip
    limiter = Limiter(backend, config, clock)

    async def admit(tenant: str) -> object:
        return await limiter.admit(
            scope=SCOPE, model=MODEL, cost=Cost(requests=1), max_wait=60, tenant=tenant
        )

    big = [await admit("big") for _ in range(7)]
    # Its first is within an equal share; over it, it stops at the reserve (5 of 10)...
    assert [type(a).__name__ for a in big] == ["Admitted"] * 5 + ["HeldBack"] * 2
    held = big[-1]
    assert isinstance(held, HeldBack)
    assert held.reason == "over_share"
    # ...and the small tenant is served from the reserve, and may queue, ahead of it.
    small = [await admit("small") for _ in range(6)]
    assert all(isinstance(a, Admitted) for a in small)
    last = small[-1]
    assert isinstance(last, Admitted)
    assert last.wait > 0
    await subscribed(backend)  # it queued: let the Redis backend finish subscribing first
