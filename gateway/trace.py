"""The tracing seam: what one request's steps tell its trace, and a trace that does nothing.

OpenTelemetry is an optional extra (`claude-gateway[otel]`) and off by default. Every OTel
import lives in `tracing.py`, which is imported only when tracing is on; the rest of the
gateway talks to this seam. Each `RequestRecord` carries a `Trace`: `NO_TRACE` unless the
middleware started a real one, so a request without tracing makes a few empty calls, and the
process never imports OpenTelemetry.

    with record.trace.span("gateway.admission"):   # admission, queue wait, relay
        ...
    record.upstream_attempt_started(headers)       # the record forwards attempts
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aiohttp import ClientResponse

Tap = Callable[[bytes], None]
"""What the relay shows every chunk to (`relay.relay`'s `tap`)."""
OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http")
"""What the `otel` extra brings: the SDK and its OTLP/HTTP exporter."""


class Trace(Protocol):
    """Protocol: one request's trace. Steps report as they go; the trace turns the reports
    into child spans of the request's server span (`tracing.RequestTrace`)."""

    def span(self, name: str) -> AbstractContextManager[None]:
        """A child span around one step (admission, queue wait, relay); its attributes are
        read from the record once the request is over."""
        ...

    def attempt_started(self, headers: MutableMapping[str, str]) -> None:
        """An upstream attempt is about to be sent: its span starts, and `headers` carry
        that span as the request's `traceparent`."""
        ...

    def attempt_ended(self, status: str) -> None:
        """The attempt got an answer (its HTTP status) or failed (connect_error, ...)."""
        ...

    def retrying(self, cause: str, delay: float) -> None:
        """The attempt is retried after `delay` seconds: its span ends."""
        ...

    def answered(self, tap: Tap | None, response: ClientResponse) -> Tap | None:
        """Upstream's answer is kept: the last attempt's span ends. Returns the tap to show
        the relayed body to (`tap`, or one that also reads the usage for the trace)."""
        ...


class NoTrace:
    """The trace of a request nobody traces: every report is dropped at once."""

    _NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()

    def span(self, name: str) -> AbstractContextManager[None]:
        return self._NO_SPAN

    def attempt_started(self, headers: MutableMapping[str, str]) -> None:
        return None

    def attempt_ended(self, status: str) -> None:
        return None

    def retrying(self, cause: str, delay: float) -> None:
        return None

    def answered(self, tap: Tap | None, response: ClientResponse) -> Tap | None:
        return tap


NO_TRACE = NoTrace()


def otel_installed() -> bool:
    """True when the `otel` extra is installed; found without importing it."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in OTEL_MODULES)
    except ImportError:  # a parent package is missing
        return False
