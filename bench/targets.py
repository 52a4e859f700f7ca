"""Start the processes a scenario needs: mocks, the passthrough, gateways, a throwaway Redis.

Each `start_*` waits until the process is ready (TCP accept, or `GET /healthz` 200 for the
gateway) and raises `NotReadyError` otherwise; the caller owns stopping via `Processes`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from bench.ports import free_port
from bench.procs import Child, NotReadyError, Processes, wait_http, wait_tcp

NEVER_HIT_LIMITS = """\
# Written by bench: limits that are never hit, so only the backend's cost is measured.
groups:
  - name: all
    models: ["*"]
    requests_per_minute: 100000000
    input_tokens_per_minute: 100000000000
    output_tokens_per_minute: 100000000000
"""


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPUs the server under test and the load side (harness, mocks) run on."""

    server: frozenset[int] | None
    load: frozenset[int] | None

    @property
    def description(self) -> str:
        if self.server is None:
            return "Not pinned: every process may run on any CPU"
        return (
            f"Server under test pinned to CPU {_cpus(self.server)}; load generator and mock "
            f"upstream on CPU {_cpus(self.load)}"
        )


def _cpus(cpus: frozenset[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))


UNPINNED = Placement(None, None)


def pinned_placement() -> Placement:
    """Server on the first allowed CPU, load on the second; unpinned with a single CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return UNPINNED
    return Placement(frozenset({allowed[0]}), frozenset({allowed[1]}))


@dataclass(slots=True)
class Launcher:
    """Starts bench processes on a placement and remembers the gateway's extra settings."""

    procs: Processes
    gateway_env: Mapping[str, str] = field(default_factory=dict)
    gateway_timeout: float = 10.0

    async def mock(
        self,
        placement: Placement,
        *,
        chunk_delay: float = 0.0,
        error_rate: float = 0.0,
        seed: int = 1,
        deltas: int = 10,
    ) -> Child:
        port = free_port()
        args = ["bench.mock_upstream", "--port", str(port), "--stream-deltas", str(deltas)]
        args += ["--stream-chunk-delay", str(chunk_delay), "--error-rate", str(error_rate)]
        args += ["--seed", str(seed)]
        child = self.procs.start_python("mock", args, port, cpus=placement.load)
        await wait_tcp(child)
        return child

    async def passthrough(self, placement: Placement, upstream: Child) -> Child:
        port = free_port()
        args = ["bench.passthrough", "--port", str(port), "--upstream", upstream.url]
        child = self.procs.start_python("passthrough", args, port, cpus=placement.server)
        await wait_tcp(child)
        return child

    async def gateway(
        self,
        placement: Placement,
        upstream: Child,
        *,
        redis_url: str | None = None,
        limits_file: Path | None = None,
    ) -> Child:
        """`python -m gateway serve`; NotReadyError (with its log tail) if /healthz isn't 200."""
        port = free_port()
        env = gateway_env(port, upstream)
        if redis_url:
            env["GATEWAY_REDIS_URL"] = redis_url
        if limits_file:
            env["GATEWAY_LIMITS_FILE"] = str(limits_file)
        env |= self.gateway_env
        argv = [sys.executable, "-m", "gateway", "serve"]
        child = self.procs.start("gateway", argv, port, cpus=placement.server, env=env)
        try:
            await wait_http(child, "/healthz", within=self.gateway_timeout)
        except NotReadyError:
            tail = child.log_tail()
            self.procs.stop(child)
            if tail:
                print(f"[bench] gateway log tail ({child.log}):\n{tail}", file=sys.stderr)
            raise
        return child

    async def redis(self, cpus: Collection[int] | None = None) -> Child:
        """A throwaway redis-server on a free port, no persistence."""
        server = shutil.which("redis-server")
        if server is None:
            raise NotReadyError("redis-server not found on PATH")
        port = free_port()
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--daemonize", "no"]
        child = self.procs.start("redis", argv, port, cpus=cpus)
        await wait_tcp(child)
        return child

    def limits_file(self) -> Path:
        path = self.procs.logdir / "never-hit-limits.yaml"
        path.write_text(NEVER_HIT_LIMITS)
        return path


def gateway_env(port: int, upstream: Child) -> dict[str, str]:
    """This environment without any `GATEWAY_*`, plus what a bench gateway needs: its port,
    the mock as upstream, warnings-only logs and a short shutdown grace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_UPSTREAM_URL": upstream.url,
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_SHUTDOWN_GRACE_SECONDS": "2",  # stopping between phases stays quick
    }
    return env


async def redis_commandstats(port: int) -> dict[str, int]:
    """`redis-cli -p PORT INFO commandstats` as {command: calls}."""
    proc = await asyncio.create_subprocess_exec(
        "redis-cli", "-p", str(port), "INFO", "commandstats", stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    calls: dict[str, int] = {}
    for line in out.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line.partition(":")
            fields = dict(item.split("=", 1) for item in stats.split(","))
            calls[name.removeprefix("cmdstat_")] = int(fields.get("calls", "0"))
    return calls


def gateway_version() -> str | None:
    """The installed claude-gateway version (whether it serves is checked by /healthz)."""
    try:
        return metadata.version("claude-gateway")
    except metadata.PackageNotFoundError:
        return None
