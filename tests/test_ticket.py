"""The admission ticket: one request's admission settled, refunded or kept, whatever ends it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from gateway.identity import new_key
from gateway.limits import Cost, Refused
from gateway.live_charge import LIVE_CHARGE_LEAD
from gateway.services import BACKGROUND
from tests.conftest import TEST_KEY, TEST_SCOPE, GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock, HeldClock
from tests.support.fake_upstream import FakeUpstream, Stream
from tests.support.redis_server import RedisServer
from tests.test_admission import MODEL, limits_file, send

GROUP = (
    "    requests_per_minute: 100\n    input_tokens_per_minute: 100000\n"
    "    output_tokens_per_minute: 100000\n"
)
BODY = json.dumps(
    {"model": MODEL, "max_tokens": 300, "messages": [{"role": "user", "content": "Hi"}]}
).encode()


async def complete_then_close(url: str) -> bytes:
    """POST one Messages call over a raw socket, read the whole answer, and close the
    connection at once (as curl does, and litellm after `message_stop`)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {parts.netloc}\r\nx-api-key: {TEST_KEY}\r\n"
        "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    )
    writer.write(head.encode() + BODY)
    headers = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in headers.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return body


async def access_line(gateway: RunningGateway) -> dict[str, Any]:
    """The first access line, once written."""
    for _ in range(2000):
        if gateway.access_lines():
            return gateway.access_lines()[0]
        await asyncio.sleep(0)
    raise AssertionError("no access line")


async def check_complete_then_close(gateway: RunningGateway) -> None:
    """A response relayed in full is `ok` with its bytes and TTFB and teaches the group its
    output, though the client closes at once and the settlement pulls the buckets down."""
    body = await complete_then_close(gateway.url)
    line = await access_line(gateway)
    await gateway.app[BACKGROUND].drain(5)
    learned = gateway.limiter.learning.snapshot()
    assert ("ok", 200, len(body)) == (line["outcome"], line["status"], line["bytes_out"])
    assert line["ttfb_ms"] is not None
    assert 6.0 == learned["sonnet"][1]  # the fake's 6 output tokens: the expected output


