"""Upstream on the wire: retries (fake API, fake clock, seeded jitter, the real SDK) and the
mapping of connect failures and timeouts to 502 and 504."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageParam
from multidict import CIMultiDict

from bench.ports import free_port
from gateway.errors import GatewayError
from gateway.retry import RetryPolicy
from gateway.services import CLOCK
from gateway.upstream import Upstream, UpstreamSettings, open_session
from tests.conftest import TEST_KEY, GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import Delay, ErrorMidStream, FakeUpstream, Hang, Reply, Stream
from tests.support.gateway_client import call, envelope_of

MODEL = "claude-sonnet-4-6"
SEED = 11
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]
API_HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
OVERLOADED = (
    b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},'
    b'"request_id":"req_3"}'
)
SPEND_CAP = (
    b'{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your '
    b'monthly spend limit.","details":{"error_code":"enforced_spend_limit_reached"}},'
    b'"request_id":"req_cap"}'
)


async def post(
    url: str, *, stream: bool = False, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDict[str], bytes]:
    """POST one small Messages request; return status, headers and the raw body."""
    body = {"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": stream}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(
            url + "/v1/messages", json=body, headers={**API_HEADERS, **(headers or {})}
        ) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


def expected_backoffs(count: int, policy: RetryPolicy | None = None) -> list[float]:
    """The first `count` backoff delays the gateway draws with `retry_seed=SEED`."""
    policy, rng = policy or RetryPolicy(), random.Random(SEED)
    return [policy.backoff(n, rng) for n in range(count)]


def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    """One sample of the gateway's registry (0 when absent)."""
    return gateway.registry.get_sample_value(name, labels) or 0.0


async def fake_clock_gateway(make_gateway: GatewayFactory, **overrides: object) -> RunningGateway:
    """A gateway on a FakeClock with seeded jitter (`clock.sleeps` records every backoff)."""
    return await make_gateway(clock=FakeClock(), retry_seed=SEED, **overrides)


def sleeps_of(gateway: RunningGateway) -> list[float]:
    """The backoffs the gateway slept on its FakeClock."""
    fake = gateway.app[CLOCK]
    assert isinstance(fake, FakeClock)
    return list(fake.sleeps)


