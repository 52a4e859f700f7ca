"""Start the gateway as a real process, the way users and the Docker image do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
"""The running interpreter's bin directory: the venv's `claude-gateway`, `hadolint`."""


@dataclass
class GatewayProcess:
    """A running `python -m gateway serve` and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def logs(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def gateway_env(**settings: str) -> dict[str, str]:
    """The parent environment minus GATEWAY_* and ANTHROPIC_*, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "ANTHROPIC_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update({f"GATEWAY_{key.upper()}": value for key, value in settings.items()})
    return env


def wait_healthy(url: str, deadline_seconds: float = 15.0) -> None:
    """Poll GET /healthz until 200, or fail after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"gateway at {url} not healthy after {deadline_seconds}s")
        time.sleep(0.05)


@contextmanager
def running_gateway(
    tmp_path: Path, args: tuple[str, ...] = ("serve",), **settings: str
) -> Iterator[GatewayProcess]:
    """Start `python -m gateway serve` on a free port; SIGTERM it (then kill) on exit."""
    port = free_port()
    env = gateway_env(host="127.0.0.1", port=str(port), **settings)
    log_path = tmp_path / f"gateway-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env=env,
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = GatewayProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_healthy(running.url)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def start_fleet(
    tmp_path: Path, limits_yaml: str, count: int, stack: contextlib.ExitStack, **settings: str
) -> list[GatewayProcess]:
    """Start `count` gateways in parallel (each in its own home under `tmp_path`) sharing one
    limits file and `settings`; `stack` stops them."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(limits_yaml)

    def start(index: int) -> GatewayProcess:
        home = tmp_path / f"gw{index}"
        home.mkdir()
        return stack.enter_context(
            running_gateway(home, ("serve",), limits_file=str(limits), **settings)
        )

    return list(await asyncio.gather(*(asyncio.to_thread(start, i) for i in range(count))))


def run_cli(
    *args: str,
    cwd: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    **settings: str,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` to completion with the given GATEWAY_* settings (and
    `extra_env` verbatim)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=gateway_env(**settings) | dict(extra_env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mapping_lines(mapping: Mapping[str, str]) -> list[str]:
    """`KEY=value` lines, as check-config prints them."""
    return [f"  {key}={value}" for key, value in mapping.items()]
