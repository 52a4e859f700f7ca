"""Fleet proof for output reservations: clients ask for 10x the output they use, and three
gateways sharing one real redis-server still fill >= 90% of the OTPM limit, with no 429s.

With `output_reservation: expected` each gateway reserves the output its group really uses
(learned from settled usage, bounded by `max_tokens`), so queued requests are timed by what
they will use rather than by `max_tokens`. The fake upstream enforces the same OTPM limit
with its own continuous bucket and reports it in exact `anthropic-ratelimit-*` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
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

OTPM = 60_000  # 1,000 output tokens a second
OUTPUT = 500  # what each response really generates
MAX_TOKENS = 10 * OUTPUT  # what each client asks for
WORKERS = 8  # per gateway, each sending back to back
LOAD_SECONDS = 9.0
SETTLE_IN = 3.0  # the first seconds drain the full bucket; measure the steady state after
LIMITS = f"""
queue:
  max_wait_seconds: 60
headroom: 0.02
groups:
  - name: sonnet
    models: ["claude-sonnet-*"]
    output_tokens_per_minute: {OTPM}
    output_reservation: expected
"""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own."""
    with RedisServer() as server:
        yield server


async def send(session: aiohttp.ClientSession, url: str) -> int:
    """One Messages request asking for MAX_TOKENS; returns the status."""
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Write a short story."}],
    }
    async with session.post(url + "/v1/messages", json=body, headers=headers) as response:
        await response.read()
        return response.status


async def worker(session: aiohttp.ClientSession, url: str, statuses: list[int]) -> None:
    """Send requests back to back until cancelled."""
    while True:
        statuses.append(await send(session, url))


async def test_fleet_fills_the_output_limit_when_max_tokens_is_ten_times_the_output(
    fake_upstream: FakeUpstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Steady-state output throughput is >= 90% of OTPM and upstream never answers 429."""
    fake_upstream.usage["output_tokens"] = OUTPUT
    fake_upstream.enforce_limits(otpm=OTPM)
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
        urls = [gateway.url for gateway in fleet]
        statuses: list[int] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            warm = await asyncio.gather(*(send(session, url) for url in urls))  # learn once
            started = time.monotonic()
            tasks = [
                asyncio.create_task(worker(session, url, statuses))
                for url in urls
                for _ in range(WORKERS)
            ]
            await asyncio.sleep(LOAD_SECONDS)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    steady = [(t, out) for t, _, out in fake_upstream.admitted if t >= started + SETTLE_IN]
    assert len(steady) >= 10, f"only {len(steady)} requests reached upstream in the steady state"
    window = steady[-1][0] - steady[0][0]
    rate = sum(out for _, out in steady[1:]) / window
    share = rate / (OTPM / 60)
    print(f"steady output {rate:.0f} tokens/s = {share:.1%} of OTPM over {window:.1f} s")
    assert ([200, 200, 200], 0) == (warm, fake_upstream.rejected_429)
    assert [] == [status for status in statuses if status != 200]
    assert share >= 0.9, f"only {share:.1%} of the OTPM limit used"
