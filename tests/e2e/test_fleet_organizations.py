"""Fleet acceptance of organisation-wide accounting (#16): three gateway processes on one real
redis-server, in front of a fake API that counts the way the API does (an organisation's
continuous buckets shared by its keys, output charged as generated, cache reads free on ITPM,
a 429 when any bucket is short). In every scenario the fake answers no 429, and the
organisation's limit is used to the share each test names.

Each scenario prints its measured figures (run with `-s`); docs/token-accounting.md
("Organisation-wide accounting, measured") quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.fake_upstream import FakeUpstream, Organization, Stream
from tests.support.processes import running_gateway
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KEYS = ("sk-ant-api03-fleet-key-one", "sk-ant-api03-fleet-key-two")
MODEL = "claude-sonnet-4-5"
DATED = "claude-sonnet-4-5-20250929"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own."""
    with RedisServer() as server:
        yield server


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path, fake: FakeUpstream, redis: RedisServer, limits: str | None, **settings: str
) -> AsyncIterator[list[str]]:
    """Three gateways sharing `redis` in front of `fake` (with `limits` as their file, or
    none); their URLs."""
    with contextlib.ExitStack() as stack:
        if limits is not None:
            path = tmp_path / "limits.yaml"
            path.write_text(limits)
            settings["limits_file"] = str(path)

        def start(index: int) -> str:
            home = tmp_path / f"gw{index}"
            home.mkdir()
            gateway = stack.enter_context(
                running_gateway(
                    home,
                    ("serve",),
                    upstream_url=fake.url,
                    redis_url=redis.url,
                    log_level="warning",
                    **settings,
                )
            )
            return gateway.url

        yield list(await asyncio.gather(*(asyncio.to_thread(start, i) for i in range(3))))


@dataclass
class Load:
    """Requests sent through the fleet, and how they were answered."""

    statuses: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def count(self, status: int) -> int:
        return sum(1 for seen in self.statuses if seen == status)


def body_of(
    model: str = MODEL, max_tokens: int = 64, stream: bool = False, **more: Any
) -> dict[str, Any]:
    """A Messages body."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hello"}],
        **more,
    }


async def send(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    body: dict[str, Any],
    *,
    max_wait: float,
    output: int | None = None,
) -> int:
    """One request through a gateway; its status (the body read to the end)."""
    headers = {
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "x-gateway-max-wait": str(max_wait),
    }
    if output is not None:
        headers["x-fake-output-tokens"] = str(output)
    async with session.post(url + "/v1/messages", json=body, headers=headers) as response:
        await response.read()
        return response.status


async def at_rate(
    urls: list[str], rate: float, seconds: float, request: Callable[..., Any], load: Load
) -> None:
    """Start `rate` requests a second for `seconds`, round robin over the gateways."""
    targets = itertools.cycle(urls)
    tasks = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for index in range(int(rate * seconds)):
            delay = load.started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(request(session, next(targets), index)))
        load.statuses += await asyncio.gather(*tasks)


async def back_to_back(
    urls: list[str], workers: int, seconds: float, request: Callable[..., Any], load: Load
) -> None:
    """`workers` clients per gateway, each sending again as soon as answered, for `seconds`;
    a refused one pauses 50 ms (it would honour a longer retry-after)."""
    deadline = load.started + seconds

    async def worker(session: aiohttp.ClientSession, url: str) -> None:
        index = 0
        while time.monotonic() < deadline:
            status = await request(session, url, index)
            load.statuses.append(status)
            index += 1
            if status != 200:
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session, url) for url in urls for _ in range(workers)))


def share(org: Organization, axis: str, limit: int, start: float, end: float) -> float:
    """What `org` was charged on `axis` in [start, end), as a share of `limit` per minute."""
    totals = org.charged_in(start, end)
    used = {"requests": totals.requests, "input": totals.input, "output": totals.output}[axis]
    return used / (limit * (end - start) / 60)


async def test_two_keys_of_one_organization_share_its_requests_per_minute(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    """Two keys of one organisation at 1.5x its RPM between them: the fleet sends it >= 90%
    of its RPM in the steady state, and the API refuses none."""
    rpm = 120
    org = fake_upstream.add_organization(KEYS, rpm=rpm)
    limits = f"""
