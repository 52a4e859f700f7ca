"""`RedisBackend` beyond the shared contract: keys, expiry, scripts, round trips, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from structlog.testing import capture_logs

from gateway.limits import BucketSpec, Cost, Dimension, LimitBackendError, Refused, Reservation
from gateway.limits.deferred import MAX_PENDING
from gateway.limits.redis import RedisPyError
from gateway.limits.redis.wire import RedisWire, Script, WireConnectionError
from gateway.limits.redis_backend import RedisBackend
from tests.limits.conftest import bucket, hung_server
from tests.support.redis_server import RedisServer

ONE_REQUEST = Cost(requests=1)
RPM = bucket(Dimension.REQUESTS, 60)
ITPM = bucket(Dimension.INPUT_TOKENS, 6_000)


def open_on(url: str, transport: str, *, timeout: float = 1.0) -> RedisBackend:
    """A backend on `url` through `transport`: `wire` (from_url's pick) or `redis-py`."""
    if transport == "wire":
        return RedisBackend.from_url(url, timeout=timeout)
    client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout)
    return RedisBackend(client)


@pytest.fixture(params=["wire", "redis-py"])
async def backend(
    request: pytest.FixtureRequest, redis_client: redis.asyncio.Redis, redis_server: RedisServer
) -> AsyncIterator[RedisBackend]:
    """A backend on the flushed real server, through each transport in turn."""
    opened = open_on(redis_server.url, request.param)
    yield opened
    await opened.aclose()


@pytest.fixture(scope="module")
def cluster_server() -> Iterator[RedisServer]:
    """A one-node Redis Cluster owning every slot."""
    with RedisServer(cluster=True) as server:
        yield server


async def command_counts(client: redis.asyncio.Redis) -> dict[str, int]:
    """Calls per command since the server started, from INFO commandstats."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


@pytest.mark.redis
async def test_keys_share_one_hash_tag_and_name_the_scope(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    """Every key of an admission is `cgw:{scope:group}:dimension`: one slot, no bare names."""
    tpd = bucket(Dimension.TOKENS_PER_DAY, 1_000_000, scope="3f2a9c")
    rpm = bucket(Dimension.REQUESTS, 60, scope="3f2a9c")
    await backend.reserve([rpm, tpd], Cost(1, 100, 100), max_wait=0)
    expected = [b"cgw:{3f2a9c:sonnet}:requests", b"cgw:{3f2a9c:sonnet}:tokens_per_day"]
    assert expected == sorted(await redis_client.keys("*"))


@pytest.mark.redis
async def test_keys_expire_once_the_bucket_would_be_full(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    """Each key's TTL is the time to refill fully plus a 1 s margin: no unbounded key growth."""
    tpd = bucket(Dimension.TOKENS_PER_DAY, 86_400)
    await backend.reserve([RPM], ONE_REQUEST, max_wait=0)  # full again in 1 s
    await backend.reserve([tpd], Cost(0, 43_200), max_wait=0)  # full again in 12 h
    rpm_ttl, tpd_ttl = await redis_client.pttl(RPM.key), await redis_client.pttl(tpd.key)
    assert 1_900 < rpm_ttl <= 2_000
    assert 43_200_900 < tpd_ttl <= 43_201_000


