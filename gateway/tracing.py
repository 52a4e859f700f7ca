"""OpenTelemetry traces: one server span per `/v1` request, its steps as child spans.

The one module that imports OpenTelemetry, and nothing imports it unless tracing is on
(`app.py` does, lazily), so a gateway without the `otel` extra or without an OTLP endpoint
never loads OpenTelemetry. The rest of the gateway reports through `trace.Trace`.

    POST /v1/messages        SERVER: continues the client's `traceparent` (and `tracestate`)
      gateway.admission      the limiter's decision (an exact input count included)
      gateway.queue          the queue wait, only when the request waited
      upstream.attempt       CLIENT, one per attempt; its context goes upstream as `traceparent`
      upstream.attempt       (a retry: the one before says why and after how long)
      gateway.relay          the answer's body, to the client

Attributes are set once the request is over, from its finished record (`span_attributes.py`);
a step's span ends at the moment the step did. A trace that fails must not fail its request:
errors here are logged, never raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from aiohttp import ClientResponse, web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    format_span_id,
    format_trace_id,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from gateway import __version__
from gateway.clock import wall_time_ns
from gateway.logs import get_logger
from gateway.messages import route_of
from gateway.record import RequestRecord
from gateway.span_attributes import (
    OPERATIONS,
    Peer,
    attempt_attributes,
    attempt_result,
    error_type,
    request_attributes,
    retry_attributes,
    server_start_attributes,
    step_attributes,
    step_failed,
)
from gateway.trace import Tap
from gateway.usage import MessageFacts, UsageTap

log = get_logger("gateway.tracing")
SERVICE = "claude-gateway"
"""`service.name` unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names another."""
W3C = TraceContextTextMapPropagator()
"""W3C Trace Context, in and out: the gateway continues and forwards `traceparent` only."""
SHUTDOWN_SECONDS = 5.0
"""How long shutdown waits for the last spans to be exported."""


class Tracing:
    """The process's tracer: starts one `RequestTrace` per `/v1` request, flushes at close."""

    def __init__(self, provider: TracerProvider, upstream_url: str) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(SERVICE, __version__)
        url = URL(upstream_url)
        self._peer = Peer(url.host, url.port, url.path.rstrip("/"))

    @property
    def provider(self) -> TracerProvider:
        """The tracer provider: its resource, its span processors."""
        return self._provider

    def start(self, request: web.Request, record: RequestRecord) -> RequestTrace | None:
        """The request's trace, set on its record (None for a path outside `/v1/`)."""
        if not request.path.startswith("/v1/"):
            return None
        try:
            parent = W3C.extract(request.headers)
            route = route_of(request.path)
            server = self._tracer.start_span(
                f"{request.method} {route}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes=server_start_attributes(request.method, request.path, route),
            )
        except Exception:  # a tracing bug must cost the trace, never the request
            log.exception("trace_failed")
            return None
        trace = RequestTrace(self._tracer, server, record, self._peer)
        record.trace = trace
        return trace

    async def aclose(self) -> None:
        """Export what is left and stop (in a thread: the exporter's I/O is blocking)."""
        await asyncio.to_thread(self._provider.force_flush, int(SHUTDOWN_SECONDS * 1000))
        await asyncio.to_thread(self._provider.shutdown)


def open_tracing(endpoint: str, upstream_url: str) -> Tracing:
    """Tracing that exports over OTLP/HTTP to `endpoint`, in batches, off the event loop.

    The SDK reads the rest of the standard variables itself: OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_(TRACES_)HEADERS,
    _TIMEOUT, _COMPRESSION and _CERTIFICATE, and OTEL_BSP_* for the batching.
    """
    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # aclose() shuts it
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Tracing(provider, upstream_url)


class RequestTrace:
    """One request's spans: the `trace.Trace` the steps report to, finished from the record."""

    def __init__(self, tracer: Tracer, server: Span, record: RequestRecord, peer: Peer) -> None:
        self._tracer = tracer
        self._server = server
        self._parent = set_span_in_context(server)
        self._record = record
        self._peer = peer
        self._steps: list[tuple[str, Span, int]] = []
        """Step spans, each with the time it ended: attributes come at `finish`."""
        self._attempt: Span | None = None
        self._attempts = 0
        self._tap: UsageTap | None = None

    def log_ids(self) -> dict[str, str]:
        """`trace_id` and `span_id` (W3C hex) for the request's log lines."""
        context = self._server.get_span_context()
        return {
            "trace_id": format_trace_id(context.trace_id),
            "span_id": format_span_id(context.span_id),
        }

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        span = self._tracer.start_span(name, context=self._parent)
        try:
            yield
        finally:
            self._steps.append((name, span, wall_time_ns()))

    def attempt_started(self, headers: MutableMapping[str, str]) -> None:
        self._end_attempt()
        self._attempts += 1
        record = self._record
        span = self._tracer.start_span(
            "upstream.attempt",
            context=self._parent,
            kind=SpanKind.CLIENT,
            attributes=attempt_attributes(self._attempts, record.method, record.path, self._peer),
        )
        self._attempt = span
        W3C.inject(headers, context=set_span_in_context(span))

    def attempt_ended(self, status: str) -> None:
        if self._attempt is None:
            return
        attributes, failed = attempt_result(status)
        self._attempt.set_attributes(attributes)
        if failed:
            self._attempt.set_status(Status(StatusCode.ERROR, status))

    def retrying(self, cause: str, delay: float) -> None:
        if self._attempt is not None:
            self._attempt.set_attributes(retry_attributes(cause, delay))
        self._end_attempt()

    def answered(self, tap: Tap | None, response: ClientResponse) -> Tap | None:
        self._end_attempt()
        if self._record.route not in OPERATIONS:
            return tap
        encoding = response.headers.get("content-encoding")
        own = self._tap = UsageTap(stream=self._record.streamed, encoding=encoding, facts=True)
        if tap is None:
            return own

        def both(chunk: bytes) -> None:
            tap(chunk)
            own(chunk)

        return both

    def finish(self, record: RequestRecord) -> None:
        """The request is over: every span gets its attributes from `record` and ends."""
        try:
            self._finish(record)
        except Exception:  # a tracing bug must cost the trace, never the request
            log.exception("trace_failed")

    def _finish(self, record: RequestRecord) -> None:
        self._end_attempt()  # a final failure leaves its attempt open
        recording = self._server.is_recording()
        for name, span, ended in self._steps:
            if recording:
                span.set_attributes(step_attributes(name, record))
                if step_failed(name, record):
                    span.set_status(Status(StatusCode.ERROR, record.ending))
            span.end(end_time=ended)
        server = self._server
        if recording:
            tap = self._tap
            usage, message = (None, MessageFacts()) if tap is None else (tap.usage, tap.message)
            server.set_attributes(request_attributes(record, usage, message))
            error = error_type(record)
            if error is not None:
                server.set_status(Status(StatusCode.ERROR, error))
        server.end()

    def _end_attempt(self) -> None:
        if self._attempt is not None:
            self._attempt.end()
            self._attempt = None
