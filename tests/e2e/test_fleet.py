"""Fleet proof: three gateway processes sharing one real redis-server keep an API key under
its limit, queue in arrival order, and reject with an honest retry-after.

The fake upstream enforces the same RPM limit with its own continuous bucket and counts the
429s it has to give: the product's promise is that it gives none.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TEST_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import start_fleet
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

RPM = 120  # 2 requests a second, bucket of 120
MAX_WAIT = 5
LIMITS = f"""
queue:
  max_wait_seconds: {MAX_WAIT}
headroom: 0.02
groups:
  - name: sonnet
    models: ["claude-sonnet-*"]
    requests_per_minute: {RPM}
unmatched_models: reject
"""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own."""
    with RedisServer() as server:
        yield server


async def send(
    session: aiohttp.ClientSession, url: str, marker: str, max_wait: float | None = None
) -> tuple[int, dict[str, str], float]:
    """One Messages request tagged with `marker`; returns status, headers, completion time."""
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    if max_wait is not None:
        headers["x-gateway-max-wait"] = str(max_wait)
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": marker}],
    }
    async with session.post(url + "/v1/messages", json=body, headers=headers) as response:
        await response.read()
        return response.status, dict(response.headers), time.monotonic()


def marker_of(body: bytes) -> str:
    """The marker a request carried."""
    return str(json.loads(body)["messages"][0]["content"])


async def test_three_gateways_share_one_budget(
    fake_upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    """More load than the limit allows yields zero upstream 429s, FIFO queueing, honest 429s."""
    fake_upstream.enforce_limits(rpm=RPM)
    with contextlib.ExitStack() as stack:
        fleet = await start_fleet(
            tmp_path,
            LIMITS,
            3,
            stack,
            upstream_url=fake_upstream.url,
            redis_url=redis_server.url,
            log_level="warning",
        )
        urls = itertools.cycle([gateway.url for gateway in fleet])
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            # Burst: 150 at once against a bucket of ~117 (120 less 2% headroom), no queueing.
            burst = await asyncio.gather(
                *(send(session, next(urls), f"burst-{i}", max_wait=0) for i in range(150))
            )
            burst_ok = sum(1 for status, _, _ in burst if status == 200)
            # Queue: 16 requests arriving 50 ms apart, round-robin over the three gateways.
            tasks = []
            for i in range(16):
                tasks.append(asyncio.create_task(send(session, next(urls), f"queued-{i:02d}")))
                await asyncio.sleep(0.05)
            queued = await asyncio.gather(*tasks)
            # Honesty: the first rejected request retries once after its retry-after, no wait.
            rejected = [(i, h) for i, (s, h, _) in enumerate(queued) if s == 429]
            assert rejected, "the queue phase should overflow the 5 s queue cap"
            first_index, first_headers = rejected[0]
            await asyncio.sleep(float(first_headers["Retry-After"]))
            retry_status, _, _ = await send(session, next(urls), "retry", max_wait=0)

    served = [marker_of(r.body) for r in fake_upstream.requests]
    queued_served = [m for m in served if m.startswith("queued-")]
    admitted_times = [t for t, _, _ in fake_upstream.admitted]
    queue_times = admitted_times[burst_ok : burst_ok + len(queued_served)]
    rate = (len(queue_times) - 1) / (queue_times[-1] - queue_times[0])

    assert 0 == fake_upstream.rejected_429
    assert burst_ok >= 110, f"only {burst_ok} of a ~117-request bucket admitted at once"
    assert sorted(queued_served) == queued_served, "queued requests served in arrival order"
    assert rate >= 0.9 * RPM / 60, f"admitted {rate:.2f}/s against a limit of {RPM / 60}/s"
    assert all(int(h["Retry-After"]) >= 1 for _, h in rejected)
    assert {"x-gateway-ratelimit-bucket": "requests"}.items() <= first_headers.items()
    assert 200 == retry_status
    assert first_index >= 8, "about MAX_WAIT x 2/s requests fit in the queue before refusals"
