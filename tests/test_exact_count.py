"""`estimate: count_tokens`: the API's exact input count at admission, the heuristic as fallback."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from bench.ports import free_port
from gateway.app import EXACT_COUNTER
from gateway.cli import check_config
from gateway.config import Settings
from gateway.estimate import estimate_input_tokens
from gateway.limits import LimitsFileError, load_limits
from gateway.messages import COUNT_TOKENS_PATH
from gateway.services import METRICS
from gateway.startup import startup_for
from tests.conftest import TEST_KEY, GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream, Hang, RecordedRequest, Reply
from tests.test_admission import MODEL, limits_file

NO_WAIT = {"x-gateway-max-wait": "0"}
EXACT = "    input_tokens_per_minute: 1000\n    estimate: count_tokens\n"
FAST = EXACT + "    estimate_timeout_seconds: 0.2\n"
PLAIN_KEY = "plain-key-0123456789abcdef"  # no sk-ant- prefix: log redaction would not catch it
SMALL_BODY: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "Hi"}],
}


async def post(
    gateway: RunningGateway,
    body: dict[str, Any] | bytes | None = None,
    *,
    path: str = "/v1/messages",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    """POST a body (SMALL_BODY by default) through the gateway; status, JSON body, headers."""
    payload = body if isinstance(body, bytes) else json.dumps(body or SMALL_BODY).encode()
    sent = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01", **(headers or {})}
    sent["content-type"] = "application/json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + path, data=payload, headers=sent) as response,
    ):
        return response.status, json.loads(await response.read()), CIMultiDict(response.headers)


def estimates(gateway: RunningGateway, method: str, reason: str, group: str = "sonnet") -> float:
    """`gateway_input_estimates_total` for one label set (0 when never counted)."""
    labels = {"model_group": group, "method": method, "reason": reason}
    value = gateway.registry.get_sample_value("gateway_input_estimates_total", labels)
    return 0.0 if value is None else value


def count_calls(fake: FakeUpstream) -> list[RecordedRequest]:
    """The count_tokens requests the fake received, in order."""
    return [request for request in fake.requests if request.path == COUNT_TOKENS_PATH]


def message_calls(fake: FakeUpstream) -> list[RecordedRequest]:
    """The Messages requests the fake received, in order."""
    return [request for request in fake.requests if request.path == "/v1/messages"]


async def exact_gateway(
    make_gateway: GatewayFactory, tmp_path: Path, group: str = FAST, **top: Any
) -> RunningGateway:
    """A gateway whose `sonnet` group is `group` (exact mode by default), on a fake clock."""
    path = limits_file(tmp_path, group, **top)
    return await make_gateway(limits_file=str(path), clock=FakeClock())


async def test_exact_count_is_what_gets_reserved(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With 1,000 ITPM and a count of 600, the second request is refused with 400 left."""
    fake_upstream.count_tokens_input = 600
    fake_upstream.usage["input_tokens"] = 600
    gateway = await exact_gateway(make_gateway, tmp_path)
    first = (await post(gateway, headers=NO_WAIT))[0]
    status, _, headers = await post(gateway, headers=NO_WAIT)
    assert (200, 429) == (first, status)
    assert ("input_tokens", "400") == (
        headers["x-gateway-ratelimit-bucket"],
        headers["x-gateway-ratelimit-remaining"],
    )
    assert (2, 1, 2.0) == (
        fake_upstream.count_tokens_calls,
        len(message_calls(fake_upstream)),
        estimates(gateway, "count_tokens", "configured"),
    )


