"""Command line: `serve`, `check-config [--probe]`, `--version`; readable errors, exit codes.

Exit codes: 0 ok, 2 invalid configuration (one line naming the setting, no traceback),
1 a failure while running (a port in use, a probe that failed).

Both commands start from `startup.prepare()`, so `check-config` accepts exactly what `serve`
would run with and rejects, with the same line, everything `serve` would reject.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.app import create_app, upstream_settings
from gateway.clock import SystemClock
from gateway.config import ConfigError, masked, probe_api_key
from gateway.limits import LimitsConfig
from gateway.logs import configure_logging, get_logger
from gateway.probe import probe_all
from gateway.server import serve as serve_app
from gateway.startup import Startup, prepare

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; settings themselves come from GATEWAY_* variables."""
    parser = argparse.ArgumentParser(
        prog="claude-gateway",
        description="Rate-limit-aware reverse proxy for the Anthropic API. "
        "Configure with GATEWAY_* environment variables (see README).",
    )
    parser.add_argument("--version", action="version", version=f"claude-gateway {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gateway (the default)")
    check = commands.add_parser(
        "check-config", help="validate the environment and limits file, print the effective config"
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also reach Redis (PING, SCRIPT LOAD) and the upstream (connect; GET /v1/models "
        "with ANTHROPIC_API_KEY when set), and report each with its latency",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `claude-gateway` and `python -m gateway`."""
    args = build_parser().parse_args(argv)
    try:
        startup = prepare()
    except ConfigError as exc:
        return config_error(exc)
    if args.command == "check-config":
        return check_config(startup, probe=args.probe)
    return serve(startup)


def config_error(exc: ConfigError) -> int:
    """Print the one line a configuration mistake gets; the exit code says which kind."""
    print(f"claude-gateway: invalid configuration: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def check_config(startup: Startup, *, probe: bool = False) -> int:
    """Print the effective configuration with secrets masked, whether traces are exported,
    any warning, the limits in force, and (with `probe`) what reaching Redis and the
    upstream found."""
    print(f"claude-gateway {__version__}: configuration is valid")
    for name, value in masked(startup.settings).items():
        print(f"  {name}={value}")
    tracing = startup.tracing
    if tracing.endpoint is None:
        print(f"tracing: off ({tracing.reason})")
    else:
        print(f"tracing: on, {tracing.reason}, sampler {tracing.sampler}")
    for warning in startup.warnings:
        print(f"warning: {warning}")
    if startup.limits is None:
        print(f"limits: none, plain pass-through ({startup.pass_through_reason})")
    else:
        print_limits(startup.limits, learning=startup.settings.learn_limits)
    if not probe:
        return EXIT_OK
    settings = startup.settings
    results = asyncio.run(
        probe_all(settings, upstream_settings(settings), SystemClock(), probe_api_key())
    )
    for result in results:
        print(result.line())
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILURE


def print_limits(limits: LimitsConfig, *, learning: bool) -> None:
    """The groups, endpoint limits and queue policy a limiter will enforce."""
    if not limits.groups:
        print(
            "limits: no model groups: "
            + (
                "learned per model from the API's headers"
                if learning
                else "Messages calls are not limited"
            )
        )
    else:
        print(f"limits: {len(limits.groups)} group(s), unmatched models: {limits.unmatched_models}")
    for group in limits.groups:
        shown = [f"{dim.value}={value}" for dim, value in group.limits().items()]
        shown.append(f"estimate={group.estimate}")
        if group.estimate == "count_tokens":
            shown.append(f"estimate_timeout_seconds={group.estimate_timeout_seconds:g}")
        print(f"  {group.name} [{', '.join(group.models)}]: {', '.join(shown)}")
    endpoints = [
        f"{endpoint}_requests_per_minute={limit}"
        for endpoint, limit in (
            ("count_tokens", limits.count_tokens_requests_per_minute),
            ("batch", limits.batch_requests_per_minute),
        )
        if limit is not None
    ]
    print(f"endpoint limits: {', '.join(endpoints) or 'none'}")
    print(
        f"queue: max_wait_seconds={limits.queue.max_wait_seconds:g}, "
        f"headroom={limits.headroom:g}, redis_failure={limits.redis_failure}"
        + (
            f" (fail_open_share={limits.fail_open_share:g})"
            if limits.redis_failure == "fail_open"
            else ""
        )
    )


def serve(startup: Startup) -> int:
    """Configure logging, log any warning, and serve on the chosen loop until a signal."""
    settings = startup.settings
    configure_logging(settings.log_level, settings.log_format, cache=True)
    log = get_logger("gateway.cli")
    log.info("starting", version=__version__, event_loop=startup.loop_name)
    for warning in startup.warnings:
        log.warning("configuration_warning", warning=warning)
    try:
        with asyncio.Runner(loop_factory=startup.loop_factory) as runner:
            runner.run(serve_app(settings, create_app(settings, startup=startup)))
    except ConfigError as exc:  # prepare() checks all it can; this guards what it cannot
        return config_error(exc)
    except OSError as exc:
        log.error("cannot_listen", host=settings.host, port=settings.port, error=str(exc))
        return EXIT_FAILURE
    return EXIT_OK
