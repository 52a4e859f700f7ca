"""`RedisWire`: a small pipelined RESP client for one standalone Redis, built for EVALSHA.

The limiter sends one EVALSHA per admission, from many concurrent requests. redis-py spends
more CPU on each (pool checkout, per-command parser set-up, response callbacks) than the
gateway spends on the rest of the request, so `open_client` (`clients.py`) uses this client
for `redis://` and `unix://` URLs unless `GATEWAY_REDIS_CLIENT=redis-py`, and redis-py for
Cluster and TLS.

How it works: a few persistent connections (one by default), each an `asyncio.Protocol`
with a FIFO of futures. Commands are packed by `hiredis.pack_command`, and all written in
one loop tick go out in one `write` (pipelining); replies are parsed by `hiredis.Reader` and
resolve the futures in order. One timer per connection watches the oldest command: when it
has waited longer than `timeout`, the connection is declared hung, everything pending on it
fails, and the socket is dropped. A lost connection also fails everything pending; the next
command reconnects (AUTH and SELECT from the URL). `evalsha` answers NOSCRIPT (restart,
failover, SCRIPT FLUSH) with SCRIPT LOAD and one retry.

`WireSubscription` is the same protocol on a subscriber's connection: SUBSCRIBE, then every
message published on the channel, for the limiter's queue wake-ups (`clients.listen`).

Exception tree::

    WireError                 anything this client raises
    ├── WireConnectionError   cannot connect, connection lost, or no reply within `timeout`
    └── WireReplyError        Redis answered with an error (NOSCRIPT, WRONGPASS, a Lua error)
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

_pack = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)  # C; stubs too narrow


class WireError(Exception):
    """The Redis command failed."""


class WireConnectionError(WireError):
    """No connection, a lost one, or a reply that did not come within the timeout."""


class WireReplyError(WireError):
    """Redis replied with an error; the message is Redis's (e.g. `NOSCRIPT ...`)."""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1, as EVALSHA names it."""

    source: bytes
    sha: bytes = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source, usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest.encode())


@dataclass(frozen=True, slots=True)
class Address:
    """Where and as whom to connect: a TCP host and port, or a Unix socket path."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> Address:
        """`redis://[[user]:password@]host[:port][/db]` or `unix://[[user]:password@]/path[?db=N]`."""
        parts = urlsplit(url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if parts.scheme == "unix":
            return cls(path=unquote(parts.path), username=user, password=password,
                       db=_db(query.get("db", "0")))  # fmt: skip
        if parts.scheme != "redis":
            raise ValueError(f"RedisWire speaks redis:// and unix://, not {parts.scheme}://")
        db = _db(parts.path.strip("/") or query.get("db", "0"))
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, None, user, password, db)

    def handshake(self) -> list[tuple[str | bytes, ...]]:
        """The commands a fresh connection sends before any other (AUTH, SELECT)."""
        commands: list[tuple[str | bytes, ...]] = []
        if self.password is not None:
            who = () if self.username is None else (self.username,)
            commands.append((b"AUTH", *who, self.password))
        if self.db:
            commands.append((b"SELECT", str(self.db)))
        return commands


def _db(text: str) -> int:
    """The database number of a URL (`/2` or `?db=2`)."""
    if not text.isdigit():
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


class _Connection(asyncio.Protocol):
    """One socket: pipelined writes, in-order replies, a watchdog on the oldest command."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=WireReplyError)
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed command for this tick's write; the future gets its reply."""
        future: asyncio.Future[Any] = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        self._waiting.append((future, deadline))
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(deadline, self._watch)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.closed:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.abort(f"redis protocol error: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("redis connection lost" + (f": {exc}" if exc else ""))

    def _watch(self) -> None:
        """Fail the connection if its oldest command is overdue, else look again later."""
        self._watchdog = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self.abort(f"no reply from redis within {self._timeout:g} s")
        else:
            self._watchdog = self._loop.call_at(deadline, self._watch)

    def abort(self, reason: str) -> None:
        """Drop the socket and fail everything pending with `reason`."""
        self._fail(reason)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, reason: str) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(WireConnectionError(reason))