async def test_exact_count_over_the_bucket_never_fits(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A count of 5,000 against 1,000 ITPM is a 413, where the heuristic's few tokens fit."""
    fake_upstream.count_tokens_input = 5000
    gateway = await exact_gateway(make_gateway, tmp_path)
    status, body, _ = await post(gateway, headers=NO_WAIT)
    assert (413, "request_too_large") == (status, body["error"]["type"])
    assert "needs 5000 input_tokens" in body["error"]["message"]
    assert [] == message_calls(fake_upstream)


async def test_exact_count_is_not_scaled_by_the_learned_ratio(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Once the group has learned a 4x ratio, a count of 400 still reserves 400, not 1,600."""
    fake_upstream.count_tokens_input = 400
    fake_upstream.usage["input_tokens"] = 10_000  # far above the heuristic: the ratio clips to 4
    group = "    input_tokens_per_minute: 1000000\n    estimate: count_tokens\n"
    gateway = await exact_gateway(make_gateway, tmp_path, group)
    assert 200 == (await post(gateway))[0]
    fake_upstream.usage["input_tokens"] = 400
    assert 200 == (await post(gateway))[0]
    learned = gateway.registry.get_sample_value(
        "gateway_token_learned_input_ratio", {"model_group": "sonnet"}
    )
    actual_over_reserved = gateway.registry.get_sample_value(
        "gateway_token_estimate_ratio_sum", {"model_group": "sonnet"}
    )
    assert (4.0, 10_000 / 400 + 400 / 400) == (learned, actual_over_reserved)


async def test_calibration_keeps_learning_the_heuristic(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Exact counts do not feed calibration: the learned ratio is usage / raw heuristic."""
    fake_upstream.count_tokens_input = 500
    fake_upstream.usage["input_tokens"] = 19
    gateway = await exact_gateway(make_gateway, tmp_path)
    assert 200 == (await post(gateway))[0]
    learned = gateway.registry.get_sample_value(
        "gateway_token_learned_input_ratio", {"model_group": "sonnet"}
    )
    assert learned is not None
    assert math.isclose(19 / estimate_input_tokens(SMALL_BODY), learned)


@pytest.mark.parametrize(
    "answer",
    [
        Reply(500),
        Reply(429, headers={"retry-after": "5"}),
        Reply(200, body={"tokens": 3}),
        Reply(200, body=b"not json"),
    ],
    ids=["500", "429", "no_input_tokens", "not_json"],
)
async def test_failed_count_falls_back_to_the_heuristic_once(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path, answer: Reply
) -> None:
    """An error status or unusable body is tried once, then the heuristic admits the request."""
    fake_upstream.count_tokens_input = 5000  # would never fit: a 200 proves the fallback
    fake_upstream.script_count_tokens(answer)
    gateway = await exact_gateway(make_gateway, tmp_path)
    status = (await post(gateway, headers={**NO_WAIT, "x-api-key": PLAIN_KEY}))[0]
    assert (200, 1, 1.0) == (
        status,
        fake_upstream.count_tokens_calls,
        estimates(gateway, "heuristic", "error"),
    )
    fallbacks = [line for line in gateway.log_lines() if line["event"] == "exact_count_fallback"]
    assert [("sonnet", "error")] == [(line["group"], line["reason"]) for line in fallbacks]
    assert PLAIN_KEY not in gateway.logs.getvalue()


async def test_hung_count_times_out_to_the_heuristic(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A count that never answers is abandoned after estimate_timeout_seconds (0.2 s)."""
    fake_upstream.count_tokens_input = 5000
    fake_upstream.script_count_tokens(Hang())
    gateway = await exact_gateway(make_gateway, tmp_path)
    status = (await post(gateway, headers=NO_WAIT))[0]
    assert (200, 1, 1.0, 0.0) == (
        status,
        fake_upstream.count_tokens_calls,
        estimates(gateway, "heuristic", "timeout"),
        estimates(gateway, "count_tokens", "configured"),
    )


async def test_empty_count_tokens_bucket_falls_back_without_a_call(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With the count_tokens RPM used up, no count is made and the heuristic admits."""
    fake_upstream.count_tokens_input = 5000
    gateway = await exact_gateway(make_gateway, tmp_path, count_tokens_requests_per_minute=1)
    client_count = (await post(gateway, SMALL_BODY, path=COUNT_TOKENS_PATH, headers=NO_WAIT))[0]
    status = (await post(gateway, headers=NO_WAIT))[0]
    assert (200, 200, 1, 1.0) == (
        client_count,
        status,
        fake_upstream.count_tokens_calls,
        estimates(gateway, "heuristic", "rate_limited"),
    )


async def test_exact_count_is_charged_to_the_count_tokens_bucket(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The gateway's own count takes the one count_tokens request a minute allows."""
    fake_upstream.count_tokens_input = 10
    gateway = await exact_gateway(make_gateway, tmp_path, count_tokens_requests_per_minute=1)
    message = (await post(gateway, headers=NO_WAIT))[0]
    status, _, headers = await post(gateway, SMALL_BODY, path=COUNT_TOKENS_PATH, headers=NO_WAIT)
    assert (200, 429, "_count_tokens") == (message, status, headers["x-gateway-ratelimit-group"])


async def test_client_leaving_during_the_count_keeps_nothing_reserved(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disconnect mid-count gives the count_tokens slot back and takes no Messages RPM."""
    fake_upstream.count_tokens_input = 10
    fake_upstream.script_count_tokens(Hang())
    group = (
        "    requests_per_minute: 1\n    estimate: count_tokens\n    estimate_timeout_seconds: 30\n"
    )
    gateway = await exact_gateway(make_gateway, tmp_path, group, count_tokens_requests_per_minute=1)
    metrics, admitted = gateway.app[METRICS], asyncio.Event()
    queue_left = metrics.queue_left

    def left() -> None:
        queue_left()
        admitted.set()

    monkeypatch.setattr(metrics, "queue_left", left)
    leaving = asyncio.create_task(post(gateway))
    await asyncio.wait_for(fake_upstream.wait_until(lambda f: f.count_tokens_calls == 1), 5)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.wait_for(admitted.wait(), 5)  # admit() has finished, refunds included
    client_count = (await post(gateway, SMALL_BODY, path=COUNT_TOKENS_PATH, headers=NO_WAIT))[0]
    message = (await post(gateway, headers=NO_WAIT))[0]
    assert (200, 200, 1.0) == (
        client_count,
        message,
        estimates(gateway, "heuristic", "rate_limited"),
    )
    assert 1 == len(message_calls(fake_upstream))


async def test_clients_own_count_tokens_passes_through_unchanged(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A client's count_tokens call is relayed byte for byte and makes no estimate."""
    fake_upstream.count_tokens_input = 77
    gateway = await exact_gateway(make_gateway, tmp_path)
    raw = b'{"model": "claude-sonnet-4-6",  "messages": [{"role":"user","content":"Hi"}], "x": 1}'
    status, body, _ = await post(gateway, raw, path=COUNT_TOKENS_PATH)
    assert (200, {"input_tokens": 77}, [raw]) == (
        status,
        body,
        [request.body for request in count_calls(fake_upstream)],
    )
    assert 0.0 == estimates(gateway, "count_tokens", "configured")


async def test_only_counted_fields_are_sent(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The count body keeps what count_tokens accepts and drops generation settings."""
    fake_upstream.count_tokens_input = 50
    counted = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the weather?"}],
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "ex"}],
    }
    dropped = {
        "max_tokens": 2048,
        "stream": False,
        "temperature": 1.0,
        "top_k": 5,
        "metadata": {"user_id": "u1"},
        "stop_sequences": ["END"],
        "service_tier": "auto",
    }
    gateway = await exact_gateway(make_gateway, tmp_path)
    assert 200 == (await post(gateway, {**counted, **dropped}))[0]
    [count] = count_calls(fake_upstream)
    assert counted == count.json()


@pytest.mark.parametrize(
    ("credential", "value"),
    [("x-api-key", PLAIN_KEY), ("authorization", f"Bearer {PLAIN_KEY}")],
)
async def test_credential_version_and_beta_headers_are_forwarded(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    credential: str,
    value: str,
) -> None:
    """The count carries the client's credential, version, betas and query; nothing else."""
    fake_upstream.count_tokens_input = 50
    gateway = await exact_gateway(make_gateway, tmp_path)
    sent = {
        "anthropic-version": "2026-10-21",
        "anthropic-beta": "token-efficient-tools-2025-02-19,fast-mode-2026-02-01",
        "anthropic-workspace-id": "wrkspc_01",
        "x-stainless-lang": "python",
        "x-stainless-retry-count": "0",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/messages?beta=true",
            json=SMALL_BODY,
            headers={credential: value, **sent},
        ) as response,
    ):
        assert 200 == response.status
    [count] = count_calls(fake_upstream)
    forwarded = {name.lower() for name in count.headers}
    assert (COUNT_TOKENS_PATH, "beta=true") == (count.path, count.query_string)
    assert value == count.headers[credential]
    assert {name: count.headers.get(name) for name in sent} == {
        **{name: sent[name] for name in sent if name.startswith("anthropic-")},
        "x-stainless-lang": None,
        "x-stainless-retry-count": None,
    }
    assert ({"x-api-key", "authorization"} - {credential}).isdisjoint(forwarded)
    assert "application/json" == count.headers["content-type"]
    assert PLAIN_KEY not in gateway.logs.getvalue()


async def test_heuristic_groups_make_no_count_call(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A group without `estimate` uses the heuristic and never calls count_tokens."""
    gateway = await exact_gateway(make_gateway, tmp_path, "    input_tokens_per_minute: 1000\n")
    assert 200 == (await post(gateway))[0]
    assert (0, 1.0) == (
        fake_upstream.count_tokens_calls,
        estimates(gateway, "heuristic", "configured"),
    )


async def test_legacy_complete_keeps_the_heuristic(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A `/v1/complete` request has no messages to count: no call, the heuristic admits it."""
    gateway = await exact_gateway(make_gateway, tmp_path)
    body = {"model": MODEL, "prompt": "\n\nHuman: Hi\n\nAssistant:", "max_tokens_to_sample": 5}
    status = (await post(gateway, body, path="/v1/complete"))[0]
    assert (200, 0, 1.0) == (
        status,
        fake_upstream.count_tokens_calls,
        estimates(gateway, "heuristic", "configured"),
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("estimate: exact", "groups[0].estimate: must be 'heuristic' or 'count_tokens'"),
        ("estimate_timeout_seconds: 0", "groups[0].estimate_timeout_seconds: must be > 0"),
        ("estimate_timeout_seconds: -1.5", "groups[0].estimate_timeout_seconds: must be > 0"),
        ("estimate_timeout_seconds: soon", "groups[0].estimate_timeout_seconds: must be a number"),
        (
            "estimate_timeout_seconds: .inf",
            "groups[0].estimate_timeout_seconds: must be a finite number",
        ),
    ],
)
def test_bad_estimate_settings_name_the_line(tmp_path: Path, line: str, problem: str) -> None:
    """Bad `estimate` values fail like every limits-file mistake: file, line, field, rule."""
    path = tmp_path / "limits.yaml"
    path.write_text(f"groups:\n  - name: sonnet\n    models: ['claude-*']\n    {line}\n")
    with pytest.raises(LimitsFileError) as caught:
        load_limits(path)
    assert f"{path}:4: {problem}" == str(caught.value)


def test_estimate_defaults_to_the_heuristic_and_one_second(tmp_path: Path) -> None:
    """A group that says nothing estimates with the heuristic; the count timeout is 1 s."""
    path = tmp_path / "limits.yaml"
    path.write_text("groups:\n  - name: sonnet\n    models: ['claude-*']\n")
    group = load_limits(path).groups[0]
    assert ("heuristic", 1.0) == (group.estimate, group.estimate_timeout_seconds)


def test_check_config_shows_each_groups_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints the estimate method per group, and the timeout of exact ones."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "groups:\n"
        "  - name: sonnet\n    models: ['claude-sonnet-*']\n    requests_per_minute: 5\n"
        "    estimate: count_tokens\n    estimate_timeout_seconds: 0.5\n"
        "  - name: haiku\n    models: ['claude-haiku-*']\n"
    )
    settings = Settings(_env_file=None, limits_file=path)  # type: ignore[call-arg]
    assert 0 == check_config(startup_for(settings))
    lines = capsys.readouterr().out.splitlines()
    assert [
        "  sonnet [claude-sonnet-*]: requests=5, estimate=count_tokens, "
        "estimate_timeout_seconds=0.5",
        "  haiku [claude-haiku-*]: estimate=heuristic",
    ] == [line for line in lines if line.startswith(("  sonnet ", "  haiku "))]


async def test_unreachable_count_gives_its_count_tokens_slot_back(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A count that never reached the API (connection refused) refunds its count_tokens
    request: the client's own count_tokens call still gets the one a minute allows."""
    gateway = await exact_gateway(make_gateway, tmp_path, count_tokens_requests_per_minute=1)
    counter = gateway.app[EXACT_COUNTER]
    monkeypatch.setattr(counter, "_base", f"http://127.0.0.1:{free_port()}")  # nothing listens
    message = (await post(gateway, headers=NO_WAIT))[0]
    client_count = (await post(gateway, SMALL_BODY, path=COUNT_TOKENS_PATH, headers=NO_WAIT))[0]
    assert (200, 200, 1.0) == (message, client_count, estimates(gateway, "heuristic", "error"))
    assert 1 == fake_upstream.count_tokens_calls  # the client's own: the gateway's never arrived
