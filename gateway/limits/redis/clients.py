"""The Redis clients the limiter can run on, behind one small seam, and the one place that
picks between them.

`RedisClient` is what `RedisBackend` needs: `evalsha` (loading the script on NOSCRIPT),
`script_load`, `aclose`; `Subscription` is what its queue wake-ups need: one channel's
messages. Two implementations of each:

- the pipelined client, `RedisWire` and `WireSubscription` (`wire.py`): a standalone
  `redis://` or `unix://` server, where the limiter's per-request CPU matters most (the
  default, `pipelined`);
- redis-py (`redis_py.py`): Cluster, `rediss://` (TLS), injected clients such as fakeredis in
  tests, and any URL when the operator asks for it (`redis-py`), so the two can be compared
  on the same server. It is imported only then: a gateway on the pipelined client never
  loads redis-py (about 9 MB of memory, #18).

Errors: `WireError` and `OSError` from the pipelined client, `RedisPyError` (redis-py's own
chained) from redis-py; `CLIENT_ERRORS` names them for the backend, which maps them to
`LimitBackendError`. Nothing here imports the rest of the gateway.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, cast

from gateway.limits.redis.wire import Address, RedisWire, Script, WireError, WireSubscription

ClientKind = Literal["pipelined", "redis-py"]


class RedisPyError(Exception):
    """redis-py failed (its `RedisError` is the `__cause__`): raised by `redis_py.py`, named
    here so that catching it needs no redis-py."""


CLIENT_ERRORS = (RedisPyError, WireError, OSError)
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
        from gateway.limits.redis import redis_py  # noqa: PLC0415 (redis-py only when used)

        redis_py.check_url(url)


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
    from gateway.limits.redis import redis_py  # noqa: PLC0415 (redis-py only when used)

    return redis_py.open_client(
        url, cluster=cluster, timeout=timeout, max_connections=max_connections
    )


def adapted(client: object) -> tuple[RedisClient, SubscriptionOpener | None]:
    """`client` as a `RedisClient` and its subscriptions' opener (None: it has none): a
    redis-py client (or fakeredis, its subclass) is wrapped, any other is taken as it is.
    Nothing can be a redis-py client before redis-py was imported, so that import is not
    made here for a client of the gateway's own."""
    redis = sys.modules.get("redis.asyncio")
    if redis is not None and isinstance(client, redis.Redis | redis.RedisCluster):
        from gateway.limits.redis import redis_py  # noqa: PLC0415 (redis-py is loaded already)

        return redis_py.adapted(client)
    return cast(RedisClient, client), None


class Subscription(Protocol):
    """Protocol: one channel's messages, on a connection of its own."""

    async def subscribe(self, channel: str) -> None:
        """Subscribe; return once Redis confirmed it. Raise the client's own errors."""
        ...

    async def message(self) -> bytes:
        """The next message on the channel; raise the client's errors once the connection
        is lost."""
        ...

    async def aclose(self) -> None:
        """Close the subscription's connection."""
        ...


SubscriptionOpener = Callable[[], Subscription]
"""Opens a new, unsubscribed `Subscription` (each on a fresh connection)."""
RESUBSCRIBE_SECONDS = 1.0
"""Pause before subscribing again after the subscription's connection was lost."""


def subscriptions(
    url: str, *, cluster: bool = False, kind: ClientKind = "pipelined", timeout: float = 1.0
) -> SubscriptionOpener:
    """A `SubscriptionOpener` for `url`, on the client `open_client` picks for it (a
    Cluster's seed node: a Cluster forwards PUBLISH to every node)."""
    if pipelined(url, cluster=cluster, kind=kind):
        address = Address.from_url(url)
        return lambda: WireSubscription(address, timeout=timeout)
    from gateway.limits.redis import redis_py  # noqa: PLC0415 (redis-py only when used)

    return redis_py.subscriptions(url, timeout=timeout)


async def listen(
    opener: SubscriptionOpener,
    channel: str,
    on_message: Callable[[bytes], None],
    on_subscribed: Callable[[], None] = lambda: None,
) -> None:
    """Deliver every message of `channel` until cancelled, subscribing again (after a short
    pause) whenever the connection is lost; `on_subscribed` hears of each subscription.
    Neither callback may raise."""
    while True:
        subscription = opener()
        try:
            await subscription.subscribe(channel)
            on_subscribed()
            while True:
                on_message(await subscription.message())
        except CLIENT_ERRORS:
            await asyncio.sleep(RESUBSCRIBE_SECONDS)  # noqa: TID251 (no clock here: a pause)
        finally:
            await subscription.aclose()
