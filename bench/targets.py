"""Start the processes a scenario needs: mocks, the passthrough, gateways, a throwaway Redis.

Each `start_*` waits until the process is ready (TCP accept, or `GET /healthz` 200 for the
gateway) and raises `NotReadyError` otherwise; the caller owns stopping via `Processes`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from bench import litellm_proxy
from bench.litellm_env import LitellmUnavailableError, ensure_env
from bench.ports import free_port
from bench.procs import (
    ROOT,
    Child,
    NotReadyError,
    Processes,
    compile_gateway,
    wait_http,
    wait_logged,
    wait_tcp,
)

NEVER_HIT_LIMITS = """\
# Written by bench: limits that are never hit, so only the backend's cost is measured.
groups:
  - name: all
    models: ["*"]
    requests_per_minute: 100000000
    input_tokens_per_minute: 100000000000
    output_tokens_per_minute: 100000000000
"""


RedisKind = Literal["plain", "cluster", "tls"]
CLUSTER_SLOTS = 16_384


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A `gateway+redis*` target: the redis-server it runs on and the gateway's settings."""

    server: RedisKind
    env: Mapping[str, str] = field(default_factory=dict)


REDIS_TARGETS: Mapping[str, RedisTarget] = {
    # the pipelined client (the default for redis://)
    "gateway+redis": RedisTarget("plain"),
    # redis-py's pool on the same server
    "gateway+redis-py": RedisTarget("plain", {"GATEWAY_REDIS_CLIENT": "redis-py"}),
    # a one-node Redis Cluster owning every slot (redis-py's cluster client)
    "gateway+redis-cluster": RedisTarget("cluster", {"GATEWAY_REDIS_CLUSTER": "true"}),
    # rediss:// to a TLS-only redis-server with a throwaway CA (redis-py over TLS)
    "gateway+redis-tls": RedisTarget("tls"),
}
"""Every Redis-limited target; all but `gateway+redis` run only when asked for."""


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
        env: Mapping[str, str] | None = None,
        tree: Path | None = None,
    ) -> Child:
        """`python -m gateway serve`; NotReadyError (with its log tail) if /healthz isn't 200
        or, with GATEWAY_WORKERS above 1, not every worker logged `listening` (connections
        made before would all stay on the first). `env`: the target's own settings;
        `--gateway-env` (`self.gateway_env`) has the last word. `tree`: serve the `gateway`
        package of that tree instead of this one's."""
        port = free_port()
        settings = gateway_env(port, upstream)
        if redis_url:
            settings["GATEWAY_REDIS_URL"] = redis_url
        if limits_file:
            settings["GATEWAY_LIMITS_FILE"] = str(limits_file)
        settings |= dict(env or {})
        settings |= self.gateway_env
        argv = [sys.executable, "-m", "gateway", "serve"]
        await asyncio.to_thread(compile_gateway, tree or ROOT)
        child = self.procs.start(
            "gateway", argv, port, cpus=placement.server, env=settings, cwd=tree or ROOT
        )
        workers = int(settings.get("GATEWAY_WORKERS", "1"))
        try:
            await wait_http(child, "/healthz", within=self.gateway_timeout)
            if workers > 1:
                await wait_logged(child, LISTENING, workers, within=self.gateway_timeout)
        except NotReadyError:
            self._stop_showing_log(child)
            raise
        return child

    async def litellm(self, placement: Placement, upstream: Child, redis_port: int | None) -> Child:
        """LiteLLM's proxy (bench/litellm_proxy.py) from its own venv, installed on first use
        (bench/litellm_env.py); NotReadyError, so that only its row is skipped, if that env
        cannot be had, /health/liveliness is not 200 in time, or a probe request does not
        reach the mock with a 200. Its config and log go to the run's temporary directory."""
        try:
            env = await asyncio.to_thread(ensure_env)
        except LitellmUnavailableError as exc:
            raise NotReadyError(f"LiteLLM not installed: {exc}") from exc
        port = free_port()
        config = self.procs.logdir / f"litellm-{port}.yaml"
        config.write_text(litellm_proxy.config_yaml(upstream.url, redis_port))
        child = self.procs.start(
            "litellm",
            litellm_proxy.server_argv(env.cli, config, port),
            port,
            cpus=placement.server,
            env=litellm_proxy.environ(),
            cwd=self.procs.logdir,  # no .env or config of the bench's tree
            inherit_env=False,
        )
        try:
            await wait_http(child, litellm_proxy.HEALTH_PATH, within=litellm_proxy.START_TIMEOUT)
            await litellm_proxy.check_forwarding(child.url, upstream.url)
        except NotReadyError:
            self._stop_showing_log(child)
            raise
        return child

    def _stop_showing_log(self, child: Child) -> None:
        """Stop a server that never became ready, printing its log's tail (why it did not)."""
        tail = child.log_tail()
        self.procs.stop(child)
        if tail:
            print(f"[bench] {child.name} log tail ({child.log}):\n{tail}", file=sys.stderr)

    async def redis(self, cpus: Collection[int] | None = None, kind: RedisKind = "plain") -> Child:
        """A throwaway redis-server on a free port, no persistence: `plain`; `cluster`, a
        one-node Redis Cluster that owns every slot; `tls`, TLS only (see `tls_files`)."""
        server = shutil.which("redis-server")
        if server is None:
            raise NotReadyError("redis-server not found on PATH")
        port = free_port()
        home = _fresh_dir(self.procs.logdir / f"redis-{kind}-{port}")
        argv = [server, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--daemonize", "no", "--dir", str(home)]
        if kind == "tls":
            tls = tls_files(self.procs.logdir / "tls")
            argv += ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)]
            argv += ["--tls-ca-cert-file", str(tls.ca)]
        else:
            argv += ["--port", str(port)]
        if kind == "cluster":
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            argv += ["--cluster-port", str(free_port())]  # port + 10000 may not be free
        child = self.procs.start(f"redis-{kind}", argv, port, cpus=cpus)
        try:
            await wait_tcp(child)
        except NotReadyError as exc:
            tail = child.log_tail()
            self.procs.stop(child)
            if kind == "tls" and "tls" in tail.lower():
                raise NotReadyError(
                    "this redis-server refuses --tls-port (built without TLS support?): "
                    + (tail.splitlines() or ["no output"])[-1]
                ) from exc
            raise
        if kind == "cluster":
            try:
                await claim_every_slot(port)
            except NotReadyError:
                self.procs.stop(child)
                raise
        return child

    def redis_url(self, redis: Child, kind: RedisKind) -> str:
        """How a gateway reaches `redis` (started by `redis(kind=kind)`)."""
        if kind == "tls":
            ca = self.procs.logdir / "tls" / "ca.crt"
            return f"rediss://127.0.0.1:{redis.port}/0?ssl_ca_certs={ca}"
        return f"redis://127.0.0.1:{redis.port}/0"

    def limits_file(self) -> Path:
        path = self.procs.logdir / "never-hit-limits.yaml"
        path.write_text(NEVER_HIT_LIMITS)
        return path


