"""What bad input and failures get: Anthropic's envelope, the right status, nothing lost."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway import handler as handler_module
from tests.conftest import TEST_KEY, GatewayFactory, RunningGateway
from tests.support.fake_upstream import Delay, FakeUpstream, Hang

HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []}


async def call(
    url: str, path: str = "/v1/messages", *, method: str = "POST", data: Any = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Send one request; return status, JSON body and headers."""
    payload = json.dumps(BODY).encode() if data is None else data
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, data=payload, headers=HEADERS) as response,
    ):
        return response.status, json.loads(await response.read()), dict(response.headers)


def envelope_of(document: dict[str, Any]) -> tuple[str, str]:
    """(error type, message) of an Anthropic error body."""
    assert "error" == document["type"]
    return document["error"]["type"], document["error"]["message"]


async def test_unknown_path_outside_v1_is_not_found(gateway: RunningGateway) -> None:
    """A path outside /v1 and the ops endpoints gets 404 not_found_error."""
    status, body, headers = await call(gateway.url, "/v2/messages")
    assert (404, ("not_found_error", "Not found: POST /v2/messages")) == (
        status,
        envelope_of(body),
    )
    assert body["request_id"] == headers["x-gateway-request-id"]


async def test_malformed_json_is_refused_before_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """Malformed JSON on /v1/messages is a 400 invalid_request_error, never sent upstream."""
    status, body, _ = await call(gateway.url, data=b'{"model": ')
    assert (400, "invalid_request_error") == (status, envelope_of(body)[0])
    assert [] == fake_upstream.requests


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


async def test_upstream_unreachable_is_502(make_gateway: GatewayFactory) -> None:
    """A refused upstream connection gets 502 api_error."""
    gateway = await make_gateway(upstream_url="http://127.0.0.1:1", retry_max_attempts=1)
    status, body, _ = await call(gateway.url)
    assert (502, ("api_error", "Could not connect to the upstream API.")) == (
        status,
        envelope_of(body),
    )


async def test_upstream_timeout_is_504(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """An upstream that does not answer within the read timeout gets 504 timeout_error."""
    gateway = await make_gateway(read_timeout_seconds=0.2)
    fake_upstream.script(Hang())
    status, body, _ = await call(gateway.url)
    assert (504, ("timeout_error", "The upstream API did not answer in time.")) == (
        status,
        envelope_of(body),
    )


async def test_slow_upstream_within_timeout_succeeds(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """An upstream slower than usual but within the read timeout is simply waited for."""
    gateway = await make_gateway(read_timeout_seconds=2)
    fake_upstream.script(Delay(0.3))
    status, body, _ = await call(gateway.url)
    assert (200, "message") == (status, body["type"])


async def test_internal_bug_is_500_without_details(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception gives a bare 500 api_error; the traceback goes to the log only."""

    def broken(path: str, body: bytes) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(handler_module, "parse_facts", broken)
    status, body, _ = await call(gateway.url)
    assert (500, ("api_error", "Internal gateway error.")) == (status, envelope_of(body))
    assert "secret internal detail" not in json.dumps(body)
    assert "secret internal detail" in gateway.logs.getvalue()


async def test_wrong_method_on_ops_endpoint(gateway: RunningGateway) -> None:
    """POST /healthz gets a 405 in the envelope, not aiohttp's HTML."""
    status, body, _ = await call(gateway.url, "/healthz")
    assert (405, "invalid_request_error") == (status, envelope_of(body)[0])


async def test_health_and_readiness(gateway: RunningGateway) -> None:
    """/healthz is alive and /readyz ready once the upstream session is open."""
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/healthz") as health:
            health_body = await health.json()
        async with session.get(gateway.url + "/readyz") as ready:
            ready_body = await ready.json()
    assert ((200, "ok"), (200, "ready")) == (
        (health.status, health_body["status"]),
        (ready.status, ready_body["status"]),
    )
