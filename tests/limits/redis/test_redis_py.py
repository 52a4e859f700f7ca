"""`redis_py.py`: redis-py behind the limiter's seam. Its errors leave as `RedisPyError` (the
original chained), its subscriptions hear a channel, and only redis-py clients are adapted."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.limits.redis import RedisPyError, Script
from gateway.limits.redis.redis_py import RedisPyClient, adapted, open_client, subscriptions
from tests.support.redis_server import RedisServer

ECHO = Script(b"return ARGV[1]")


async def test_redis_py_errors_leave_as_redis_py_error() -> None:
    """A refused connection, on a script call or a SCRIPT LOAD: RedisPyError, caused by
    redis-py's own error, so the backend's `except CLIENT_ERRORS` needs no redis-py."""
    client = open_client(RedisServer().url, cluster=False, timeout=0.5, max_connections=2)
    try:
        with pytest.raises(RedisPyError) as calling:
            await client.evalsha(ECHO, [], ["x"])
        with pytest.raises(RedisPyError) as loading:
            await client.script_load(ECHO)
    finally:
        await client.aclose()
    assert [RedisConnectionError, RedisConnectionError] == [
        type(calling.value.__cause__),
        type(loading.value.__cause__),
    ]


@pytest.mark.redis
async def test_scripts_and_subscriptions_run_on_a_real_server(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    """EVALSHA (loading the script itself) answers; a subscription hears the channel."""
    client = open_client(redis_server.url, cluster=False, timeout=2.0, max_connections=2)
    subscription = subscriptions(redis_server.url, timeout=2.0)()
    try:
        echoed = await client.evalsha(ECHO, [], ["hello"])
        await subscription.subscribe("news")
        await redis_client.publish("news", b"one")
        heard = await asyncio.wait_for(subscription.message(), 5)
    finally:
        await subscription.aclose()
        await client.aclose()
    assert (b"hello", b"one") == (echoed, heard)


async def test_only_redis_py_clients_are_adapted() -> None:
    """A redis-py client is wrapped with its own subscriptions; anything else is refused."""
    plain = redis.asyncio.Redis.from_url("redis://127.0.0.1:9/0")
    try:
        wrapped, opener = adapted(plain)
        assert isinstance(wrapped, RedisPyClient)
        assert opener is not None
        with pytest.raises(TypeError, match="not a redis-py client"):
            adapted(object())
    finally:
        await plain.aclose()
