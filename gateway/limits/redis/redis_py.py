"""redis-py behind the limiter's seam: `RedisPyClient` and its subscription, for Cluster,
`rediss://` (TLS), injected clients (fakeredis in tests) and `GATEWAY_REDIS_CLIENT=redis-py`.

The one module of the gateway that imports redis-py, and `clients.py` imports it only when
one of those is asked for: redis-py with its command mixins, and the OpenTelemetry SDK it
loads when installed, is about 9 MB of a process's memory (#18), which a gateway on the
default pipelined client (`wire.py`) never needs. redis-py's errors leave this module as
`RedisPyError` (the original chained), so the callers' `except` clauses need no redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.limits.redis.clients import RedisPyError
from gateway.limits.redis.wire import Script

__all__ = [
    "RedisPyClient",
    "RedisPySubscription",
    "adapted",
    "check_url",
    "open_client",
    "subscriptions",
]


@contextlib.contextmanager
def _as_redis_py_error() -> Iterator[None]:
    """redis-py's `RedisError` leaves as `RedisPyError`, the original chained: what callers
    catch (`CLIENT_ERRORS`) must not need redis-py."""
    try:
        yield
    except RedisError as exc:
        raise RedisPyError(str(exc)) from exc


class RedisPyClient:
    """redis-py (a standalone pool, a Cluster, or fakeredis) as a `RedisClient`.

    `in_flight` bounds the calls running at once; a call beyond it waits up to `wait`
    seconds for its turn. redis-py's Cluster client has no blocking pool: a node whose
    connections are all busy raises `MaxConnectionsError` at once, so `open_client` queues a
    burst here instead (a standalone pool waits by itself).
    """

    def __init__(
        self, client: Redis | RedisCluster, *, in_flight: int | None = None, wait: float = 1.0
    ) -> None:
        self._client = client
        self._scripts: dict[bytes, AsyncScript] = {}
        self._turns = asyncio.Semaphore(in_flight) if in_flight else None
        self._wait = wait

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        registered = self._scripts.get(script.sha)
        if registered is None:  # AsyncScript reloads on NOSCRIPT, on every Cluster primary
            registered = self._client.register_script(script.source)
            self._scripts[script.sha] = registered
        async with self._turn():
            with _as_redis_py_error():
                return await registered(keys=keys, args=args)

    async def script_load(self, script: Script) -> None:
        async with self._turn():
            with _as_redis_py_error():
                await self._client.script_load(script.source)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Hold one of the `in_flight` turns for a call (nothing to hold without a bound)."""
        if self._turns is None:
            yield
            return
        try:
            async with asyncio.timeout(self._wait):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisPyError(f"no Redis connection free within {self._wait} s") from None
        try:
            yield
        finally:
            self._turns.release()

    async def aclose(self) -> None:
        await self._client.aclose()


def check_url(url: str) -> None:
    """Raise `ValueError` when redis-py could not parse `url` (its own message)."""
    parse_url(url)


def open_client(url: str, *, cluster: bool, timeout: float, max_connections: int) -> RedisPyClient:
    """redis-py for `url`; see `clients.open_client` for the bounds and why a Cluster
    command is never retried by redis-py itself."""
    settings: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_connections": max_connections,
    }
    if cluster:
        never_retry = Retry(NoBackoff(), 0)
        client = RedisCluster.from_url(url, retry=never_retry, **settings)
        return RedisPyClient(client, in_flight=max_connections, wait=timeout)
    pool = BlockingConnectionPool.from_url(url, timeout=timeout, **settings)
    return RedisPyClient(Redis.from_pool(pool))


class RedisPySubscription:
    """A redis-py `PubSub` as a `Subscription`: one channel's messages, redis-py's errors
    as `RedisPyError`."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    async def subscribe(self, channel: str) -> None:
        with _as_redis_py_error():
            await self._pubsub.subscribe(channel)

    async def message(self) -> bytes:
        with _as_redis_py_error():
            while True:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                if message is not None and message.get("type") == "message":
                    data: bytes = message["data"]
                    return data

    async def aclose(self) -> None:
        await self._pubsub.aclose()


def subscriptions(url: str, *, timeout: float) -> Callable[[], RedisPySubscription]:
    """Opens subscriptions on `url` (a Cluster's seed node too: a Cluster forwards PUBLISH
    to every node), each on a connection of its own that never times out reading."""

    def opener() -> RedisPySubscription:
        return RedisPySubscription(Redis.from_url(url, socket_connect_timeout=timeout).pubsub())

    return opener


def adapted(client: object) -> tuple[RedisPyClient, Callable[[], RedisPySubscription] | None]:
    """An injected redis-py client (or fakeredis) as a `RedisClient`, with its own
    subscriptions where it has them (a Cluster client has no `pubsub`)."""
    if isinstance(client, RedisCluster):
        return RedisPyClient(client), None
    if not isinstance(client, Redis):
        raise TypeError(f"not a redis-py client: {type(client).__name__}")

    def opener() -> RedisPySubscription:
        return RedisPySubscription(client.pubsub())

    return RedisPyClient(client), opener
