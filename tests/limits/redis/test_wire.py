"""`RedisWire`, the pipelined RESP client: order, scripts, reconnects, timeouts, auth; and
`WireSubscription`, its subscriber: messages in order, a lost connection, auth, timeouts."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from gateway.limits.redis.wire import (
    Address,
    RedisWire,
    Script,
    WireConnectionError,
    WireReplyError,
    WireSubscription,
)
from tests.limits.conftest import hung_server
from tests.support.redis_server import RedisServer

ECHO_KEYS = Script(b"return {KEYS[1], ARGV[1]}")


@pytest.fixture
async def wire(
    redis_client: redis.asyncio.Redis, redis_server: RedisServer
) -> AsyncIterator[RedisWire]:
    """A client on the flushed session server."""
    client = RedisWire.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of the test's own, free to stop and restart."""
    with RedisServer() as server:
        yield server


def test_urls_parse_into_addresses() -> None:
    """Host, port, user, password and database come from the URL; unix:// takes a path."""
    parsed = [
        Address.from_url("redis://127.0.0.1:6380/2"),
        Address.from_url("redis://:s%40cret@redis.local"),
        Address.from_url("redis://bob:pw@10.0.0.1:7000?db=5"),
        Address.from_url("unix://:pw@/run/redis.sock?db=3"),
    ]
    expected = [
        Address("127.0.0.1", 6380, db=2),
        Address("redis.local", 6379, password="s@cret"),
        Address("10.0.0.1", 7000, username="bob", password="pw", db=5),
        Address(path="/run/redis.sock", password="pw", db=3),
    ]
    assert expected == parsed


def test_other_schemes_are_refused() -> None:
    """TLS is redis-py's job: `rediss://` is not accepted here."""
    with pytest.raises(ValueError, match="rediss"):
        Address.from_url("rediss://127.0.0.1:6379/0")


@pytest.mark.redis
async def test_pipelined_replies_reach_their_own_callers(wire: RedisWire) -> None:
    """Hundreds of commands sent in one tick, an error among them, each get their own reply."""
    calls = [
        wire.execute(b"NOSUCHCOMMAND") if n == 150 else wire.execute(b"ECHO", str(n))
        for n in range(300)
    ]
    replies = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(replies[150], WireReplyError)
    expected = [str(n).encode() for n in range(300) if n != 150]
    assert expected == [reply for n, reply in enumerate(replies) if n != 150]


@pytest.mark.redis
async def test_a_cancelled_caller_does_not_shift_later_replies(wire: RedisWire) -> None:
    """A caller that gives up leaves its reply to be dropped, not handed to the next caller."""
    first = asyncio.ensure_future(wire.execute(b"ECHO", "first"))
    second = asyncio.ensure_future(wire.execute(b"ECHO", "second"))
    await asyncio.sleep(0)
    first.cancel()
    assert b"second" == await second


@pytest.mark.redis
async def test_evalsha_reloads_the_script_after_a_flush(
    wire: RedisWire, redis_client: redis.asyncio.Redis
) -> None:
    """NOSCRIPT (restart, failover, SCRIPT FLUSH) loads the script and retries once."""
    first = await wire.evalsha(ECHO_KEYS, ["k"], ["1"])
    await redis_client.script_flush()
    second = await wire.evalsha(ECHO_KEYS, ["k"], ["2"])
    assert ([b"k", b"1"], [b"k", b"2"]) == (first, second)


@pytest.mark.redis
async def test_script_errors_are_reply_errors(wire: RedisWire) -> None:
    """A Lua error comes back as WireReplyError with Redis's message."""
    with pytest.raises(WireReplyError, match="boom"):
        await wire.evalsha(Script(b"return redis.error_reply('boom')"), [], [])


@pytest.mark.redis
async def test_reconnects_after_a_server_restart(own_server: RedisServer) -> None:
    """A dropped connection fails what was pending; the next command connects again."""
    client = RedisWire.from_url(own_server.url, timeout=5.0)
    try:
        blocked = asyncio.ensure_future(client.execute(b"BLPOP", "nothing", "4"))
        await asyncio.sleep(0.05)  # the BLPOP is on the server, holding the connection
        own_server.stop()
        with pytest.raises(WireConnectionError, match="lost"):
            await blocked
        with pytest.raises(WireConnectionError, match="cannot connect"):
            await client.ping()
        own_server.start()
        await client.ping()
        assert b"ok" == await client.execute(b"ECHO", "ok")
    finally:
        await client.aclose()


