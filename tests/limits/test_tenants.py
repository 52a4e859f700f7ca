"""Tenants in the limits file, and their sub-quotas nested in the organisation's buckets.

The file: shares and figures, names that must exist, one line per mistake. The limiter, on
every backend (memory, fakeredis, a real redis-server through both transports): a tenant's
request needs room in its sub-quota and in the organisation's bucket, both debited in one
call or neither; a tenant without a sub-quota draws only on the organisation's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.identity import new_key
from gateway.limits import (
    Admitted,
    Cost,
    Dimension,
    LimitBackend,
    Limiter,
    LimitsConfig,
    LimitsFileError,
    Refused,
    load_limits,
)
from gateway.limits.tenants import Share, TenantGroupLimits
from tests.limits.conftest import MODEL, SCOPE
from tests.support.fake_clock import FakeClock

HEAD = (
    "headroom: 0\ngroups:\n  - name: sonnet\n    models: ['claude-sonnet-4*']\n"
    "    requests_per_minute: 30\n    input_tokens_per_minute: 10000\n"
)


def load(tmp_path: Path, text: str) -> LimitsConfig:
    path = tmp_path / "limits.yaml"
    path.write_text(HEAD + text)
    return load_limits(path)


def test_shares_are_taken_of_the_groups_configured_limit(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "tenants:\n  - name: search\n    limits:\n      sonnet:\n"
        "        requests_per_minute: '20%'\n        input_tokens_per_minute: 2500\n"
        "        tokens_per_day: 1000000\n",
    )
    group = config.groups[0]
    assert config.tenant_limits(group, "search") == {
        Dimension.REQUESTS: 6,
        Dimension.INPUT_TOKENS: 2_500,
        Dimension.TOKENS_PER_DAY: 1_000_000,
    }
    assert config.tenant_limits(group, "nobody") == {}
    assert TenantGroupLimits.model_validate({"requests_per_minute": "1%"}).limits(
        {Dimension.REQUESTS: 30}
    ) == {
        Dimension.REQUESTS: 1  # a share never closes a group to its tenant
    }
    quota = TenantGroupLimits.model_validate({"tokens_per_minute": " 12.5 % "})
    assert isinstance(quota.tokens_per_minute, Share)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "tenants:\n  - name: a\n    limits:\n      opus:\n        requests_per_minute: 5\n",
            "10: tenants[0].limits.opus: no group is called 'opus'",
        ),
        (
            "tenants:\n  - name: a\n    limits:\n      sonnet:\n        tokens_per_day: '10%'\n",
            "11: tenants[0].limits.sonnet.tokens_per_day: a share needs the group's own "
            "tokens_per_day, which 'sonnet' does not set",
        ),
        (
            "tenants:\n  - name: a\n    limits:\n      sonnet:\n        requests_per_minute: 'x'\n",
            "11: tenants[0].limits.sonnet.requests_per_minute: must be a whole number or a share",
        ),
        (
            "tenants:\n  - name: a\n    limits:\n      sonnet:\n"
            "        requests_per_minute: '0%'\n",
            "a share must be above 0% and at most 100%",
        ),
        ("tenants:\n  - name: a\n  - name: a\n", "9: tenants[1].name: duplicate tenant name 'a'"),
        (
            "tenants:\n  - name: a\n    keys: ['sk-ant-api03-secret']\n",
            "never the key itself",
        ),
        (
            "tenants:\n  - name: a\n    upstream_key: b\n",
            "9: tenants[0].upstream_key: 'b' is not one of upstream_keys (none is defined)",
        ),
        (
            "upstream_keys:\n  - name: b\n    env: B\n    file: /b\n",
            "upstream_keys[0]: give exactly one of 'env' and 'file'",
        ),
    ],
)
def test_a_tenant_mistake_is_one_line_naming_where(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(LimitsFileError) as raised:
        load(tmp_path, text)
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    where = f"limits.yaml:{problem}" if problem[0].isdigit() else problem
    assert where in message, message


def test_a_key_id_used_twice_is_refused(tmp_path: Path) -> None:
    made = new_key()
    text = (
        f"tenants:\n  - name: a\n    keys: ['{made.stored}']\n"
        f"  - name: b\n    keys: ['{made.stored}']\n"
    )
    with pytest.raises(LimitsFileError, match=r"tenants\[1\]\.keys\[0\]: key id \w+ is used twice"):
        load(tmp_path, text)


def tenant_config(tmp_path: Path) -> LimitsConfig:
    """sonnet at 30 RPM; tenant `small` may use 20% of it (6 RPM); `big` has no sub-quota."""
    return load(
        tmp_path,
        "tenants:\n  - name: small\n    limits:\n      sonnet:\n"
        "        requests_per_minute: '20%'\n  - name: big\n",
    )


async def test_a_tenant_needs_room_in_its_share_and_in_the_organisations_bucket(
    backend: LimitBackend, clock: FakeClock, tmp_path: Path
) -> None:
    limiter = Limiter(backend, tenant_config(tmp_path), clock)
    one = Cost(requests=1)

    async def admit(tenant: str) -> Admitted | Refused:
        admission = await limiter.admit(
            scope=SCOPE, model=MODEL, cost=one, max_wait=0, tenant=tenant
        )
        assert isinstance(admission, Admitted | Refused), admission
        return admission

    small = [await admit("small") for _ in range(10)]
    assert [isinstance(a, Admitted) for a in small] == [True] * 6 + [False] * 4
    refused = small[-1]
    assert isinstance(refused, Refused)
    assert (refused.bucket.tenant, refused.bucket.limit) == ("small", 6)
    first = small[0]
    assert isinstance(first, Admitted)
    assert [(b.tenant, round(level)) for b, level in zip(
        first.reservation.buckets, first.reservation.levels, strict=True
    ) if b.dimension is Dimension.REQUESTS] == [("", 29), ("small", 5)]  # fmt: skip
    # The small tenant's refusals took nothing from the organisation: 24 requests are left.
    big = [await admit("big") for _ in range(30)]
    assert sum(isinstance(a, Admitted) for a in big) == 24
    last = big[-1]
    assert isinstance(last, Refused)
    assert last.bucket.tenant == ""
    # With the organisation's bucket empty, the small tenant's own room does not help.
    clock.advance(0.0)
    assert isinstance(await admit("small"), Refused)


async def test_settling_refunds_the_tenants_share_with_the_organisations(
    backend: LimitBackend, clock: FakeClock, tmp_path: Path
) -> None:
    config = load(
        tmp_path,
        "tenants:\n  - name: small\n    limits:\n      sonnet:\n"
        "        input_tokens_per_minute: 1000\n",
    )
    limiter = Limiter(backend, config, clock)
    cost = Cost(requests=1, input_tokens=1_000)
    first = await limiter.admit(scope=SCOPE, model=MODEL, cost=cost, max_wait=0, tenant="small")
    assert isinstance(first, Admitted)
    refused = await limiter.admit(scope=SCOPE, model=MODEL, cost=cost, max_wait=0, tenant="small")
    assert isinstance(refused, Refused)
    assert refused.bucket.tenant == "small"
    limiter.settle(first, Cost(requests=1, input_tokens=100))  # it used a tenth
    if hasattr(backend, "flush"):
        await backend.flush()
    again = await limiter.admit(
        scope=SCOPE, model=MODEL, cost=Cost(requests=1, input_tokens=900), max_wait=0,
        tenant="small",
    )  # fmt: skip
    assert isinstance(again, Admitted)


async def test_output_is_never_reserved_past_the_tenants_own_output_limit(
    backend: LimitBackend, clock: FakeClock, tmp_path: Path
) -> None:
    """`max_tokens` alone never makes a request never fit, in a sub-quota either."""
    config = load(
        tmp_path,
        "    output_tokens_per_minute: 8000\n"
        "tenants:\n  - name: small\n    limits:\n      sonnet:\n"
        "        output_tokens_per_minute: 500\n",
    )
    limiter = Limiter(backend, config, clock)
    cost = limiter.cost_for(MODEL, 100, 64_000, tenant="small")
    assert cost.output_tokens <= 500
    assert limiter.cost_for(MODEL, 100, 64_000).output_tokens > 500
    admission = await limiter.admit(scope=SCOPE, model=MODEL, cost=cost, max_wait=0, tenant="small")
    assert isinstance(admission, Admitted)