@pytest.mark.redis
async def test_reserve_survives_a_script_flush(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    """After SCRIPT FLUSH (restart, failover) the NOSCRIPT reply reloads the script once."""
    await backend.reserve([RPM], ONE_REQUEST, max_wait=0, now=1_000.0)
    await redis_client.script_flush()
    reservation = await backend.reserve([RPM], ONE_REQUEST, max_wait=0, now=1_000.0)
    assert isinstance(reservation, Reservation)
    await redis_client.script_flush()
    backend.adjust(reservation, Cost(requests=-1), now=1_000.0)
    await backend.flush()
    expected = b"59 1000"  # level after two requests and one refund, written at t=1000
    assert expected == await redis_client.get(RPM.key)


SCENARIOS = [
    pytest.param("admit", {"evalsha": 1, "time": 1, "get": 2, "set": 2}, id="admit"),
    pytest.param("refuse", {"evalsha": 1, "time": 1, "get": 2}, id="refuse-writes-nothing"),
    pytest.param("adjust", {"evalsha": 1, "time": 1, "get": 2, "set": 2}, id="adjust"),
    pytest.param("settle+admit", {"evalsha": 1, "time": 1, "get": 2, "set": 2}, id="carried"),
]


@pytest.mark.redis
@pytest.mark.parametrize(("step", "expected"), SCENARIOS)
async def test_each_call_is_one_evalsha_of_o_buckets_commands(
    backend: RedisBackend, redis_client: redis.asyncio.Redis, step: str, expected: dict[str, int]
) -> None:
    """A call is one EVALSHA round trip; inside it, one TIME and a GET (and SET) per bucket,
    also when an admission carries a settlement of the same buckets."""
    reservation = await backend.reserve([RPM, ITPM], Cost(1, 6_000), max_wait=0)
    assert isinstance(reservation, Reservation)
    before = await command_counts(redis_client)
    if step == "admit":
        await backend.reserve([RPM, ITPM], Cost(1, 0), max_wait=0)
    elif step == "refuse":
        await backend.reserve([RPM, ITPM], Cost(1, 6_000), max_wait=0)
    elif step == "adjust":
        backend.adjust(reservation, Cost(-1, -10))
        await backend.flush()
    else:
        backend.adjust(reservation, Cost(-1, -10))
        await backend.reserve([RPM, ITPM], Cost(1, 0), max_wait=0)
    after = await command_counts(redis_client)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    assert expected == {name: n for name, n in delta.items() if n and name != "info"}


@pytest.mark.parametrize(
    ("transport", "cause"), [("wire", WireConnectionError), ("redis-py", RedisPyError)]
)
async def test_unreachable_redis_raises_limit_backend_error(
    transport: str, cause: type[Exception]
) -> None:
    """Connection failures leave the backend as LimitBackendError, the client's error chained."""
    dead = RedisServer()  # a free port with nothing listening
    backend = open_on(dead.url, transport, timeout=0.5)
    with pytest.raises(LimitBackendError) as reserving:
        await backend.reserve([RPM], ONE_REQUEST, max_wait=0)
    with pytest.raises(LimitBackendError) as pinging:
        await backend.ping()
    await backend.aclose()
    assert (True, True) == (
        isinstance(reserving.value.__cause__, cause),
        isinstance(pinging.value.__cause__, cause),
    )


@pytest.mark.redis
async def test_cluster_reserves_in_one_slot_and_reloads_scripts(
    cluster_server: RedisServer,
) -> None:
    """On Redis Cluster the hash-tagged keys run in one slot, and NOSCRIPT still recovers."""
    backend = RedisBackend.from_url(cluster_server.url, cluster=True)
    admin = redis.asyncio.Redis.from_url(cluster_server.url)
    buckets: list[BucketSpec] = [RPM, ITPM]
    try:
        await admin.flushall()
        first = await backend.reserve(buckets, Cost(1, 6_000), max_wait=0, now=1_000.0)
        await admin.script_flush()
        second = await backend.reserve(buckets, Cost(1, 10), max_wait=0, now=1_000.0)
        await backend.ping()
    finally:
        await admin.aclose()
        await backend.aclose()
    expected = (
        Reservation(tuple(buckets), Cost(1, 6_000), 0.0, (59.0, 0.0)),
        Refused(ITPM, retry_after=0.1, remaining=0.0),
    )
    assert expected == (first, second)


class Calls:
    """A backend observer: every (operation, ok) it heard, and an event per operation."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []
        self.heard = {operation: asyncio.Event() for operation in ("adjust", "reserve")}

    def __call__(self, operation: str, seconds: float, ok: bool) -> None:
        self.seen.append((operation, ok))
        self.heard[operation].set()


@pytest.mark.redis
async def test_settlements_ride_on_the_next_reserve_of_their_group(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    """Ten settlements then an admission of the same scope and group: one EVALSHA in all,
    and the admission already sees every refund."""
    held = [await backend.reserve([RPM, ITPM], Cost(1, 100), max_wait=0) for _ in range(10)]
    before = await command_counts(redis_client)
    for reservation in held:
        assert isinstance(reservation, Reservation)
        backend.adjust(reservation, Cost(-1, -100))
    level = await backend.reserve([RPM, ITPM], Cost(1, 0), max_wait=0)
    after = await command_counts(redis_client)
    assert isinstance(level, Reservation)
    assert (1, 59.0, 6_000.0) == (
        after["evalsha"] - before["evalsha"],
        round(level.levels[0], 3),
        round(level.levels[1], 3),
    )


@pytest.mark.redis
async def test_an_idle_groups_settlements_reach_other_instances_within_the_delay(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    """With no admission to ride on, settlements go alone once the group is idle for
    `settle_delay`, in one EVALSHA, and another instance then sees them."""
    calls = Calls()
    settling = RedisBackend.from_url(redis_server.url, on_backend_call=calls)
    other = RedisBackend.from_url(redis_server.url)
    try:
        held = [await settling.reserve([RPM], ONE_REQUEST, max_wait=0) for _ in range(3)]
        before = await command_counts(redis_client)
        for reservation in held:
            assert isinstance(reservation, Reservation)
            settling.adjust(reservation, Cost(requests=-1))
        await asyncio.wait_for(calls.heard["adjust"].wait(), timeout=5)
        after = await command_counts(redis_client)
        seen = await other.reserve([RPM], ONE_REQUEST, max_wait=0)
    finally:
        await settling.aclose()
        await other.aclose()
    assert isinstance(seen, Reservation)
    assert (1, [("adjust", True)], 59.0) == (
        after["evalsha"] - before["evalsha"],
        calls.seen,
        round(seen.levels[0], 3),
    )


@pytest.mark.redis
async def test_settlements_sent_together_are_applied_one_by_one(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    """A list of settlements lands as if each were its own call: clamped one at a time."""
    reservation = Reservation((RPM,), ONE_REQUEST, 0.0, (60.0,))
    backend.adjust(reservation, Cost(requests=5), now=1_000.0)
    backend.adjust(reservation, Cost(requests=-9), now=1_000.0)
    backend.adjust(reservation, Cost(requests=3), now=1_000.0)
    await backend.flush()
    # one by one: 60 - 5 = 55, min(60, 55 + 9) = 60, 60 - 3 = 57 (summed it would be 60)
    assert b"57 1000" == await redis_client.get(RPM.key)


@pytest.mark.redis
async def test_a_cap_follows_the_settlements_queued_before_it(
    backend: RedisBackend, redis_client: redis.asyncio.Redis
) -> None:
    """A pull-down has the last word: queued refunds land first, then the ceiling applies."""
    held = [await backend.reserve([RPM], ONE_REQUEST, max_wait=0, now=1_000.0) for _ in range(10)]
    for reservation in held:
        assert isinstance(reservation, Reservation)
        backend.adjust(reservation, Cost(requests=-1), now=1_000.0)
    await backend.cap([RPM], [55.0], now=1_000.0)
    # refunds first: 50 -> 60, capped to 55; the other way round would leave 60
    assert b"55 1000" == await redis_client.get(RPM.key)


@pytest.mark.redis
async def test_a_group_that_only_settles_is_flushed_every_max_pending(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    """Settlements never pile up: the 64th of a group sends them all without waiting."""
    calls = Calls()
    wire = RedisWire.from_url(redis_server.url)
    backend = RedisBackend(wire, settle_delay=3_600, on_backend_call=calls)
    reservation = Reservation((RPM,), ONE_REQUEST, 0.0, (0.0,))
    try:
        for _ in range(MAX_PENDING):
            backend.adjust(reservation, Cost(requests=-1), now=1_000.0)
        await asyncio.wait_for(calls.heard["adjust"].wait(), timeout=5)
        stored = await redis_client.get(RPM.key)
    finally:
        await backend.aclose()
    assert ([("adjust", True)], b"60 1000") == (calls.seen, stored)


async def test_a_failed_flush_is_logged_and_counted_never_raised() -> None:
    """When Redis does not answer, the flushed settlements are dropped with one warning and
    one failed `adjust` call; the settling requests never see the error."""
    calls = Calls()
    reservation = Reservation((RPM,), ONE_REQUEST, 0.0, (59.0,))
    async with hung_server() as url:
        wire = RedisWire.from_url(url, timeout=0.05)
        backend = RedisBackend(wire, settle_delay=3_600, on_backend_call=calls)
        with capture_logs() as logs:
            for _ in range(3):
                backend.adjust(reservation, Cost(requests=-1))
            await backend.aclose()
    failures = [entry for entry in logs if entry["event"] == "limits.settle_failed"]
    assert ([("adjust", False)], [3]) == (calls.seen, [f["settlements"] for f in failures])


async def test_a_failed_reserve_drops_the_settlements_it_carried() -> None:
    """The reserve raises LimitBackendError for the limiter; what it carried is logged lost."""
    reservation = Reservation((RPM,), ONE_REQUEST, 0.0, (59.0,))
    async with hung_server() as url:
        backend = RedisBackend(RedisWire.from_url(url, timeout=0.05), settle_delay=3_600)
        with capture_logs() as logs:
            backend.adjust(reservation, Cost(requests=-1))
            backend.adjust(reservation, Cost(requests=-1))
            with pytest.raises(LimitBackendError):
                await backend.reserve([RPM], ONE_REQUEST, max_wait=0)
            await backend.aclose()
    failures = [entry for entry in logs if entry["event"] == "limits.settle_failed"]
    assert [2] == [f["settlements"] for f in failures]


async def test_a_cancelled_reserve_reports_the_settlements_it_carried() -> None:
    """A request that leaves while its admission waits on Redis cannot tell whether the
    settlements riding along were applied: they are not sent again, and a warning says so."""
    reservation = Reservation((RPM,), ONE_REQUEST, 0.0, (59.0,))
    async with hung_server() as url:
        backend = RedisBackend(RedisWire.from_url(url, timeout=5), settle_delay=3_600)
        with capture_logs() as logs:
            backend.adjust(reservation, Cost(requests=-1))
            admitting = asyncio.ensure_future(backend.reserve([RPM], ONE_REQUEST, max_wait=0))
            await asyncio.sleep(0)  # its first step took the settlement, then awaits Redis
            admitting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await admitting
            await backend.aclose()
    failures = [entry for entry in logs if entry["event"] == "limits.settle_failed"]
    assert [(1, True)] == [(f["settlements"], "cancelled" in f["error"]) for f in failures]


@pytest.mark.redis
async def test_cluster_admissions_carry_settlements_in_the_same_slot(
    cluster_server: RedisServer,
) -> None:
    """On Redis Cluster a reserve carrying its group's settlements (one hash tag, so one
    slot, extra buckets included) applies them first, and an idle flush lands too."""
    calls = Calls()
    backend = RedisBackend(
        RedisCluster.from_url(cluster_server.url), settle_delay=0, on_backend_call=calls
    )
    admin = redis.asyncio.Redis.from_url(cluster_server.url)
    try:
        await admin.flushall()
        first = await backend.reserve([RPM, ITPM], Cost(1, 600), max_wait=0, now=1_000.0)
        assert isinstance(first, Reservation)
        backend.adjust(first, Cost(-1, -600), now=1_000.0)  # carried by the next reserve
        second = await backend.reserve([RPM], ONE_REQUEST, max_wait=0, now=1_000.0)
        assert isinstance(second, Reservation)
        backend.adjust(second, Cost(requests=-1), now=1_000.0)  # flushed alone
        await asyncio.wait_for(calls.heard["adjust"].wait(), timeout=5)
        stored = (await admin.get(RPM.key), await admin.get(ITPM.key))
    finally:
        await admin.aclose()
        await backend.aclose()
    assert ((59.0,), (b"60 1000", b"6000 1000"), [("adjust", True)]) == (
        second.levels,
        stored,
        calls.seen,
    )


@pytest.mark.redis
async def test_a_new_bucket_tuple_is_encoded_afresh_even_with_the_same_keys(
    backend: RedisBackend,
) -> None:
    """Reserve keeps each tuple's encoding (found by identity); a group whose limits changed
    gets a new tuple with the same keys, and the script must see its new capacity."""
    small = (bucket(Dimension.REQUESTS, 10),)
    large = (bucket(Dimension.REQUESTS, 100),)
    assert small[0].key == large[0].key
    first = await backend.reserve(small, ONE_REQUEST, max_wait=0, now=1_000.0)
    again = await backend.reserve(small, ONE_REQUEST, max_wait=0, now=1_000.0)
    grown = await backend.reserve(large, ONE_REQUEST, max_wait=0, now=1_060.0)
    assert isinstance(first, Reservation)
    assert isinstance(again, Reservation)
    assert isinstance(grown, Reservation)
    assert (first.levels, again.levels, grown.levels) == ((9.0,), (8.0,), (99.0,))


@pytest.mark.redis
async def test_a_list_of_buckets_is_encoded_on_every_call(backend: RedisBackend) -> None:
    """Only tuples keep their encoding: a caller may change a list between calls."""
    buckets = [bucket(Dimension.REQUESTS, 10)]
    first = await backend.reserve(buckets, ONE_REQUEST, max_wait=0, now=1_000.0)
    buckets[0] = bucket(Dimension.REQUESTS, 100)
    grown = await backend.reserve(buckets, ONE_REQUEST, max_wait=0, now=1_060.0)
    assert isinstance(first, Reservation)
    assert isinstance(grown, Reservation)
    assert (first.levels, grown.levels) == ((9.0,), (99.0,))


class HeldAdjusts:
    """A Redis client that records each script call and holds every adjust until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        kind = "adjust" if len(args) and args[1] == "1000" else "reserve"  # margin vs max_wait
        self.calls.append(kind)
        if kind == "adjust":
            await self.release.wait()
            return 1
        return [0, 0, "1000", "58.0"]

    async def script_load(self, script: Script) -> None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


async def test_a_reserve_waits_for_every_flush_started_while_it_waited() -> None:
    """A charge flies at once; a refund queued behind it is flushed by its timer while a
    reserve waits for the charge to land: the reserve waits for that flush too, so it never
    decides on levels missing a settlement of its own group."""
    client = HeldAdjusts()
    backend = RedisBackend(client, settle_delay=0.001)
    rpm = bucket(Dimension.REQUESTS, 60)
    held = Reservation((rpm,), Cost(1), 0.0, (59.0,))
    backend.adjust(held, Cost(1), now=1000.0)  # a charge: flies at once, then held
    backend.adjust(held, Cost(-1), now=1000.0)  # a refund: queued, flushed by its timer
    reserving = asyncio.create_task(backend.reserve([rpm], Cost(1), max_wait=0, now=1000.0))
    await asyncio.sleep(0.01)  # the refund's 1 ms timer fires first: timers run in order
    client.release.set()
    await reserving
    assert ["adjust", "adjust", "reserve"] == client.calls
