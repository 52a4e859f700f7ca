"""Endpoint buckets: count_tokens and batches have their own RPM, apart from Messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.limits import BucketSpec, Dimension, LimitsConfig
from tests.conftest import TEST_KEY, GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer
from tests.test_admission import MODEL, limits_file, send

NO_WAIT = {"x-gateway-max-wait": "0"}
BATCH = {"requests": [{"custom_id": "a", "params": {"model": MODEL, "max_tokens": 10,
         "messages": [{"role": "user", "content": "Hi"}]}}]}  # fmt: skip


async def call(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    """Send one request through the gateway; return status, JSON body and headers."""
    all_headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gateway.url + path, json=body, headers=all_headers) as response,
    ):
        return response.status, json.loads(await response.read()), CIMultiDict(response.headers)


async def count_tokens(
    gateway: RunningGateway, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    """POST one count_tokens request."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    return await call(gateway, "POST", "/v1/messages/count_tokens", body, headers)


def limited(headers: CIMultiDict[str]) -> tuple[str, str, str, str]:
    """(group, bucket, limit, retry-after) of a gateway 429."""
    return (
        headers["x-gateway-ratelimit-group"],
        headers["x-gateway-ratelimit-bucket"],
        headers["x-gateway-ratelimit-limit"],
        headers["retry-after"],
    )


async def test_count_tokens_and_messages_are_limited_independently(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """count_tokens uses its own 2 RPM bucket; Messages keeps its 1 RPM untouched, both ways."""
    path = limits_file(tmp_path, "    requests_per_minute: 1\n", count_tokens_requests_per_minute=2)
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    counted = [(await count_tokens(gateway, NO_WAIT))[0] for _ in range(2)]
    message = (await send(gateway.url, headers=NO_WAIT))[0]
    status, body, headers = await count_tokens(gateway, NO_WAIT)
    second_message = (await send(gateway.url, headers=NO_WAIT))[0]
    assert ([200, 200], 200, 429, 429) == (counted, message, status, second_message)
    assert ("_count_tokens", "requests", "2", "30") == limited(headers)
    assert "'_count_tokens' limit of 2 requests per minute" in body["error"]["message"]
    assert 3 == len(fake_upstream.requests)


async def test_every_batch_endpoint_shares_one_rpm_bucket(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Create, list and get draw on one 2 RPM batches bucket; Messages is unaffected."""
    path = limits_file(tmp_path, "    requests_per_minute: 5\n", batch_requests_per_minute=2)
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    created, batch, _ = await call(gateway, "POST", "/v1/messages/batches", BATCH, NO_WAIT)
    listed = (await call(gateway, "GET", "/v1/messages/batches", None, NO_WAIT))[0]
    got, _, headers = await call(
        gateway, "GET", f"/v1/messages/batches/{batch['id']}", None, NO_WAIT
    )
    messages = [(await send(gateway.url, headers=NO_WAIT))[0] for _ in range(3)]
    assert (200, 200, 429, [200, 200, 200]) == (created, listed, got, messages)
    assert ("_batches", "requests", "2", "30") == limited(headers)


async def test_endpoint_over_its_limit_is_queued_then_sent(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A count_tokens request past 1 RPM within the queue cap waits 60 s, then goes."""
    clock = FakeClock()
    path = limits_file(tmp_path, "    requests_per_minute: 5\n", count_tokens_requests_per_minute=1)
    gateway = await make_gateway(limits_file=str(path), clock=clock)
    await count_tokens(gateway)
    status, _, headers = await count_tokens(gateway)
    assert (200, "60000", [60.0]) == (
        status,
        headers["x-gateway-queue-wait-ms"],
        [round(s, 3) for s in clock.sleeps if s > 0],
    )


async def test_endpoints_pass_unlimited_without_their_keys(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A limits file without endpoint keys leaves count_tokens and batches unlimited."""
    path = limits_file(tmp_path, "    requests_per_minute: 1\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    counted = [(await count_tokens(gateway, NO_WAIT))[0] for _ in range(3)]
    listed = [
        (await call(gateway, "GET", "/v1/messages/batches", None, NO_WAIT))[0] for _ in range(3)
    ]
    assert ([200] * 3, [200] * 3) == (counted, listed)


async def test_endpoint_request_stays_charged_whatever_the_api_headers_say(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Messages rate-limit headers on count_tokens answers neither pull down nor refund it."""
    fake_upstream.rate_limit_headers = {
        "anthropic-ratelimit-requests-limit": "1",
        "anthropic-ratelimit-requests-remaining": "0",
    }
    path = limits_file(tmp_path, "    requests_per_minute: 5\n", count_tokens_requests_per_minute=3)
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    statuses = [(await count_tokens(gateway, NO_WAIT))[0] for _ in range(4)]
    assert [200, 200, 200, 429] == statuses


async def test_unreachable_upstream_gives_the_endpoint_slot_back(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A count_tokens request that never reached the API is refunded: 502s, never a 429."""
    path = limits_file(tmp_path, "    requests_per_minute: 5\n", count_tokens_requests_per_minute=1)
    gateway = await make_gateway(
        limits_file=str(path), upstream_url="http://127.0.0.1:1", clock=FakeClock()
    )
    statuses = [(await count_tokens(gateway, NO_WAIT))[0] for _ in range(3)]
    assert [502, 502, 502] == statuses


def test_endpoint_buckets_use_reserved_groups_in_the_key_scheme() -> None:
    """Each endpoint has one requests bucket under its reserved group, headroom taken off."""
    config = LimitsConfig(
        headroom=0.5, count_tokens_requests_per_minute=100, batch_requests_per_minute=40
    )
    buckets = config.endpoint_buckets("count_tokens", "k1") + config.endpoint_buckets(
        "batches", "k1"
    )
    expected = [
        BucketSpec("k1", "_count_tokens", Dimension.REQUESTS, 100, 50.0),
        BucketSpec("k1", "_batches", Dimension.REQUESTS, 40, 20.0),
    ]
    keys = ["cgw:{k1:_count_tokens}:requests", "cgw:{k1:_batches}:requests"]
    assert (expected, keys) == (buckets, [bucket.key for bucket in buckets])


@pytest.mark.redis
async def test_endpoint_buckets_live_under_their_own_redis_keys(
    make_gateway: GatewayFactory, redis_server: RedisServer, redis_admin: Any, tmp_path: Path
) -> None:
    """Through a real Redis, count_tokens and batches write only their own buckets, in the
    organisation's scope (`org`: the first one learned), beside the organisation mapping."""
    path = limits_file(
        tmp_path,
        "    requests_per_minute: 100\n",
        count_tokens_requests_per_minute=100,
        batch_requests_per_minute=100,
    )
    gateway = await make_gateway(limits_file=str(path), redis_url=redis_server.url)
    await count_tokens(gateway)
    await call(gateway, "GET", "/v1/messages/batches")
    keys = sorted(key.decode() for key in await redis_admin.keys("cgw:{org*"))
    groups = ("_batches", "_count_tokens")
    assert [f"cgw:{{org:{group}}}:requests" for group in groups] == keys
