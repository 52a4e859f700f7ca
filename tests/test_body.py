"""Request bodies within the caps: buffered, streamed through, or refused with 413; a body
that stalls gets 408."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp

from tests.conftest import TEST_KEY, GatewayFactory
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_client import BODY, HEADERS, call, envelope_of
from tests.support.raw_http import closed_within, connection, parse_answer, request


async def test_oversized_body_is_request_too_large(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A body over GATEWAY_MAX_BODY_BYTES gets 413 request_too_large and is not forwarded."""
    gateway = await make_gateway(max_body_bytes=1024)
    big = json.dumps({**BODY, "messages": [{"role": "user", "content": "x" * 4096}]}).encode()
    status, body, _ = await call(gateway.url, data=big)
    expected = ("request_too_large", "Request body exceeds the gateway's limit of 1024 bytes.")
    assert (413, expected) == (status, envelope_of(body))
    assert [] == fake_upstream.requests


async def test_oversized_upload_is_request_too_large(make_gateway: GatewayFactory) -> None:
    """A streamed upload over GATEWAY_MAX_UPLOAD_BYTES is refused by its Content-Length."""
    gateway = await make_gateway(max_body_bytes=1024, max_upload_bytes=2048)
    status, body, _ = await call(gateway.url, "/v1/files", data=b"x" * 4096)
    assert (413, "request_too_large") == (status, envelope_of(body)[0])


async def test_large_upload_streams_through(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A body above the buffering limit but under the upload limit reaches upstream intact."""
    gateway = await make_gateway(max_body_bytes=1024)
    content = bytes(range(256)) * 1024
    form = aiohttp.FormData()
    form.add_field("file", content, filename="a.bin", content_type="application/octet-stream")
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/files", data=form, headers=HEADERS) as response,
    ):
        uploaded = await response.json()
    assert (200, len(content)) == (response.status, uploaded["size_bytes"])


async def test_stalled_buffered_body_gets_408_and_the_connection_closes(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A Messages body that stops arriving gets 408 after GATEWAY_CLIENT_BODY_TIMEOUT_SECONDS
    of silence, the connection closes, and nothing reaches upstream."""
    gateway = await make_gateway(client_body_timeout_seconds=0.3)
    head = request("POST", "/v1/messages", headers=f"x-api-key: {TEST_KEY}\r\n")
    stalled = head.replace(b"\r\n\r\n", b"\r\nContent-Length: 100\r\n\r\n") + b'{"model":'
    async with connection(gateway.server.port) as (reader, writer):
        writer.write(stalled)
        data, elapsed = await closed_within(reader, 0.3 + 2.0)
    answer = parse_answer(data)
    expected = "The request body stalled: no bytes arrived for 0.3 seconds."
    assert (408, ("invalid_request_error", expected)) == (answer.status, envelope_of(answer.json()))
    assert elapsed >= 0.25
    assert [] == fake_upstream.requests
    (line,) = gateway.access_lines()
    assert ("client_timeout", 408) == (line["outcome"], line["status"])


async def test_stalled_upload_gets_408_and_the_connection_closes(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A streamed upload that stops half way is cut off after the body timeout with a 408."""
    gateway = await make_gateway(max_body_bytes=1024, client_body_timeout_seconds=0.3)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: g\r\nx-api-key: {TEST_KEY}\r\nContent-Length: 8192\r\n"
    )
    async with connection(gateway.server.port) as (reader, writer):
        writer.write(head.encode() + b"\r\n" + b"x" * 4096)
        data, elapsed = await closed_within(reader, 0.3 + 2.0)
    answer = parse_answer(data)
    assert (408, "invalid_request_error") == (answer.status, envelope_of(answer.json())[0])
    assert elapsed >= 0.25


async def test_slow_but_steady_body_is_not_cut_off(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """The body timeout bounds silence, not the whole body: bytes every 0.1 s keep it going
    past several timeouts."""
    gateway = await make_gateway(client_body_timeout_seconds=0.3)
    body = json.dumps(BODY).encode()
    head = request(
        "POST",
        "/v1/messages",
        headers=f"x-api-key: {TEST_KEY}\r\nanthropic-version: 2023-06-01\r\nConnection: close\r\n",
    )
    head = head.replace(b"\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    async with connection(gateway.server.port) as (reader, writer):
        writer.write(head)
        for start in range(0, len(body), len(body) // 10 + 1):
            await asyncio.sleep(0.1)
            writer.write(body[start : start + len(body) // 10 + 1])
        data = await asyncio.wait_for(reader.read(), 5)
    assert 200 == parse_answer(data).status
    assert 1 == len(fake_upstream.requests)


async def test_chunked_upload_over_the_cap_is_request_too_large(
    make_gateway: GatewayFactory,
) -> None:
    """An upload without Content-Length that crosses GATEWAY_MAX_UPLOAD_BYTES mid-stream gets
    413 request_too_large, not the upstream connection error its broken-off send causes."""
    gateway = await make_gateway(max_body_bytes=1024, max_upload_bytes=4096)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 1024

    status, body, _ = await call(gateway.url, "/v1/files", data=chunks())
    assert (413, "request_too_large") == (status, envelope_of(body)[0])
