"""`/v1/*`: one request's story: body -> facts -> upstream -> relay.

The limiter and settlement slot in between facts and upstream, and after relay; they live
in their own modules so this function stays a readable list of steps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import Overloaded, RequestTooLarge
from gateway.exchange import exchange_of
from gateway.headers import REQUEST_ID, credential_of, upstream_request_headers
from gateway.messages import PARSED_PATHS, parse_facts, route_of
from gateway.relay import Ending, relay
from gateway.services import SERVICES, BodyLimits

STREAM_CHUNK = 64 * 1024


async def handle_v1(request: web.Request) -> web.StreamResponse:
    """Forward any `/v1/*` request upstream and relay the answer byte for byte."""
    services = request.app[SERVICES]
    exchange = exchange_of(request)
    upstream = services.upstream
    if upstream is None or not upstream.is_open:
        raise Overloaded("The gateway is starting or shutting down.")
    exchange.route = route_of(request.path)
    body = await request_body(request, services.body_limits)
    facts = parse_facts(request.path, body) if isinstance(body, bytes) else None
    if facts is not None:
        exchange.model, exchange.stream = facts.model, facts.stream
    headers = upstream_request_headers(request.headers)
    if body is not None and not isinstance(body, bytes) and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    services.credentials.apply(headers, credential_of(request.headers))
    upstream_response = await upstream.open(request.method, request.raw_path, headers, body)
    exchange.status = upstream_response.status
    exchange.upstream_request_id = upstream_response.headers.get("request-id")
    is_stream = upstream_response.content_type == "text/event-stream"
    if is_stream:
        services.metrics.stream_opened()
    try:
        response, result = await relay(
            request,
            upstream_response,
            {REQUEST_ID: exchange.request_id},
            services.clock.now,
        )
    finally:
        if is_stream:
            services.metrics.stream_closed()
    exchange.bytes_out = result.bytes_out
    exchange.first_byte_at = result.first_byte_at
    if result.ending is not Ending.COMPLETE:
        exchange.outcome = result.ending.value
    return response


async def request_body(
    request: web.Request, limits: BodyLimits
) -> bytes | AsyncIterator[bytes] | None:
    """The body: buffered (replayable, parsable) when small or parsed, else streamed through."""
    if not request.body_exists:
        return None
    length = request.content_length
    if request.path in PARSED_PATHS or (length is not None and length <= limits.buffered):
        return await _read_capped(request, limits.buffered)
    if length is not None and length > limits.streamed:
        raise RequestTooLarge(_too_large(limits.streamed))
    return _stream_capped(request, limits.streamed)


async def _read_capped(request: web.Request, cap: int) -> bytes:
    length = request.content_length
    if length is not None and length > cap:
        raise RequestTooLarge(_too_large(cap))
    body = bytearray()
    async for chunk in request.content.iter_chunked(STREAM_CHUNK):
        body += chunk
        if len(body) > cap:
            raise RequestTooLarge(_too_large(cap))
    return bytes(body)


async def _stream_capped(request: web.Request, cap: int) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in request.content.iter_chunked(STREAM_CHUNK):
        sent += len(chunk)
        if sent > cap:
            raise RequestTooLarge(_too_large(cap))
        yield chunk


def _too_large(cap: int) -> str:
    return f"Request body exceeds the gateway's limit of {cap} bytes."
