"""Fixtures for the limits tests: a fake clock, every backend, a real redis-server, and the
sonnet group (60 RPM / 6,000 ITPM) the limiter tests admit against."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import fakeredis
import pytest
import redis.asyncio

from gateway.limits import (
    Admission,
    Admitted,
    BucketSpec,
    Cost,
    Dimension,
    GroupLimits,
    LimitBackend,
    Limiter,
    LimitsConfig,
    MemoryBackend,
)
from gateway.limits.redis_backend import RedisBackend
from tests.support.fake_clock import FakeClock
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.redis_server import RedisServer

SCOPE = "k1"
GROUP = "sonnet"
ALL_BACKENDS = [
    "memory",
    "fakeredis",
    pytest.param("redis", marks=pytest.mark.redis),  # from_url: the RedisWire transport
    pytest.param("redis-py", marks=pytest.mark.redis),  # the redis-py transport, same server
]
CLUSTER_BACKENDS = [pytest.param("redis-cluster3", marks=pytest.mark.redis)]
"""Three masters and their replicas: for suites that provide a `redis_cluster3` fixture
(tests/e2e/test_redis_cluster.py), so the default run starts no cluster."""

MODEL = "claude-sonnet-4-5"
"""A model of the sonnet group, for the limiter tests."""
SONNET = GroupLimits(
    name="sonnet",
    models=("claude-sonnet-4*",),
    requests_per_minute=60,
    input_tokens_per_minute=6_000,
)
ONE_REQUEST = Cost(requests=1)


def bucket(
    dimension: Dimension, limit: int, *, scope: str = SCOPE, headroom: float = 0.0
) -> BucketSpec:
    """A bucket of the test scope and group."""
    return BucketSpec.create(scope, GROUP, dimension, limit, headroom=headroom)


def limits(**overrides: object) -> LimitsConfig:
    """The sonnet group at 60 RPM / 6,000 ITPM, no headroom, plus `overrides`."""
    fields: dict[str, object] = {"headroom": 0.0, "groups": (SONNET,), **overrides}
    return LimitsConfig.model_validate(fields)


async def admit(
    limiter: Limiter, cost: Cost = ONE_REQUEST, max_wait: float | None = None
) -> Admission:
    """Admit `cost` for the test scope and the sonnet model."""
    return await limiter.admit(scope=SCOPE, model=MODEL, cost=cost, max_wait=max_wait)


async def admitted(limiter: Limiter, cost: Cost = ONE_REQUEST) -> Admitted:
    """Admit `cost` and insist it was admitted."""
    admission = await admit(limiter, cost)
    assert isinstance(admission, Admitted), admission
    return admission


@asynccontextmanager
async def hung_server() -> AsyncIterator[str]:
    """The URL of a server on 127.0.0.1 that accepts connections and never answers."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock at t=1000 s."""
    return FakeClock()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client on the real server, after FLUSHALL."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@asynccontextmanager
async def open_backend(
    kind: str, clock: FakeClock, request: pytest.FixtureRequest
) -> AsyncIterator[LimitBackend]:
    """A fresh, empty backend of `kind`: memory, fakeredis, the real server through
    `RedisWire` (redis) or redis-py (redis-py), or the `redis_cluster3` fixture's three-master
    Cluster through redis-py's cluster client (redis-cluster3)."""
    if kind == "memory":
        opened: LimitBackend = MemoryBackend(clock)
    elif kind == "fakeredis":
        opened = RedisBackend(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))
    elif kind == "redis-cluster3":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster3")
        await asyncio.to_thread(cluster.flushall)
        opened = RedisBackend.from_url(cluster.url, cluster=True)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        admin = redis.asyncio.Redis.from_url(server.url)
        await admin.flushall()
        await admin.aclose()
        if kind == "redis":
            opened = RedisBackend.from_url(server.url)
        else:
            opened = RedisBackend(redis.asyncio.Redis.from_url(server.url))
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture(params=ALL_BACKENDS)
async def backend(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[LimitBackend]:
    """Each backend in turn, empty, on the test's fake clock."""
    async with open_backend(request.param, clock, request) as opened:
        yield opened
