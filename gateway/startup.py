"""Everything `serve` checks before it opens a port, in one place: `check-config` runs it too.

`prepare()` reads the settings and the limits file, checks the Redis URL with the parser the
Redis client will use, picks the event loop, and decides whether traces are exported (the
`OTEL_*` variables; a missing `otel` extra is a warning, and tracing stays off). Whatever
`serve` would refuse, `prepare()` refuses first, as one `ConfigError` line; `check-config`
and `serve` then agree by construction, and neither prints a traceback for a configuration
mistake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.config import (
    ConfigError,
    Settings,
    TracingSwitch,
    load_settings,
    mask_url,
    tracing_switch,
    unknown_settings,
)
from gateway.limits import LimitsConfig, LimitsFileError, load_limits
from gateway.limits.redis import check_url
from gateway.trace import otel_installed

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@dataclass(frozen=True, slots=True)
class Startup:
    """A validated configuration, ready to serve."""

    settings: Settings
    limits: LimitsConfig | None
    """The limits in force; None when nothing is limited (plain pass-through)."""
    pass_through_reason: str | None
    """Why nothing is limited, or None when a limiter runs."""
    loop_factory: LoopFactory | None
    loop_name: str
    warnings: tuple[str, ...]
    """Mistakes that do not stop the gateway: unknown `GATEWAY_*` names, limits of 0, an
    OTLP endpoint without the `otel` extra."""
    tracing: TracingSwitch
    """Whether (and where) traces are exported: `endpoint` None means off."""


def prepare(env_file: Path | None = Path(".env")) -> Startup:
    """Read and validate the whole configuration as `serve` will use it; raise `ConfigError`."""
    startup = startup_for(load_settings(env_file))
    unknown = unknown_settings(env_file)
    return replace(startup, warnings=(*unknown, *startup.warnings)) if unknown else startup


def startup_for(settings: Settings) -> Startup:
    """Validate what `settings` point at (limits file, Redis URL, event loop)."""
    limits = _limits_file(settings)
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        try:
            check_url(url, cluster=settings.redis_cluster, kind=settings.redis_client)
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_REDIS_URL: {exc} (got {mask_url(url)!r})") from None
    loop_factory, loop_name = _loop_factory(settings.event_loop)
    reason = pass_through_reason(settings, limits)
    in_force = None if reason is not None else (limits or LimitsConfig())
    warnings = tuple(in_force.closed_limits()) if in_force else ()
    tracing = tracing_switch()
    if tracing.endpoint is not None and not otel_installed():
        warnings += (
            f"an OTLP endpoint is set ({mask_url(tracing.endpoint)}) but the otel extra is not "
            "installed (pip install 'claude-gateway[otel]'): traces are off",
        )
        tracing = TracingSwitch(None, "the otel extra is not installed", tracing.sampler)
    return Startup(settings, in_force, reason, loop_factory, loop_name, warnings, tracing)


def pass_through_reason(settings: Settings, limits: LimitsConfig | None) -> str | None:
    """Why no limiter runs, or None when one does (a file setting limits, or learning).

    A limits file that sets no limit, an empty one included, means the same as no file.
    """
    if settings.learn_limits:
        return None
    if limits is None:
        return "no GATEWAY_LIMITS_FILE"
    if not limits.sets_limits:
        return f"{settings.limits_file} sets no limits"
    return None


def _limits_file(settings: Settings) -> LimitsConfig | None:
    """The validated limits file, or None when none is configured."""
    if settings.limits_file is None:
        return None
    try:
        return load_limits(settings.limits_file)
    except LimitsFileError as exc:
        raise ConfigError(str(exc)) from None


def _loop_factory(choice: str) -> tuple[LoopFactory | None, str]:
    """uvloop when asked or available ("auto"); docs/performance.md gives the reason."""
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop  # noqa: PLC0415 (optional dependency, absent on Windows)
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("GATEWAY_EVENT_LOOP: uvloop is not installed") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"
