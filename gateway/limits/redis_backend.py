"""`RedisBackend`: the fleet-wide `LimitBackend`, one EVALSHA per reserve, adjust or cap.

The scripts (`lua/*.lua`, package data) run with EVALSHA and are loaded again on NOSCRIPT
(after a restart, failover or SCRIPT FLUSH). All keys of one call share the `{scope:group}`
hash tag, so the call lands in one Cluster slot.

It runs on any `RedisClient` (`limits/redis/`): the pipelined `RedisWire` for a standalone
`redis://` or `unix://` server, redis-py for Cluster, `rediss://`, injected clients (fakeredis
in tests) or when `GATEWAY_REDIS_CLIENT=redis-py`. `from_url` lets `open_client` pick.

Settlements never cost a request a round trip: `adjust` queues them per `{scope:group}`
(`deferred.py`) and they ride on that tag's next reserve, which `reserve.lua` applies first,
or go in one adjust call when no reserve has taken them within `settle_delay` seconds.
Under load that makes one EVALSHA per request, settlement included.

Every failure (connection, timeout, script) leaves this module as `LimitBackendError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import structlog

from gateway.clock import Clock, SystemClock
from gateway.limits.backend import (
    BackendObserver,
    ChangeListener,
    LimitBackendError,
    ignore_backend_call,
)
from gateway.limits.deferred import DeferredSettlements, Settlement
from gateway.limits.learning import (
    ALPHA,
    COUNT_CAP,
    LEARNED_TTL,
    Figures,
    Lesson,
    Mean,
    learning_key,
)
from gateway.limits.model import (
    EXPIRY_MARGIN_MS,
    BucketSpec,
    Cost,
    Dimension,
    NeverFits,
    Refused,
    Reservation,
    changes,
    check_request,
)
from gateway.limits.redis import (
    CLIENT_ERRORS,
    ClientKind,
    Script,
    SubscriptionOpener,
    adapted,
    listen,
    open_client,
    subscriptions,
)

log = structlog.get_logger(__name__)
_REFUSED = 1
SETTLE_DELAY = 0.005
"""Seconds a settlement waits for its tag's next admission before it is sent alone: far
below any bucket's refill time, and above the gap between admissions under load."""
_MARGIN = str(EXPIRY_MARGIN_MS)
_ENCODED_MAX = 4_096
"""Buckets whose key and rates are kept encoded; beyond this the cache starts over."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One admission's buckets as reserve.lua takes them: keys, then per bucket its
    dimension (to pick the cost's amount), capacity and rate."""

    buckets: Sequence[BucketSpec]
    """Held so that no other object can take its `id` while the plan is cached."""
    keys: tuple[str, ...]
    rows: tuple[tuple[Dimension, str, str], ...]


def _script(name: str) -> Script:
    """A Lua script shipped in `gateway/limits/lua/`, after the shared `bucket.lua` prelude."""
    folder = files("gateway.limits") / "lua"
    prelude = (folder / "bucket.lua").read_text(encoding="utf-8")
    return Script((prelude + (folder / name).read_text(encoding="utf-8")).encode())


_RESERVE, _ADJUST, _CAP = _script("reserve.lua"), _script("adjust.lua"), _script("cap.lua")
_LEARN = _script("learn.lua")
_ORGANIZATIONS = _script("organizations.lua")
_PROBE = _script("probe.lua")
_SPEND = _script("spend.lua")
SCRIPTS = (_RESERVE, _ADJUST, _CAP, _LEARN, _ORGANIZATIONS, _PROBE, _SPEND)
PROBE_KEY = "cgw:{probe}"
"""What `ping` writes (a minute's expiry); on a Cluster, one master's slot."""
CHANGES_CHANNEL = "cgw:changes"
"""Where the scripts publish changes of buckets in debt (`publish_changes`, bucket.lua)."""
ORGANIZATION_KEYS = ("cgw:{orgs}", "cgw:{orgs}:primary")
"""The fleet's key -> organisation hash and its primary organisation (one hash tag)."""
ORGANIZATIONS_TTL_MS = 7 * 86_400 * 1000
"""An organisation mapping no instance has synced for a week is forgotten."""
SPEND_KEY = "cgw:{spend}"
"""The fleet's ledger of tenants' spend (`ledger.py`)."""
SPEND_TTL_MS = 35 * 86_400 * 1000
"""A ledger no instance has synced for longer than a month is forgotten."""


def _now_arg(now: float | None) -> str:
    """An explicit test time, exact (repr round-trips), or "" for Redis TIME."""
    return "" if now is None else repr(float(now))