LISTENING = '"event": "listening"'
"""What each gateway process (each worker) logs once it accepts connections."""
PRODUCTION_LOGS = {"GATEWAY_LOG_LEVEL": "info", "GATEWAY_LOG_FORMAT": "json"}
"""The gateway's own defaults, set explicitly (a `.env` in the working directory must not
change what is measured): one JSON access line per request, written to the process's stdout,
which `Processes.start` sends to the child's log file. `--gateway-env GATEWAY_LOG_LEVEL=warning`
measures without the access line."""


def _fresh_dir(path: Path) -> Path:
    path.mkdir()
    return path


def gateway_env(port: int, upstream: Child) -> dict[str, str]:
    """This environment without any `GATEWAY_*`, plus what a bench gateway needs: its port,
    the mock as upstream, production logging (`PRODUCTION_LOGS`) and a short shutdown grace."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "GATEWAY_UPSTREAM_URL": upstream.url,
        **PRODUCTION_LOGS,
        "GATEWAY_SHUTDOWN_GRACE_SECONDS": "2",  # stopping between phases stays quick
    }
    return env


def env_item(text: str) -> tuple[str, str]:
    """`--gateway-env KEY=VALUE` as (KEY, VALUE)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_gateway_env_argument(parser: argparse.ArgumentParser) -> None:
    """`--gateway-env KEY=VALUE` (repeatable), the same in every bench command."""
    parser.add_argument(
        "--gateway-env",
        type=env_item,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the gateway processes (repeatable)",
    )


