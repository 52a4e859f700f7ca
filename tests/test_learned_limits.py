"""Zero-config limits: RPM/ITPM/OTPM learned from the API's `-limit` headers, then enforced."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.limits import Admitted, Cost, Dimension, Limiter, LimitsConfig, MemoryBackend
from gateway.limits.learned_limits import MAX_MODEL_GROUPS, LearnedLimits
from tests.conftest import GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.test_admission import MODEL, limits_file, send

NO_WAIT = {"x-gateway-max-wait": "0"}


@pytest.fixture(autouse=True)
def small_api_limits(fake_upstream: FakeUpstream) -> None:
    """The fake reports 2 RPM, 100,000 ITPM and 10,000 OTPM on every answer."""
    fake_upstream.rate_limit_headers = {
        "anthropic-ratelimit-requests-limit": "2",
        "anthropic-ratelimit-input-tokens-limit": "100000",
        "anthropic-ratelimit-output-tokens-limit": "10000",
    }


POOL = "claude-sonnet-4"
"""The pool MODEL (claude-sonnet-4-6) draws on: learned groups are named after it."""


def learned_lines(gateway: RunningGateway) -> list[dict[str, object]]:
    """The `limits.learned` log lines, without timestamps and levels."""
    keep = ("event", "group", "requests_per_minute", "input_tokens_per_minute",
            "output_tokens_per_minute")  # fmt: skip
    return [
        {key: line[key] for key in keep if key in line}
        for line in gateway.log_lines()
        if line.get("event") == "limits.learned"
    ]


async def statuses(gateway: RunningGateway, count: int, model: str = MODEL) -> list[int]:
    """Statuses of `count` requests that may not queue."""
    return [(await send(gateway.url, model=model, headers=NO_WAIT))[0] for _ in range(count)]


async def test_without_a_file_each_model_learns_and_enforces_the_api_limits(
    make_gateway: GatewayFactory,
) -> None:
    """The first request passes unlimited; then 2 RPM (less 2% headroom) is enforced on the
    model's pool (`claude-sonnet-4` for claude-sonnet-4-6)."""
    gateway = await make_gateway(learn_limits=True, clock=FakeClock())
    assert [200, 200] == await statuses(gateway, 2)
    status, body, headers = await send(gateway.url, headers=NO_WAIT)
    assert (429, POOL, "requests", "2") == (
        status,
        headers["x-gateway-ratelimit-group"],
        headers["x-gateway-ratelimit-bucket"],
        headers["x-gateway-ratelimit-limit"],
    )
    assert f"'{POOL}' limit of 2 requests per minute" in body["error"]["message"]
    assert [{"event": "limits.learned", "group": POOL, "requests_per_minute": 2,
             "input_tokens_per_minute": 100000, "output_tokens_per_minute": 10000}
            ] == learned_lines(gateway)  # fmt: skip


async def test_an_alias_and_its_dated_id_share_one_learned_pool(
    make_gateway: GatewayFactory,
) -> None:
    """Alternating `claude-sonnet-4-5` and its dated id draws on one learned 2 RPM, not two."""
    gateway = await make_gateway(learn_limits=True, clock=FakeClock())
    models = ["claude-sonnet-4-5", "claude-sonnet-4-5-20250929"] * 2
    seen = [(await send(gateway.url, model=model, headers=NO_WAIT))[0] for model in models]
    assert [200, 200, 429, 429] == seen


async def test_each_model_learns_its_own_group(make_gateway: GatewayFactory) -> None:
    """One model at its learned limit leaves another model's learned buckets alone."""
    gateway = await make_gateway(learn_limits=True, clock=FakeClock())
    sonnet = await statuses(gateway, 3)
    opus = await statuses(gateway, 3, model="claude-opus-4-1")
    assert ([200, 200, 429], [200, 200, 429]) == (sonnet, opus)


async def test_file_group_with_learn_limits_enforces_what_it_learned(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A group with `learn_limits: true` and no limits holds exactly 2 RPM after learning."""
    path = limits_file(tmp_path, "    learn_limits: true\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    assert [200, 200, 200, 429] == await statuses(gateway, 4)


async def test_setting_makes_every_file_group_learn(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """GATEWAY_LEARN_LIMITS=true makes a file group without limits learn them too."""
    path = limits_file(tmp_path, "    cache_reads_count: false\n")
    gateway = await make_gateway(limits_file=str(path), learn_limits=True, clock=FakeClock())
    assert [200, 200, 200, 429] == await statuses(gateway, 4)


async def test_configured_limit_wins_over_the_learned_one(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A group's own requests_per_minute (3) stays in force when the API reports 1."""
    fake_upstream.rate_limit_headers["anthropic-ratelimit-requests-limit"] = "1"
    path = limits_file(tmp_path, "    learn_limits: true\n    requests_per_minute: 3\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    assert [200, 200, 200, 429] == await statuses(gateway, 4)


async def test_without_learning_the_limit_headers_change_nothing(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A group that sets no limits and does not learn stays unlimited."""
    path = limits_file(tmp_path, "    cache_reads_count: false\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    assert ([200] * 4, []) == (await statuses(gateway, 4), learned_lines(gateway))


async def test_error_answers_teach_nothing(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A 4xx answer (say, an unknown model) does not teach, so cannot take a learned slot."""
    fake_upstream.script(Reply(404), Reply(404), Reply(404))
    gateway = await make_gateway(learn_limits=True, clock=FakeClock())
    assert ([404, 404, 404], []) == (await statuses(gateway, 3), learned_lines(gateway))


async def test_per_model_groups_are_bounded() -> None:
    """Past MAX_MODEL_GROUPS learned models, a new model passes unlimited; learned ones stay."""
    clock = FakeClock()
    limiter = Limiter(MemoryBackend(clock), LimitsConfig(), clock, learn_limits=True)
    for index in range(MAX_MODEL_GROUPS + 1):
        limiter.learn_limits(f"model-{index}", {Dimension.REQUESTS: 10})
    extra = await limiter.admit(scope="s", model="model-50", cost=Cost(1), max_wait=0)
    known = await limiter.admit(scope="s", model="model-0", cost=Cost(1), max_wait=0)
    assert (False, True) == (
        isinstance(extra, Admitted),
        isinstance(known, Admitted) and len(known.reservation.buckets) == 1,
    )


async def test_model_names_become_safe_group_names() -> None:
    """A model name with characters a bucket key may not hold is folded to a safe group name."""
    clock = FakeClock()
    limiter = Limiter(MemoryBackend(clock), LimitsConfig(), clock, learn_limits=True)
    decision = await limiter.admit(
        scope="s", model="anthropic.claude-v2:1_x", cost=Cost(1), max_wait=0
    )
    assert "anthropic.claude-v2-1-x" == getattr(decision, "group", None)


def test_learned_limits_keep_only_positive_changes() -> None:
    """Zero limits are ignored, and learning the same limits again reports no change."""
    table = LearnedLimits(max_groups=2)
    first = table.learn("g", {Dimension.REQUESTS: 5, Dimension.INPUT_TOKENS: 0})
    again = table.learn("g", {Dimension.REQUESTS: 5})
    assert (True, False, {Dimension.REQUESTS: 5}) == (first, again, table.limits("g"))
