"""Request id and log context; gateway errors -> Anthropic envelope; one access line, metrics.

Every request gets an `Exchange` and an `x-gateway-request-id`. A `GatewayError` becomes
the API's error envelope with its status; aiohttp's own HTTP errors (unknown path, wrong
method) are rendered the same way; anything unexpected is a 500 `api_error` whose
traceback goes to the log and never to the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.errors import GatewayError, envelope
from gateway.exchange import EXCHANGE_KEY, Exchange, new_request_id
from gateway.headers import REQUEST_ID
from gateway.logs import get_logger
from gateway.services import SERVICES, Services

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
access_log = get_logger("gateway.access")
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


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Wrap one request: id, error rendering, access line and metrics."""
    services = request.app[SERVICES]
    exchange = Exchange(request_id=new_request_id(), started_at=services.clock.now())
    request[EXCHANGE_KEY] = exchange
    structlog.contextvars.bind_contextvars(request_id=exchange.request_id)
    services.metrics.request_started()
    try:
        response = await _answer(request, handler, exchange)
    except asyncio.CancelledError:
        exchange.outcome = "client_disconnect"
        exchange.status = exchange.status or 499
        raise
    finally:
        _record(request, services, exchange)
        structlog.contextvars.unbind_contextvars("request_id")
    return response


async def _answer(request: web.Request, handler: Handler, exchange: Exchange) -> web.StreamResponse:
    rid = exchange.request_id
    try:
        response = await handler(request)
    except GatewayError as exc:
        exchange.outcome = exc.outcome
        response = error_response(exc.status, exc.error_type, exc.message, rid, exc.headers)
    except web.HTTPException as exc:
        exchange.outcome = "invalid_request"
        error_type = HTTP_ERROR_TYPES.get(exc.status, "api_error")
        message = _http_message(request, exc)
        response = error_response(exc.status, error_type, message, rid, {})
    except Exception:
        error_log.exception("unhandled_error", method=request.method, path=request.path)
        exchange.outcome = "internal_error"
        response = error_response(500, "api_error", "Internal gateway error.", rid, {})
    else:
        response.headers.setdefault(REQUEST_ID, rid)
        if exchange.outcome == "ok" and response.status >= 400:
            exchange.outcome = "upstream_error"
        elif exchange.outcome == "ok" and exchange.queue_wait > 0:
            exchange.outcome = "queued_ok"
    exchange.status = response.status
    return response


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"Not found: {request.method} {request.path}"
    if exc.status == 405:
        return f"Method {request.method} is not allowed on {request.path}."
    return exc.reason


def _record(request: web.Request, services: Services, exchange: Exchange) -> None:
    now = services.clock.now()
    duration = now - exchange.started_at
    ttfb = None if exchange.first_byte_at is None else exchange.first_byte_at - exchange.started_at
    route = exchange.route or ("ops" if request.path in OPS_PATHS else "unmatched")
    services.metrics.request_finished(
        route=route,
        model_group=exchange.model_group,
        model=exchange.model,
        status=exchange.status,
        outcome=exchange.outcome,
        duration=duration,
        ttfb=ttfb,
        overhead=exchange.overhead,
        bytes_out=exchange.bytes_out,
    )
    if request.path in OPS_PATHS and exchange.status < 400:
        return
    access_log.info(
        "request",
        method=request.method,
        path=request.path,
        route=route,
        model=exchange.model,
        stream=exchange.stream,
        status=exchange.status,
        outcome=exchange.outcome,
        duration_ms=round(duration * 1000, 3),
        ttfb_ms=None if ttfb is None else round(ttfb * 1000, 3),
        model_group=exchange.model_group,
        queue_wait_ms=round(exchange.queue_wait * 1000, 3),
        upstream_request_id=exchange.upstream_request_id,
        bytes_out=exchange.bytes_out,
    )
