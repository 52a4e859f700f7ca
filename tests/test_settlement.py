"""Settlement end to end: buckets end at `limit - actual`, whatever way the response ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.headers import Credential
from gateway.limits import (
    Admitted,
    Cost,
    Dimension,
    Limiter,
    LimitsConfig,
    MemoryBackend,
    Refused,
    Reservation,
)
from gateway.limits.model import BucketSpec
from gateway.services import BACKGROUND
from gateway.settlement import UpstreamAnswer, actual_cost, pull_down_ceilings
from gateway.usage import UsageTap
from tests.conftest import TEST_KEY, GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream, Reply, Stream
from tests.test_admission import MODEL, limits_file

SCOPE = Credential("x-api-key", TEST_KEY).scope
LIMIT = 100_000
GROUP = (
    f"    requests_per_minute: 100\n    input_tokens_per_minute: {LIMIT}\n"
    f"    output_tokens_per_minute: {LIMIT}\n"
)


async def gateway_with_limits(
    make_gateway: GatewayFactory, tmp_path: Path, extra: str = ""
) -> RunningGateway:
    """A gateway on a frozen fake clock with 100 RPM and 100,000 ITPM and OTPM."""
    path = limits_file(tmp_path, GROUP + extra)
    return await make_gateway(limits_file=str(path), clock=FakeClock())


@pytest.fixture(autouse=True)
def no_rate_limit_headers(fake_upstream: FakeUpstream) -> None:
    """The fake reports no `anthropic-ratelimit-*` headers unless a test sets them."""
    fake_upstream.rate_limit_headers = {}


async def post(
    gateway: RunningGateway,
    *,
    stream: bool = False,
    usage: tuple[int, int] = (300, 50),
    max_tokens: int = 1000,
) -> bytes:
    """Send one request whose upstream usage is `usage`; return the body once settled."""
    body = {"model": MODEL, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    headers = {
        "x-api-key": TEST_KEY,
        "anthropic-version": "2023-06-01",
        "x-fake-input-tokens": str(usage[0]),
        "x-fake-output-tokens": str(usage[1]),
    }
    before = len(gateway.access_lines())
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/messages", json=body, headers=headers) as response,
    ):
        data = await response.read()
    await settled(gateway, before + 1)
    return data


async def settled(gateway: RunningGateway, lines: int) -> None:
    """Yield until request number `lines` has its access line, then let any settlement
    still running in the background (a pull-down first) land."""
    for _ in range(2000):
        if len(gateway.access_lines()) >= lines:
            await gateway.app[BACKGROUND].drain(5)
            return
        await asyncio.sleep(0)
    raise AssertionError("the request never finished")


async def level(gateway: RunningGateway, dimension: Dimension) -> float:
    """A bucket's level, read from the Limiter as a refusal's `remaining` (nothing debited)."""
    limiter = gateway.limiter
    amount = LIMIT if dimension is not Dimension.REQUESTS else 100
    cost = Cost(**{dimension.value: amount})
    scope = limiter.scope_for(SCOPE)  # the organisation's scope: every key of it shares it
    decision = await limiter.admit(scope=scope, model=MODEL, cost=cost, max_wait=0)
    if isinstance(decision, Admitted):  # the bucket was full: give it back
        limiter.settle(decision, Cost())
        return float(amount)
    assert isinstance(decision, Refused)
    return decision.remaining


async def levels(gateway: RunningGateway) -> tuple[float, float, float]:
    """(requests, input, output) levels."""
    return (
        await level(gateway, Dimension.REQUESTS),
        await level(gateway, Dimension.INPUT_TOKENS),
        await level(gateway, Dimension.OUTPUT_TOKENS),
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_buckets_end_at_limit_minus_actual_usage(
    make_gateway: GatewayFactory, tmp_path: Path, stream: bool
) -> None:
    """After a JSON or SSE response, each bucket holds exactly its limit less the usage."""
    gateway = await gateway_with_limits(make_gateway, tmp_path)
    await post(gateway, stream=stream, usage=(300, 50))
    assert (99, LIMIT - 300, LIMIT - 50) == await levels(gateway)


async def test_cache_reads_are_free_unless_the_group_counts_them(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Cache writes count toward ITPM; cache reads only with cache_reads_count: true."""
    fake_upstream.usage.update(cache_creation_input_tokens=40, cache_read_input_tokens=1000)
    free = await gateway_with_limits(make_gateway, tmp_path)
    await post(free, usage=(300, 50))
    counted = await gateway_with_limits(make_gateway, tmp_path, "    cache_reads_count: true\n")
    await post(counted, usage=(300, 50))
    assert (LIMIT - 340, LIMIT - 1340) == (
        await level(free, Dimension.INPUT_TOKENS),
        await level(counted, Dimension.INPUT_TOKENS),
    )


