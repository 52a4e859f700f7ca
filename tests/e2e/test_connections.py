"""A served gateway process under hostile connections: 1,000 idle and 200 slowloris connections
do not slow normal traffic, and stalled heads are closed so the descriptors come back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TEST_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import running_gateway
from tests.support.raw_http import HOST, parse_answer, until

pytestmark = pytest.mark.slow

HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []}
IDLE, SLOWLORIS, REQUESTS = 1000, 200, 200
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _raise_descriptor_limit(needed: int) -> None:
    """Lift this process's soft RLIMIT_NOFILE (the gateway child inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if 0 <= soft < needed:
        if 0 <= hard < needed:
            pytest.fail(f"needs {needed} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@asynccontextmanager
async def _held(port: int, count: int, first_bytes: bytes) -> AsyncIterator[list[Connection]]:
    """`count` open connections that each sent `first_bytes`, closed on exit."""
    opened: list[Connection] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(first_bytes)
            opened.append((reader, writer))
        yield opened
    finally:
        for _, writer in opened:
            writer.close()
        for _, writer in opened:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _trickle(slow: list[Connection], every: float) -> None:
    """Keep each slowloris head growing by one byte every `every` seconds, never ending it."""
    while True:
        await asyncio.sleep(every)
        for reader, writer in slow:
            if not reader.at_eof():
                writer.write(b"a")


async def _latencies(session: aiohttp.ClientSession, url: str, count: int) -> list[float]:
    """Seconds per request for `count` sequential Messages calls through the gateway."""
    loop = asyncio.get_running_loop()
    seconds = []
    for _ in range(count):
        started = loop.time()
        async with session.post(url + "/v1/messages", json=BODY, headers=HEADERS) as response:
            await response.read()
            assert 200 == response.status
        seconds.append(loop.time() - started)
    return seconds


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_idle_and_slowloris_connections_do_not_slow_normal_traffic(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """With 1,000 idle and 200 slowloris connections held open, the p99 of normal requests
    stays within 2x + 20 ms of its value without them."""
    _raise_descriptor_limit(8192)
    with running_gateway(
        tmp_path,
        upstream_url=fake_upstream.url,
        client_header_timeout_seconds="300",  # hold every hostile connection for the test
        keepalive_timeout_seconds="300",
    ) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        pid = gateway.process.pid
        async with aiohttp.ClientSession() as session:
            await _latencies(session, gateway.url, 20)  # warm up both processes
            quiet = await _latencies(session, gateway.url, REQUESTS)
            baseline = _descriptors(pid)
            head = b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nX-Pad: "
            async with _held(port, IDLE, b"") as idle, _held(port, SLOWLORIS, head) as slow:
                held = IDLE + SLOWLORIS
                assert await until(lambda: _descriptors(pid) >= baseline + held, seconds=20)
                trickling = asyncio.create_task(_trickle(slow, every=0.25))
                try:
                    loaded = await _latencies(session, gateway.url, REQUESTS)
                finally:
                    trickling.cancel()
                    await asyncio.gather(trickling, return_exceptions=True)
                still_open = sum(not reader.at_eof() for reader, _ in idle + slow)
                peak = _descriptors(pid)
    quiet_p99, loaded_p99 = _p99(quiet), _p99(loaded)
    print(
        f"\np99 of {REQUESTS} requests: {quiet_p99 * 1000:.2f} ms alone, "
        f"{loaded_p99 * 1000:.2f} ms beside {IDLE} idle + {SLOWLORIS} slowloris connections "
        f"(gateway descriptors {baseline} -> {peak})"
    )
    assert IDLE + SLOWLORIS == still_open
    assert loaded_p99 <= 2 * quiet_p99 + 0.020


async def test_stalled_heads_are_closed_and_descriptors_drop_back(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """1,000 connections whose heads stop half way (each with a key in it) get 408 at
    GATEWAY_CLIENT_HEADER_TIMEOUT_SECONDS and the gateway's descriptors return to baseline."""
    _raise_descriptor_limit(8192)
    with running_gateway(
        tmp_path, upstream_url=fake_upstream.url, client_header_timeout_seconds="3"
    ) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        pid = gateway.process.pid
        baseline = _descriptors(pid)
        head = f"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nx-api-key: {TEST_KEY}".encode()
        async with _held(port, IDLE, head) as stalled:
            # The kernel completes connections before the gateway accepts them: give it up
            # to 2 s (less than the header timeout) to take them in before counting.
            await until(lambda: _descriptors(pid) >= baseline + IDLE // 2, seconds=2)
            peak = _descriptors(pid)
            answers = await asyncio.wait_for(
                asyncio.gather(*(reader.read() for reader, _ in stalled)), 30
            )
            assert await until(lambda: _descriptors(pid) <= baseline + 2, seconds=10)
            after = _descriptors(pid)
        logs = gateway.logs()
    print(f"\ngateway descriptors: {baseline} before, {peak} held, {after} after the timeout")
    assert peak >= baseline + IDLE // 2
    assert {408} == {parse_answer(answer).status for answer in answers}
    assert TEST_KEY not in logs
    assert IDLE == logs.count('"error": "header_timeout"')
