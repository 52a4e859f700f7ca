"""Client connections: heads have a deadline, idle keep-alive closes, the number is capped, and
parser errors are answered in the envelope, logged and counted, echoing nothing.

Served by `server.listen()`, the production listener, on real loopback sockets, with short
timeouts set through the settings.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from unittest.mock import Mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry

from bench.ports import free_port
from gateway.app import create_app
from gateway.config import Settings
from gateway.connections import (
    ClientConnections,
    ConnectionLimits,
    EdgeHandler,
    descriptor_budget,
)
from gateway.logs import configure_logging
from gateway.metrics import GatewayMetrics
from gateway.server import listen
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream
from tests.support.raw_http import (
    closed_within,
    connection,
    exchange,
    parse_answer,
    read_answer,
    request,
    until,
)

SECRET = "sk-ant-api03-SECRETVALUE0123456789abcdef"
CLOSE = "Connection: close\r\n"
SLACK = 1.5
"""Seconds allowed past a deadline before a close counts as late (2 shared cores)."""


@dataclass
class Edge:
    """A gateway served by `server.listen()` on a free loopback port."""

    port: int
    connections: ClientConnections
    registry: CollectorRegistry
    logs: io.StringIO

    def access_lines(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.logs.getvalue().splitlines() if line.strip()]
        return [line for line in lines if line.get("component") == "gateway.access"]

    def requests_counted(self, **labels: str) -> float:
        return self.registry.get_sample_value("gateway_requests_total", labels) or 0.0


EdgeFactory = Callable[..., Awaitable[Edge]]


@pytest.fixture
async def make_edge(fake_upstream: FakeUpstream) -> AsyncIterator[EdgeFactory]:
    """Serve gateways the way `serve()` does, with settings overrides; clean them up after."""
    runners: list[web.AppRunner] = []

    async def build(**overrides: Any) -> Edge:
        fields: dict[str, Any] = {"upstream_url": fake_upstream.url, "port": 0}
        settings = Settings(_env_file=None, **{**fields, **overrides})  # type: ignore[call-arg]
        logs = io.StringIO()
        configure_logging("info", "json", stream=logs)
        registry = CollectorRegistry()
        runner, site = await listen(settings, create_app(settings, registry=registry))
        runners.append(runner)
        return Edge(site.port, site.connections, registry, logs)

    yield build
    for runner in runners:
        await runner.cleanup()


# The head's deadline ----------------------------------------------------------------------


async def test_partial_head_gets_408_and_the_connection_closes_in_time(
    make_edge: EdgeFactory,
) -> None:
    """A request whose headers stop half way gets 408 and is closed at the header timeout."""
    edge = await make_edge(client_header_timeout_seconds=0.3)
    async with connection(edge.port) as (reader, writer):
        writer.write(f"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nx-api-key: {SECRET}".encode())
        await until(lambda: edge.connections.open == 1)
        data, elapsed = await closed_within(reader, 0.3 + SLACK)
    answer = parse_answer(data)
    assert (408, "invalid_request_error") == (answer.status, answer.json()["error"]["type"])
    assert "The request headers did not arrive in time." == answer.json()["error"]["message"]
    assert elapsed >= 0.2
    assert await until(lambda: edge.connections.open == 0)
    assert 1 == edge.requests_counted(
        model_group="none",
        model="none",
        route="bad_request",
        status="408",
        outcome="client_timeout",
    )
    assert SECRET not in edge.logs.getvalue()


async def test_silent_connection_is_closed_without_an_answer(make_edge: EdgeFactory) -> None:
    """A connection that sends nothing is closed at the header timeout, with nothing written
    (a pooled client would read an answer as its next request's)."""
    edge = await make_edge(client_header_timeout_seconds=0.3)
    async with connection(edge.port) as (reader, _):
        data, elapsed = await closed_within(reader, 0.3 + SLACK)
    assert (b"", True) == (data, elapsed >= 0.2)
    assert [] == edge.access_lines()


async def test_trickled_head_does_not_extend_the_deadline(make_edge: EdgeFactory) -> None:
    """A slowloris client sending a header byte every 50 ms is still cut off at the timeout."""
    edge = await make_edge(client_header_timeout_seconds=0.4)
    async with connection(edge.port) as (reader, writer):

        async def trickle() -> None:
            writer.write(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Pad: ")
            while not reader.at_eof():
                writer.write(b"a")
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        data, elapsed = await closed_within(reader, 0.4 + SLACK)
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
    assert (408, True) == (parse_answer(data).status, 0.3 <= elapsed)


async def test_each_later_request_on_a_keepalive_connection_has_the_deadline(
    make_edge: EdgeFactory,
) -> None:
    """Idle time between requests is keep-alive's, not the head's; a later head that stalls
    is cut off at the header timeout from its first byte."""
    edge = await make_edge(client_header_timeout_seconds=0.3, keepalive_timeout_seconds=30)
    async with connection(edge.port) as (reader, writer):
        writer.write(request(target="/healthz"))
        first = await read_answer(reader)
        await asyncio.sleep(0.6)  # idle for twice the header timeout: must stay open
        writer.write(request(target="/healthz"))
        second = await read_answer(reader)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: ga")
        data, elapsed = await closed_within(reader, 0.3 + SLACK)
    assert (200, 200, 408) == (first.status, second.status, parse_answer(data).status)
    assert elapsed >= 0.2


async def test_unread_body_arriving_after_the_answer_is_not_a_late_head(
    make_edge: EdgeFactory,
) -> None:
    """The rest of a body the gateway answered without reading never arms the head's deadline."""
    edge = await make_edge(client_header_timeout_seconds=0.3, keepalive_timeout_seconds=30)
    async with connection(edge.port) as (reader, writer):
        writer.write(b"POST /nowhere HTTP/1.1\r\nHost: gateway\r\nContent-Length: 20\r\n\r\n0123")
        refused = await read_answer(reader)
        writer.write(b"456789abcdefghij")
        await asyncio.sleep(0.6)
        writer.write(request(target="/healthz"))
        after = await read_answer(reader)
    assert (404, 200) == (refused.status, after.status)


async def test_idle_keepalive_connection_closes_after_the_keepalive_timeout(
    make_edge: EdgeFactory,
) -> None:
    """After an answer, a connection left idle is closed at GATEWAY_KEEPALIVE_TIMEOUT_SECONDS."""
    edge = await make_edge(keepalive_timeout_seconds=0.3)
    async with connection(edge.port) as (reader, writer):
        writer.write(request(target="/healthz"))
        answer = await read_answer(reader)
        data, elapsed = await closed_within(reader, 0.3 + SLACK)
    assert (200, b"", True) == (answer.status, data, elapsed >= 0.2)
    assert await until(lambda: edge.connections.open == 0)


# The cap --------------------------------------------------------------------------------


async def test_connection_past_the_cap_gets_503_overloaded_and_is_closed(
    make_edge: EdgeFactory,
) -> None:
    """Past GATEWAY_MAX_CONNECTIONS a new connection is answered 503 overloaded_error and
    closed at once; when one closes, the next is served again."""
    edge = await make_edge(max_connections=2)
    async with connection(edge.port), connection(edge.port) as (_, second):
        assert await until(lambda: edge.connections.open == 2)
        refused = parse_answer(await exchange(edge.port, request(target="/healthz"), seconds=3))
        second.close()
        assert await until(lambda: edge.connections.open == 1)
        served = parse_answer(await exchange(edge.port, request(target="/healthz", headers=CLOSE)))
    envelope = refused.json()
    assert (503, "overloaded_error") == (refused.status, envelope["error"]["type"])
    assert envelope["request_id"] == refused.headers["x-gateway-request-id"]
    assert 200 == served.status
    assert 1 == edge.requests_counted(
        model_group="none", model="none", route="connection", status="503", outcome="over_capacity"
    )
    assert await until(lambda: edge.connections.lingering_refusals == 0)


# Parser errors ---------------------------------------------------------------------------

KEY = f"x-api-key: {SECRET}\r\n"
PARSER_CASES = [
    # (id, request bytes, status, error kind logged)
    (
        "content_length_and_transfer_encoding",
        f"POST /v1/messages HTTP/1.1\r\nHost: g\r\n{KEY}Content-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "malformed_request",
    ),
    (
        "duplicate_content_length",
        f"POST /v1/messages HTTP/1.1\r\nHost: g\r\n{KEY}Content-Length: 5\r\n"
        "Content-Length: 6\r\n\r\nhello",
        400,
        "malformed_request",
    ),
    (
        "bad_chunk_size",
        f"POST /v1/messages HTTP/1.1\r\nHost: g\r\n{KEY}Transfer-Encoding: chunked\r\n\r\n"
        f"{SECRET}\r\nhello\r\n0\r\n\r\n",
        400,
        "malformed_request",
    ),
    (
        "obs_fold",
        f"GET /v1/models HTTP/1.1\r\nHost: g\r\nx-api-key: a\r\n {SECRET}\r\n\r\n",
        400,
        "malformed_request",
    ),
    (
        "space_in_header_name",
        f"GET /v1/models HTTP/1.1\r\nHost: g\r\nx api key: {SECRET}\r\n\r\n",
        400,
        "malformed_request",
    ),
    (
        "nul_in_header_value",
        f"GET /v1/models HTTP/1.1\r\nHost: g\r\nx-api-key: {SECRET}\x00\r\n\r\n",
        400,
        "malformed_request",
    ),
    (
        "oversized_header",
        f"GET /v1/models HTTP/1.1\r\nHost: g\r\nx-api-key: {SECRET}{'A' * 70_000}\r\n\r\n",
        431,
        "headers_too_large",
    ),
    (
        "too_many_headers",
        "GET /v1/models HTTP/1.1\r\nHost: g\r\n"
        + "".join(f"x-h{i}: {SECRET}\r\n" for i in range(200))
        + "\r\n",
        431,
        "headers_too_large",
    ),
    (
        "oversized_request_line",
        f"GET /v1/models?key={SECRET}{'A' * 9000} HTTP/1.1\r\nHost: g\r\n\r\n",
        414,
        "request_line_too_long",
    ),
    (
        "junk_after_version",
        f"GET /v1/models?key={SECRET} HTTP/1.1 junk\r\nHost: g\r\n\r\n",
        400,
        "malformed_request_line",
    ),
    (
        "bad_method",
        f"G(T /v1/models?key={SECRET} HTTP/1.1\r\nHost: g\r\n\r\n",
        400,
        "malformed_request_line",
    ),
]


@pytest.mark.parametrize(
    ("raw", "status", "kind"),
    [pytest.param(raw, status, kind, id=name) for name, raw, status, kind in PARSER_CASES],
)
async def test_parser_error_is_an_envelope_that_echoes_nothing_and_is_logged_and_counted(
    make_edge: EdgeFactory, fake_upstream: FakeUpstream, raw: str, status: int, kind: str
) -> None:
    """What the HTTP parser refuses gets the envelope with a fixed message, no byte of the
    request (the key included), a closed connection, one access line and the metric."""
    edge = await make_edge()
    data = await exchange(edge.port, raw.encode("latin-1"))  # returns once the server closes
    answer = parse_answer(data)
    envelope = answer.json()
    (line,) = edge.access_lines()
    assert (status, "application/json") == (answer.status, answer.headers["content-type"])
    assert ("invalid_request_error", envelope["request_id"]) == (
        envelope["error"]["type"],
        answer.headers["x-gateway-request-id"],
    )
    assert "SECRETVALUE" not in data.decode("latin-1")
    expected = {"route": "bad_request", "outcome": "invalid_request", "status": status}
    assert {**expected, "error": kind, "method": "-", "path": "-"} == {
        key: line[key] for key in (*expected, "error", "method", "path")
    }
    assert envelope["request_id"] == line["request_id"]
    assert "SECRETVALUE" not in edge.logs.getvalue()
    labels = {"model_group": "none", "model": "none", "route": "bad_request"}
    assert 1 == edge.requests_counted(**labels, status=str(status), outcome="invalid_request")
    assert [] == fake_upstream.requests


def test_a_bug_below_the_middleware_is_a_bare_500_envelope() -> None:
    """An error aiohttp hands `handle_error` that is no parse error gets 500 api_error and
    the log, never its text."""

    async def never(request: web.BaseRequest) -> web.StreamResponse:
        raise AssertionError("not called")

    async def scenario() -> tuple[int, str, float]:
        metrics = GatewayMetrics(CollectorRegistry())
        connections = ClientConnections(ConnectionLimits(), metrics, FakeClock())
        protocol = EdgeHandler(connections, web.Server(never), loop=asyncio.get_running_loop())
        response = protocol.handle_error(
            make_mocked_request("GET", "/", writer=Mock(output_size=0)),
            500,
            RuntimeError("secret detail"),
        )
        assert isinstance(response, web.Response)
        assert response.text is not None
        failed = metrics.registry.get_sample_value(
            "gateway_requests_total",
            {"model_group": "none", "model": "none", "route": "bad_request", "status": "500",
             "outcome": "internal_error"},
        )  # fmt: skip
        return response.status, response.text, failed or 0.0

    status, body, counted = asyncio.run(scenario())
    assert (500, 1.0) == (status, counted)
    assert "secret detail" not in body
    assert '"api_error"' in body


def test_the_private_aiohttp_api_the_edge_relies_on_is_still_there() -> None:
    """connections.py reads `RequestHandler._request_count`, `Server._kwargs` and BaseSite's
    fields, and overrides `handle_error` and `log_access`: fail loudly here if an aiohttp
    upgrade changes them."""
    assert "_request_count" in RequestHandler.__slots__
    assert {"_runner", "_backlog", "_server"} <= set(web.BaseSite.__slots__)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    async def server_kwargs() -> dict[str, Any]:
        return web.Server(handler, keepalive_timeout=5.0)._kwargs

    assert {"keepalive_timeout": 5.0} == asyncio.run(server_kwargs())
    assert ["self", "request", "status", "exc", "message"] == list(
        inspect.signature(RequestHandler.handle_error).parameters
    )
    assert ["self", "request", "response", "time"] == list(
        inspect.signature(RequestHandler.log_access).parameters
    )


# The descriptor budget ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "soft", "hard", "expected"),
    [
        pytest.param(10_000, 1024, 1_048_576, (10_000, 20_256), id="soft-raised-to-fit"),
        pytest.param(10_000, 1024, 4096, (1920, 4096), id="hard-too-low-cap-lowered"),
        pytest.param(10_000, 65_536, 65_536, (10_000, 65_536), id="already-enough"),
        pytest.param(10_000, -1, -1, (10_000, -1), id="unlimited"),
        pytest.param(10, 100, 100, (1, 100), id="never-below-one"),
    ],
)
def test_descriptor_budget_fits_the_cap_to_the_file_descriptor_limit(
    wanted: int, soft: int, hard: int, expected: tuple[int, int]
) -> None:
    """Two descriptors a connection plus a reserve: the soft limit rises toward the hard one,
    and the cap falls to what remains."""
    assert expected == descriptor_budget(wanted, soft, hard)


async def test_listeners_share_a_port_only_with_reuse_port(fake_upstream: FakeUpstream) -> None:
    """Workers bind one port with SO_REUSEPORT; without it a second listener is refused."""
    fields: dict[str, Any] = {"upstream_url": fake_upstream.url, "port": free_port()}
    settings = Settings(_env_file=None, **fields)  # type: ignore[call-arg]
    runners = []
    try:
        for _ in range(2):
            runner, _ = await listen(settings, create_app(settings), reuse_port=True)
            runners.append(runner)
        with pytest.raises(OSError, match="address already in use"):
            await listen(settings, create_app(settings))
    finally:
        for runner in runners:
            await runner.cleanup()
    assert 2 == len(runners)