async def test_a_hung_server_times_out_every_pending_command() -> None:
    """A server that accepts but never answers fails each command after `timeout`."""
    async with hung_server() as url:
        client = RedisWire.from_url(url, timeout=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outcomes = await asyncio.gather(
                client.ping(), client.evalsha(ECHO_KEYS, ["k"], ["1"]), return_exceptions=True
            )
        finally:
            await client.aclose()
        elapsed = loop.time() - started
    assert [WireConnectionError, WireConnectionError] == [type(o) for o in outcomes]
    assert elapsed < 1.0


async def test_nothing_listening_is_a_connection_error() -> None:
    """A refused connection raises WireConnectionError naming the address."""
    client = RedisWire.from_url(RedisServer().url, timeout=0.5)
    with pytest.raises(WireConnectionError, match="cannot connect"):
        await client.ping()
    await client.aclose()


@pytest.mark.redis
async def test_auth_and_select_come_from_the_url(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    """User, password and database in the URL are sent on connect; a wrong password fails.
    A subscription authenticates the same way, before its SUBSCRIBE."""
    await redis_client.acl_setuser(
        "wire", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    good = RedisWire.from_url(f"redis://wire:s3cret@127.0.0.1:{redis_server.port}/3")
    bad = RedisWire.from_url(f"redis://wire:wrong@127.0.0.1:{redis_server.port}/3")
    try:
        await good.execute(b"SET", "wire-key", "in-db-3")
        with pytest.raises(WireReplyError, match="WRONGPASS"):
            await bad.ping()
        listening = await subscribed(f"redis://wire:s3cret@127.0.0.1:{redis_server.port}/3")
        await redis_client.publish("news", b"hello")
        heard = await asyncio.wait_for(listening.message(), 5)
        await listening.aclose()
        with pytest.raises(WireReplyError, match="WRONGPASS"):
            await subscribed(f"redis://wire:wrong@127.0.0.1:{redis_server.port}/3")
        db3 = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/3")
        stored = await db3.get("wire-key")
        await db3.flushdb()
        await db3.aclose()
    finally:
        await good.aclose()
        await bad.aclose()
        await redis_client.acl_deluser("wire")
    assert (b"in-db-3", b"hello") == (stored, heard)


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Path]:
    """A redis-server listening only on a Unix socket; yields the socket's path."""
    socket = tmp_path / "redis.sock"
    executable = shutil.which("redis-server")
    assert executable is not None
    args = [executable, "--port", "0", "--unixsocket", str(socket), "--save", ""]
    server = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield socket
    finally:
        server.terminate()
        server.wait(timeout=5)


@pytest.mark.redis
async def test_unix_socket(unix_server: Path) -> None:
    """`unix://path?db=N` connects over a Unix socket and selects the database."""
    client = RedisWire.from_url(f"unix://{unix_server}?db=1", timeout=0.5)
    try:
        await client.execute(b"SET", "k", "v")
        assert [b"PONG", b"v"] == [await client.execute(b"PING"), await client.execute(b"GET", "k")]
    finally:
        await client.aclose()


async def subscribed(url: str, channel: str = "news") -> WireSubscription:
    """A subscription on `channel`, confirmed by Redis."""
    subscription = WireSubscription.from_url(url, timeout=2.0)
    await subscription.subscribe(channel)
    return subscription


@pytest.mark.redis
async def test_a_subscription_hears_its_channel_in_order(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    """Every message published on the channel arrives, in order, as bytes; other channels'
    do not. Redis counts the subscriber as soon as `subscribe` has returned."""
    subscription = await subscribed(redis_server.url)
    try:
        receivers = await redis_client.publish("news", b"one")
        await redis_client.publish("other", b"not for us")
        await redis_client.publish("news", b"two \x00 bytes")
        heard = [await asyncio.wait_for(subscription.message(), 5) for _ in range(2)]
    finally:
        await subscription.aclose()
    assert (1, [b"one", b"two \x00 bytes"]) == (receivers, heard)


@pytest.mark.redis
async def test_a_lost_subscription_raises_on_every_later_message(
    redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    """A subscriber whose connection Redis closes fails `message()`, now and after."""
    subscription = await subscribed(redis_server.url)
    try:
        waiting = asyncio.ensure_future(subscription.message())
        await asyncio.sleep(0)  # the reader is waiting before the connection goes
        killed = await redis_client.client_kill_filter(_type="pubsub")
        with pytest.raises(WireConnectionError, match="lost"):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(WireConnectionError, match="lost"):
            await subscription.message()
    finally:
        await subscription.aclose()
    assert 1 == killed


async def test_subscribing_fails_fast_on_a_hung_or_absent_server() -> None:
    """No server, or one that never confirms: WireConnectionError within the timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with hung_server() as url:
        hung = WireSubscription.from_url(url, timeout=0.05)
        with pytest.raises(WireConnectionError, match="SUBSCRIBE"):
            await hung.subscribe("news")
        await hung.aclose()
    absent = WireSubscription.from_url(RedisServer().url, timeout=0.5)
    with pytest.raises(WireConnectionError, match="cannot connect"):
        await absent.subscribe("news")
    with pytest.raises(WireConnectionError, match="not subscribed"):
        await absent.message()
    assert loop.time() - started < 2.0
