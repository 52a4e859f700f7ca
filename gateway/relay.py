"""Relay an upstream response to the client byte for byte, as the bytes arrive.

No buffering, no re-framing, no decompression: each chunk read from the upstream socket is
written to the client at once, and an optional tap sees a copy (to read `usage`). This
module never retries: once `prepare()` ran, the client has the status line.

Endings:
- upstream finished: the response is completed normally;
- the client went away (write failed, or the handler was cancelled): the upstream response
  is closed at once so the API stops generating;
- upstream dropped mid-body: the client connection is closed without the final chunk, so
  the client sees a broken stream, never a truncated "successful" one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

import aiohttp
from aiohttp import web

from gateway.headers import downstream_response_headers


class Ending(Enum):
    """How a relayed body ended."""

    COMPLETE = "complete"
    CLIENT_DISCONNECT = "client_disconnect"
    UPSTREAM_DROPPED = "upstream_dropped"


@dataclass(slots=True)
class RelayResult:
    """What happened while relaying, for the record and settlement; filled in as it goes,
    so the caller still has it when the relay is cancelled."""

    ending: Ending | None = None
    """None until the body ended (a cancellation mid-body leaves it CLIENT_DISCONNECT)."""
    bytes_out: int = 0
    first_byte_at: float | None = None


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    extra_headers: Mapping[str, str],
    now: Callable[[], float],
    tap: Callable[[bytes], None] | None,
    *,
    result: RelayResult,
) -> web.StreamResponse:
    """Send `upstream`'s status, headers and body to the client; see the module docstring.

    Every byte upstream sent has reached the client once `result.ending` is COMPLETE: a
    client that closes its connection after that (during the final chunk) does not make a
    complete response a disconnect.
    """
    headers = downstream_response_headers(upstream.headers)
    headers.update(extra_headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    length = upstream.headers.get("content-length")
    if length is not None and length.isdigit():
        response.content_length = int(length)
    try:
        await response.prepare(request)
        async for chunk in _ChunkIter(upstream, result):
            if result.first_byte_at is None:
                result.first_byte_at = now()
            if tap is not None:
                tap(chunk)
            await response.write(chunk)
            result.bytes_out += len(chunk)
        if result.ending is None:
            result.ending = Ending.COMPLETE
    except ConnectionResetError:
        upstream.close()
        result.ending = result.ending or Ending.CLIENT_DISCONNECT
        return response
    except asyncio.CancelledError:
        upstream.close()
        result.ending = result.ending or Ending.CLIENT_DISCONNECT
        raise
    finally:
        upstream.release()
    if result.ending is Ending.UPSTREAM_DROPPED:
        _break_client_connection(request)
        return response
    with contextlib.suppress(ConnectionResetError):  # all was sent; the client left early
        await response.write_eof()
    return response


class _ChunkIter:
    """`iter_any()` that turns an upstream failure mid-body into `Ending.UPSTREAM_DROPPED`."""

    def __init__(self, upstream: aiohttp.ClientResponse, result: RelayResult) -> None:
        self._content = upstream.content
        self._result = result

    def __aiter__(self) -> _ChunkIter:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._content.readany()
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            self._result.ending = Ending.UPSTREAM_DROPPED
            raise StopAsyncIteration from None
        if not chunk:
            raise StopAsyncIteration
        return chunk


def _break_client_connection(request: web.Request) -> None:
    """Close without the terminating chunk: aiohttp's later `write_eof` then raises quietly."""
    transport = request.transport
    if transport is not None:
        transport.close()
