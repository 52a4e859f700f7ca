"""The limiter on the wire: queue, 429 with honest retry-after, never-fits, scopes, Redis gone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from bench.ports import free_port
from gateway.admission import rate_limited
from gateway.identity import new_key
from gateway.limits import BucketSpec, Dimension, Refused
from tests.conftest import TEST_KEY, TEST_SCOPE, GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer

MODEL = "claude-sonnet-4-6"
NO_WAIT = {"x-gateway-max-wait": "0"}


def limits_file(tmp_path: Path, group: str, **top: Any) -> Path:
    """Write a limits file with one `sonnet` group whose body is `group` (YAML lines)."""
    extra = "".join(f"{key}: {value}\n" for key, value in top.items())
    text = (
        "queue:\n  max_wait_seconds: 60\nheadroom: 0\n"
        f"{extra}groups:\n  - name: sonnet\n    models: ['claude-sonnet-*']\n{group}"
    )
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    return path


async def send(
    url: str,
    *,
    key: str = TEST_KEY,
    model: str = MODEL,
    max_tokens: int = 10,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    """POST one small Messages request; return status, JSON body and headers."""
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    all_headers = {"x-api-key": key, "anthropic-version": "2023-06-01", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/messages", json=body, headers=all_headers) as response,
    ):
        return response.status, json.loads(await response.read()), CIMultiDict(response.headers)


async def test_over_the_limit_without_waiting_is_429_with_honest_headers(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Past 2 RPM a request that may not wait gets a 429 naming the bucket, retry-after 30 s."""
    clock = FakeClock()
    path = limits_file(tmp_path, "    requests_per_minute: 2\n")
    gateway = await make_gateway(limits_file=str(path), clock=clock)
    assert [200, 200] == [(await send(gateway.url))[0] for _ in range(2)]
    status, body, headers = await send(gateway.url, headers={"x-gateway-max-wait": "0"})
    assert (429, "rate_limit_error") == (status, body["error"]["type"])
    assert {
        "retry-after": "30",
        "x-gateway-ratelimit-group": "sonnet",
        "x-gateway-ratelimit-bucket": "requests",
        "x-gateway-ratelimit-limit": "2",
        "x-gateway-ratelimit-remaining": "0",
    } == {name: headers[name] for name in (
        "retry-after", "x-gateway-ratelimit-group", "x-gateway-ratelimit-bucket",
        "x-gateway-ratelimit-limit", "x-gateway-ratelimit-remaining")}  # fmt: skip
    assert 2 == len(fake_upstream.requests)
    clock.advance(30)
    assert 200 == (await send(gateway.url, headers={"x-gateway-max-wait": "0"}))[0]