queue: {{max_wait_seconds: 2}}
groups:
  - {{name: sonnet, models: ["claude-sonnet-*"], requests_per_minute: {rpm}, burst_seconds: 5}}
"""
    load = Load()
    async with fleet(tmp_path, fake_upstream, redis_server, limits) as urls:
        load.started = time.monotonic()
        await at_rate(
            urls, 1.5 * rpm / 60, 20,
            lambda s, url, i: send(s, url, KEYS[i % 2], body_of(), max_wait=2),
            load,
        )  # fmt: skip
    end = load.started + 20
    used = share(org, "requests", rpm, end - 10, end)
    print(f"\nkeys share RPM: {used:.1%} of RPM in the last 10 s; {load.count(429)} local 429s")
    assert (0, True) == (fake_upstream.rejected_429, used >= 0.9)


@pytest.mark.parametrize(
    ("reservation", "max_wait"),
    [("estimate", 5.0), ("estimate", 0.0), ("max_tokens", 5.0)],
    ids=["queueing", "not-queueing", "max_tokens-reserved-queueing"],
)
async def test_output_charged_as_generated_fills_otpm_when_max_tokens_is_ten_times_it(
    tmp_path: Path,
    fake_upstream: FakeUpstream,
    redis_server: RedisServer,
    reservation: str,
    max_wait: float,
) -> None:
    """Clients asking max_tokens 1,000 for 100-token answers, queueing or not: >= 90% of the
    organisation's OTPM in the steady state, no 429 from the API. Even when max_tokens is
    reserved, the queue sees each settlement's refund at once and fills the limit."""
    otpm = 60_000
    org = fake_upstream.add_organization(KEYS, otpm=otpm)
    limits = f"""
queue: {{max_wait_seconds: 5}}
groups:
  - {{name: sonnet, models: ["claude-sonnet-*"], output_tokens_per_minute: {otpm},
      burst_seconds: 5, output_reservation: {reservation}}}
"""
    load = Load()
    async with fleet(tmp_path, fake_upstream, redis_server, limits) as urls:
        load.started = time.monotonic()
        await back_to_back(
            urls, 6, 16,
            lambda s, url, i: send(
                s, url, KEYS[i % 2], body_of(max_tokens=1000), max_wait=max_wait, output=100
            ),
            load,
        )  # fmt: skip
    end = load.started + 16
    used = share(org, "output", otpm, end - 8, end)
    print(
        f"\nmax_tokens 10x, {reservation} reserved, max-wait {max_wait:g}: "
        f"{used:.1%} of OTPM in the last 8 s"
    )
    assert (0, True) == (fake_upstream.rejected_429, used >= 0.9)