def log_settings(extra: Mapping[str, str]) -> str:
    """The gateways' log level and format after `--gateway-env` (`extra`), for the report."""
    logs = PRODUCTION_LOGS | {k: v for k, v in extra.items() if k in PRODUCTION_LOGS}
    level, fmt = logs["GATEWAY_LOG_LEVEL"].lower(), logs["GATEWAY_LOG_FORMAT"].lower()
    access = "access line on" if level in ("debug", "info") else "access line off"
    production = "production default" if logs == PRODUCTION_LOGS else "not the default"
    return f"GATEWAY_LOG_LEVEL={level}, GATEWAY_LOG_FORMAT={fmt} ({access}; {production})"


def gateway_source(extra: Mapping[str, str], tree: Path = ROOT) -> str:
    """Where the bench's gateway processes import `gateway` from (they run in `tree`, by
    default this one, with this environment, PYTHONPATH included) and that tree's commit, so
    a clone is not mistaken for the editable install."""
    env = {**os.environ, **extra}
    code = "import gateway, os; print(os.path.dirname(gateway.__file__))"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tree, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"
    where = Path(done.stdout.strip())
    return f"{where} ({_commit(where.parent)})"


def _commit(tree: Path) -> str:
    """`tree`'s short HEAD, "+ changes" when its gateway/ differs from it; "no git" else."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "gateway"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "no git"
    return f"commit {head}" + (" + uncommitted changes in gateway/" if dirty else "")


async def _redis_cli(port: int, *args: str) -> str:
    """`redis-cli -p PORT ARGS...`'s output; NotReadyError on failure or an error reply."""
    proc = await asyncio.create_subprocess_exec(
        "redis-cli", "-p", str(port), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0 or text.startswith(("ERR", "(error)")):
        raise NotReadyError(f"redis-cli {' '.join(args[:2])}: {text or proc.returncode}")
    return text


async def claim_every_slot(port: int, within: float = 10.0) -> None:
    """Make a fresh cluster node own slots 0-16383 and wait for `cluster_state:ok`
    (CLUSTER ADDSLOTSRANGE; CLUSTER ADDSLOTS on a Redis older than 7)."""
    try:
        await _redis_cli(port, "CLUSTER", "ADDSLOTSRANGE", "0", str(CLUSTER_SLOTS - 1))
    except NotReadyError:
        await _redis_cli(port, "CLUSTER", "ADDSLOTS", *map(str, range(CLUSTER_SLOTS)))
    deadline = time.monotonic() + within
    while "cluster_state:ok" not in await _redis_cli(port, "CLUSTER", "INFO"):
        if time.monotonic() > deadline:
            raise NotReadyError(f"redis cluster on {port}: not cluster_state:ok in {within:g} s")
        await asyncio.sleep(0.05)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A throwaway CA and a server certificate it signed, for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path


_OPENSSL_STEPS = (
    "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2"
    " -subj '/CN=claude-gateway bench CA' -addext basicConstraints=critical,CA:TRUE"
    " -addext keyUsage=critical,keyCertSign,cRLSign",
    "req -newkey rsa:2048 -nodes -keyout redis.key -out redis.csr -subj /CN=127.0.0.1",
    "x509 -req -in redis.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out redis.crt -days 2"
    " -extfile server.ext",
)
_SERVER_EXTENSIONS = """\
subjectAltName=IP:127.0.0.1
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
"""


def tls_files(folder: Path) -> TlsFiles:
    """Make (once per folder) a self-signed CA and a server certificate for IP 127.0.0.1
    with `openssl`; NotReadyError if openssl is missing or fails."""
    files = TlsFiles(folder / "ca.crt", folder / "redis.crt", folder / "redis.key")
    if files.cert.exists():
        return files
    if shutil.which("openssl") is None:
        raise NotReadyError("openssl not found on PATH (needed for the TLS certificate)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.ext").write_text(_SERVER_EXTENSIONS)
    for step in _OPENSSL_STEPS:
        argv = ["openssl", *shlex.split(step)]
        done = subprocess.run(
            argv, cwd=folder, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
            raise NotReadyError(f"openssl {step.split()[0]} failed: {last}")
    return files


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
