"""`serve --workers 2` as a real process: two workers on one port share one Redis budget
exactly, and stop with their supervisor, cleanly on SIGTERM and with an error when one dies.

Every wait is on a condition with a deadline: the log lines each process writes, a pid
that is gone, an exit code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_KEY
from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import GatewayProcess, running_gateway
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

RPM = 30
LIMITS = f"""
queue:
  max_wait_seconds: 0
headroom: 0
groups:
  - name: sonnet
    models: ["claude-sonnet-*"]
    requests_per_minute: {RPM}
"""
REQUESTS = 45
HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


def log_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """The JSON lines the supervisor and its workers wrote so far."""
    return [json.loads(line) for line in gateway.logs().splitlines() if line.startswith("{")]


def events(gateway: GatewayProcess, name: str) -> list[dict[str, Any]]:
    """The log lines of one event, in order."""
    return [line for line in log_lines(gateway) if line.get("event") == name]


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {seconds:g} s: {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def two_workers(tmp_path: Path, **settings: str) -> Iterator[tuple[GatewayProcess, list[int]]]:
    """`serve --workers 2` once both workers listen: the supervisor and the workers' pids."""
    with running_gateway(tmp_path, ("serve", "--workers", "2"), **settings) as gateway:
        wait_for(lambda: len(events(gateway, "listening")) == 2, "both workers listening")
        listening = events(gateway, "listening")
        assert [0, 1] == sorted(line["worker"] for line in listening)
        yield gateway, [line["pid"] for line in listening]


async def send(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """One Messages call: its status and, for an error, the envelope's error type."""
    async with session.post(url + "/v1/messages", json=BODY, headers=HEADERS) as response:
        body = await response.json()
        return response.status, body["error"]["type"] if response.status >= 400 else ""


@pytest.mark.redis
async def test_two_workers_admit_exactly_the_limit_of_one_redis_budget(
    fake_upstream: FakeUpstream, redis_server: RedisServer, redis_admin: Any, tmp_path: Path
) -> None:
    """45 calls over 45 connections reach both workers; 30 (the RPM, headroom 0, no queue)
    are admitted across the two, the rest get 429 rate_limit_error."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(LIMITS)
    fake_upstream.enforce_limits(rpm=RPM)
    settings = {"upstream_url": fake_upstream.url, "redis_url": redis_server.url}
    with two_workers(tmp_path, limits_file=str(limits), **settings) as (gateway, _):
        connector = aiohttp.TCPConnector(force_close=True, limit=0)  # a connection per call
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.monotonic()
            answers = await asyncio.gather(*(send(session, gateway.url) for _ in range(REQUESTS)))
            elapsed = time.monotonic() - started

        def access_lines() -> list[dict[str, Any]]:
            return [
                line for line in log_lines(gateway) if line.get("component") == "gateway.access"
            ]

        # A worker writes a request's access line once the answer is sent: wait for the last.
        wait_for(lambda: len(access_lines()) >= REQUESTS, "every access line written")
        access = access_lines()
    refilled = int(elapsed * RPM / 60)  # what the bucket regained meanwhile: 0 under 2 s
    admitted = Counter(answers)[(200, "")]
    assert RPM <= admitted <= RPM + refilled
    assert {(200, ""), (429, "rate_limit_error")} == set(answers)
    assert (admitted, 0) == (len(fake_upstream.requests), fake_upstream.rejected_429)
    served_by = Counter(line["worker"] for line in access)
    assert ({0, 1}, REQUESTS) == (set(served_by), sum(served_by.values()))


async def test_sigterm_to_the_supervisor_stops_every_worker_cleanly(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM reaches each worker through the supervisor; each drains, and all exit 0."""
    with two_workers(tmp_path, upstream_url=fake_upstream.url) as (gateway, pids):
        exit_code = await asyncio.to_thread(gateway.terminate, 20)
        stopped = events(gateway, "worker_stopped")
    assert 0 == exit_code
    assert [(0, 0), (0, 1)] == sorted((line["exit_code"], line["worker"]) for line in stopped)
    assert 2 == len(events(gateway, "stopped"))
    assert [False, False] == [alive(pid) for pid in pids]


async def test_a_worker_that_dies_stops_the_others_and_fails_the_supervisor(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A worker killed from outside makes the supervisor stop the other one and exit 1."""
    with two_workers(tmp_path, upstream_url=fake_upstream.url) as (gateway, pids):
        os.kill(pids[0], signal.SIGKILL)
        exit_code = await asyncio.to_thread(gateway.process.wait, 20)
        stopped = {line["pid"]: line for line in events(gateway, "worker_stopped")}
    assert 1 == exit_code
    assert (-signal.SIGKILL, False, "error") == (
        stopped[pids[0]]["exit_code"],
        stopped[pids[0]]["expected"],
        stopped[pids[0]]["level"],
    )
    assert (0, "info") == (stopped[pids[1]]["exit_code"], stopped[pids[1]]["level"])


async def test_workers_stop_when_their_supervisor_is_killed(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A SIGKILLed supervisor leaves no orphan serving the port: each worker sees its pipe
    close, drains and exits."""
    with two_workers(tmp_path, upstream_url=fake_upstream.url) as (gateway, pids):
        gateway.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(gateway.process.wait, 5)
        await asyncio.to_thread(
            wait_for, lambda: not any(alive(pid) for pid in pids), "both workers gone", 20
        )
        gone = events(gateway, "supervisor_gone")
    assert [0, 1] == sorted(line["worker"] for line in gone)
