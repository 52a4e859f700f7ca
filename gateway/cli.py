"""Command line: `serve`, `check-config [--probe]`, `keys new`, `status`, `--version`;
readable errors, exit codes.

Exit codes: 0 ok, 2 invalid configuration (one line naming the setting, no traceback),
1 a failure while running (a port in use, a probe that failed).

Both commands start from `startup.prepare()`, so `check-config` accepts exactly what `serve`
would run with and rejects, with the same line, everything `serve` would reject.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence

from gateway import __version__
from gateway.app import create_app, upstream_settings
from gateway.clock import SystemClock
from gateway.config import ConfigError, environment_secret, masked, probe_api_key
from gateway.identity import new_key
from gateway.limits import LimitsConfig
from gateway.limits.tenants import NAME_PATTERN
from gateway.logs import configure_logging, get_logger
from gateway.probe import probe_all
from gateway.server import serve as serve_app
from gateway.startup import Startup, prepare
from gateway.status_view import StatusUnavailable, fetch_status, render
from gateway.supervisor import supervise

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
    serve_command = commands.add_parser("serve", help="run the gateway (the default)")
    add_workers_argument(serve_command)
    serve_command.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # supervisor.py
    check = commands.add_parser(
        "check-config", help="validate the environment and limits file, print the effective config"
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also reach Redis (PING, SCRIPT LOAD) and the upstream (connect; GET /v1/models "
        "with ANTHROPIC_API_KEY when set), and report each with its latency",
    )
    add_workers_argument(check)
    parser.set_defaults(workers=None, worker=None)
    keys = commands.add_parser("keys", help="make gateway keys for the limits file's tenants")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser(
        "new", help="print a new gateway key once, and the hash to add to the tenant's keys"
    )
    new.add_argument("--tenant", required=True, help="the tenant's name in the limits file")
    status = commands.add_parser(
        "status", help="show a running gateway's buckets, queue and decisions (admin token)"
    )
    status.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `claude-gateway` and `python -m gateway`."""
    args = build_parser().parse_args(argv)
    if args.command == "keys":  # needs no configuration: it only makes a key
        return new_gateway_key(args.tenant)
    if args.command == "status":  # asks a running gateway: this one's settings do not matter
        return show_status(args.url, watch=args.watch, interval=args.interval)
    try:
        startup = prepare(workers=args.workers)
    except ConfigError as exc:
        return config_error(exc)
    if args.command == "check-config":
        return check_config(startup, probe=args.probe)
    return serve(startup, worker=args.worker)


def new_gateway_key(tenant: str) -> int:
    """Print a fresh key (the only time it is shown) and the line the limits file keeps."""
    if not re.fullmatch(NAME_PATTERN, tenant):
        print(f"claude-gateway: --tenant: {tenant!r} is not a tenant name", file=sys.stderr)
        return EXIT_CONFIG
    made = new_key()
    print(f"gateway key for tenant '{tenant}' (shown once; give it to the tenant):")
    print(f"  {made.key}")
    print(f"add this line under the keys of tenant '{tenant}' in the limits file:")
    print(f'      - "{made.stored}"')
    return EXIT_OK


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """`--workers N`: GATEWAY_WORKERS on the command line."""
    parser.add_argument(
        "--workers",
        type=worker_count,
        metavar="N",
        help="processes serving the port with SO_REUSEPORT (overrides GATEWAY_WORKERS)",
    )