class RedisWire:
    """A pipelined client for one standalone Redis: `evalsha`, `execute`, `ping`, `aclose`."""

    def __init__(self, address: Address, *, timeout: float = 1.0, connections: int = 1) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self._address = address
        self._timeout = timeout
        self._slots: list[_Connection | None] = [None] * connections
        self._next = 0
        self._opening: list[asyncio.Task[_Connection] | None] = [None] * connections
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0, connections: int = 1) -> RedisWire:
        """A client for a `redis://` or `unix://` URL; connects on first use."""
        return cls(Address.from_url(url), timeout=timeout, connections=connections)

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run `script` by SHA; on NOSCRIPT load it and retry once."""
        command = _pack((b"EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            return await self._call(command)
        except WireReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._call(_pack((b"SCRIPT", b"LOAD", script.source)))
        return await self._call(command)

    async def execute(self, *args: str | bytes | int) -> Any:
        """Run any one command; Redis error replies raise `WireReplyError`."""
        return await self._call(_pack(args))

    async def script_load(self, script: Script) -> None:
        """SCRIPT LOAD `script`, checking that Redis names it by the SHA1 EVALSHA will use."""
        sha = await self.execute("SCRIPT", "LOAD", script.source)
        if sha != script.sha:
            raise WireReplyError(f"SCRIPT LOAD answered {sha!r}, expected {script.sha!r}")

    async def ping(self) -> None:
        """Return when Redis answers PING."""
        await self.execute(b"PING")

    async def aclose(self) -> None:
        """Close every connection; commands still pending fail."""
        self._closed = True
        for opening in self._opening:
            if opening is not None:
                opening.cancel()
        for index, connection in enumerate(self._slots):
            if connection is not None:
                connection.abort("redis client closed")
            self._slots[index] = None

    async def _call(self, command: bytes) -> Any:
        index = self._next
        if len(self._slots) > 1:
            self._next = (index + 1) % len(self._slots)
        connection = self._slots[index]
        if connection is None or connection.closed:
            connection = await self._connect(index)
        reply = await connection.send(command)
        if isinstance(reply, WireReplyError):
            raise reply
        return reply

    async def _connect(self, index: int) -> _Connection:
        """A fresh connection for slot `index`; concurrent callers share one attempt, so a
        burst against an unreachable server costs one connect timeout, not one each."""
        if self._closed:
            raise WireConnectionError("redis client closed")
        opening = self._opening[index]
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open())
            self._opening[index] = opening
            opening.add_done_callback(lambda done: self._opened(index, done))
        return await asyncio.shield(opening)

    def _opened(self, index: int, attempt: asyncio.Task[_Connection]) -> None:
        self._opening[index] = None
        if attempt.cancelled() or attempt.exception() is not None:  # marks it retrieved
            return
        connection = attempt.result()
        if self._closed:
            connection.abort("redis client closed")
        else:
            self._slots[index] = connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self._timeout
        connection = await _connect(self._address, lambda: _Connection(loop, timeout), timeout)
        handshake = [connection.send(_pack(c)) for c in self._address.handshake()]
        try:
            for reply in await asyncio.gather(*handshake):
                if isinstance(reply, WireReplyError):
                    raise reply
        except BaseException:  # a refused AUTH, a timeout, or a cancelled attempt
            connection.abort("redis handshake failed")
            raise
        return connection


ProtocolT = TypeVar("ProtocolT", bound=asyncio.Protocol)


async def _connect(address: Address, factory: Callable[[], ProtocolT], within: float) -> ProtocolT:
    """A socket to `address` (TCP or Unix) within `within` seconds, run by `factory()`'s
    protocol."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            if address.path is not None:
                _, protocol = await loop.create_unix_connection(factory, address.path)
            else:
                _, protocol = await loop.create_connection(factory, address.host, address.port)
    except (OSError, TimeoutError) as exc:
        where = address.path or f"{address.host}:{address.port}"
        raise WireConnectionError(f"cannot connect to redis at {where}: {exc!r}") from exc
    return protocol


class _Inbox(asyncio.Protocol):
    """A subscriber connection's side: every reply, in order, into a queue; a lost
    connection (or garbage) as a `WireConnectionError` at its end."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=WireReplyError)
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                self.replies.put_nowait(reply)
        except hiredis.ProtocolError as exc:
            self.replies.put_nowait(WireConnectionError(f"redis protocol error: {exc!r}"))
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = "redis connection lost" + (f": {exc}" if exc else "")
        self.replies.put_nowait(WireConnectionError(reason))


class WireSubscription:
    """One channel's messages on a connection of its own (SUBSCRIBE puts a connection in
    subscriber mode). Connecting, the handshake and the subscription's confirmation are
    bounded by `timeout`; waiting for a message is not (a quiet channel is no failure).
    Once the connection is lost every `message()` raises `WireConnectionError`."""

    def __init__(self, address: Address, *, timeout: float = 1.0) -> None:
        self._address = address
        self._timeout = timeout
        self._inbox: _Inbox | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 1.0) -> WireSubscription:
        """A subscription for a `redis://` or `unix://` URL; connects on `subscribe`."""
        return cls(Address.from_url(url), timeout=timeout)

    async def subscribe(self, channel: str) -> None:
        """Connect, authenticate and SUBSCRIBE; return once Redis confirmed it (on failure
        the connection is closed)."""
        inbox = self._inbox = await _connect(self._address, _Inbox, self._timeout)
        commands = [*self._address.handshake(), (b"SUBSCRIBE", channel)]
        assert inbox.transport is not None  # connection_made ran: the socket is open
        inbox.transport.write(b"".join(_pack(c) for c in commands))
        try:
            async with asyncio.timeout(self._timeout):
                for _ in commands:  # AUTH and SELECT answer OK, SUBSCRIBE a confirmation
                    await self._next(inbox)
        except BaseException as exc:  # a refused AUTH, a timeout, or a cancelled attempt
            await self.aclose()
            if isinstance(exc, TimeoutError):
                why = f"no reply from redis within {self._timeout:g} s to SUBSCRIBE"
                raise WireConnectionError(why) from None
            raise

    async def message(self) -> bytes:
        """The next message published on the channel."""
        if self._inbox is None:
            raise WireConnectionError("not subscribed")
        while True:
            reply = await self._next(self._inbox)
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                data: bytes = reply[2]
                return data

    async def aclose(self) -> None:
        """Close the connection."""
        if self._inbox is not None and self._inbox.transport is not None:
            self._inbox.transport.abort()

    @staticmethod
    async def _next(inbox: _Inbox) -> Any:
        reply = await inbox.replies.get()
        if isinstance(reply, WireConnectionError):
            inbox.replies.put_nowait(reply)  # lost stays lost for every later call
            raise reply
        if isinstance(reply, WireReplyError):
            raise reply
        return reply
