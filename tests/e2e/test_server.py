"""The served process: graceful SIGTERM drain, readiness during shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.conftest import TEST_KEY
from tests.support.fake_upstream import FakeUpstream, Stream
from tests.support.processes import running_gateway

HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "messages": []}


async def _status(session: aiohttp.ClientSession, url: str) -> int | str:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return "refused"


async def test_sigterm_drains_open_streams_and_fails_readiness(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """On SIGTERM /readyz fails, an open stream finishes whole, then new connections are refused."""
    fake_upstream.script(Stream(chunk_delay=0.25))
    with running_gateway(
        tmp_path,
        upstream_url=fake_upstream.url,
        shutdown_drain_seconds="0.75",
        shutdown_grace_seconds="20",
    ) as gateway:
        async with aiohttp.ClientSession() as session:
            stream = await session.post(gateway.url + "/v1/messages", json=BODY, headers=HEADERS)
            first = await stream.content.readuntil(b"\n\n")
            gateway.process.send_signal(15)
            ready_during_drain = await _poll_until(session, gateway.url + "/readyz", 503)
            rest = await stream.content.read()
            stream.release()
        async with aiohttp.ClientSession() as fresh:
            after = await _poll_until(fresh, gateway.url + "/healthz", "refused")
        exit_code = await asyncio.to_thread(gateway.process.wait, 20)
    assert first.startswith(b"event: message_start")
    assert rest.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert (503, "refused", 0) == (ready_during_drain, after, exit_code)
    assert '"event": "stopped"' in gateway.logs()


async def _poll_until(
    session: aiohttp.ClientSession, url: str, wanted: int | str, seconds: float = 10
) -> int | str:
    """Poll `url` until its status is `wanted` (bounded), returning the last status seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    status = await _status(session, url)
    while status != wanted and loop.time() < deadline:
        await asyncio.sleep(0.02)
        status = await _status(session, url)
    return status


async def test_sigterm_with_nothing_in_flight_exits_at_once(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """An idle gateway stops promptly and cleanly on SIGTERM."""
    with running_gateway(tmp_path, upstream_url=fake_upstream.url) as gateway:
        exit_code = await asyncio.to_thread(gateway.terminate, 10)
    assert 0 == exit_code