def worker_count(text: str) -> int:
    """`--workers`' value: a whole number, at least 1."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 (got {text!r})")
    return count


def show_status(url: str, *, watch: bool = False, interval: float = 2.0) -> int:
    """Print the gateway's live view (token: `GATEWAY_ADMIN_TOKEN`); with `watch`, again
    every `interval` seconds until Ctrl-C."""
    token = environment_secret("GATEWAY_ADMIN_TOKEN")
    try:
        while True:
            try:
                text = render(fetch_status(url, token))
            except StatusUnavailable as exc:
                print(f"claude-gateway: status: {exc}", file=sys.stderr)
                return EXIT_FAILURE
            if not watch:
                print(text)
                return EXIT_OK
            print(f"\033[2J\033[H{url}  every {interval:g} s (Ctrl-C stops)\n{text}", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK


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
    print(f"identity: {startup.identities.describe()}")
    if startup.limits is None:
        print(f"limits: none, plain pass-through ({startup.pass_through_reason})")
    else:
        print_limits(startup.limits, learning=startup.settings.learn_limits)
    if startup.settings.workers > 1:
        print(workers_line(startup))
    if not probe:
        return EXIT_OK
    settings = startup.settings
    results = asyncio.run(
        probe_all(settings, upstream_settings(settings), SystemClock(), probe_api_key())
    )
    for result in results:
        print(result.line())
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILURE


def workers_line(startup: Startup) -> str:
    """How several workers share the port and the limits, for `check-config`."""
    settings = startup.settings
    count = settings.workers
    if startup.limits is None:
        sharing = "nothing is limited"
    elif settings.redis_url is not None:
        sharing = "sharing the limits in Redis"
    else:
        sharing = f"each enforcing 1/{count} of every limit in process (GATEWAY_WORKER_LIMITS)"
    return f"workers: {count} on port {settings.port} (SO_REUSEPORT), {sharing}"


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
    for tenant in limits.tenants:
        shown = [f"models={','.join(tenant.models)}", f"keys={len(tenant.keys)}"]
        if tenant.upstream_key is not None:
            shown.append(f"upstream_key={tenant.upstream_key}")
        if tenant.priority != "interactive":
            shown.append(f"priority={tenant.priority}")
        for group in limits.groups:
            for dim, limit in limits.tenant_limits(group, tenant.name).items():
                shown.append(f"{group.name}.{dim.value}={limit}")
        if tenant.budgets is not None:
            shown += [
                f"{name}={value:g}"
                for name, value in tenant.budgets.model_dump(exclude_none=True).items()
            ]
        print(f"  tenant {tenant.name}: {', '.join(shown)}")
    endpoints = [
        f"{endpoint}_requests_per_minute={limit}"
        for endpoint, limit in (
            ("count_tokens", limits.count_tokens_requests_per_minute),
            ("batch", limits.batch_requests_per_minute),
        )
        if limit is not None
    ]
    print(f"endpoint limits: {', '.join(endpoints) or 'none'}")
    if limits.priority_reserve:
        print(
            f"lanes: priority_reserve={limits.priority_reserve:g}, "
            f"fair_share={str(limits.fair_share).lower()}"
        )
    print(
        f"queue: max_wait_seconds={limits.queue.max_wait_seconds:g}, "
        f"headroom={limits.headroom:g}, redis_failure={limits.redis_failure}"
        + (
            f" (fail_open_share={limits.fail_open_share:g})"
            if limits.redis_failure == "fail_open"
            else ""
        )
    )


def serve(startup: Startup, *, worker: int | None = None) -> int:
    """Configure logging, log any warning, and serve on the chosen loop until a signal; with
    several workers, supervise them instead (`supervisor.py`). `worker`: this process is
    that worker (its supervisor logged the start and the warnings)."""
    settings = startup.settings
    fields = None if worker is None else {"worker": worker}
    configure_logging(settings.log_level, settings.log_format, cache=True, fields=fields)
    log = get_logger("gateway.cli")
    if worker is None:
        workers = {"workers": settings.workers} if settings.workers > 1 else {}
        log.info("starting", version=__version__, event_loop=startup.loop_name, **workers)
        for warning in startup.warnings:
            log.warning("configuration_warning", warning=warning)
        if settings.workers > 1:
            return EXIT_OK if asyncio.run(supervise(settings.workers)) else EXIT_FAILURE
    try:
        with asyncio.Runner(loop_factory=startup.loop_factory) as runner:
            app = create_app(settings, startup=startup)
            runner.run(serve_app(settings, app, worker=worker))
    except ConfigError as exc:  # prepare() checks all it can; this guards what it cannot
        return config_error(exc)
    except OSError as exc:
        log.error("cannot_listen", host=settings.host, port=settings.port, error=str(exc))
        return EXIT_FAILURE
    return EXIT_OK
