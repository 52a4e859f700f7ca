"""Metric values after scripted traffic: exact counters per outcome, the exposition, bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.metrics import MAX_MODELS, OTHER, GatewayMetrics
from tests.conftest import TEST_KEY, GatewayFactory
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream, Hang, Reply, Stream
from tests.support.redis_server import RedisServer

MODEL = "claude-sonnet-4-6"
API_HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
NO_WAIT = {"x-gateway-max-wait": "0"}
Labels = tuple[tuple[str, str], ...]


def limits_file(tmp_path: Path, group: str) -> Path:
    """A limits file with one `sonnet` group (body `group`), 60 s queue cap, no headroom."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "queue:\n  max_wait_seconds: 60\nheadroom: 0\n"
        f"groups:\n  - name: sonnet\n    models: ['claude-sonnet-*']\n{group}"
    )
    return path


async def post(
    url: str,
    *,
    model: str = MODEL,
    max_tokens: int = 10,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> int:
    """POST one Messages request (or a raw body) and return the status after reading it all."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": stream,
    }
    async with aiohttp.ClientSession() as session:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with session.post(
            url + "/v1/messages", headers={**API_HEADERS, **(headers or {})}, **kwargs
        ) as response:
            await response.read()
            return response.status


async def get(url: str, path: str) -> tuple[int, str]:
    """GET `path`; return the status and the body text."""
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status, await response.text()


def samples(registry: CollectorRegistry, name: str) -> dict[Labels, float]:
    """Every sample called `name` in the registry, keyed by its sorted label pairs."""
    found: dict[Labels, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests_by(registry: CollectorRegistry, *names: str) -> dict[tuple[str, ...], float]:
    """`gateway_requests_total` summed by the given label names."""
    summed: dict[tuple[str, ...], float] = {}
    for labels, value in samples(registry, "gateway_requests_total").items():
        as_dict = dict(labels)
        key = tuple(as_dict[name] for name in names)
        summed[key] = summed.get(key, 0.0) + value
    return summed


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample's value, 0 when the series does not exist yet."""
    return registry.get_sample_value(name, labels) or 0.0


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    """Poll `predicate()` every 10 ms until true, or fail after `seconds` (wall clock)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {seconds}s")
        await asyncio.sleep(0.01)


async def disconnect_while_hanging(url: str, fake: FakeUpstream) -> None:
    """Send a request the fake never answers, then drop the connection once it arrived."""
    before = len(fake.requests)
    task = asyncio.ensure_future(post(url))
    try:
        await asyncio.wait_for(fake.wait_until(lambda f: len(f.requests) > before), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_outcomes_without_limits_are_counted_exactly(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """ok, upstream_error 529, invalid_request 404/400 and client_disconnect count once each."""
    gateway = await make_gateway(clock=FakeClock(), retry_max_attempts=1)
    fake_upstream.script(Reply(200), Stream(), Reply(200), Reply(529), Reply(529), Hang())
    statuses = [await post(gateway.url) for _ in range(3)]
    statuses += [await post(gateway.url), await post(gateway.url)]
    await disconnect_while_hanging(gateway.url, fake_upstream)
    statuses.append((await get(gateway.url, "/nope"))[0])
    statuses.append(await post(gateway.url, raw=b"{not json"))
    await wait_for(lambda: value(gateway.registry, "gateway_in_flight_requests") == 0)
    assert [200, 200, 200, 529, 529, 404, 400] == statuses
    assert {
        ("none", MODEL, "/v1/messages", "200", "ok"): 3.0,
        ("none", MODEL, "/v1/messages", "529", "upstream_error"): 2.0,
        ("none", MODEL, "/v1/messages", "499", "client_disconnect"): 1.0,
        ("none", "none", "unmatched", "404", "invalid_request"): 1.0,
        ("none", "none", "/v1/messages", "400", "invalid_request"): 1.0,
    } == requests_by(gateway.registry, "model_group", "model", "route", "status", "outcome")
    assert {
        (("status", "200"),): 3.0,
        (("status", "529"),): 2.0,
        (("status", "cancelled"),): 1.0,
    } == samples(gateway.registry, "gateway_upstream_attempts_total")
    assert (0.0, 0.0) == (
        value(gateway.registry, "gateway_open_streams"),
        value(gateway.registry, "gateway_queue_depth"),
    )


async def test_limiter_outcomes_are_counted_exactly(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """ok, queued_ok, rejected, never_fits: admissions, requests, queue wait and bucket fill."""
    clock = FakeClock()
    path = limits_file(
        tmp_path,
        "    requests_per_minute: 2\n    output_tokens_per_minute: 1000\n"
        "    output_reservation: max_tokens\n",
    )
    gateway = await make_gateway(limits_file=str(path), clock=clock)
    statuses = [await post(gateway.url) for _ in range(3)]  # the third waits 30 s
    statuses += [await post(gateway.url, headers=NO_WAIT) for _ in range(2)]
    statuses.append(await post(gateway.url, max_tokens=5000))
    registry = gateway.registry
    assert [200, 200, 200, 429, 429, 413] == statuses
    assert {
        ("sonnet", "200", "ok"): 2.0,
        ("sonnet", "200", "queued_ok"): 1.0,
        ("sonnet", "429", "rejected"): 2.0,
        ("sonnet", "413"): 1.0,
    } == {
        key if key[1] != "413" else key[:2]: count
        for key, count in requests_by(registry, "model_group", "status", "outcome").items()
    }
    assert {
        (("decision", "now"), ("model_group", "sonnet")): 2.0,
        (("decision", "queued"), ("model_group", "sonnet")): 1.0,
        (("decision", "rejected"), ("model_group", "sonnet")): 2.0,
        (("decision", "never_fits"), ("model_group", "sonnet")): 1.0,
    } == samples(registry, "gateway_limiter_admissions_total")
    assert (3.0, 30.0) == (
        value(registry, "gateway_queue_wait_seconds_count", model_group="sonnet"),
        round(value(registry, "gateway_queue_wait_seconds_sum", model_group="sonnet"), 6),
    )
    fill = {
        dict(labels)["dimension"]: ratio
        for labels, ratio in samples(registry, "gateway_limiter_bucket_fill_ratio").items()
    }
    # Read at scrape time, refilled to now: the 30 s queue wait repaid the one-request debt
    # (-1 of 2 when reserved) and refilled the output bucket to full.
    assert (0.0, 1.0) == (round(fill["requests"], 6), fill["output_tokens"])
    assert 6.0 == value(registry, "gateway_limiter_backend_seconds_count", operation="reserve")


async def test_never_fits_is_counted_as_never_fits(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A request above a bucket's limit counts under outcome `never_fits`, status 413."""
    path = limits_file(
        tmp_path, "    output_tokens_per_minute: 1000\n    output_reservation: max_tokens\n"
    )
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    assert 413 == await post(gateway.url, max_tokens=5000)
    assert {("413", "never_fits"): 1.0} == requests_by(gateway.registry, "status", "outcome")


async def test_unreachable_upstream_counts_upstream_unavailable(
    make_gateway: GatewayFactory,
) -> None:
    """Two requests to a closed port are two 502 upstream_unavailable and two connect errors."""
    gateway = await make_gateway(
        clock=FakeClock(), upstream_url="http://127.0.0.1:1", retry_max_attempts=1
    )
    statuses = [await post(gateway.url) for _ in range(2)]
    assert ([502, 502], {("502", "upstream_unavailable"): 2.0}) == (
        statuses,
        requests_by(gateway.registry, "status", "outcome"),
    )
    assert 2.0 == value(gateway.registry, "gateway_upstream_attempts_total", status="connect_error")


async def test_metrics_endpoint_parses_and_carries_build_info(
    make_gateway: GatewayFactory,
) -> None:
    """`/metrics` parses as Prometheus text, names every product family and the build version."""
    gateway = await make_gateway()
    await post(gateway.url)
    status, text = await get(gateway.url, "/metrics")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    build = families["gateway_build_info"].samples
    assert 200 == status
    assert {
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_time_to_first_byte_seconds",
        "gateway_overhead_seconds",
        "gateway_in_flight_requests",
        "gateway_open_streams",
        "gateway_response_bytes",
        "gateway_limiter_admissions",
        "gateway_queue_wait_seconds",
        "gateway_queue_depth",
        "gateway_limiter_bucket_fill_ratio",
        "gateway_limiter_backend_seconds",
        "gateway_limiter_backend_errors",
        "gateway_limiter_fail_open",
        "gateway_limiter_breaker_open",
        "gateway_upstream_attempts",
        "gateway_upstream_retries",
        "gateway_upstream_retry_budget_exhausted",
        "gateway_upstream_rate_limited",
        "gateway_upstream_ratelimit_remaining",
        "gateway_tokens",
        "gateway_token_estimate_ratio",
        "gateway_usage_missing",
        "gateway_build_info",
    } <= set(families)
    assert [({"version": __version__}, 1.0)] == [(s.labels, s.value) for s in build]


async def test_model_label_folds_into_other_past_the_cap(
    make_gateway: GatewayFactory,
) -> None:
    """The first MAX_MODELS distinct models keep their name; later ones count as `other`."""
    gateway = await make_gateway(clock=FakeClock())
    models = [f"claude-test-{n}" for n in range(MAX_MODELS + 3)]
    for model in [*models, models[0], models[-1]]:
        await post(gateway.url, model=model)
    counts = requests_by(gateway.registry, "model")
    assert (MAX_MODELS + 1, 4.0, 2.0) == (
        len(counts),
        counts[(OTHER,)],
        counts[(models[0],)],
    )


async def test_refused_model_names_do_not_use_up_the_cap(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """Model names the API refuses count as `other`, so junk cannot crowd out real names."""
    gateway = await make_gateway(clock=FakeClock())
    fake_upstream.script(*[Reply(404) for _ in range(MAX_MODELS + 5)])
    for n in range(MAX_MODELS + 5):
        await post(gateway.url, model=f"claude-junk-{n}")
    await post(gateway.url, model=MODEL)
    counts = requests_by(gateway.registry, "model")
    assert {(OTHER,): MAX_MODELS + 5.0, (MODEL,): 1.0} == counts


async def test_learned_estimator_figures_are_exported(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """After a settled response the learned input ratio and expected output are gauges."""
    path = limits_file(tmp_path, "    requests_per_minute: 100\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    assert 200 == await post(gateway.url)
    ratio = samples(gateway.registry, "gateway_token_learned_input_ratio")
    expected = samples(gateway.registry, "gateway_token_learned_expected_output")
    assert [(("model_group", "sonnet"),)] == list(ratio)
    assert {(("model_group", "sonnet"),): 6.0} == expected


def test_configured_limits_are_exposed_per_group_and_dimension() -> None:
    """`limits_configured` publishes the limits file's numbers as `gateway_limiter_limit`."""
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.limits_configured({("sonnet", "requests"): 50, ("sonnet", "output_tokens"): 8000})
    assert {
        (("dimension", "output_tokens"), ("model_group", "sonnet")): 8000.0,
        (("dimension", "requests"), ("model_group", "sonnet")): 50.0,
    } == samples(metrics.registry, "gateway_limiter_limit")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for this module."""
    with RedisServer() as server:
        yield server


@pytest.mark.redis
async def test_scrapes_cost_no_redis_round_trip(
    make_gateway: GatewayFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Twenty scrapes report bucket fill yet run no command on Redis (commandstats unchanged)."""
    path = limits_file(tmp_path, "    requests_per_minute: 100\n")
    gateway = await make_gateway(limits_file=str(path), redis_url=redis_server.url)
    assert [200, 200] == [await post(gateway.url) for _ in range(2)]
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        before = command_calls(client)
        texts = [(await get(gateway.url, "/metrics"))[1] for _ in range(20)]
        after = command_calls(client)
    finally:
        client.close()
    fills = [
        sample.value
        for family in text_string_to_metric_families(texts[-1])
        for sample in family.samples
        if sample.name == "gateway_limiter_bucket_fill_ratio"
    ]
    ran = {name: calls - before.get(name, 0) for name, calls in after.items()}
    assert ({}, 1) == ({n: c for n, c in ran.items() if c and n != "info"}, len(fills))
    assert before.get("evalsha", 0) > 0  # the admissions did reach Redis


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command from `INFO commandstats` (`cmdstat_evalsha` -> `evalsha`)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
