"""A request's body, read within the gateway's caps: buffered when small or parsed, else streamed.

Messages-family bodies are buffered (the gateway parses them, and a buffered body can be
replayed on a retry) up to `max_body_bytes`; any other body within that is buffered too, and
a larger one (a file upload, a batch) is streamed through, up to `max_upload_bytes`. A body
over its cap is refused with 413 before, or as soon as, it crosses the cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import RequestTooLarge
from gateway.messages import PARSED_PATHS
from gateway.services import BodyLimits

STREAM_CHUNK = 64 * 1024


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
    if length is not None:
        return await request.read()  # one buffer, already bounded by Content-Length
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