async def test_a_burst_of_long_answers_among_short_ones_is_never_over_admitted(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    """Streams of 10-token answers, then of 1,000-token answers, then short ones again: the
    output charged as it is generated keeps the fleet within OTPM, no 429 from the API."""
    otpm = 60_000
    org = fake_upstream.add_organization(KEYS, otpm=otpm)
    fake_upstream.default_stream = Stream(chunk_delay=0.002)  # the API generates over time
    fake_upstream.tokens_per_delta = 16  # and sends a few tokens a delta
    limits = f"""
queue: {{max_wait_seconds: 5}}
groups:
  - {{name: sonnet, models: ["claude-sonnet-*"], output_tokens_per_minute: {otpm}}}
"""
    load = Load()

    def output_at(now: float) -> int:
        return 1_000 if 5 <= now - load.started < 11 else 10

    async with fleet(tmp_path, fake_upstream, redis_server, limits) as urls:
        load.started = time.monotonic()
        await back_to_back(
            urls, 6, 16,
            lambda s, url, i: send(
                s, url, KEYS[i % 2], body_of(max_tokens=2000, stream=True), max_wait=5,
                output=output_at(time.monotonic()),
            ),
            load,
        )  # fmt: skip
    total = org.charged_in()
    print(
        f"\nburst of long answers: {total.output:,} output tokens, {load.count(200)} answers, "
        f"{load.count(429)} local 429s, {fake_upstream.rejected_429} upstream 429s"
    )
    assert (0, True) == (fake_upstream.rejected_429, load.count(200) > 100)


async def test_max_tokens_far_above_the_output_limit_is_served_and_fills_it(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    """max_tokens 48,000 against 6,000 OTPM (8x the bucket), 200-token answers: served,
    and a stream of them reaches >= 80% of OTPM, no 429 from the API."""
    otpm = 6_000
    org = fake_upstream.add_organization(KEYS, otpm=otpm)
    limits = f"""
queue: {{max_wait_seconds: 10}}
groups:
  - {{name: sonnet, models: ["claude-sonnet-*"], output_tokens_per_minute: {otpm},
      burst_seconds: 10}}
"""
    load = Load()
    async with fleet(tmp_path, fake_upstream, redis_server, limits) as urls:
        load.started = time.monotonic()
        await back_to_back(
            urls, 2, 20,
            lambda s, url, i: send(
                s, url, KEYS[i % 2], body_of(max_tokens=48_000, stream=True), max_wait=10,
                output=200,
            ),
            load,
        )  # fmt: skip
    end = load.started + 20
    used = share(org, "output", otpm, end - 10, end)
    print(f"\nmax_tokens 8x OTPM: {used:.1%} of OTPM in the last 10 s; {load.count(413)} 413s")
    assert (0, 0, True) == (fake_upstream.rejected_429, load.count(413), used >= 0.8)


async def test_a_cached_prompt_is_admitted_for_what_the_api_charges(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    """A 40k-token cached prompt plus 100 new tokens, 1 a second under 100k ITPM: the API
    would take every one (cache reads are free); >= 80% are admitted, none refused upstream."""
    itpm = 100_000
    fake_upstream.add_organization(KEYS, itpm=itpm)
    fake_upstream.usage.update(input_tokens=100, cache_read_input_tokens=40_000)
    system = [{"type": "text", "text": "x" * 160_000, "cache_control": {"type": "ephemeral"}}]
    limits = f"""
groups:
  - {{name: sonnet, models: ["claude-sonnet-*"], input_tokens_per_minute: {itpm}}}
"""
    load = Load()
    async with fleet(tmp_path, fake_upstream, redis_server, limits) as urls:
        load.started = time.monotonic()
        body = body_of(system=system, messages=[{"role": "user", "content": "y" * 400}])
        await at_rate(
            urls, 1.0, 30, lambda s, url, i: send(s, url, KEYS[i % 2], body, max_wait=0), load
        )
    admitted = load.count(200) / len(load.statuses)
    print(f"\ncached prompt: {admitted:.0%} of {len(load.statuses)} admitted")
    assert (0, True) == (fake_upstream.rejected_429, admitted >= 0.8)


async def test_learned_limits_are_shared_by_an_alias_and_its_dated_id(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    """Learning the limits from the API's headers, clients alternating an alias and its dated
    id at 6x the pool's 30 RPM draw on one learned pool: what the API takes (its minute's
    bucket and 20 s of refill) is admitted, and nothing more (no 429 from the API)."""
    rpm, rate, seconds = 30, 3.0, 20
    fake_upstream.add_organization(KEYS, rpm=rpm)
    load = Load()
    async with fleet(tmp_path, fake_upstream, redis_server, None, learn_limits="true") as urls:
        load.started = time.monotonic()
        await at_rate(
            urls, rate, seconds,
            lambda s, url, i: send(
                s, url, KEYS[i % 2], body_of(model=(MODEL, DATED)[i % 2]), max_wait=0
            ),
            load,
        )  # fmt: skip
    accepted = rpm + rpm * seconds / 60  # what the API's bucket could take in the run
    admitted = load.count(200)
    print(f"\nalias and dated id: {admitted} admitted of {accepted:.0f} the API could take")
    assert (0, True) == (fake_upstream.rejected_429, admitted >= 0.8 * accepted)
