"""Priority lanes across a fleet: a saturating batch tenant leaves interactive traffic its
reserve.

Two gateways share one Redis and one organisation (120 RPM). A batch tenant floods them
with 150 requests that may each wait 6 s; while it presses, an interactive tenant sends a
request every 0.3 s that may wait at most 1 s. With `priority_reserve: 0.3`, batch traffic
uses only what lies above 30% of the bucket and never queues ahead, so every interactive
request is served within its bound, and batch requests get what room frees beyond them;
the upstream never answers 429. (Without lanes the flood's ~68 requests beyond the bucket
would queue into 34 s of debt ahead of every interactive request.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.identity import new_key
from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import start_fleet
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RPM = 120
INTERACTIVE_BOUND = 1.0
"""The interactive requests' `x-gateway-max-wait`: the bound a batch flood must not push
their waits past."""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own."""
    with RedisServer() as server:
        yield server


async def send(
    session: aiohttp.ClientSession, url: str, key: str, max_wait: float
) -> tuple[int, float]:
    """One Messages request; its status and how long the gateway held it (queue wait)."""
    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "x-gateway-max-wait": str(max_wait),
    }
    body = {"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [
        {"role": "user", "content": "Hi"},
    ]}  # fmt: skip
    async with session.post(url + "/v1/messages", json=body, headers=headers) as response:
        await response.read()
        waited = int(response.headers.get("x-gateway-queue-wait-ms", "0")) / 1000
        return response.status, waited


async def flood_and_trickle(
    fake_upstream: FakeUpstream,
    redis_server: RedisServer,
    tmp_path: Path,
    limits: str,
    *,
    flooding: str,
    trickling: str,
) -> tuple[list[tuple[int, float]], list[tuple[int, float]], float]:
    """Two gateways on `limits`: `flooding` sends 150 requests at once (each may wait 6 s);
    half a second later `trickling` sends 10, one every 0.3 s, each bounded by
    `INTERACTIVE_BOUND`. The trickle's answers, the flood's, and the seconds it all took."""
    fake_upstream.enforce_limits(rpm=RPM)
    with contextlib.ExitStack() as stack:
        fleet = await start_fleet(
            tmp_path, limits, 2, stack, upstream_url=fake_upstream.url,
            redis_url=redis_server.url, upstream_api_key="sk-ant-upstream-fleet",
            log_level="warning",
        )  # fmt: skip
        urls = [gateway.url for gateway in fleet]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.monotonic()
            flood = [
                asyncio.create_task(send(session, urls[i % 2], flooding, max_wait=6))
                for i in range(150)
            ]
            await asyncio.sleep(0.5)
            answers = []
            for i in range(10):
                answers.append(await send(session, urls[i % 2], trickling, INTERACTIVE_BOUND))
                await asyncio.sleep(0.3)
            flooded = await asyncio.gather(*flood)
            return answers, flooded, time.monotonic() - started


async def test_a_saturating_batch_tenant_leaves_interactive_traffic_its_reserve(
    fake_upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    batch, interactive = new_key(), new_key()
    limits = f"""
headroom: 0.02
priority_reserve: 0.3
queue:
  max_wait_seconds: 10
groups:
  - name: sonnet
    models: ["claude-sonnet-*"]
    requests_per_minute: {RPM}
tenants:
  - name: etl
    keys: ["{batch.stored}"]
    priority: batch
  - name: app
    keys: ["{interactive.stored}"]
"""
    answers, flooded, elapsed = await flood_and_trickle(
        fake_upstream, redis_server, tmp_path, limits, flooding=batch.key, trickling=interactive.key
    )

    batch_served = sum(1 for status, _ in flooded if status == 200)
    batch_late = sum(1 for status, waited in flooded if status == 200 and waited > 0)
    assert [status for status, _ in answers] == [200] * 10, answers
    assert max(waited for _, waited in answers) <= INTERACTIVE_BOUND
    assert fake_upstream.rejected_429 == 0
    # Batch used what lies above the reserve at once, then kept being served as room freed.
    above_reserve = int(RPM * 0.98 * 0.7)
    assert above_reserve - 2 <= batch_served - batch_late <= above_reserve + 2
    # Room frees at 2 a second; interactive took 10 of the ~12 that freed: batch got the rest.
    freed = RPM * 0.98 / 60 * elapsed
    assert 1 <= batch_late <= freed - 10 + 2, (batch_late, elapsed)


async def test_a_small_tenant_keeps_its_share_while_a_large_one_floods(
    fake_upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Fair share among tenants of one lane: the flooding tenant goes over an equal share
    and is held to the batch lane, so the small tenant, within its share, is served from
    the reserve within its bound; without `fair_share` it would queue behind the flood."""
    big, small = new_key(), new_key()
    limits = f"""
headroom: 0.02
priority_reserve: 0.3
fair_share: true
queue:
  max_wait_seconds: 10
groups:
  - name: sonnet
    models: ["claude-sonnet-*"]
    requests_per_minute: {RPM}
tenants:
  - name: big
    keys: ["{big.stored}"]
  - name: small
    keys: ["{small.stored}"]
"""
    answers, flooded, _ = await flood_and_trickle(
        fake_upstream, redis_server, tmp_path, limits, flooding=big.key, trickling=small.key
    )

    assert [status for status, _ in answers] == [200] * 10, answers
    assert max(waited for _, waited in answers) <= INTERACTIVE_BOUND
    assert fake_upstream.rejected_429 == 0
    big_now = sum(1 for status, waited in flooded if status == 200 and waited == 0)
    assert big_now >= int(RPM * 0.98 * 0.7) - 2  # it kept everything above the reserve
