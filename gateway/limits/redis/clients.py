"""The Redis clients the limiter can run on, behind one small seam, and the one place that
picks between them.

`RedisClient` is what `RedisBackend` needs: `evalsha` (loading the script on NOSCRIPT),
`script_load`, `aclose`. Two implementations:

- `RedisWire` (`wire.py`), the pipelined client: a standalone `redis://` or `unix://` server,
  where the limiter's per-request CPU matters most (the default, `pipelined`);
- redis-py, wrapped by `RedisPyClient`: Cluster, `rediss://` (TLS), injected clients such as
  fakeredis in tests, and any URL when the operator asks for it (`redis-py`), so the two can
  be compared on the same server.

Errors stay the client's own (`RedisError`, `WireError`, `OSError`); `CLIENT_ERRORS` names
them for the backend, which maps them to `LimitBackendError`. Nothing here imports the rest
of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.limits.redis.wire import Address, RedisWire, Script, WireError

ClientKind = Literal["pipelined", "redis-py"]
CLIENT_ERRORS = (RedisError, WireError, OSError)
"""Everything a client raises when Redis fails (connection, timeout, error reply)."""
_WIRE_SCHEMES = ("redis://", "unix://")


class RedisClient(Protocol):
    """Protocol: what the limiter's backend needs from a Redis client."""

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run `script` (loading it on NOSCRIPT); raise the client's own errors."""
        ...

    async def script_load(self, script: Script) -> None:
        """SCRIPT LOAD `script` (on every primary of a Cluster)."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


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
            return await registered(keys=keys, args=args)

    async def script_load(self, script: Script) -> None:
        async with self._turn():
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
            raise RedisConnectionError(f"no Redis connection free within {self._wait} s") from None
        try:
            yield
        finally:
            self._turns.release()

    async def aclose(self) -> None:
        await self._client.aclose()


def pipelined(url: str, *, cluster: bool, kind: ClientKind) -> bool:
    """Whether `open_client` gives `url` the pipelined client."""
    return kind == "pipelined" and not cluster and url.startswith(_WIRE_SCHEMES)


def check_url(url: str, *, cluster: bool = False, kind: ClientKind = "pipelined") -> None:
    """Raise `ValueError`, in words fit for an operator, when `open_client` could not use `url`.

    It runs the parser the chosen client will run, so `check-config` rejects exactly what
    `serve` would. The message never contains the URL (it may hold a password).
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if cluster and scheme == "unix":
        raise ValueError("a Redis Cluster is reached with redis:// or rediss://, not unix://")
    if pipelined(url, cluster=cluster, kind=kind):
        Address.from_url(url)
    else:
        parse_url(url)


def open_client(
    url: str,
    *,
    cluster: bool = False,
    kind: ClientKind = "pipelined",
    timeout: float = 1.0,
    max_connections: int = 16,
) -> RedisClient:
    """A client for `url` (`redis://`, `unix://`, `rediss://`; a seed node's when `cluster`).

    The pipelined client keeps one persistent connection. redis-py's pools are bounded at
    `max_connections` per node, so a burst waits briefly for a free connection instead of
    opening one per request (on a Cluster, for one of `max_connections` turns, which also
    bounds each node's pool). `timeout` bounds connecting, every command and that wait, so
    a hung server fails fast.

    The Cluster client follows MOVED, ASK and TRYAGAIN redirects but never retries a failed
    command itself (redis-py's default: 10 attempts, with backoff and topology refreshes,
    seconds per call while a master fails over): an EVALSHA that timed out may have run, so
    running it again could debit every bucket twice, and the limiter's breaker and
    `redis_failure` policy answer a failing node at once. The next call refreshes the slots.
    """
    check_url(url, cluster=cluster, kind=kind)
    if pipelined(url, cluster=cluster, kind=kind):
        return RedisWire.from_url(url, timeout=timeout)
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


PubSubOpener = Callable[[], PubSub]
"""Opens a redis-py `PubSub` on a connection of its own (subscriptions block a connection)."""
RESUBSCRIBE_SECONDS = 1.0
"""Pause before subscribing again after the subscription's connection was lost."""


def pubsub_opener(url: str, *, timeout: float = 1.0) -> PubSubOpener:
    """A `PubSubOpener` for `url` (a Cluster's seed node too: a Cluster forwards PUBLISH to
    every node). Its connection never times out reading: a quiet channel is no failure."""

    def opener() -> PubSub:
        return Redis.from_url(url, socket_connect_timeout=timeout).pubsub()

    return opener


async def listen(
    opener: PubSubOpener,
    channel: str,
    on_message: Callable[[bytes], None],
    on_subscribed: Callable[[], None] = lambda: None,
) -> None:
    """Deliver every message of `channel` until cancelled, subscribing again (after a short
    pause) whenever the connection is lost; `on_subscribed` hears of each subscription.
    Neither callback may raise."""
    while True:
        pubsub = opener()
        try:
            await pubsub.subscribe(channel)
            on_subscribed()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None and message.get("type") == "message":
                    on_message(message["data"])
        except CLIENT_ERRORS:
            await asyncio.sleep(RESUBSCRIBE_SECONDS)  # noqa: TID251 (no clock here: a pause)
        finally:
            await pubsub.aclose()
