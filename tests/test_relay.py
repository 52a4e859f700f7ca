"""Relaying through the gateway: byte-exact, unbuffered, headers untouched, endings honest."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from tests.conftest import TEST_KEY, GatewayFactory, RunningGateway
from tests.support.fake_upstream import FakeUpstream, Hang, Reply, Stream

HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
STREAM_BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "Hello"}],
}


async def fetch_raw(url: str, body: dict[str, object]) -> tuple[int, CIMultiDict[str], bytes]:
    """POST /v1/messages and return status, headers and the exact body bytes."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(url + "/v1/messages", json=body, headers=HEADERS) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


async def test_stream_is_byte_identical_to_direct(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """An SSE stream split at odd byte boundaries arrives through the gateway byte for byte."""
    fake_upstream.script(Stream(split_every=7, ping_every=2), Stream(split_every=7, ping_every=2))
    _, _, direct = await fetch_raw(fake_upstream.url, STREAM_BODY)
    _, _, relayed = await fetch_raw(gateway.url, STREAM_BODY)
    assert direct.replace(b"msg_", b"") != b""
    assert _without_ids(direct) == _without_ids(relayed)


def _without_ids(stream: bytes) -> bytes:
    """The fake mints a fresh message id per response; compare everything else exactly."""
    out = []
    for line in stream.split(b"\n"):
        kept = line
        if line.startswith(b"data: ") and b'"message_start"' in line:
            document = json.loads(line[6:])
            document["message"]["id"] = "msg_X"
            kept = b"data: " + json.dumps(document, separators=(",", ":")).encode()
        out.append(kept)
    return b"\n".join(out)


async def test_chunks_are_relayed_as_they_arrive(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """The first event reaches the client while upstream is still holding back the rest."""
    fake_upstream.script(Stream(chunk_delay=0.3))
    async with (
        aiohttp.ClientSession() as session,
        session.post(gateway.url + "/v1/messages", json=STREAM_BODY, headers=HEADERS) as response,
    ):
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout=0.25)
        rest = await response.content.read()
    assert first.startswith(b"event: message_start\n")
    assert rest.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


async def test_response_headers_pass_through(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """request-id, rate-limit and retry headers come back unchanged; the gateway adds its id."""
    gateway = await make_gateway(retry_max_attempts=1)  # relay the 429 itself, not a retry
    fake_upstream.script(
        Reply(
            429,
            headers={
                "request-id": "req_abc",
                "retry-after": "7",
                "x-should-retry": "true",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-requests-reset": "2026-11-25T18:00:07Z",
            },
        )
    )
    status, headers, _ = await fetch_raw(gateway.url, {**STREAM_BODY, "stream": False})
    picked = {name: headers[name] for name in ("request-id", "retry-after", "x-should-retry")}
    assert (429, {"request-id": "req_abc", "retry-after": "7", "x-should-retry": "true"}) == (
        status,
        picked,
    )
    assert "0" == headers["anthropic-ratelimit-requests-remaining"]
    assert headers["x-gateway-request-id"].startswith("gw_")


async def test_query_string_and_body_bytes_forwarded_unchanged(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """The upstream sees the exact body bytes and the raw query string the client sent."""
    raw = b'{"model":  "claude-sonnet-4-6", "max_tokens": 5,\n "messages": []}'
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            URL(gateway.url + "/v1/messages?beta=true&x=%2Fa%20b", encoded=True),
            data=raw,
            headers=HEADERS,
        ) as response,
    ):
        await response.read()
    seen = fake_upstream.requests[-1]
    assert (raw, "beta=true&x=%2Fa%20b") == (seen.body, seen.query_string)


async def test_compressed_body_is_not_decompressed(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """A gzip upstream body is relayed compressed, with its content-encoding, byte for byte."""
    payload = gzip.compress(b'{"type":"message","id":"msg_1"}')
    fake_upstream.script(
        Reply(
            200,
            body=payload,
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )
    )
    status, headers, body = await fetch_raw(gateway.url, {**STREAM_BODY, "stream": False})
    assert (200, "gzip", payload) == (status, headers["Content-Encoding"], body)


async def test_client_disconnect_closes_upstream_and_logs_once(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """A client leaving mid-stream makes the gateway drop its upstream stream at once."""
    fake_upstream.script(Stream(chunk_delay=0.2))
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            gateway.url + "/v1/messages", json=STREAM_BODY, headers=HEADERS
        )
        await response.content.readuntil(b"\n\n")
        response.close()
    await asyncio.wait_for(fake_upstream.wait_until(lambda f: f.disconnects == 1), timeout=5)
    await asyncio.sleep(0.05)
    disconnect_lines = [
        line for line in gateway.log_lines() if line.get("outcome") == "client_disconnect"
    ]
    assert 1 == len(disconnect_lines)
    assert "Traceback" not in gateway.logs.getvalue()


async def test_client_disconnect_while_waiting_for_headers_cancels_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """A client that gives up before upstream answered cancels the upstream request too."""
    fake_upstream.script(Hang())
    async with aiohttp.ClientSession() as session:
        with contextlib.suppress(asyncio.TimeoutError):
            await session.post(
                gateway.url + "/v1/messages",
                json=STREAM_BODY,
                headers=HEADERS,
                timeout=aiohttp.ClientTimeout(total=0.3),
            )
    await asyncio.wait_for(fake_upstream.wait_until(lambda f: f.disconnects == 1), timeout=5)
    assert 1 == fake_upstream.disconnects
