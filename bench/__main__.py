"""`python -m bench [--quick] [--scenario default|errors|redis|workers|all] [--json out.json]`.

Starts every process it needs, prints a Markdown report to stdout (progress to stderr), and
stops everything it started on the way out, including on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Collection
from pathlib import Path
from types import FrameType
from typing import Any

from bench.procs import Processes, wait_quiet
from bench.report import Report, machine_info, to_markdown, write_json
from bench.scenario_errors import ErrorsScenario
from bench.scenario_proxy import ProxyScenario
from bench.scenario_redis import WORKER_CONFIGS, RedisScenario
from bench.serving import raise_nofile_limit, run_main
from bench.settings import TARGETS, BenchSettings, check_target, preset, split_target
from bench.targets import (
    Launcher,
    add_gateway_env_argument,
    gateway_source,
    gateway_version,
    log_settings,
    pinned_placement,
)

SCENARIOS = ("default", "errors", "redis", "workers", "all")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run, < 30 s")
    parser.add_argument("--scenario", choices=SCENARIOS, default="default")
    parser.add_argument(
        "--targets",
        help=f"comma-separated subset of {','.join(TARGETS)} "
        "(default: all but gateway+memory, the other Redis clients and litellm; quick: no redis); "
        "a gateway target may be served from another tree: gateway+redis@/tmp/clone",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--duration", type=float, help="seconds of timed req/s per target (split over --rounds)"
    )
    parser.add_argument("--rounds", type=int, help="req/s rounds, each target in turn")
    parser.add_argument("--streams", type=int, help="slow streams held open for RSS/stream")
    parser.add_argument("--concurrency", type=int, help="closed-loop concurrency (default 16)")
    parser.add_argument("--error-rate", type=float, help="529 fraction for --scenario errors")
    parser.add_argument("--seed", type=int, help="seed of the mock's error draws")
    add_gateway_env_argument(parser)
    parser.add_argument("--gateway-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be idle (shared machines)",
    )
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> BenchSettings:
    settings = preset(quick=args.quick)
    changes: dict[str, Any] = {}
    if args.targets:
        targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
        problems = [problem for t in targets if (problem := check_target(t)) is not None]
        if problems:
            raise SystemExit("; ".join(problems))
        changes["targets"] = targets
    for name in ("duration", "rounds", "streams", "concurrency", "error_rate", "seed"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return dataclasses.replace(settings, **changes)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM takes Ctrl-C's path: the running scenario is cancelled, then all is stopped."""
    signal.raise_signal(signal.SIGINT)


async def run(args: argparse.Namespace, settings: BenchSettings, procs: Processes) -> Report:
    gateway_env = dict(args.gateway_env)
    launcher = Launcher(procs, gateway_env=gateway_env, gateway_timeout=args.gateway_timeout)
    version = gateway_version()
    pinned = pinned_placement()
    machine = machine_info(version)
    machine["gateway logs"] = log_settings(gateway_env)
    machine["gateway source"] = gateway_source(gateway_env)
    report = Report(_command_line(), args.scenario, machine, settings, pinned.description)
    for target in settings.targets:
        tree = split_target(target)[1]
        if tree is not None:
            source = gateway_source(gateway_env, tree.resolve())
            report.notes.append(f"- {target}: gateway source {source}")
    if version is None:
        report.notes.append("- claude-gateway is not installed: gateway rows are skipped.")
    if args.wait_quiet > 0:
        print(f"[bench] waiting up to {args.wait_quiet:g} s for an idle machine", file=sys.stderr)
        if not await wait_quiet(args.wait_quiet):
            report.notes.append(f"- The machine was not idle within {args.wait_quiet:g} s.")
    scenario = args.scenario
    if scenario in ("default", "all"):
        _pin_self(pinned.load or procs.all_cpus)
        report.proxy = await ProxyScenario(launcher, settings, pinned).run()
    if scenario in ("errors", "all"):
        _pin_self(pinned.load or procs.all_cpus)
        report.errors = await ErrorsScenario(launcher, settings, pinned).run()
    if scenario in ("redis", "all"):
        _pin_self(procs.all_cpus)
        report.redis = await RedisScenario(launcher, settings).run()
    if scenario in ("workers", "all"):
        _pin_self(procs.all_cpus)
        report.workers = await RedisScenario(launcher, settings, WORKER_CONFIGS).run()
    return report


def _pin_self(cpus: Collection[int]) -> None:
    """Move the harness (the load generator) to `cpus`."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)


def _command_line() -> str:
    """This run's command line, the interpreter relative to the working directory if inside."""
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), "-m", "bench", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = build_settings(args)
    raise_nofile_limit()  # children inherit it
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    signal.signal(signal.SIGTERM, _terminate)
    procs = Processes()  # before pinning: remembers every allowed CPU
    result: list[Report] = []

    async def go() -> None:
        result.append(await run(args, settings, procs))

    try:
        run_main(go())
    except KeyboardInterrupt:
        print(f"[bench] interrupted; stopping everything (logs: {procs.logdir})", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
    report = result[0]
    if report.has_skips:
        report.notes.append(f"- Process logs kept in {procs.logdir}")
    else:
        shutil.rmtree(procs.logdir, ignore_errors=True)
    print(to_markdown(report))
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
