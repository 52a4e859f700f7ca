"""The official TypeScript SDK streams through a gateway started exactly as a user would start it.

Needs node and `npm ci --prefix tests/ts` (CI runs it); the gateway runs as
`python -m gateway serve` configured only by GATEWAY_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bench.ports import free_port
from tests.support.fake_upstream import FakeUpstream, Stream

pytestmark = [pytest.mark.node, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
# `make test-latest` points this at a copy holding the newest SDK (tests/latest_sdks.sh).
TS_DIR = Path(os.environ.get("CLAUDE_GATEWAY_TEST_TS_DIR") or ROOT / "tests" / "ts")
START_DEADLINE = 30.0
RUN_DEADLINE = 60.0


def node_binary() -> str:
    """The node executable, failing clearly when node or the SDK is not installed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js >= 20 to run the TypeScript SDK test")
    if not (TS_DIR / "node_modules" / "@anthropic-ai" / "sdk").is_dir():
        pytest.fail(f"{TS_DIR}/node_modules is missing: run `npm ci --prefix tests/ts` first")
    return node


def installed_sdk_version() -> str:
    """The TS SDK's version under TS_DIR: the locked one, or the newest under test-latest."""
    manifest = TS_DIR / "node_modules" / "@anthropic-ai" / "sdk" / "package.json"
    return str(json.loads(manifest.read_text())["version"])


def read_log(path: Path) -> str:
    """The gateway's combined output, for failure messages."""
    return path.read_text(errors="replace")


async def wait_healthy(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    """Poll GET /healthz until 200, failing if the gateway exits or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_DEADLINE
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            if process.returncode is not None:
                pytest.fail(f"gateway exited with {process.returncode}:\n{read_log(log)}")
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get(url + "/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)  # a process is starting: nothing to await but the port
    pytest.fail(f"gateway not healthy after {START_DEADLINE} s:\n{read_log(log)}")


@dataclass
class GatewayProcess:
    """A gateway started as a user would start it."""

    url: str
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def gateway_process(upstream_url: str, log: Path) -> AsyncIterator[GatewayProcess]:
    """`python -m gateway serve` on a free port, healthy; SIGTERMed on exit."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_UPSTREAM_URL": upstream_url,
    }
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", cwd=ROOT, env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, process, log)
        yield GatewayProcess(url, process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=START_DEADLINE)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise


async def run_stream_script(node: str, base_url: str) -> dict[str, object]:
    """Run tests/ts/stream.mjs against `base_url` and parse the JSON it prints."""
    process = await asyncio.create_subprocess_exec(
        node,
        "stream.mjs",
        base_url,
        cwd=TS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=RUN_DEADLINE)
    if process.returncode != 0:
        pytest.fail(f"node stream.mjs exited with {process.returncode}:\n{stderr.decode()}")
    result: dict[str, object] = json.loads(stdout)
    return result


async def test_typescript_sdk_streams_text_and_usage_through_the_gateway(tmp_path: Path) -> None:
    """`messages.stream` in the TS SDK gets the fake's text and usage through the gateway."""
    node = node_binary()
    async with FakeUpstream() as fake:
        fake.script(Stream(split_every=5))
        log = tmp_path / "gateway.log"
        async with gateway_process(fake.url, log) as gateway:
            result = await run_stream_script(node, gateway.url)
    expected = {
        "text": "Hi there!",
        "usage": {
            "input_tokens": 19,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 6,
        },
        "model": "claude-sonnet-4-6",
    }
    upstream = [(r.method, r.path, r.headers.get("user-agent")) for r in fake.requests]
    expected_upstream = [("POST", "/v1/messages", f"Anthropic/JS {installed_sdk_version()}")]
    exit_code = gateway.process.returncode
    assert (expected, expected_upstream, 0) == (result, upstream, exit_code), read_log(log)
