"""Traces on the wire: the span tree and attributes of real requests through the gateway
(in-memory exporter, fake upstream), `traceparent` in and out, secrets never in a span, the
access line's trace id, and an OTLP/HTTP export to a receiver that decodes the protobuf."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from gateway.retry import RetryPolicy
from gateway.services import TRACING
from gateway.tracing import Tracing, open_tracing
from tests.conftest import TEST_KEY, GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import FakeUpstream, Reply, Stream
from tests.support.otlp_receiver import OtlpReceiver
from tests.test_upstream import rpm_limits

MODEL = "claude-sonnet-4-6"
PROMPT = "Tell nobody: the launch code is 7-4-1-9."
HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]}
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SEED = 7
SPANS_DEADLINE = 5.0


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Where the test's spans end, one by one as they finish."""
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter, fake_upstream: FakeUpstream) -> Tracing:
    """A tracer exporting synchronously to `exporter` (the gateway shuts it down at cleanup)."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider, fake_upstream.url)


@pytest.fixture
async def traced(make_gateway: GatewayFactory, tracing: Tracing) -> RunningGateway:
    """A traced gateway without limits in front of the fake upstream."""
    return await make_gateway(tracing=tracing)


async def post(
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/messages",
) -> tuple[int, bytes, dict[str, str]]:
    """POST a Messages request; its status, body and headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + path, json=body or BODY, headers={**HEADERS, **(headers or {})}
        ) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


async def finished(exporter: InMemorySpanExporter, servers: int = 1) -> list[ReadableSpan]:
    """Every span, once `servers` server spans ended (the server span ends last): polled
    until a deadline, since a relayed body can reach the client before the span ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SPANS_DEADLINE
    while True:
        spans = list(exporter.get_finished_spans())
        if sum(span.kind is SpanKind.SERVER for span in spans) >= servers:
            return spans
        assert loop.time() < deadline, f"{servers} server span(s) never ended: {spans}"
        await asyncio.sleep(0.01)


def server_spans(spans: Sequence[ReadableSpan]) -> list[ReadableSpan]:
    """The server spans, in the order they started."""
    found = [span for span in spans if span.kind is SpanKind.SERVER]
    return sorted(found, key=lambda span: span.start_time or 0)


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """`parent`'s child spans, in the order they started."""
    parent_id = parent.context.span_id
    found = [span for span in spans if span.parent and span.parent.span_id == parent_id]
    return sorted(found, key=lambda span: span.start_time or 0)


def tree(spans: Sequence[ReadableSpan], server: ReadableSpan) -> list[tuple[str, SpanKind]]:
    """The server span's children as (name, kind), in start order."""
    return [(span.name, span.kind) for span in children(spans, server)]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    """A span's attributes as a plain dict."""
    return dict(span.attributes or {})


def traceparent_of(span: ReadableSpan) -> str:
    """The W3C `traceparent` naming `span` as the parent."""
    context = span.context
    ids = f"{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}"
    return f"00-{ids}-{context.trace_flags:02x}"


