"""Bound what a client connection may hold: a deadline for each request's head, a cap on open
connections, and parser errors answered in the API's envelope.

aiohttp's `RequestHandler` (3.14) waits for a request's line and headers for as long as its
keep-alive timer lets it (an hour by default), takes every connection the kernel hands it,
and answers what its HTTP parser refuses (smuggling attempts, oversized headers, malformed
request lines) with plain text that quotes the offending line, a header holding an API key
included, with no access line and no metric. `EdgeHandler` is that protocol with three bounds:

- **The head.** The first request's line and headers must be complete within
  `header_timeout` of the connection opening, and each later request's within
  `header_timeout` of its first byte; otherwise the connection closes, after a 408 when some
  of the request had arrived (nothing is sent to a connection that sent nothing: a pooled
  client would read it as the answer to its next request). Between requests the keep-alive
  timeout applies (aiohttp's own, set by `server.py`); a body that stalls is `body.py`'s.
- **The cap.** Past `max_connections` open connections a new one gets a 503
  `overloaded_error` at once and is closed (after a short linger so the client reads the
  answer rather than a reset; past `LINGERING_REFUSALS_MAX` of those it is reset at once), so
  the process never runs out of file descriptors.
- **Parser errors.** A fixed message per kind (`parse_errors.py`) in the envelope, with 414 /
  431 for an oversized request line / headers; nothing of the request is echoed; the
  connection closes; one access line and the request metrics (`route="bad_request"`).

What these answer is logged and counted like any request (`record_started` / `record_over`),
with `method` and `path` shown as `-`: nothing the client sent reaches a log line.

Private aiohttp API, used here only and pinned by tests/test_connections.py:
`RequestHandler._request_count` (messages parsed on the connection), `Server._kwargs` (the
handler arguments `AppRunner` collected) and the `BaseSite` fields every aiohttp site sets
(`_runner`, `_backlog`, `_server`). Known gaps: a pipelined request whose first bytes share a
segment with the end of the previous request is bounded by the keep-alive timeout instead,
and a framing error inside a body already being read (a bad chunk size in a later segment)
surfaces as that body's stall: 408 after `GATEWAY_CLIENT_BODY_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from gateway.clock import Clock
from gateway.errors import envelope
from gateway.headers import REQUEST_ID
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.middlewares import error_response, record_over, record_started
from gateway.parse_errors import PARSER_REFUSALS, parser_refusal

log = get_logger("gateway.connections")
BAD_REQUEST_ROUTE = "bad_request"
"""The route label of what could not be read as a request (parser errors, late heads)."""
CONNECTION_ROUTE = "connection"
"""The route label of connections refused at the cap."""
REFUSAL_LINGER_SECONDS = 1.0
LINGERING_REFUSALS_MAX = 100
HEADER_TIMEOUT = "The request headers did not arrive in time."
OVER_CAPACITY = "The gateway has too many open connections; retry shortly."


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a request's head may take, and how many connections may be open."""

    header_timeout: float = 10.0
    max_connections: int = 10_000


class ClientConnections:
    """One listener's client connections: the live count, and the answers given before any
    request could be read, each logged and counted like a request."""

    def __init__(self, limits: ConnectionLimits, metrics: GatewayMetrics, clock: Clock) -> None:
        self.limits = limits
        self.open = 0
        self.lingering_refusals = 0
        self._metrics = metrics
        self._clock = clock
        metrics.watch_connections(lambda: self.open)

    @property
    def full(self) -> bool:
        return self.open >= self.limits.max_connections

    def report(self, route: str, status: int, outcome: str, kind: str) -> str:
        """Log and count one connection-level answer; its request id."""
        now = self._clock.now()
        record = record_started(self._metrics, now, "-", "-")
        record.route, record.status, record.error_kind = route, status, kind
        record.error_outcome = outcome
        with structlog.contextvars.bound_contextvars(request_id=record.request_id):
            record_over(record, self._metrics, now)
        return record.request_id

    def answer_late_head(self, transport: asyncio.Transport) -> None:
        """408: the request's head did not arrive in time (the caller closes)."""
        rid = self.report(BAD_REQUEST_ROUTE, 408, "client_timeout", "header_timeout")
        transport.write(raw_answer(408, "invalid_request_error", HEADER_TIMEOUT, rid))

    def refuse(self, transport: asyncio.Transport) -> asyncio.TimerHandle | None:
        """503 a connection past the cap, half-close it and abort it after a linger (the
        handle, to cancel when the client closes first); None: reset at once."""
        rid = self.report(CONNECTION_ROUTE, 503, "over_capacity", "over_capacity")
        if self.lingering_refusals >= LINGERING_REFUSALS_MAX or not transport.can_write_eof():
            transport.abort()
            return None
        transport.write(raw_answer(503, "overloaded_error", OVER_CAPACITY, rid))
        transport.write_eof()
        self.lingering_refusals += 1
        loop = asyncio.get_running_loop()
        return loop.call_later(REFUSAL_LINGER_SECONDS, transport.abort)


