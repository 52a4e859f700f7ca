"""`RedisBackend`: the fleet-wide `LimitBackend`, one EVALSHA per reserve, adjust or cap.

The scripts (`lua/*.lua`, package data) are registered once and run with EVALSHA; redis-py's
`AsyncScript` loads them again on NOSCRIPT (after a restart, failover or SCRIPT FLUSH), on a
single server and on Cluster alike (there SCRIPT LOAD goes to every primary). All keys of
one call share the `{scope:group}` hash tag, so the call lands in one Cluster slot.

Every redis error (connection, timeout, script) leaves this module as `LimitBackendError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.limits.backend import LimitBackendError
from gateway.limits.model import (
    EXPIRY_MARGIN_MS,
    BucketSpec,
    Cost,
    NeverFits,
    Refused,
    Reservation,
    changes,
    check_request,
)

_REFUSED = 1


def _script(name: str) -> str:
    """A Lua script shipped in `gateway/limits/lua/`, after the shared `bucket.lua` prelude."""
    folder = files("gateway.limits") / "lua"
    prelude = (folder / "bucket.lua").read_text(encoding="utf-8")
    return prelude + (folder / name).read_text(encoding="utf-8")


def _now_arg(now: float | None) -> str:
    """An explicit test time, exact (repr round-trips), or "" for Redis TIME."""
    return "" if now is None else repr(float(now))


def _bucket_args(bucket: BucketSpec, amount: int) -> list[str]:
    return [repr(bucket.capacity), repr(bucket.rate), str(amount)]


class RedisBackend:
    """Token buckets in Redis (standalone or Cluster), shared by every gateway instance."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        self._client = client
        self._reserve = client.register_script(_script("reserve.lua"))
        self._adjust = client.register_script(_script("adjust.lua"))
        self._cap = client.register_script(_script("cap.lua"))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        timeout: float = 1.0,
        max_connections: int = 16,
        **options: Any,
    ) -> RedisBackend:
        """A backend on `url` (`redis://`, `rediss://`; a seed node's URL when `cluster`).

        `cluster=True` uses the Cluster client, which discovers the other nodes; `timeout`
        bounds connecting and every command, so a hung server fails fast. Connections are
        pooled and bounded (`max_connections` per node): a burst of admissions waits briefly
        for a free connection instead of opening one connection per request, which under
        load turns into a storm of slow connects and spurious timeouts.
        """
        settings: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "max_connections": max_connections,
            **options,
        }
        if cluster:
            return cls(RedisCluster.from_url(url, **settings))
        pool = BlockingConnectionPool.from_url(url, timeout=timeout, **settings)
        return cls(Redis.from_pool(pool))

    async def reserve(
        self,
        buckets: Sequence[BucketSpec],
        cost: Cost,
        *,
        max_wait: float,
        now: float | None = None,
    ) -> Reservation | Refused | NeverFits:
        """Debit every bucket or none; see `LimitBackend.reserve`."""
        never = check_request(buckets, cost)
        if never is not None:
            return never
        args = [_now_arg(now), repr(float(max_wait)), str(EXPIRY_MARGIN_MS)]
        for bucket in buckets:
            args += _bucket_args(bucket, cost.on(bucket.dimension))
        reply = await self._run(self._reserve, [b.key for b in buckets], args)
        try:
            return _outcome(buckets, cost, reply)
        except (TypeError, ValueError, IndexError) as exc:
            raise LimitBackendError(f"unexpected reserve reply: {reply!r}") from exc

    async def adjust(
        self, reservation: Reservation, delta: Cost, *, now: float | None = None
    ) -> None:
        """Charge or refund every bucket of a reservation; see `LimitBackend.adjust`."""
        touched = changes(reservation.buckets, delta)
        if not touched:
            return
        args = [_now_arg(now), str(EXPIRY_MARGIN_MS)]
        for bucket, amount in touched:
            args += _bucket_args(bucket, amount)
        await self._run(self._adjust, [bucket.key for bucket, _ in touched], args)

    async def cap(
        self, buckets: Sequence[BucketSpec], ceilings: Sequence[float], *, now: float | None = None
    ) -> None:
        """Lower each bucket to at most its ceiling; see `LimitBackend.cap`."""
        if not buckets:
            return
        args = [_now_arg(now), str(EXPIRY_MARGIN_MS)]
        for bucket, ceiling in zip(buckets, ceilings, strict=True):
            args += [repr(bucket.capacity), repr(bucket.rate), repr(float(ceiling))]
        await self._run(self._cap, [bucket.key for bucket in buckets], args)

    async def ping(self) -> None:
        """Return when Redis answers PING."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise LimitBackendError(f"redis ping failed: {exc}") from exc

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._client.aclose()

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        """Run one registered script; map every redis failure to LimitBackendError."""
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimitBackendError(f"redis script failed: {exc}") from exc


def _outcome(buckets: Sequence[BucketSpec], cost: Cost, reply: Any) -> Reservation | Refused:
    """Parse reserve.lua's reply: `{0, wait_ms, levels...}` or `{1, i, wait_ms, level}`."""
    if int(reply[0]) == _REFUSED:
        return Refused(buckets[int(reply[1]) - 1], int(reply[2]) / 1000, float(reply[3]))
    levels = tuple(float(level) for level in reply[2:])
    if len(levels) != len(buckets):
        raise ValueError("one level per bucket expected")
    return Reservation(tuple(buckets), cost, int(reply[1]) / 1000, levels)
