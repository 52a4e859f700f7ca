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
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.commands.core import AsyncScript
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
    """redis-py (a standalone pool, a Cluster, or fakeredis) as a `RedisClient`."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client
        self._scripts: dict[bytes, AsyncScript] = {}

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        registered = self._scripts.get(script.sha)
        if registered is None:  # AsyncScript reloads on NOSCRIPT, on every Cluster primary
            registered = self._client.register_script(script.source)
            self._scripts[script.sha] = registered
        return await registered(keys=keys, args=args)

    async def script_load(self, script: Script) -> None:
        await self._client.script_load(script.source)

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

    The pipelined client keeps one persistent connection. redis-py's Cluster client
    discovers the other nodes; its standalone pool is bounded at `max_connections` per node,
    so a burst waits briefly for a free connection instead of opening one per request.
    `timeout` bounds connecting and every command, so a hung server fails fast.
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
        return RedisPyClient(RedisCluster.from_url(url, **settings))
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
