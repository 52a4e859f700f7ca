"""Command line: `serve`, `check-config`, `--version`; readable errors and exit codes.

Exit codes: 0 ok, 2 invalid configuration (one line naming the setting, no traceback),
1 a failure while running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from gateway import __version__
from gateway.app import create_app, load_limits_file
from gateway.app import serve as serve_app
from gateway.config import ConfigError, Settings, load_settings, masked
from gateway.limits import LimitsConfig, LimitsFileError
from gateway.logs import configure_logging, get_logger

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
    commands.add_parser(
        "check-config", help="validate the environment and limits file, print the effective config"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `claude-gateway` and `python -m gateway`."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        limits = check_limits_file(settings)
    except ConfigError as exc:
        print(f"claude-gateway: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return check_config(settings, limits)
    return serve(settings, limits)


def check_limits_file(settings: Settings) -> LimitsConfig | None:
    """Validate the limits file, if any, so a bad one fails before the port opens."""
    try:
        return load_limits_file(settings)
    except LimitsFileError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(
            f"GATEWAY_LIMITS_FILE: cannot read {settings.limits_file}: {exc.strerror}"
        ) from None


def check_config(settings: Settings, limits: LimitsConfig | None) -> int:
    """Print the effective configuration with secrets masked, and the limits in force."""
    print(f"claude-gateway {__version__}: configuration is valid")
    for name, value in masked(settings).items():
        print(f"  {name}={value}")
    if limits is None:
        learning = settings.learn_limits
        print(
            "limits: learned per model from the API's headers"
            if learning
            else "limits: none (plain pass-through)"
        )
        return EXIT_OK
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
    return EXIT_OK


def serve(settings: Settings, limits: LimitsConfig | None = None) -> int:
    """Configure logging, pick the event loop and serve until a signal."""
    configure_logging(settings.log_level, settings.log_format, cache=True)
    log = get_logger("gateway.cli")
    loop_factory, loop_name = _loop_factory(settings.event_loop)
    log.info("starting", version=__version__, event_loop=loop_name)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve_app(settings, create_app(settings, limits=limits)))
    except OSError as exc:
        log.error("cannot_listen", host=settings.host, port=settings.port, error=str(exc))
        return EXIT_FAILURE
    return EXIT_OK


def _loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """uvloop when asked or available ("auto"); the README's benchmark gives the reason."""
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop  # noqa: PLC0415 (optional dependency, absent on Windows)
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("GATEWAY_EVENT_LOOP: uvloop is not installed") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"
