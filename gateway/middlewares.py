"""Request id and log context; gateway errors -> Anthropic envelope; one access line, metrics.

Every request gets a `RequestRecord` and an `x-gateway-request-id`. A target the gateway
never forwards (`targets.py`) is refused first. A `GatewayError` becomes the API's error
envelope with its status; aiohttp's own HTTP errors (unknown path, wrong method) are rendered
the same way; anything unexpected is a 500 `api_error` whose traceback goes to the log and
never to the client. When the request is over, its record derives the outcome once and feeds
the access line (`access_line.py`) and the metrics (`record_started` / `record_over`, which
`connections.py` uses too for what it answers before a request exists). With tracing on, a
`/v1` request's server span starts here and is finished from the record; its trace and span
ids go on every log line of the request, the access line included.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.access_line import log_access
from gateway.errors import GatewayError, envelope
from gateway.headers import REQUEST_ID
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.record import RECORD, RequestRecord
from gateway.services import CLOCK, METRICS, TRACING
from gateway.targets import check_target

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
error_log = get_logger("gateway.error")

OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
HTTP_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
}
CLIENT_CLOSED = 499
"""The status recorded for a request whose client left before any answer (nginx's code)."""


def new_request_id() -> str:
    """The gateway's own request id: plainly not an upstream `req_...` id."""
    return f"gw_{secrets.token_hex(12)}"


def error_response(
    status: int, error_type: str, message: str, request_id: str, headers: dict[str, str]
) -> web.Response:
    """An Anthropic-style error answer carrying the gateway's request id."""
    response = web.Response(
        status=status,
        body=envelope(error_type, message, request_id),
        content_type="application/json",
        headers=headers,
    )
    response.headers[REQUEST_ID] = request_id
    return response


def record_started(metrics: GatewayMetrics, now: float, method: str, path: str) -> RequestRecord:
    """A new request's record, with its own id, counted as in flight."""
    record = RequestRecord(new_request_id(), now, method, path)
    metrics.request_started()
    return record


def record_over(record: RequestRecord, metrics: GatewayMetrics, now: float) -> None:
    """The request is over: derive its outcome once, count it, write its access line."""
    record.ended_at = now
    record.finish()
    metrics.request_finished(record)
    log_access(record)


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Wrap one request: id, error rendering, access line and metrics."""
    clock, metrics = request.app[CLOCK], request.app[METRICS]
    record = record_started(metrics, clock.now(), request.method, request.path)
    request[RECORD] = record
    tracing = request.app.get(TRACING)
    trace = None if tracing is None else tracing.start(request, record)
    log_context = {"request_id": record.request_id}
    if trace is not None:
        log_context.update(trace.log_ids())
    structlog.contextvars.bind_contextvars(**log_context)
    try:
        response = await _answer(request, handler, record)
    except asyncio.CancelledError:
        record.cancelled = True
        record.status = record.status or CLIENT_CLOSED
        raise
    finally:
        record.route = record.route or ("ops" if request.path in OPS_PATHS else "unmatched")
        record_over(record, metrics, clock.now())
        if trace is not None:
            trace.finish(record)
        structlog.contextvars.unbind_contextvars(*log_context)
    return response


async def _answer(
    request: web.Request, handler: Handler, record: RequestRecord
) -> web.StreamResponse:
    rid = record.request_id
    try:
        check_target(request.method, request.raw_path)
        response = await handler(request)
    except GatewayError as exc:
        record.error_outcome = exc.outcome
        response = error_response(exc.status, exc.error_type, exc.message, rid, exc.headers)
        if exc.closes_connection:
            await _send_and_close(request, response)
    except web.HTTPException as exc:
        record.error_outcome = "invalid_request"
        error_type = HTTP_ERROR_TYPES.get(exc.status, "api_error")
        message = _http_message(request, exc)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        response = error_response(exc.status, error_type, message, rid, allow)
    except Exception:
        error_log.exception("unhandled_error", method=request.method, path=request.path)
        record.error_outcome = "internal_error"
        response = error_response(500, "api_error", "Internal gateway error.", rid, {})
    else:
        response.headers.setdefault(REQUEST_ID, rid)
    record.status = response.status
    return response


async def _send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response` now, then close the connection: aiohttp would otherwise spend its
    lingering time (10 s) reading the rest of a body that a stalled client is not sending."""
    response.force_close()
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"Not found: {request.method} {request.path}"
    if exc.status == 405:
        return f"Method {request.method} is not allowed on {request.path}."
    return exc.reason