async def test_json_request_has_admission_attempt_and_relay_spans_with_genai_attributes(
    make_gateway: GatewayFactory,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    """A JSON Messages call: a SERVER span with admission, one CLIENT attempt and the relay
    as children, and the GenAI attributes of the request, the response and its usage."""
    fake_upstream.usage = {
        "input_tokens": 19,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 100,
        "output_tokens": 6,
    }
    gateway = await make_gateway(tracing=tracing, limits_file=rpm_limits(tmp_path, 1000))
    status, body, headers = await post(gateway.url)
    spans = await finished(exporter)
    [server] = server_spans(spans)
    reply = json.loads(body)
    assert 200 == status
    assert [
        ("gateway.admission", SpanKind.INTERNAL),
        ("upstream.attempt", SpanKind.CLIENT),
        ("gateway.relay", SpanKind.INTERNAL),
    ] == tree(spans, server)
    assert ("POST /v1/messages", StatusCode.UNSET) == (server.name, server.status.status_code)
    assert {
        "http.request.method": "POST",
        "url.path": "/v1/messages",
        "http.route": "/v1/messages",
        "http.response.status_code": 200,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.response.id": reply["id"],
        "gen_ai.response.model": reply["model"],
        "gen_ai.response.finish_reasons": ("end_turn",),
        "gen_ai.usage.input_tokens": 124,
        "gen_ai.usage.output_tokens": 6,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.cache_creation.input_tokens": 5,
        "gateway.model_group": "sonnet",
        "gateway.admission": "now",
        "gateway.queue_wait_ms": 0.0,
        "gateway.upstream.attempts": 1,
        "gateway.upstream.request_id": headers["request-id"],
        "gateway.outcome": "ok",
        "gateway.stream": False,
    }.items() <= attrs(server).items()
    admission, attempt, relay = children(spans, server)
    assert {"gateway.admission": "now", "gateway.model_group": "sonnet"}.items() <= attrs(
        admission
    ).items()
    assert {
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "server.address": "127.0.0.1",
        "server.port": fake_upstream.port,
        "url.path": "/v1/messages",
        "gateway.upstream.attempt": 1,
    } == attrs(attempt)
    assert {"gateway.relay.ending": "complete", "gateway.relay.bytes": len(body)} == attrs(relay)


async def test_streamed_request_takes_its_usage_from_the_sse_events(
    traced: RunningGateway, exporter: InMemorySpanExporter, fake_upstream: FakeUpstream
) -> None:
    """A stream: the response id, model, stop reason and usage come from its SSE events."""
    fake_upstream.script(Stream(split_every=7))
    status, body, _ = await post(traced.url, {**BODY, "stream": True})
    [server] = server_spans(await finished(exporter))
    start = json.loads(body.split(b"\n")[1].removeprefix(b"data: "))["message"]
    assert 200 == status
    assert {
        "gateway.stream": True,
        "gen_ai.response.id": start["id"],
        "gen_ai.response.model": start["model"],
        "gen_ai.response.finish_reasons": ("end_turn",),
        "gen_ai.usage.input_tokens": 19,
        "gen_ai.usage.output_tokens": 6,
        "gateway.outcome": "ok",
    }.items() <= attrs(server).items()


async def test_queued_request_has_a_queue_span(
    make_gateway: GatewayFactory,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    """At 2 RPM the third request waits 30 s: its trace has a queue span after admission;
    the first two, which did not wait, have none."""
    gateway = await make_gateway(
        tracing=tracing, limits_file=rpm_limits(tmp_path, 2), clock=FakeClock()
    )
    statuses = [(await post(gateway.url))[0] for _ in range(3)]
    spans = await finished(exporter, servers=3)
    first, _, third = server_spans(spans)
    assert [200, 200, 200] == statuses
    assert ["gateway.admission", "upstream.attempt", "gateway.relay"] == [
        name for name, _ in tree(spans, first)
    ]
    assert ["gateway.admission", "gateway.queue", "upstream.attempt", "gateway.relay"] == [
        name for name, _ in tree(spans, third)
    ]
    queue = children(spans, third)[1]
    assert {"gateway.queue_wait_ms": 30000.0, "gateway.admission": "queued"} == attrs(queue)
    assert {
        "gateway.admission": "queued",
        "gateway.queue_wait_ms": 30000.0,
        "gateway.outcome": "queued_ok",
    }.items() <= attrs(third).items()


async def test_local_429_has_only_the_admission_span_and_no_error_status(
    make_gateway: GatewayFactory,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    """A request the limiter refuses: its trace ends at admission, 429 is the client's
    outcome (no ERROR on a server span), and nothing went upstream."""
    gateway = await make_gateway(
        tracing=tracing, limits_file=rpm_limits(tmp_path, 1), clock=FakeClock()
    )
    await post(gateway.url)
    status, _, _ = await post(gateway.url, headers={"x-gateway-max-wait": "0"})
    spans = await finished(exporter, servers=2)
    refused = server_spans(spans)[1]
    assert (429, 1) == (status, len(fake_upstream.requests))
    assert [("gateway.admission", SpanKind.INTERNAL)] == tree(spans, refused)
    assert StatusCode.UNSET == refused.status.status_code
    assert {
        "http.response.status_code": 429,
        "gateway.admission": "rejected",
        "gateway.outcome": "rejected",
        "gateway.upstream.attempts": 0,
    }.items() <= attrs(refused).items()
    assert "error.type" not in attrs(refused)


async def test_retried_request_has_one_client_span_per_attempt_each_sent_upstream(
    make_gateway: GatewayFactory,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    fake_upstream: FakeUpstream,
) -> None:
    """529 then 200: two attempt spans; the first is an error naming its cause and the
    backoff before the second; each attempt went upstream with its own span as parent."""
    gateway = await make_gateway(tracing=tracing, clock=FakeClock(), retry_seed=SEED)
    fake_upstream.script(Reply(529), Reply(200))
    status, _, _ = await post(gateway.url)
    spans = await finished(exporter)
    [server] = server_spans(spans)
    first, second = (span for span in children(spans, server) if span.kind is SpanKind.CLIENT)
    delay = RetryPolicy().backoff(0, random.Random(SEED))
    assert 200 == status
    assert {
        "http.response.status_code": 529,
        "error.type": "529",
        "gateway.upstream.attempt": 1,
        "gateway.retry.cause": "529",
        "gateway.retry.delay_ms": round(delay * 1000, 3),
    }.items() <= attrs(first).items()
    assert (StatusCode.ERROR, StatusCode.UNSET) == (
        first.status.status_code,
        second.status.status_code,
    )
    assert {"http.response.status_code": 200, "gateway.upstream.attempt": 2}.items() <= attrs(
        second
    ).items()
    assert [traceparent_of(first), traceparent_of(second)] == [
        request.headers["traceparent"] for request in fake_upstream.requests
    ]
    assert {"gateway.upstream.attempts": 2, "gateway.outcome": "ok"}.items() <= attrs(
        server
    ).items()


async def test_upstream_error_relayed_is_an_error_span(
    traced: RunningGateway, exporter: InMemorySpanExporter, fake_upstream: FakeUpstream
) -> None:
    """The API's own 500, relayed after the retries: ERROR on the server span, named by
    its status."""
    fake_upstream.script(*[Reply(500)] * 6)
    status, _, _ = await post(traced.url, headers={"x-gateway-max-retries": "0"})
    [server] = server_spans(await finished(exporter))
    assert (500, StatusCode.ERROR) == (status, server.status.status_code)
    assert {"error.type": "500", "gateway.outcome": "upstream_error"}.items() <= attrs(
        server
    ).items()


async def test_client_gone_mid_stream_ends_the_trace_as_a_disconnect(
    traced: RunningGateway, exporter: InMemorySpanExporter, fake_upstream: FakeUpstream
) -> None:
    """A client that leaves after the first event: the relay span and the server span end
    anyway, saying the client disconnected."""
    fake_upstream.script(Stream(chunk_delay=0.2))
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            traced.url + "/v1/messages", json={**BODY, "stream": True}, headers=HEADERS
        )
        await response.content.readuntil(b"\n\n")
        response.close()
    spans = await finished(exporter)
    [server] = server_spans(spans)
    relay = children(spans, server)[-1]
    assert {"gateway.outcome": "client_disconnect", "gateway.stream": True}.items() <= attrs(
        server
    ).items()
    assert ("gateway.relay", "client_disconnect") == (
        relay.name,
        attrs(relay)["gateway.relay.ending"],
    )


async def test_server_span_continues_the_clients_trace_and_upstream_gets_the_attempt(
    traced: RunningGateway, exporter: InMemorySpanExporter, fake_upstream: FakeUpstream
) -> None:
    """The client's traceparent is the server span's parent (same trace id); upstream sees
    the gateway's attempt span in its place, and the client's tracestate unchanged."""
    await post(traced.url, headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    spans = await finished(exporter)
    [server] = server_spans(spans)
    attempt = children(spans, server)[0]
    [sent] = fake_upstream.requests
    assert server.parent is not None
    assert (CLIENT_TRACE, CLIENT_SPAN, True) == (
        format_trace_id(server.context.trace_id),
        format_span_id(server.parent.span_id),
        server.parent.is_remote,
    )
    assert (traceparent_of(attempt), "vendor=abc") == (
        sent.headers["traceparent"],
        sent.headers["tracestate"],
    )


async def test_access_line_carries_the_trace_and_span_ids(
    traced: RunningGateway, exporter: InMemorySpanExporter
) -> None:
    """The access line names the server span's trace id and span id (a log line leads to
    its trace)."""
    await post(traced.url, headers={"traceparent": TRACEPARENT})
    [server] = server_spans(await finished(exporter))
    [line] = traced.access_lines()
    assert (CLIENT_TRACE, format_span_id(server.context.span_id)) == (
        line["trace_id"],
        line["span_id"],
    )


async def test_no_attribute_holds_a_key_a_prompt_a_completion_or_a_query(
    make_gateway: GatewayFactory,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    fake_upstream: FakeUpstream,
) -> None:
    """Across JSON, stream, retried and refused requests, with the key in either header and
    a query string: no span name or attribute value carries the key, the prompt, the
    completion or the query."""
    gateway = await make_gateway(tracing=tracing, clock=FakeClock(), retry_seed=SEED)
    bearer = {"authorization": f"Bearer {TEST_KEY}", "x-api-key": ""}
    fake_upstream.script(Reply(529), Reply(200))
    await post(gateway.url, path="/v1/messages?beta=true&sig=QUERYSECRET")
    await post(gateway.url, {**BODY, "stream": True}, headers=bearer)
    await post(gateway.url, {"model": 7}, headers=bearer)
    spans = await finished(exporter, servers=3)
    texts = [span.name for span in spans] + [
        str(value) for span in spans for value in attrs(span).values()
    ]
    secrets = (TEST_KEY, "sk-ant", PROMPT, "launch code", fake_upstream.reply_text, "QUERYSECRET")
    assert [] == [(secret, text) for text in texts for secret in secrets if secret in text]


async def test_a_tracing_failure_never_fails_the_request(
    traced: RunningGateway, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while finishing the trace is logged; the client still gets its answer."""

    def broken(*args: object) -> dict[str, Any]:
        raise RuntimeError("bug")

    monkeypatch.setattr("gateway.tracing.request_attributes", broken)
    status, _, _ = await post(traced.url)
    assert 200 == status
    assert ["trace_failed"] == [
        line["event"] for line in traced.log_lines() if line.get("level") == "error"
    ]


async def test_untraced_gateway_forwards_traceparent_untouched_and_logs_no_trace_id(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """Off by default: no tracer in the app, the client's traceparent goes upstream as it
    came, and the access line has no trace id."""
    await post(gateway.url, headers={"traceparent": TRACEPARENT})
    [sent] = fake_upstream.requests
    [line] = gateway.access_lines()
    assert (TRACEPARENT, None, None) == (
        sent.headers["traceparent"],
        line.get("trace_id"),
        line.get("span_id"),
    )


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    """A project-owned OTLP/HTTP receiver on a free port."""
    async with OtlpReceiver() as running:
        yield running


async def test_spans_reach_an_otlp_http_receiver_when_the_app_shuts_down(
    make_gateway: GatewayFactory,
    receiver: OtlpReceiver,
    fake_upstream: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production exporter (OTLP/HTTP protobuf, batched) posts the request's spans to
    the receiver when the app's cleanup flushes it, with the service's resource."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    exporting = open_tracing(receiver.url + "/v1/traces", fake_upstream.url)
    gateway = await make_gateway(tracing=exporting)
    await post(gateway.url, headers={"traceparent": TRACEPARENT})
    await gateway.server.close()  # the app's cleanup: flush, then shut the provider down
    spans = await asyncio.wait_for(receiver.wait_for_spans(3), SPANS_DEADLINE)
    by_name = {span.name: span for span in spans}
    server = by_name["POST /v1/messages"]
    assert ["POST /v1/messages", "gateway.relay", "upstream.attempt"] == sorted(by_name)
    assert ("claude-gateway", {CLIENT_TRACE}) == (
        server.resource["service.name"],
        {span.trace_id for span in spans},
    )
    assert (2, 3, CLIENT_SPAN) == (
        server.kind,
        by_name["upstream.attempt"].kind,
        server.parent_span_id,
    )
    assert {"gen_ai.request.model": MODEL, "http.response.status_code": 200}.items() <= (
        server.attributes.items()
    )


async def test_otel_service_name_names_the_service(
    fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_SERVICE_NAME, read by the SDK, wins over the default `claude-gateway`."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    exporting = open_tracing("http://127.0.0.1:1/v1/traces", fake_upstream.url)
    try:
        assert "gateway-eu" == exporting.provider.resource.attributes["service.name"]
    finally:
        await exporting.aclose()


async def test_a_traced_app_publishes_its_tracer(traced: RunningGateway, tracing: Tracing) -> None:
    """With tracing on, the app's optional `TRACING` key holds the tracer requests use."""
    assert traced.app[TRACING] is tracing