class EdgeHandler(RequestHandler):
    """aiohttp's HTTP protocol with a deadline on each request's head, the connection cap,
    and parser errors in the envelope."""

    __slots__ = (
        "_answered",
        "_connections",
        "_deadline",
        "_last_body",
        "_linger",
        "_partial",
        "_refused",
    )

    def __init__(self, connections: ClientConnections, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._connections = connections
        self._deadline: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request whose head is incomplete have arrived
        self._answered = 0  # responses finished on this connection
        self._last_body: StreamReader | None = None  # the last answered request's body
        self._refused = False  # past the cap: answered 503, never parsed
        self._linger: asyncio.TimerHandle | None = None  # a refused connection's abort

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        connections = self._connections
        if connections.full:
            self._refused = True
            self._linger = connections.refuse(cast(asyncio.Transport, transport))
            return
        connections.open += 1
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            if self._linger is not None:
                self._linger.cancel()
                self._connections.lingering_refusals -= 1
            return
        self._disarm()
        self._connections.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped, so closing sends a FIN, not a reset
        parsed, head_bytes = self._request_count, self._between_requests()
        super().data_received(data)
        if self._request_count != parsed:
            self._disarm()  # a head is complete; its body is bounded where it is read
        elif data and head_bytes:
            self._partial = True
            if self._deadline is None:
                self._arm()

    def log_access(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float | None
    ) -> None:
        """Called once per finished response: the connection is between requests again."""
        self._answered += 1
        self._last_body = request.content
        super().log_access(request, response, time)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The envelope for what the parser refused (or a bug below the middleware), with a
        fixed message; the connection closes."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send an error answer")
        if isinstance(exc, HttpProcessingError):
            kind = parser_refusal(exc, self.max_line_size, self.max_field_size)
            status, text = PARSER_REFUSALS[kind]
            error_type, outcome = "invalid_request_error", "invalid_request"
        else:
            log.error("protocol_error", status=status, exc_info=exc)
            kind, status, text = "internal", 500, "Internal gateway error."
            error_type, outcome = "api_error", "internal_error"
        rid = self._connections.report(BAD_REQUEST_ROUTE, status, outcome, kind)
        response = error_response(status, error_type, text, rid, {})
        response.force_close()
        return response

    def _between_requests(self) -> bool:
        """No request is being handled and the last one's body is all in: the next bytes
        start a request head."""
        last = self._last_body
        return self._request_count == self._answered and (last is None or last.is_eof())

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._connections.limits.header_timeout, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._partial = False

    def _late(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return  # already closing
        if self._partial:
            self._connections.answer_late_head(transport)
        self.force_close()
        if transport.get_write_buffer_size():
            transport.abort()  # a client that does not read never holds the descriptor


class EdgeSite(web.BaseSite):
    """A TCP listener whose connections are `EdgeHandler`s sharing one `ClientConnections`;
    `reuse_port`: bind with SO_REUSEPORT, so several workers' listeners share the port and the
    kernel spreads new connections over them."""

    __slots__ = ("_connections", "_host", "_listener", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        connections: ClientConnections,
        host: str,
        port: int,
        *,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._connections = connections
        self._host, self._port = host, port
        self._reuse_port = reuse_port
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self.port))

    @property
    def connections(self) -> ClientConnections:
        """The listener's client connections (their live count)."""
        return self._connections

    @property
    def port(self) -> int:
        """The bound port (the configured one until started; useful with port 0)."""
        sockets = self._listener.sockets if self._listener is not None else ()
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "runner.setup() first"
        kwargs = server._kwargs  # what AppRunner collected for RequestHandler: no public copy
        loop = asyncio.get_running_loop()
        connections = self._connections

        def protocol() -> EdgeHandler:
            return EdgeHandler(connections, server, loop=loop, **kwargs)

        self._listener = await loop.create_server(
            protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
        self._server = self._listener


def raw_answer(status: int, error_type: str, message: str, request_id: str) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection, for writing straight to
    a transport when there is no request to answer through aiohttp."""
    body = envelope(error_type, message, request_id)
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{REQUEST_ID}: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def descriptor_budget(wanted: int, soft: int, hard: int, reserve: int = 256) -> tuple[int, int]:
    """(connection cap, soft RLIMIT_NOFILE to set) so `wanted` connections fit if they can.

    A client connection in flight holds two descriptors (its own and an upstream one); the
    reserve covers the listener, Redis, logs and the upstream pool's idle connections. The
    soft limit is raised toward the hard one as far as needed (-1 is unlimited); the cap is
    lowered to what the result allows.
    """
    needed = 2 * wanted + reserve
    if 0 <= soft < needed:
        soft = needed if hard < 0 else min(needed, hard)
    cap = wanted if soft < 0 else min(wanted, max(1, (soft - reserve) // 2))
    return cap, soft
