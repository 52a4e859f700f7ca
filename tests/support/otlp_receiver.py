"""A project-owned OTLP/HTTP trace receiver: a real aiohttp app on 127.0.0.1, port 0.

It stands in for an OpenTelemetry Collector (no collector, Jaeger or Tempo can be installed
from PyPI or Debian): it takes `POST /v1/traces` with an `ExportTraceServiceRequest` in
protobuf (gzip or not), decodes it with `opentelemetry-proto`, keeps every span, and answers
as a collector does. `GET /stats` gives the counts. Standalone (the bench's tracing-on run):
`python -m tests.support.otlp_receiver --port N`.

    async with OtlpReceiver() as receiver:
        ...  # export to receiver.url + "/v1/traces"
        await receiver.wait_for_spans(3)
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import signal
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One exported span, decoded: ids as W3C hex, attribute values as Python values."""

    name: str
    kind: int
    """The OTLP enum: 1 internal, 2 server, 3 client."""
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    """The OTLP enum: 0 unset, 1 ok, 2 error."""


def value_of(value: AnyValue) -> Any:
    """An OTLP `AnyValue` as a Python value (arrays as tuples)."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return tuple(value_of(item) for item in value.array_value.values)
    return None if which is None else getattr(value, which)


def attributes_of(pairs: Any) -> dict[str, Any]:
    """OTLP key-value pairs as a dict."""
    decoded: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        decoded[pair.key] = value_of(pair.value)
    return decoded


def decode(body: bytes) -> list[ReceivedSpan]:
    """Every span of one `ExportTraceServiceRequest`."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=attributes_of(span.attributes),
                        resource=resource,
                        status_code=span.status.code,
                    )
                )
    return spans


class OtlpReceiver:
    """The receiver: `spans` holds every span received, in arrival order. Without `keep`
    (the bench) it decodes nothing and only counts exports and bytes, so that it costs the
    machine next to nothing while a gateway is measured."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep: bool = True) -> None:
        self.host, self.port, self.url = host, port, ""
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.received = 0
        self.exports = 0
        self.bytes = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for_spans(self, count: int) -> list[ReceivedSpan]:
        """Return the spans once at least `count` arrived; bound it with `asyncio.wait_for`."""
        while self.received < count:
            self._changed.clear()
            await self._changed.wait()
        return list(self.spans)

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        body = await request.read()
        self.exports += 1
        self.bytes += len(body)
        if self.keep:
            if request.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            spans = decode(body)
            self.received += len(spans)
            self.spans.extend(spans)
        self._changed.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"exports": self.exports, "bytes": self.bytes, "spans": self.received}
        )


async def serve(port: int) -> None:
    """Receive until SIGTERM or SIGINT (the bench's tracing-on run)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with OtlpReceiver(port=port, keep=False) as receiver:
        print(f"otlp receiver on {receiver.url}/v1/traces", flush=True)
        await stop.wait()
        print(f"exports={receiver.exports} bytes={receiver.bytes}", flush=True)


def main() -> None:
    """`python -m tests.support.otlp_receiver --port N`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