async def test_two_overloads_then_success_takes_three_attempts(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """529, 529, 200 answers 200 after three attempts, two jittered backoffs and two retries."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(529), Reply(529), Reply(200))
    status, headers, body = await post(gateway.url)
    assert (200, "message", "3", None) == (
        status,
        json.loads(body)["type"],
        headers["x-gateway-upstream-attempts"],
        headers.get("x-should-retry"),
    )
    assert (3, expected_backoffs(2)) == (len(fake_upstream.requests), sleeps_of(gateway))
    assert (2.0, 1.0, 2.0) == (
        metric(gateway, "gateway_upstream_attempts_total", status="529"),
        metric(gateway, "gateway_upstream_attempts_total", status="200"),
        metric(gateway, "gateway_upstream_retries_total", cause="529"),
    )


async def test_every_attempt_replays_the_same_body_bytes(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """The request body held in memory reaches the API byte for byte on every attempt."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(503), Reply(502))
    await post(gateway.url)
    first, *rest = [request.body for request in fake_upstream.requests]
    assert [first, first] == rest


async def test_server_error_then_stream_relays_the_stream_byte_for_byte(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """After a 500 the retried stream reaches the client exactly as the API sent it."""
    events = [
        b'event: message_start\ndata: {"type":"message_start"}\n\n',
        b'event: ping\r\ndata: {"type": "ping"}\r\n\r\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(500), Stream(events=events, split_every=7))
    status, headers, body = await post(gateway.url, stream=True)
    assert (200, b"".join(events), "2") == (status, body, headers["x-gateway-upstream-attempts"])
    assert expected_backoffs(1) == sleeps_of(gateway)


async def test_error_event_mid_stream_is_relayed_not_retried(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A stream that started and then carries an error event passes through once, unchanged."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(ErrorMidStream(after_events=3))
    status, headers, body = await post(gateway.url, stream=True)
    assert (200, True, "1", 1, []) == (
        status,
        b"event: error\n" in body,
        headers["x-gateway-upstream-attempts"],
        len(fake_upstream.requests),
        sleeps_of(gateway),
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
async def test_client_errors_are_never_retried(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, status: int
) -> None:
    """A 4xx client error goes back at once, after one attempt, its hint untouched."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(status))
    got, headers, _ = await post(gateway.url)
    assert (status, "1", None, 1) == (
        got,
        headers["x-gateway-upstream-attempts"],
        headers.get("x-should-retry"),
        len(fake_upstream.requests),
    )


async def test_upstream_429_retry_after_is_honoured_and_counted(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """An upstream 429 with retry-after 2 waits exactly 2 s, then succeeds; the 429 is counted."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(429, headers={"retry-after": "2"}), Reply(200))
    status, _, _ = await post(gateway.url)
    assert (200, [2.0], 1.0) == (
        status,
        sleeps_of(gateway),
        metric(gateway, "gateway_upstream_rate_limited_total", model_group="none"),
    )


async def test_retry_after_ms_is_preferred(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """retry-after-ms sets the wait in milliseconds."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(529, headers={"retry-after-ms": "1500"}), Reply(200))
    assert 200 == (await post(gateway.url))[0]
    assert [1.5] == sleeps_of(gateway)


async def test_retry_after_beyond_the_time_budget_returns_the_error(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A retry-after past the 30 s budget is not waited for: the 429 goes back with its hint."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(429, headers={"retry-after": "40"}))
    status, headers, _ = await post(gateway.url)
    picked = [headers.get(name) for name in ("retry-after", "x-should-retry")]
    assert (429, ["40", "true"], "1", []) == (
        status,
        picked,
        headers["x-gateway-upstream-attempts"],
        sleeps_of(gateway),
    )


async def test_exhausted_retries_relay_the_last_error_unchanged(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """After six 529s (the default attempts) the last one goes back byte for byte, with
    x-should-retry: false: the gateway made more attempts than a client would have."""
    gateway = await fake_clock_gateway(make_gateway)
    last = Reply(529, body=OVERLOADED, headers={"request-id": "req_6"})
    fake_upstream.script(*[Reply(529)] * 5, last)
    status, headers, body = await post(gateway.url)
    assert (529, OVERLOADED, "req_6", "6", "false") == (
        status,
        body,
        headers["request-id"],
        headers["x-gateway-upstream-attempts"],
        headers["x-should-retry"],
    )


async def test_spend_cap_429_is_not_retried(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """The spend-cap 429 goes back once, body intact, telling the SDK not to retry."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(429, body=SPEND_CAP))
    status, headers, body = await post(gateway.url)
    assert (429, SPEND_CAP, "1", "false", 1) == (
        status,
        body,
        headers["x-gateway-upstream-attempts"],
        headers["x-should-retry"],
        len(fake_upstream.requests),
    )


async def test_retry_budget_stops_a_storm(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """With two retries in the budget and no floor, the first request makes 3 attempts (as
    many as a client would have: x-should-retry false) and the second one, which the client
    may still retry itself (its hint kept); both budget stops are counted."""
    gateway = await fake_clock_gateway(
        make_gateway,
        retry_budget_ratio=0,
        retry_budget_min_per_second=0,
        retry_budget_burst=2,
    )
    fake_upstream.script(*[Reply(529)] * 4)
    first, second = await post(gateway.url), await post(gateway.url)
    assert (("3", "false"), ("1", "true"), 4, 2.0) == (
        (first[1]["x-gateway-upstream-attempts"], first[1]["x-should-retry"]),
        (second[1]["x-gateway-upstream-attempts"], second[1]["x-should-retry"]),
        len(fake_upstream.requests),
        metric(gateway, "gateway_upstream_retry_budget_exhausted_total"),
    )


async def test_max_retries_header_zero_disables_retries(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """x-gateway-max-retries: 0 relays the first 529 as the API sent it."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(529))
    status, headers, _ = await post(gateway.url, headers={"x-gateway-max-retries": "0"})
    assert (529, "1", "true", 1) == (
        status,
        headers["x-gateway-upstream-attempts"],
        headers["x-should-retry"],
        len(fake_upstream.requests),
    )


async def test_bad_max_retries_header_is_400_before_upstream(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A malformed x-gateway-max-retries is refused with invalid_request_error."""
    gateway = await fake_clock_gateway(make_gateway)
    status, _, body = await post(gateway.url, headers={"x-gateway-max-retries": "lots"})
    assert (400, "invalid_request_error", 0) == (
        status,
        json.loads(body)["error"]["type"],
        len(fake_upstream.requests),
    )


async def test_unreachable_upstream_is_retried_then_502(make_gateway: GatewayFactory) -> None:
    """Refused connections are retried; the final 502 carries the attempts and no-retry hint."""
    gateway = await fake_clock_gateway(make_gateway, upstream_url=f"http://127.0.0.1:{free_port()}")
    status, headers, _ = await post(gateway.url)
    assert (502, "6", "false") == (
        status,
        headers["x-gateway-upstream-attempts"],
        headers["x-should-retry"],
    )
    assert (6.0, 5.0) == (
        metric(gateway, "gateway_upstream_attempts_total", status="connect_error"),
        metric(gateway, "gateway_upstream_retries_total", cause="connect_error"),
    )


async def test_upstream_unreachable_is_502(make_gateway: GatewayFactory) -> None:
    """A refused upstream connection gets 502 api_error."""
    gateway = await make_gateway(upstream_url="http://127.0.0.1:1", retry_max_attempts=1)
    status, body, _ = await call(gateway.url)
    assert (502, ("api_error", "Could not connect to the upstream API.")) == (
        status,
        envelope_of(body),
    )


async def test_upstream_timeout_is_504(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """An upstream that does not answer within the read timeout gets 504 timeout_error."""
    gateway = await make_gateway(read_timeout_seconds=0.2)
    fake_upstream.script(Hang())
    status, body, _ = await call(gateway.url)
    assert (504, ("timeout_error", "The upstream API did not answer in time.")) == (
        status,
        envelope_of(body),
    )


async def test_slow_upstream_within_timeout_succeeds(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """An upstream slower than usual but within the read timeout is simply waited for."""
    gateway = await make_gateway(read_timeout_seconds=2)
    fake_upstream.script(Delay(0.3))
    status, body, _ = await call(gateway.url)
    assert (200, "message") == (status, body["type"])


def rpm_limits(tmp_path: Path, rpm: int) -> str:
    """A limits file with one `sonnet` group allowing `rpm` requests a minute, no headroom."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "queue:\n  max_wait_seconds: 60\nheadroom: 0\ngroups:\n  - name: sonnet\n"
        f"    models: ['claude-sonnet-*']\n    requests_per_minute: {rpm}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    ("charge", "expected"), [(True, [200, 429, 429]), (False, [200, 200, 200])]
)
async def test_each_answered_attempt_counts_toward_rpm(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    charge: bool,
    expected: list[int],
) -> None:
    """Three answered attempts settle as three RPM requests; as one with RPM charging off."""
    gateway = await fake_clock_gateway(
        make_gateway, limits_file=rpm_limits(tmp_path, 4), retry_charge_rpm=charge
    )
    fake_upstream.script(Reply(529), Reply(529))
    assert 200 == (await post(gateway.url))[0]
    no_wait = {"x-gateway-max-wait": "0"}
    assert expected == [(await post(gateway.url, headers=no_wait))[0] for _ in range(3)]


class HoldingClock(FakeClock):
    """A FakeClock whose positive sleeps never end by themselves: a backoff the client outlives."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        """Record the sleep and block until cancelled (zero sleeps return as usual)."""
        if seconds <= 0:
            await super().sleep(seconds)
            return
        self.sleeps.append(seconds)
        self.holding.set()
        await asyncio.Event().wait()


async def test_disconnect_during_backoff_cancels_retry_and_refunds(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A client gone during the backoff stops the retry and gives its RPM reservation back."""
    clock = HoldingClock()
    gateway = await make_gateway(clock=clock, retry_seed=SEED, limits_file=rpm_limits(tmp_path, 2))
    fake_upstream.script(Reply(529))
    task = asyncio.ensure_future(post(gateway.url))
    await asyncio.wait_for(clock.holding.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    for _ in range(500):
        if metric(gateway, "gateway_in_flight_requests") == 0:
            break
        await asyncio.sleep(0.01)
    no_wait = {"x-gateway-max-wait": "0"}
    statuses = [(await post(gateway.url, headers=no_wait))[0] for _ in range(2)]
    assert ([200, 200], 3, 1) == (statuses, len(fake_upstream.requests), len(clock.sleeps))


async def test_sdk_succeeds_through_transient_overloads(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """The real SDK gets its message after two 529s, with one SDK request and three upstream."""
    gateway = await fake_clock_gateway(make_gateway)
    fake_upstream.script(Reply(529), Reply(529))
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=TEST_KEY) as client:
        raw = await client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=8,
            messages=HELLO,
        )
        message = await raw.parse()
    assert ("Hi there!", "3", 3) == (
        message.content[0].text,  # type: ignore[union-attr]
        raw.headers["x-gateway-upstream-attempts"],
        len(fake_upstream.requests),
    )


async def test_sdk_does_not_multiply_gateway_retries(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """With a persistent 529 the SDK obeys x-should-retry: one SDK call costs the 3 attempts
    it would have made + what the budget allows (3 more on a full budget, none on a spent
    one), never 3 x 6."""
    gateway = await fake_clock_gateway(
        make_gateway, retry_budget_burst=3, retry_budget_ratio=0, retry_budget_min_per_second=0
    )
    fake_upstream.script(*[Reply(529)] * 18)
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=TEST_KEY, max_retries=2
    ) as client:
        calls: list[int] = []
        for _ in range(2):
            with pytest.raises(anthropic.OverloadedError):
                await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
            calls.append(len(fake_upstream.requests) - sum(calls))
    assert [6, 3] == calls


@contextlib.asynccontextmanager
async def direct_upstream(fake: FakeUpstream, **policy: Any) -> AsyncIterator[Upstream]:
    """An `Upstream` on its own session in front of the fake, on a FakeClock."""
    settings = UpstreamSettings(fake.url, retry=RetryPolicy(**policy))
    session = open_session(settings)
    try:
        yield Upstream(session, settings, FakeClock(), random.Random(SEED))
    finally:
        await session.close()


def api_headers() -> CIMultiDict[str]:
    """Headers the fake API accepts for a JSON Messages call."""
    return CIMultiDict({**API_HEADERS, "content-type": "application/json"})


async def test_streamed_request_body_is_never_retried(fake_upstream: FakeUpstream) -> None:
    """A body streamed through (not held in memory) cannot be replayed: one attempt only."""

    async def upload() -> AsyncIterator[bytes]:
        yield b'{"model": "claude-sonnet-4-6", '
        yield b'"max_tokens": 8, "messages": []}'

    fake_upstream.script(Reply(529))
    async with direct_upstream(fake_upstream) as upstream:
        opened = await upstream.open("POST", "/v1/messages", api_headers(), upload())
        opened.response.release()
    assert (529, 1, 1) == (opened.response.status, opened.attempts, len(fake_upstream.requests))


@pytest.mark.parametrize(("charge", "expected"), [(True, 3), (False, 1)])
async def test_each_answered_attempt_is_charged_to_rpm(
    fake_upstream: FakeUpstream, charge: bool, expected: int
) -> None:
    """Every attempt the API answered costs one request, unless RPM charging is off."""
    fake_upstream.script(Reply(529), Reply(500))
    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO}).encode()
    async with direct_upstream(fake_upstream, charge_rpm=charge) as upstream:
        opened = await upstream.open("POST", "/v1/messages", api_headers(), body)
        opened.response.release()
    assert (200, 3, expected) == (opened.response.status, opened.answered, opened.charged_requests)


class FailingSession:
    """A stand-in `ClientSession` whose every request raises `error`; counts the calls."""

    def __init__(self, error: Exception) -> None:
        self.error, self.calls, self.closed = error, 0, False

    async def request(self, *args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        """Fail like aiohttp does before any response."""
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (aiohttp.ConnectionTimeoutError(), (504, 6, "false")),
        (aiohttp.ServerDisconnectedError(), (502, 6, "false")),
        (aiohttp.SocketTimeoutError(), (504, 1, None)),
        (aiohttp.ClientPayloadError("bad request body"), (502, 1, None)),
    ],
)
async def test_connection_failures_retried_read_timeouts_not(
    error: Exception, expected: tuple[int, int, str | None]
) -> None:
    """Connect timeouts and resets are retried; a read timeout (the API may be busy) is not."""
    session = FailingSession(error)
    settings = UpstreamSettings("http://api.invalid")
    upstream = Upstream(session, settings, FakeClock(), random.Random(SEED))  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as caught:
        await upstream.open("POST", "/v1/messages", api_headers(), b"{}")
    assert expected == (
        caught.value.status,
        session.calls,
        caught.value.headers.get("x-should-retry"),
    )


def overloaded_share(share: float, count: int, seed: int) -> list[Reply]:
    """`count` upstream answers, each a 529 with probability `share` (seeded)."""
    rng = random.Random(seed)
    return [Reply(529) if rng.random() < share else Reply(200) for _ in range(count)]


async def sdk_successes(base_url: str, *, calls: int, max_retries: int) -> int:
    """How many of `calls` Messages calls the real SDK (at `max_retries`) gets answered,
    100 at a time."""
    gate = asyncio.Semaphore(100)

    async def one(client: anthropic.AsyncAnthropic) -> bool:
        async with gate:
            try:
                await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
            except anthropic.APIStatusError:
                return False
            return True

    async with anthropic.AsyncAnthropic(
        base_url=base_url, api_key=TEST_KEY, max_retries=max_retries
    ) as client:
        return sum(await asyncio.gather(*(one(client) for _ in range(calls))))


@pytest.mark.parametrize(
    ("share", "max_retries"), [(0.3, 2), (0.1, 0)], ids=["30pct-sdk-retries", "10pct-no-retries"]
)
async def test_retries_never_lower_the_sdks_success(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, share: float, max_retries: int
) -> None:
    """The real SDK against an upstream answering `share` of calls with 529, directly and
    through a gateway at its default retry settings, in the same run: through the gateway
    at least 99.5% succeed, at least as many as directly, at most 1.6 upstream attempts per
    call. (Before, the gateway told the SDK to stop after 3 attempts and its budget failed
    requests outright: 95.5-96.2% against 97.3-97.8% direct.)"""
    calls = 600
    fake_upstream.script(*overloaded_share(share, calls * 3, seed=1))
    direct = await sdk_successes(fake_upstream.url, calls=calls, max_retries=max_retries)
    gateway = await make_gateway(log_level="info")
    fake_upstream.script(*overloaded_share(share, calls * 6, seed=2))
    before = len(fake_upstream.requests)
    through = await sdk_successes(gateway.url, calls=calls, max_retries=max_retries)
    attempts_per_call = (len(fake_upstream.requests) - before) / calls
    print(f"direct {direct}/{calls}, gateway {through}/{calls}, {attempts_per_call:.3f}/call")
    assert (True, True, True) == (
        through >= 0.995 * calls,
        through >= direct,
        attempts_per_call <= 1.6,
    )