async def test_upstream_error_refunds_input_and_output(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A 400 with no usage keeps the request charged and gives every token back."""
    gateway = await gateway_with_limits(make_gateway, tmp_path)
    fake_upstream.script(Reply(400))
    await post(gateway)
    assert (99, LIMIT, LIMIT) == await levels(gateway)


async def test_stream_without_usage_charges_the_reservation(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A 200 stream that never reports usage keeps its reservation and counts as missing."""
    gateway = await gateway_with_limits(make_gateway, tmp_path)
    fake_upstream.script(Stream(events=[("message_stop", {"type": "message_stop"})]))
    await post(gateway, stream=True, max_tokens=700)
    missing = gateway.registry.get_sample_value(
        "gateway_usage_missing_total", {"model_group": "sonnet"}
    )
    _, input_level, output_level = await levels(gateway)
    assert (LIMIT - 700, 1.0, True) == (output_level, missing, input_level < LIMIT)


async def test_client_gone_mid_stream_is_charged_what_was_reported(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A client leaving after message_start pays its input and the output reported so far."""
    gateway = await gateway_with_limits(make_gateway, tmp_path)
    fake_upstream.script(Stream(chunk_delay=0.2))
    body = {"model": MODEL, "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01",
               "x-fake-input-tokens": "300", "x-fake-output-tokens": "50"}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway.url + "/v1/messages", json=body, headers=headers)
        first = await response.content.readuntil(b"\n\n")
        response.close()
    await settled(gateway, 1)
    assert (b"event: message_start", LIMIT - 300, LIMIT - 2) == (
        first.split(b"\n")[0],
        await level(gateway, Dimension.INPUT_TOKENS),
        await level(gateway, Dimension.OUTPUT_TOKENS),
    )


async def test_api_headers_pull_the_bucket_down_never_up(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Upstream reporting less room pulls the bucket down to it; more room changes nothing."""
    gateway = await gateway_with_limits(make_gateway, tmp_path)
    fake_upstream.rate_limit_headers = {"anthropic-ratelimit-output-tokens-remaining": "50000"}
    await post(gateway, usage=(300, 50))
    pulled = await level(gateway, Dimension.OUTPUT_TOKENS)
    fake_upstream.rate_limit_headers = {"anthropic-ratelimit-output-tokens-remaining": "99999"}
    await post(gateway, usage=(300, 50))
    assert (50_000 + 950, 50_000 + 950 - 50) == (
        pulled,
        await level(gateway, Dimension.OUTPUT_TOKENS),
    )


def test_upstream_429_holds_the_buckets_until_retry_after() -> None:
    """A 429 with retry-after 6 lowers each bucket to -6 s of refill."""
    bucket = BucketSpec.create("s", "g", Dimension.REQUESTS, 60)
    admitted = Admitted(Reservation((bucket,), Cost(1), 0.0, (59.0,)), "g")
    answer = UpstreamAnswer(429, {"retry-after": "6"}, headers_at=0.0)
    assert {Dimension.REQUESTS: -6.0} == pull_down_ceilings(admitted, answer)


def test_expected_output_reservation_learns_from_settled_usage() -> None:
    """With output_reservation expected, the second request reserves the first one's output."""
    config = LimitsConfig.model_validate({"groups": [{"name": "g", "models": ["m"],
        "output_tokens_per_minute": 10_000, "output_reservation": "expected"}]})  # fmt: skip
    clock = FakeClock()
    limiter = Limiter(MemoryBackend(clock), config, clock)
    cold = limiter.cost_for("m", 10, 4000)
    limiter.learning.observe("g", None, 0, 120)
    assert (4000, 120, 100) == (
        cold.output_tokens,
        limiter.cost_for("m", 10, 4000).output_tokens,
        limiter.cost_for("m", 10, 100).output_tokens,
    )


RESERVED = Admitted(Reservation((), Cost(1, 400, 1000), 0.0, ()), "g")
STARTED = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"usage":{"input_tokens":300,"output_tokens":2}}}'
    b"\n\n"
)
ERROR = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n'


