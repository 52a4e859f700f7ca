"""Request bodies within the caps: buffered, streamed through, or refused with 413."""

from __future__ import annotations

import json

import aiohttp

from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_client import BODY, HEADERS, call, envelope_of


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