class RedisBackend:
    """Token buckets in Redis (standalone or Cluster), shared by every gateway instance."""

    def __init__(
        self,
        client: object,
        *,
        settle_delay: float = SETTLE_DELAY,
        on_backend_call: BackendObserver | None = None,
        clock: Clock | None = None,
        pubsub: SubscriptionOpener | None = None,
    ) -> None:
        """`client`: a `RedisClient`, or a redis-py one (fakeredis too), which is wrapped.
        `on_backend_call` hears of each settlement flush (`adjust`), timed on `clock`;
        reserves and caps are timed by their caller, the `Limiter`. `pubsub` opens the
        subscription to bucket changes (`on_change`); a redis-py client opens its own."""
        self._transport, own_subscriptions = adapted(client)
        self._pubsub = pubsub or own_subscriptions
        self._listeners: list[ChangeListener] = []
        self._listening: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set once subscribed to the fleet's bucket changes (tests wait for it)."""
        self._encoded: dict[BucketSpec, tuple[str, str, str]] = {}
        self._plans: dict[int, _Plan] = {}
        self._deferred = DeferredSettlements(self._flush, delay=settle_delay)
        self._observe = on_backend_call or ignore_backend_call
        self._clock = clock or SystemClock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        kind: ClientKind = "pipelined",
        timeout: float = 1.0,
        on_backend_call: BackendObserver | None = None,
    ) -> RedisBackend:
        """A backend on the client `open_client` picks for `url` (see `limits/redis/`)."""
        client = open_client(url, cluster=cluster, kind=kind, timeout=timeout)
        opener = subscriptions(url, cluster=cluster, kind=kind, timeout=timeout)
        return cls(client, on_backend_call=on_backend_call, pubsub=opener)

    async def reserve(
        self,
        buckets: Sequence[BucketSpec],
        cost: Cost,
        *,
        max_wait: float,
        now: float | None = None,
        floor: float = 0.0,
    ) -> Reservation | Refused | NeverFits:
        """Debit every bucket or none; see `LimitBackend.reserve`. The tag's queued
        settlements go along and are applied first."""
        never = check_request(buckets, cost)
        if never is not None:
            return never
        tag = buckets[0].hash_tag
        while self._deferred.flying(tag):  # a timer may send more while we wait for one
            await self._deferred.landed(tag)
        plan = self._plan(buckets)
        keys = list(plan.keys)
        args: list[str | int] = [
            _now_arg(now),
            repr(float(max_wait)),
            _MARGIN,
            len(buckets),
            repr(float(floor)),
        ]
        for dimension, capacity, rate in plan.rows:
            args += (capacity, rate, cost.on(dimension))
        carried = self._deferred.take(tag)
        self._carry(carried, keys, args)
        try:
            reply = await self._run(_RESERVE, keys, args)
        except LimitBackendError as exc:
            _lost(tag, carried, str(exc))
            raise
        except asyncio.CancelledError:  # the request left mid-call: Redis may have run it
            _lost(tag, carried, "admission cancelled before Redis answered; may be applied")
            raise
        try:
            outcome = _outcome(buckets, cost, reply)
        except (TypeError, ValueError, IndexError) as exc:
            raise LimitBackendError(f"unexpected reserve reply: {reply!r}") from exc
        if isinstance(outcome, Reservation) and outcome.wait > 0:
            self._watch()  # a request of this instance queues: hear what frees room
        return outcome

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener` for every change of a bucket in debt, fleet-wide: the scripts
        PUBLISH them on `CHANGES_CHANNEL`; this instance subscribes once one of its requests
        first queues (see `LimitBackend.on_change`)."""
        self._listeners.append(listener)

    def _watch(self) -> None:
        """Subscribe to the changes, once, in the background."""
        if self._listening is None and self._listeners and self._pubsub is not None:
            self._listening = asyncio.get_running_loop().create_task(
                listen(self._pubsub, CHANGES_CHANNEL, self._changed, self.listening.set)
            )

    def _changed(self, message: bytes) -> None:
        """`"<now> <key> <delta> ..."` from `publish_changes` (bucket.lua), to the listeners."""
        try:
            words = message.decode().split()
            at, pairs = float(words[0]), words[1:]
            changes = [(k, float(d)) for k, d in zip(pairs[::2], pairs[1::2], strict=True)]
        except (UnicodeDecodeError, ValueError, IndexError):
            log.warning("limits.bad_change_message", size=len(message))
            return
        for key, delta in changes:
            for listener in self._listeners:
                listener(key, delta, at)

    def adjust(self, reservation: Reservation, delta: Cost, *, now: float | None = None) -> None:
        """Charge or refund every bucket of a reservation; see `LimitBackend.adjust`.

        Returns at once. A refund goes with the tag's next reserve or cap, or alone after
        `settle_delay` (see `DeferredSettlements`): late, it only leaves room unused a moment.
        A charge (usage past a reservation, a stream's live output) is sent at once: other
        instances must not admit on room the API no longer has.
        """
        touched = changes(reservation.buckets, delta)
        if touched:
            charges = any(amount > 0 for _, amount in touched)
            self._deferred.add(touched[0][0].hash_tag, Settlement(touched, now), urgent=charges)

    async def cap(
        self, buckets: Sequence[BucketSpec], ceilings: Sequence[float], *, now: float | None = None
    ) -> None:
        """Lower each bucket to at most its ceiling; see `LimitBackend.cap`. The tag's
        queued settlements are applied first, so the ceiling has the last word."""
        if not buckets:
            return
        await self._deferred.settled(buckets[0].hash_tag)
        keys: list[str] = []
        args: list[str | int] = [_now_arg(now), _MARGIN]
        for bucket, ceiling in zip(buckets, ceilings, strict=True):
            key, capacity, rate = self._encode(bucket)
            keys.append(key)
            args += (capacity, rate, repr(float(ceiling)))
        await self._run(_CAP, keys, args)

    async def learn(self, group: str, lesson: Lesson, *, now: float | None = None) -> Figures:
        """Merge a lesson into the group's figures; see `LimitBackend.learn`. One key per
        group, whatever the scope; it expires on Redis's clock, so `now` is not used."""
        args: list[str | int] = [round(LEARNED_TTL * 1000), repr(ALPHA), COUNT_CAP]
        for low, high, seed, new in lesson.rows():
            args += (repr(low), repr(high), repr(seed.value), seed.count)
            args += (repr(new.total), new.count)
        reply = await self._run(_LEARN, [learning_key(group)], args)
        try:
            means = [Mean(float(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]
            return Figures(*means)
        except (TypeError, ValueError, IndexError) as exc:
            raise LimitBackendError(f"unexpected learn reply: {reply!r}") from exc

    async def share_organizations(
        self, learned: Mapping[str, str]
    ) -> tuple[str | None, dict[str, str]]:
        """One `organizations.lua` call; see `LimitBackend.share_organizations`."""
        args: list[str | int] = [ORGANIZATIONS_TTL_MS]
        for key_scope, org_id in learned.items():
            args += (key_scope, org_id)
        reply = await self._run(_ORGANIZATIONS, list(ORGANIZATION_KEYS), args)
        try:
            primary, flat = reply
            pairs = [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
        except (TypeError, ValueError) as exc:
            raise LimitBackendError(f"unexpected organizations reply: {reply!r}") from exc
        if isinstance(primary, bytes):
            primary = primary.decode()
        return primary, dict(zip(pairs[::2], pairs[1::2], strict=True))

    async def share_spend(
        self, charged: Mapping[str, int], periods: Sequence[str]
    ) -> dict[str, int]:
        """One `spend.lua` call; see `LimitBackend.share_spend`."""
        args: list[str | int] = [SPEND_TTL_MS, len(periods), *periods]
        for entry, amount in charged.items():
            args += (entry, amount)
        reply = await self._run(_SPEND, [SPEND_KEY], args)
        try:
            flat = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
            return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
        except (TypeError, ValueError, IndexError) as exc:
            raise LimitBackendError(f"unexpected spend reply: {reply!r}") from exc

    async def ping(self) -> None:
        """Return when Redis runs a script that writes: PING alone passes on a Redis that
        refuses every bucket update (OOM under `noeviction`, READONLY on a replica)."""
        try:
            await self._transport.evalsha(_PROBE, [PROBE_KEY], [repr(self._clock.now())])
        except CLIENT_ERRORS as exc:
            raise LimitBackendError(f"redis probe failed: {exc}") from exc

    async def load_scripts(self) -> int:
        """Load every script the limiter runs (a start-up probe: permissions, Lua support);
        return how many. Requests never need this: EVALSHA loads a missing script itself."""
        try:
            for script in SCRIPTS:
                await self._transport.script_load(script)
        except CLIENT_ERRORS as exc:
            raise LimitBackendError(f"redis SCRIPT LOAD failed: {exc}") from exc
        return len(SCRIPTS)

    async def flush(self) -> None:
        """Send every queued settlement now; return once all have landed (or failed)."""
        await self._deferred.drain()

    async def aclose(self) -> None:
        """Send queued settlements and let them land, then close the client's connections."""
        await self.flush()
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        await self._transport.aclose()

    async def _flush(self, tag: str, settlements: list[Settlement]) -> None:
        """One adjust.lua call for a tag's settlements that no reserve took; a failure is
        logged and counted, never raised (no request waits for this)."""
        keys: list[str] = []
        args: list[str | int] = ["", _MARGIN]
        self._carry(settlements, keys, args)
        started = self._clock.now()
        try:
            await self._run(_ADJUST, keys, args)
        except LimitBackendError as exc:
            self._observe("adjust", self._clock.now() - started, False)
            _lost(tag, settlements, str(exc))
        else:
            self._observe("adjust", self._clock.now() - started, True)

    def _carry(self, settlements: list[Settlement], keys: list[str], args: list[str | int]) -> None:
        """Append `settlements` as the scripts' `apply_carried` reads them: buckets not yet in
        `keys` join it (capacity and rate first), then each settlement's time and amounts."""
        if not settlements:
            args += (0, 0)
            return
        index = {key: position for position, key in enumerate(keys, start=1)}
        extra: list[str | int] = []
        entries: list[str | int] = [len(settlements)]
        for settlement in settlements:
            entries += (_now_arg(settlement.now), len(settlement.touched))
            for bucket, amount in settlement.touched:
                position = index.get(bucket.key)
                if position is None:
                    key, capacity, rate = self._encode(bucket)
                    keys.append(key)
                    position = index[key] = len(keys)
                    extra += (capacity, rate)
                entries += (position, amount)
        args.append(len(extra) // 2)
        args += extra
        args += entries

    def _encode(self, bucket: BucketSpec) -> tuple[str, str, str]:
        """A bucket's key, capacity and rate as the scripts take them (cached: buckets are
        rebuilt per request, but from a handful of distinct values)."""
        encoded = self._encoded.get(bucket)
        if encoded is None:
            if len(self._encoded) >= _ENCODED_MAX:
                self._encoded.clear()
            encoded = (bucket.key, repr(bucket.capacity), repr(bucket.rate))
            self._encoded[bucket] = encoded
        return encoded

    def _plan(self, buckets: Sequence[BucketSpec]) -> _Plan:
        """`buckets` encoded for reserve.lua. The limiter passes the same tuple for every
        admission of a (group, scope), so a tuple's plan is kept, found by `id`: no hashing
        of its specs per request. The plan holds its tuple, so no other object can take that
        `id` while the plan is kept. A list (a caller may change it) is encoded anew."""
        plan = self._plans.get(id(buckets))
        if plan is not None:
            return plan
        encoded = [self._encode(bucket) for bucket in buckets]
        plan = _Plan(
            buckets,
            tuple(key for key, _, _ in encoded),
            tuple(
                (bucket.dimension, capacity, rate)
                for bucket, (_, capacity, rate) in zip(buckets, encoded, strict=True)
            ),
        )
        if isinstance(buckets, tuple):
            if len(self._plans) >= _ENCODED_MAX:
                self._plans.clear()
            self._plans[id(buckets)] = plan
        return plan

    async def _run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        """Run one script; map every transport failure to LimitBackendError."""
        try:
            return await self._transport.evalsha(script, keys, args)
        except CLIENT_ERRORS as exc:
            raise LimitBackendError(f"redis script failed: {exc}") from exc


def _lost(tag: str, settlements: list[Settlement], error: str) -> None:
    """Settlements whose call failed are dropped, never sent twice: their buckets refill as
    if each reservation was used as reserved."""
    if settlements:
        log.warning("limits.settle_failed", tag=tag, settlements=len(settlements), error=error)


def _outcome(buckets: Sequence[BucketSpec], cost: Cost, reply: Any) -> Reservation | Refused:
    """Parse reserve.lua's reply: `{0, wait_ms, now, levels...}` or `{1, i, wait_ms, level}`."""
    if int(reply[0]) == _REFUSED:
        return Refused(buckets[int(reply[1]) - 1], int(reply[2]) / 1000, float(reply[3]))
    levels = tuple(float(level) for level in reply[3:])
    if len(levels) != len(buckets):
        raise ValueError("one level per bucket expected")
    return Reservation(tuple(buckets), cost, int(reply[1]) / 1000, levels, float(reply[2]))
