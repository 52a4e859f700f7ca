"""`python -m bench.instructions`: CPU instructions per request, counted by callgrind.

Why: on a shared 2-vCPU VM the req/s and CPU-time tables move by 10-25% between runs of the
same code, which hides a 5% change. Instructions executed per request barely move (two
runs of one commit agreed within 0.5%), so an A/B of two commits, or of a server with and
without limits, reads cleanly.

How: each server runs under `valgrind --tool=callgrind --instr-atstart=no`; after a warm-up,
`callgrind_control -i on` starts counting, `--requests` requests go at `--concurrency`,
`-i off` stops it and `--dump` writes the total. User-space instructions only: syscalls and
the kernel's loopback work are not counted, and under valgrind the server is so slow that
Redis replies batch and settlements pile up between admissions more than in real time, so
the Redis row misstates that backend's cost. Needs `valgrind` (not installed by `make install`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp

from bench.load import client_session, closed_loop
from bench.ports import free_port
from bench.procs import Child, NotReadyError, Processes, wait_http, wait_tcp
from bench.serving import run_main
from bench.targets import (
    REDIS_TARGETS,
    Launcher,
    RedisKind,
    add_gateway_env_argument,
    gateway_env,
    gateway_source,
    log_settings,
    pinned_placement,
)

DEFAULT_TARGETS = ("passthrough", "gateway", "gateway+memory", "gateway+redis")
TARGETS = (*DEFAULT_TARGETS, *(t for t in REDIS_TARGETS if t not in DEFAULT_TARGETS))
"""The other Redis targets (redis-py, Cluster, TLS) run only when asked for."""
STARTUP_SECONDS = 180.0  # a Python server starts 20-50x slower under valgrind
WARM_UP_REQUESTS = 200


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated subset of {TARGETS} (default: the first four)",
    )
    parser.add_argument("--requests", type=int, default=600, help="counted requests per target")
    parser.add_argument("--concurrency", type=int, default=16)
    add_gateway_env_argument(parser)
    args = parser.parse_args(argv)
    args.targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


async def count(args: argparse.Namespace, procs: Processes) -> dict[str, float]:
    """kIr per request for each target, in order; a target that fails is reported and skipped."""
    launcher, placement = Launcher(procs), pinned_placement()
    mock = await launcher.mock(placement)
    redis: dict[RedisKind, Child] = {}
    results: dict[str, float] = {}
    for target in args.targets:
        print(f"[instructions] {target}", file=sys.stderr)
        out = procs.logdir / f"callgrind-{target}.out"
        env: dict[str, str] = {}
        if target.startswith("gateway+"):
            env["GATEWAY_LIMITS_FILE"] = str(launcher.limits_file())
        try:
            spec = REDIS_TARGETS.get(target)
            if spec is not None:  # the same server for targets of one kind, as in the bench
                if spec.server not in redis:
                    redis[spec.server] = await launcher.redis(placement.load, kind=spec.server)
                env["GATEWAY_REDIS_URL"] = launcher.redis_url(redis[spec.server], spec.server)
                env |= spec.env
        except NotReadyError as exc:
            print(f"[instructions] {target} skipped: {exc}", file=sys.stderr)
            continue
        env |= dict(args.gateway_env)
        server = _start(procs, target, mock, out, env, cpus=placement.server)
        try:
            await _ready(server, target)
            results[target] = await _counted(server, args, out)
        except (NotReadyError, RuntimeError) as exc:
            print(f"[instructions] {target} skipped: {exc}", file=sys.stderr)
        finally:
            procs.stop(server)
    return results


def _start(
    procs: Processes,
    target: str,
    mock: Child,
    out: Path,
    env: Mapping[str, str],
    *,
    cpus: frozenset[int] | None,
) -> Child:
    port = free_port()
    callgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no"]
    callgrind.append(f"--callgrind-out-file={out}")
    if target == "passthrough":
        server = ["-m", "bench.passthrough", "--port", str(port), "--upstream", mock.url]
        return procs.start(target, [*callgrind, sys.executable, *server], port, cpus=cpus)
    settings = gateway_env(port, mock) | dict(env)
    argv = [*callgrind, sys.executable, "-m", "gateway", "serve"]
    return procs.start(target, argv, port, cpus=cpus, env=settings)


async def _ready(server: Child, target: str) -> None:
    if target == "passthrough":
        await wait_tcp(server, within=STARTUP_SECONDS)
    else:
        await wait_http(server, "/healthz", within=STARTUP_SECONDS)


async def _counted(server: Child, args: argparse.Namespace, out: Path) -> float:
    """Warm up, count `args.requests` requests, dump; instructions per request in thousands."""
    async with client_session(timeout=600) as session:
        await _drive(session, server, WARM_UP_REQUESTS, args.concurrency)
        _control(server, "--instr=on")
        await _drive(session, server, args.requests, args.concurrency)
        _control(server, "--instr=off")
    _control(server, "--dump")
    requests: int = args.requests
    return _total(out) / requests / 1000


async def _drive(
    session: aiohttp.ClientSession, server: Child, requests: int, concurrency: int
) -> None:
    result = await closed_loop(
        session,
        [server.url],
        concurrency=concurrency,
        duration=3600,
        max_requests=requests,
    )
    if result.failures or result.requests != requests:
        raise RuntimeError(f"{result.requests}/{requests} answered 200 ({dict(result.failures)})")


def _control(server: Child, command: str) -> None:
    argv = ["callgrind_control", command, str(server.pid)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"callgrind_control {command}: {done.stderr.strip() or done.stdout}")


def _total(out: Path) -> int:
    """The largest `totals:`/`summary:` figure over the dumps callgrind wrote for `out`."""
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                total = max(total, int(line.split()[1]))
    if total == 0:
        raise RuntimeError("callgrind counted nothing (was instrumentation switched on?)")
    return total


def table(
    results: Mapping[str, float],
    requests: int,
    concurrency: int,
    about: Mapping[str, str] | None = None,
) -> str:
    """The Markdown report: kIr per request, and each target against the pass-through;
    `about` (gateway logs, source) goes above it as a list."""
    floor = results.get("passthrough")
    lines = [f"- {key}: {value}" for key, value in (about or {}).items()]
    lines += [""] if lines else []
    lines += [
        f"Instructions per request (callgrind, {requests} requests at concurrency "
        f"{concurrency}, after {WARM_UP_REQUESTS} warm-up):",
        "",
        "| target | kIr/request | pass-through cost / this |",
        "|---|---|---|",
    ]
    for target, kir in results.items():
        share = f"{floor / kir:.0%}" if floor else "-"
        lines.append(f"| {target} | {kir:,.1f} | {share} |")
    return "\n".join(lines)


async def report(args: argparse.Namespace, outcome: list[int]) -> None:
    """Count every target, print the table; `outcome[0]` becomes the exit code."""
    procs = Processes()
    try:
        results = await count(args, procs)
    finally:
        procs.stop_all()
    extra = dict(args.gateway_env)
    about = {"gateway logs": log_settings(extra), "gateway source": gateway_source(extra)}
    print(table(results, args.requests, args.concurrency, about))
    outcome[0] = 0 if len(results) == len(args.targets) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(argv) if argv is not None else None)
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"bench.instructions needs {', '.join(missing)} (apt-get install valgrind)")
        return 2
    outcome = [1]
    run_main(report(args, outcome))
    return outcome[0]


if __name__ == "__main__":
    sys.exit(main())