async def test_a_complete_response_then_the_client_closing_is_ok(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """In process: a complete response stays `ok` when the client closes right after it."""
    fake_upstream.rate_limit_headers = {"anthropic-ratelimit-requests-remaining": "0"}
    gateway = await make_gateway(limits_file=str(limits_file(tmp_path, GROUP)))
    await check_complete_then_close(gateway)


@pytest.mark.redis
async def test_a_complete_response_then_the_client_closing_is_ok_on_redis(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    redis_server: RedisServer,
    redis_admin: Any,
    tmp_path: Path,
) -> None:
    """On Redis, where the pull-down is a round trip: the same, `ok` with bytes and TTFB."""
    del redis_admin  # flushes the shared server first
    fake_upstream.rate_limit_headers = {"anthropic-ratelimit-requests-remaining": "0"}
    path = limits_file(tmp_path, GROUP)
    gateway = await make_gateway(limits_file=str(path), redis_url=redis_server.url)
    await check_complete_then_close(gateway)


async def test_a_request_cancelled_in_the_queue_gives_its_reservation_back(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A client that leaves while its request waits in the queue is charged nothing."""
    clock = HeldClock()
    gateway = await make_gateway(
        limits_file=str(limits_file(tmp_path, "    requests_per_minute: 1\n")), clock=clock
    )
    assert 200 == (await send(gateway.url))[0]
    queued = asyncio.create_task(send(gateway.url))
    await clock.sleeping.wait()
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    line = await access_line(gateway)  # the first request's
    for _ in range(2000):
        if len(gateway.access_lines()) == 2:
            break
        await asyncio.sleep(0)
    scope = gateway.limiter.scope_for(TEST_SCOPE)
    probe = await gateway.limiter.admit(scope=scope, model=MODEL, cost=Cost(1), max_wait=0)
    assert isinstance(probe, Refused)
    assert ("ok", "client_disconnect", 60.0) == (
        line["outcome"],
        gateway.access_lines()[1]["outcome"],
        probe.retry_after,  # one request's refill, not two: the queued one left no debt
    )
    assert 1 == len(fake_upstream.requests)


async def test_without_limits_no_request_meets_the_limiter(gateway: RunningGateway) -> None:
    """A gateway without a limits file admits through free tickets: nothing is decided."""
    assert 200 == (await send(gateway.url))[0]
    decisions = [
        sample
        for metric in gateway.registry.collect()
        if metric.name == "gateway_limiter_admissions"
        for sample in metric.samples
    ]
    assert [] == decisions


def long_stream(deltas: int, chars: int) -> list[tuple[str, dict[str, Any]]]:
    """A stream of `deltas` text deltas of `chars` characters each, about chars / 4 tokens."""
    output = deltas * chars // 4
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message",
             "role": "assistant", "model": MODEL, "content": [], "stop_reason": None,
             "usage": {"input_tokens": 10, "output_tokens": 1}}}  # fmt: skip
    delta = {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": "x" * chars}}  # fmt: skip
    return [
        ("message_start", start),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        *[("content_block_delta", delta)] * deltas,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": output}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


async def output_level(gateway: RunningGateway) -> float:
    """The output bucket's level, read as a refusal's `remaining` (nothing is debited)."""
    scope = gateway.limiter.scope_for(TEST_SCOPE)
    probe = await gateway.limiter.admit(
        scope=scope, model=MODEL, cost=Cost(1, 0, 100_000), max_wait=0
    )
    assert isinstance(probe, Refused)
    return probe.remaining


async def test_a_stream_is_charged_its_output_while_it_is_generated(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A stream reserving the cold 1,024 output tokens that generates 2,000 is charged past
    its reservation while it runs (a little ahead, as the API counts it the moment it is
    generated), and settles at exactly what it generated."""
    path = limits_file(tmp_path, "    output_tokens_per_minute: 100000\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    fake_upstream.rate_limit_headers = {}  # its example "remaining" would pull the bucket down
    fake_upstream.script(Stream(events=long_stream(10, 800), chunk_delay=0.05))
    body = {"model": MODEL, "max_tokens": 4000, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        response = await session.post(gateway.url + "/v1/messages", json=body, headers=headers)
        for _ in range(2 + 8):  # message_start, content_block_start, then 8 deltas
            await response.content.readuntil(b"\n\n")
        mid = await output_level(gateway)
        await response.read()
    await access_line(gateway)
    after = await output_level(gateway)
    # 200 tokens a delta, charged LIVE_CHARGE_LEAD to twice that ahead of what was generated
    assert 100_000 - 1_600 - 2 * LIVE_CHARGE_LEAD <= mid <= 100_000 - 1_600 - LIVE_CHARGE_LEAD
    assert 100_000 - 2_000 == after


@pytest.mark.parametrize("where", ["file", "group"])
async def test_shadow_mode_forwards_every_request_and_counts_what_it_would_have_done(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path, where: str
) -> None:
    """`enforce: false` (for the file, or one group): the decisions are computed, counted as
    `shadow_<decision>` and logged; every request is forwarded at once."""
    group = "    requests_per_minute: 2\n" + ("    enforce: false\n" if where == "group" else "")
    top = {"enforce": "false"} if where == "file" else {}
    path = limits_file(tmp_path, group, **top)
    gateway = await make_gateway(limits_file=str(path), clock=HeldClock())
    no_wait = {"x-gateway-max-wait": "0"}
    statuses = [(await send(gateway.url, headers=no_wait))[0] for _ in range(3)]
    queued_status, _, queued_headers = await send(gateway.url)  # would wait ~30 s
    assert [*statuses, queued_status] == [200] * 4
    assert "x-gateway-queue-wait-ms" not in queued_headers
    assert len(fake_upstream.requests) == 4

    def counted(decision: str) -> float:
        labels = {"model_group": "sonnet", "decision": decision}
        return gateway.registry.get_sample_value("gateway_limiter_admissions_total", labels) or 0

    assert (counted("now"), counted("shadow_rejected"), counted("shadow_queued")) == (2, 1, 1)
    lines = [json.loads(line) for line in gateway.logs.getvalue().splitlines()]
    shadow = [line for line in lines if line.get("event") == "limits.shadow"]
    assert [line["decision"] for line in shadow] == ["rejected", "queued"]
    assert "would exceed the gateway's 'sonnet' limit of 2 requests" in shadow[0]["would"]


async def test_batch_requests_use_only_what_lies_above_the_reserve(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A batch tenant (or `x-gateway-priority: batch`) stops at the reserve; interactive
    traffic uses it and may queue into debt; a held-back batch request asks again when it
    would fit and goes then, reported as queued."""
    etl, app = new_key(), new_key()
    path = limits_file(
        tmp_path,
        "    requests_per_minute: 10\n"
        f"tenants:\n  - name: etl\n    keys: ['{etl.stored}']\n    priority: batch\n"
        f"  - name: app\n    keys: ['{app.stored}']\n",
        priority_reserve=0.5,
    )
    gateway = await make_gateway(
        limits_file=str(path), upstream_api_key="sk-ant-upstream", clock=FakeClock()
    )
    no_wait = {"x-gateway-max-wait": "0"}
    batch = [(await send(gateway.url, key=etl.key, headers=no_wait))[0] for _ in range(6)]
    assert batch == [200] * 5 + [429]
    lowered = await send(
        gateway.url, key=app.key, headers={**no_wait, "x-gateway-priority": "batch"}
    )
    assert lowered[0] == 429  # an interactive tenant may ask for the batch lane
    raised = await send(
        gateway.url, key=etl.key, headers={**no_wait, "x-gateway-priority": "interactive"}
    )
    assert raised[0] == 429  # a batch tenant cannot raise itself
    interactive = [(await send(gateway.url, key=app.key, headers=no_wait))[0] for _ in range(5)]
    assert interactive == [200] * 5
    status, _, headers = await send(gateway.url, key=etl.key)  # may wait 60 s: asks again
    assert status == 200
    assert int(headers["x-gateway-queue-wait-ms"]) >= 5_900  # 6 requests to refill at 1/6 s
    bad = await send(gateway.url, key=app.key, headers={"x-gateway-priority": "urgent"})
    assert bad[0] == 400
    lines = [json.loads(line) for line in gateway.logs.getvalue().splitlines()]
    decisions = [line.get("outcome") for line in lines if line.get("event") == "request"]
    assert decisions == ["ok"] * 5 + ["rejected"] * 3 + ["ok"] * 5 + [
        "queued_ok",
        "invalid_request",
    ]
