"""A request's body, read within the gateway's caps: buffered when small or parsed, else streamed.

Messages-family bodies are buffered (the gateway parses them, and a buffered body can be
replayed on a retry) up to `max_body_bytes`; any other body within that is buffered too, and
a larger one (a file upload, a batch) is streamed through, up to `max_upload_bytes`. A body
over its cap is refused with 413 before, or as soon as, it crosses the cap.

A body that stops arriving is bounded here, not at the connection: each wait for the client's
next bytes may last `stall_seconds`, then the request gets 408 and its connection closes.
Only the reader can tell a stalled client from a gateway that is not reading (a streamed
upload waits on the upstream's pace, or on the queue, while the client is held back by TCP
flow control), so time spent anywhere but waiting on the client never counts.

A streamed body fails inside the upstream client's send, which reports its own connection
error; `StreamedBody.failure` keeps the client's error (408, 413) so the handler answers that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import GatewayError, RequestTimeout, RequestTooLarge
from gateway.messages import PARSED_PATHS
from gateway.services import BodyLimits


class StreamedBody:
    """A body streamed through to upstream, within its cap and stall bound; `failure` is the
    client's error that ended it, if one did."""

    def __init__(self, request: web.Request, cap: int, stall: float) -> None:
        self._request, self._cap, self._stall = request, cap, stall
        self.failure: GatewayError | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        sent = 0
        try:
            while chunk := await _next_chunk(self._request, self._stall):
                sent += len(chunk)
                if sent > self._cap:
                    raise RequestTooLarge(_too_large(self._cap))
                yield chunk
        except GatewayError as exc:
            self.failure = exc
            raise


async def request_body(request: web.Request, limits: BodyLimits) -> bytes | StreamedBody | None:
    """The body: buffered (replayable, parsable) when small or parsed, else streamed through."""
    if not request.body_exists:
        return None
    length = request.content_length
    if request.path in PARSED_PATHS or (length is not None and length <= limits.buffered):
        return await _read_capped(request, limits.buffered, limits.stall_seconds)
    if length is not None and length > limits.streamed:
        raise RequestTooLarge(_too_large(limits.streamed))
    return StreamedBody(request, limits.streamed, limits.stall_seconds)


async def _read_capped(request: web.Request, cap: int, stall: float) -> bytes:
    length = request.content_length
    if length is not None and length > cap:
        raise RequestTooLarge(_too_large(cap))
    if request.content.is_eof():
        return await request.read()  # all here already: one buffer, bounded by the parser
    body = bytearray()
    while chunk := await _next_chunk(request, stall):
        body += chunk
        if len(body) > cap:
            raise RequestTooLarge(_too_large(cap))
    return bytes(body)


async def _next_chunk(request: web.Request, stall: float) -> bytes:
    """Whatever the client sent next (b"" at the end), or 408 after `stall` seconds of nothing."""
    try:
        async with asyncio.timeout(stall):
            return await request.content.readany()
    except TimeoutError:
        raise RequestTimeout(
            f"The request body stalled: no bytes arrived for {stall:g} seconds."
        ) from None


def _too_large(cap: int) -> str:
    return f"Request body exceeds the gateway's limit of {cap} bytes."