@pytest.mark.parametrize(
    ("chunks", "outcome", "expected"),
    [
        ([], UpstreamAnswer(200, {}, 0.0, client_left=True), Cost(1, 400, 0)),
        ([STARTED], UpstreamAnswer(200, {}, 0.0, client_left=False, dropped=True), Cost(1, 300, 2)),
        ([ERROR], UpstreamAnswer(200, {}, 0.0, client_left=False), Cost(1, 0, 0)),
        ([], UpstreamAnswer(529, {}, 0.0, requests=3, client_left=False), Cost(3, 0, 0)),
        ([], UpstreamAnswer(200, {}, 0.0, client_left=False), Cost(1, 400, 1000)),
    ],
    ids=["left-before-usage", "dropped-after-start", "error-event", "error-status", "no-usage"],
)
def test_actual_cost_for_each_ending(
    chunks: list[bytes], outcome: UpstreamAnswer, expected: Cost
) -> None:
    """Each way a response can end is charged as the settlement table says."""
    tap = UsageTap(stream=True)
    for chunk in chunks:
        tap(chunk)
    assert expected == actual_cost(RESERVED, tap, outcome, cache_reads=False)


@pytest.mark.parametrize(
    ("usage", "levels"),
    [
        ({"input_tokens": -5, "output_tokens": 50}, (99, LIMIT - 7, LIMIT - 50)),
        ({"input_tokens": 300, "output_tokens": 10**15}, (99, LIMIT - 300, LIMIT - 1_000)),
    ],
    ids=["negative-input", "absurd-output"],
)  # 7: the input estimate reserved for the small body `post` sends
async def test_usage_no_api_could_report_is_ignored_and_logged_once(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    usage: dict[str, int],
    levels: tuple[float, float, float],
) -> None:
    """A negative or absurd count in the API's usage is ignored (what was reserved for it
    stands), logged once, and the client's 200 stays an `ok` in the access line."""
    gateway = await gateway_with_limits(make_gateway, tmp_path)
    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": "Hi"}], "stop_reason": "end_turn",
            "usage": usage}  # fmt: skip
    fake_upstream.script(Reply(200, body=body))
    await post(gateway, max_tokens=1_000)
    line = gateway.access_lines()[-1]
    invalid = [entry for entry in gateway.log_lines() if entry.get("event") == "usage_invalid"]
    assert ("ok", 200, 1) == (line["outcome"], line["status"], len(invalid))
    assert "settlement_failed" not in gateway.logs.getvalue()
    assert levels == await levels_of(gateway)


async def levels_of(gateway: RunningGateway) -> tuple[int, int, int]:
    """(requests, input, output) levels, each rounded to a whole token."""
    requests, input_tokens, output_tokens = await levels(gateway)
    return round(requests), round(input_tokens), round(output_tokens)