async def test_request_that_fits_after_a_wait_is_queued_then_sent(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A request over the limit within the queue cap waits its turn, then goes."""
    clock = FakeClock()
    path = limits_file(tmp_path, "    requests_per_minute: 2\n")
    gateway = await make_gateway(limits_file=str(path), clock=clock)
    for _ in range(2):
        await send(gateway.url)
    status, _, headers = await send(gateway.url)
    assert (200, "30000") == (status, headers["x-gateway-queue-wait-ms"])
    assert 3 == len(fake_upstream.requests)
    assert [30.0] == [round(s, 3) for s in clock.sleeps if s > 0]


async def test_wait_past_the_queue_cap_is_rejected_without_debit(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """With max_wait 10 s a 30 s wait is refused, and the refusal took nothing from the bucket."""
    clock = FakeClock()
    path = limits_file(tmp_path, "    requests_per_minute: 2\n")
    gateway = await make_gateway(limits_file=str(path), clock=clock)
    for _ in range(2):
        await send(gateway.url)
    refused = [(await send(gateway.url, headers={"x-gateway-max-wait": "10"}))[0] for _ in range(3)]
    clock.advance(30)
    assert ([429, 429, 429], 200) == (
        refused,
        (await send(gateway.url, headers={"x-gateway-max-wait": "0"}))[0],
    )


async def test_max_tokens_above_the_output_limit_is_served_by_default(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The API charges output as generated: max_tokens 5x the OTPM limit is admitted, on a
    reservation the limit can hold."""
    path = limits_file(tmp_path, "    output_tokens_per_minute: 1000\n")
    gateway = await make_gateway(limits_file=str(path))
    status, _, _ = await send(gateway.url, max_tokens=5000)
    assert (200, 1) == (status, len(fake_upstream.requests))


async def test_request_larger_than_a_bucket_never_fits(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With `output_reservation: max_tokens` (an upstream that pre-charges it), max_tokens
    above the OTPM limit is refused at once with 413 naming the limit."""
    path = limits_file(
        tmp_path, "    output_tokens_per_minute: 1000\n    output_reservation: max_tokens\n"
    )
    gateway = await make_gateway(limits_file=str(path))
    status, body, headers = await send(gateway.url, max_tokens=5000)
    assert (413, "request_too_large", "false") == (
        status,
        body["error"]["type"],
        headers["x-should-retry"],
    )
    assert "'sonnet' limit is 1000 output_tokens per minute" in body["error"]["message"]
    assert [] == fake_upstream.requests


async def test_unknown_model_is_rejected_when_configured(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A model no group matches gets a 400 naming it when unmatched_models is reject."""
    path = limits_file(tmp_path, "    requests_per_minute: 2\n", unmatched_models="reject")
    gateway = await make_gateway(limits_file=str(path))
    status, body, _ = await send(gateway.url, model="claude-opus-4-1")
    assert (400, "invalid_request_error") == (status, body["error"]["type"])
    assert "'claude-opus-4-1'" in body["error"]["message"]


async def test_unknown_model_passes_when_configured(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """With unmatched_models pass, an unlisted model is forwarded without limits."""
    path = limits_file(tmp_path, "    requests_per_minute: 1\n", unmatched_models="pass")
    gateway = await make_gateway(limits_file=str(path))
    statuses = [(await send(gateway.url, model="claude-opus-4-1"))[0] for _ in range(3)]
    assert [200, 200, 200] == statuses


async def test_with_scope_key_each_api_key_has_its_own_buckets(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """With `scope: key`, one key exhausting its limit does not touch another key's budget."""
    path = limits_file(tmp_path, "    requests_per_minute: 1\n", scope="key")
    gateway = await make_gateway(limits_file=str(path))
    no_wait = {"x-gateway-max-wait": "0"}
    first = (await send(gateway.url, headers=no_wait))[0]
    same_key = (await send(gateway.url, headers=no_wait))[0]
    other_key = (await send(gateway.url, key="sk-ant-other-key", headers=no_wait))[0]
    assert (200, 429, 200) == (first, same_key, other_key)


async def test_keys_of_one_organization_share_its_buckets(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """By default a key is charged to its organisation: a second key of the same one (the
    API names it in `anthropic-organization-id`) finds the budget spent, before and after
    its own organisation is known."""
    path = limits_file(tmp_path, "    requests_per_minute: 2\n")
    gateway = await make_gateway(limits_file=str(path))
    no_wait = {"x-gateway-max-wait": "0"}
    first = (await send(gateway.url, headers=no_wait))[0]
    unknown_key = (await send(gateway.url, key="sk-ant-second-key", headers=no_wait))[0]
    known_key = (await send(gateway.url, key="sk-ant-second-key", headers=no_wait))[0]
    assert (200, 200, 429) == (first, unknown_key, known_key)


async def test_a_key_of_another_organization_gets_its_own_buckets(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A key the API names in another organisation is charged there once that is known;
    before, it was charged to the assumed (first) organisation."""
    path = limits_file(tmp_path, "    requests_per_minute: 2\n")
    gateway = await make_gateway(limits_file=str(path))
    no_wait = {"x-gateway-max-wait": "0"}
    first = (await send(gateway.url, headers=no_wait))[0]
    fake_upstream.organization_id = "org-two"  # every later answer names another one
    other = [(await send(gateway.url, key="sk-ant-k2", headers=no_wait))[0] for _ in range(4)]
    original = (await send(gateway.url, headers=no_wait))[0]
    # k2's first request took the assumed organisation's second slot; then its own two
    assert (200, [200, 200, 200, 429], 429) == (first, other, original)


async def test_bad_max_wait_header_is_a_clear_400(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """x-gateway-max-wait must be a non-negative number of seconds."""
    path = limits_file(tmp_path, "    requests_per_minute: 10\n")
    gateway = await make_gateway(limits_file=str(path))
    status, body, _ = await send(gateway.url, headers={"x-gateway-max-wait": "soon"})
    assert (400, "x-gateway-max-wait: must be a number of seconds >= 0, got 'soon'.") == (
        status,
        body["error"]["message"],
    )


async def test_upstream_failure_gives_the_reservation_back(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A request whose upstream is unreachable gets 502 and its RPM slot back."""
    path = limits_file(tmp_path, "    requests_per_minute: 1\n")
    gateway = await make_gateway(
        limits_file=str(path), upstream_url="http://127.0.0.1:1", clock=FakeClock()
    )
    no_wait = {"x-gateway-max-wait": "0"}
    statuses = [(await send(gateway.url, headers=no_wait))[0] for _ in range(3)]
    assert [502, 502, 502] == statuses


async def readiness(url: str) -> tuple[int, dict[str, Any]]:
    """GET /readyz: status and JSON body."""
    async with aiohttp.ClientSession() as session, session.get(url + "/readyz") as ready:
        return ready.status, await ready.json()


def degraded_gauge(gateway: RunningGateway) -> float | None:
    """`gateway_limiter_degraded` as the gateway's registry reads it now."""
    return gateway.registry.get_sample_value("gateway_limiter_degraded")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("fail_open", (200, 200, "degraded")), ("fail_closed", (503, 503, "not_ready"))],
)
async def test_redis_gone_follows_the_failure_policy(
    make_gateway: GatewayFactory, tmp_path: Path, policy: str, expected: tuple[int, int, str]
) -> None:
    """With Redis unreachable, fail_open admits locally and stays ready (degraded: body,
    metric, one log line); fail_closed answers 503 and is not ready (it could serve none)."""
    path = limits_file(tmp_path, "    requests_per_minute: 100\n", redis_failure=policy)
    gateway = await make_gateway(
        limits_file=str(path), redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    status, body, _ = await send(gateway.url)
    await send(gateway.url)
    ready_status, readiness_body = await readiness(gateway.url)
    if status == 503:
        assert "overloaded_error" == body["error"]["type"]
    degraded_lines = [line for line in gateway.log_lines() if line["event"] == "limits.degraded"]
    assert (*expected, False, 1.0, 1) == (
        status,
        ready_status,
        readiness_body["status"],
        readiness_body["redis"],
        degraded_gauge(gateway),
        len(degraded_lines),
    )


async def refuse_writes(admin: Any, fault: str) -> None:
    """Make the real Redis refuse every write: full (`maxmemory` under `noeviction`) or a
    read-only replica (of a master that does not exist)."""
    if fault == "oom":
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", 1)
    else:
        await admin.execute_command("REPLICAOF", "127.0.0.1", free_port())


async def accept_writes(admin: Any, fault: str) -> None:
    """Undo `refuse_writes`."""
    if fault == "oom":
        await admin.config_set("maxmemory", 0)
    else:
        await admin.execute_command("REPLICAOF", "NO", "ONE")


@pytest.mark.redis
@pytest.mark.parametrize("fault", ["oom", "readonly"])
@pytest.mark.parametrize(
    ("policy", "expected"),
    [("fail_open", (200, 200, "degraded")), ("fail_closed", (503, 503, "not_ready"))],
)
async def test_a_redis_refusing_writes_is_a_redis_failure(
    make_gateway: GatewayFactory,
    redis_server: RedisServer,
    redis_admin: Any,
    tmp_path: Path,
    *,
    fault: str,
    policy: str,
    expected: tuple[int, int, str],
) -> None:
    """A Redis that answers PING but refuses writes (OOM, READONLY) fails readiness and the
    limiter like an unreachable one; once it accepts writes again, the next probe recovers."""
    path = limits_file(tmp_path, "    requests_per_minute: 100\n", redis_failure=policy)
    gateway = await make_gateway(limits_file=str(path), redis_url=redis_server.url)
    before = await readiness(gateway.url)
    await refuse_writes(redis_admin, fault)
    try:
        status, _, _ = await send(gateway.url)
        during = await readiness(gateway.url)
        gauge_during = degraded_gauge(gateway)
    finally:
        await accept_writes(redis_admin, fault)
    after = await readiness(gateway.url)
    served_after, _, _ = await send(gateway.url)
    assert (
        (200, "ready"),
        (*expected, False, 1.0),
        (200, "ready", True, 0.0, 200),
    ) == (
        (before[0], before[1]["status"]),
        (status, during[0], during[1]["status"], during[1]["redis"], gauge_during),
        (after[0], after[1]["status"], after[1]["redis"], degraded_gauge(gateway), served_after),
    )


@pytest.mark.redis
async def test_redis_keys_hold_a_hash_of_the_key_never_the_key(
    make_gateway: GatewayFactory, redis_server: RedisServer, redis_admin: Any, tmp_path: Path
) -> None:
    """With `scope: key`, through a real Redis, bucket keys carry a short hash of the API key
    and one hash tag."""
    path = limits_file(
        tmp_path,
        "    requests_per_minute: 100\n    input_tokens_per_minute: 100000\n"
        "    output_tokens_per_minute: 10000\n",
        scope="key",
    )
    gateway = await make_gateway(limits_file=str(path), redis_url=redis_server.url)
    assert 200 == (await send(gateway.url))[0]
    keys = sorted(key.decode() for key in await redis_admin.keys("*"))
    ttls = [await redis_admin.pttl(key) for key in keys]
    tag = f"cgw:{{{TEST_SCOPE}:sonnet}}"
    assert [f"{tag}:input_tokens", f"{tag}:output_tokens", f"{tag}:requests"] == keys
    assert all(0 < ttl <= 61_000 for ttl in ttls), ttls
    assert not any(TEST_KEY in key or "sk-ant" in key for key in keys)


async def test_one_request_per_minute_survives_the_default_headroom(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """`requests_per_minute: 1` with 2% headroom admits the first request, then one per 61.2 s."""
    path = limits_file(tmp_path, "    requests_per_minute: 1\n", headroom=0.02)
    path.write_text(path.read_text().replace("headroom: 0\n", ""))
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    first, _, _ = await send(gateway.url)
    second, _, headers = await send(gateway.url, headers={"x-gateway-max-wait": "0"})
    assert (200, 429, "62", "61225") == (
        first,
        second,
        headers["retry-after"],
        headers["x-gateway-ratelimit-retry-after-ms"],
    )


async def test_a_cached_prompt_larger_than_the_input_limit_is_served(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A 50k-token prompt cached behind a breakpoint, under 30k ITPM: the API charges only
    what follows the breakpoint, so the gateway reserves that and serves it, again and again."""
    fake_upstream.usage.update(input_tokens=100, cache_read_input_tokens=50_000)
    path = limits_file(tmp_path, "    input_tokens_per_minute: 30000\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    body = {
        "model": MODEL,
        "max_tokens": 100,
        "system": [{"type": "text", "text": "x" * 200_000, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "y" * 400}],
    }
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01", **NO_WAIT}
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(5):
            async with session.post(gateway.url + "/v1/messages", json=body, headers=headers) as r:
                statuses.append(r.status)
    assert [200] * 5 == statuses


@pytest.mark.parametrize(
    ("wait", "retry_after", "retry_after_ms", "should_retry"),
    [
        (0.001, "1", "1", None),
        (1.2, "2", "1200", None),
        (1.2345, "2", "1235", None),
        (60.0, "60", "60000", None),
        (60.2, "61", "60200", "false"),
    ],
)
def test_a_refusal_is_an_honest_429(
    wait: float, retry_after: str, retry_after_ms: str, should_retry: str | None
) -> None:
    """retry-after is the wait in whole seconds rounded up (at least 1), the -ms header the
    wait in milliseconds rounded up, and x-should-retry: false only past the SDK's 60 s."""
    rpm = BucketSpec.create("org", "sonnet", Dimension.REQUESTS, 60)
    error = rate_limited(Refused(rpm, wait, 0.4))
    assert (429, retry_after, retry_after_ms, should_retry, "0") == (
        error.status,
        error.headers["retry-after"],
        error.headers["x-gateway-ratelimit-retry-after-ms"],
        error.headers.get("x-should-retry"),
        error.headers["x-gateway-ratelimit-remaining"],
    )


async def test_a_tenants_sub_quota_shows_on_every_answer_and_names_itself_when_full(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Every admitted answer carries what the tenant has left; its 429 names the tenant and
    its limit, while another tenant of the organisation is still served."""
    small, big = new_key(), new_key()
    path = limits_file(
        tmp_path,
        "    requests_per_minute: 30\n"
        f"tenants:\n  - name: small\n    keys: ['{small.stored}']\n"
        "    limits:\n      sonnet:\n        requests_per_minute: '10%'\n"
        f"  - name: big\n    keys: ['{big.stored}']\n",
    )
    gateway = await make_gateway(
        limits_file=str(path), upstream_api_key="sk-ant-upstream", clock=FakeClock()
    )
    no_wait = {"x-gateway-max-wait": "0"}
    answers = [await send(gateway.url, key=small.key, headers=no_wait) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 429]
    assert [h.get("x-gateway-ratelimit-tenant-requests-remaining") for _, _, h in answers] == [
        "2", "1", "0", None,
    ]  # fmt: skip
    assert answers[0][2]["x-gateway-ratelimit-tenant-requests-limit"] == "3"
    _, body, headers = answers[-1]
    assert headers["x-gateway-ratelimit-tenant"] == "small"
    assert "tenant 'small''s 'sonnet' limit of 3 requests" in body["error"]["message"]
    status, _, headers = await send(gateway.url, key=big.key)
    assert status == 200
    assert "x-gateway-ratelimit-tenant-requests-limit" not in headers
    assert len(fake_upstream.requests) == 4


async def test_a_tenants_spend_budget_shows_on_every_answer_and_refuses_once_spent(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Charged from each answer's real usage at the file's prices; once the rest cannot cover
    a request's estimate, a 429 names the budget and when it resets, and nothing goes
    upstream. A model without a price cannot be counted: 403."""
    team = new_key()
    path = limits_file(
        tmp_path,
        "    requests_per_minute: 1000\n"
        "prices:\n  - models: ['claude-sonnet-*']\n    input: 1000\n    output: 1000\n"
        "unmatched_models: pass\n"
        f"tenants:\n  - name: team\n    keys: ['{team.stored}']\n"
        "    budgets:\n      usd_per_day: 0.2\n",
    )
    gateway = await make_gateway(limits_file=str(path), upstream_api_key="sk-ant-upstream")
    usage = fake_upstream.usage
    per_answer = (usage["input_tokens"] + usage["output_tokens"]) * 1000 / 1_000_000
    served = []
    for _ in range(50):
        status, body, headers = await send(gateway.url, key=team.key)
        if status != 200:
            break
        served.append(headers)
    assert status == 429
    assert headers["x-gateway-ratelimit-bucket"] == "usd_per_day"
    assert headers["x-gateway-ratelimit-tenant"] == "team"
    assert "tenant 'team''s daily spend budget of $0.20" in body["error"]["message"]
    assert int(headers["retry-after"]) <= 86_400
    assert len(served) == len(fake_upstream.requests)
    assert len(served) * per_answer <= 0.2 + per_answer  # at most one answer past the line
    assert served[0]["x-gateway-ratelimit-tenant-usd-per-day-limit"] == "0.200000"
    remaining = [float(h["x-gateway-ratelimit-tenant-usd-per-day-remaining"]) for h in served]
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[0] == 0.2  # before the first answer was charged
    status, body, _ = await send(gateway.url, key=team.key, model="claude-haiku-4-5")
    assert status == 403
    assert "cannot be counted against this key's budget" in body["error"]["message"]
