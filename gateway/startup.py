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
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.config import (
    ConfigError,
    Settings,
    TracingSwitch,
    environment_secret,
    load_settings,
    mask_url,
    tracing_switch,
    unknown_settings,
)
from gateway.identity import Identities
from gateway.limits import LimitsConfig, LimitsFileError, load_limits
from gateway.limits.tenants import UpstreamKey
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
    identities: Identities = field(default_factory=lambda: Identities((), {}))
    """Who may call (gateway keys and tenants), or pass-through."""

    @property
    def limit_share(self) -> float:
        """The part of every limit this process enforces on its own: 1/GATEWAY_WORKERS when
        in-process limits are divided among workers (`check_workers`), else all of it."""
        settings = self.settings
        divided = settings.redis_url is None and settings.worker_limits == "divide"
        return 1 / settings.workers if divided and self.limits is not None else 1.0


def prepare(env_file: Path | None = Path(".env"), *, workers: int | None = None) -> Startup:
    """Read and validate the whole configuration as `serve` will use it; raise `ConfigError`.
    `workers`: `--workers`, which overrides `GATEWAY_WORKERS`."""
    settings = load_settings(env_file)
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    startup = startup_for(settings)
    unknown = unknown_settings(env_file)
    return replace(startup, warnings=(*unknown, *startup.warnings)) if unknown else startup


def startup_for(settings: Settings) -> Startup:
    """Validate what `settings` point at (limits file, Redis URL, event loop)."""
    limits = _limits_file(settings)
    if settings.redis_url is not None:
        from gateway.limits.redis import check_url  # noqa: PLC0415 (redis-py: only with Redis)

        url = settings.redis_url.get_secret_value()
        try:
            check_url(url, cluster=settings.redis_cluster, kind=settings.redis_client)
        except ValueError as exc:
            raise ConfigError(f"GATEWAY_REDIS_URL: {exc} (got {mask_url(url)!r})") from None
    loop_factory, loop_name = _loop_factory(settings.event_loop)
    reason = pass_through_reason(settings, limits)
    in_force = None if reason is not None else (limits or LimitsConfig())
    identities = identities_for(settings, limits)
    warnings = tuple(in_force.closed_limits()) if in_force else ()
    warnings += check_workers(settings, in_force)
    if identities.holds_keys and not (limits and limits.tenants):
        warnings += (
            "the gateway holds the upstream key but the limits file defines no tenant: every "
            "request is refused (401) until tenants with keys are added",
        )
    tracing = tracing_switch()
    if tracing.endpoint is not None and not otel_installed():
        warnings += (
            f"an OTLP endpoint is set ({mask_url(tracing.endpoint)}) but the otel extra is not "
            "installed (pip install 'claude-gateway[otel]'): traces are off",
        )
        tracing = TracingSwitch(None, "the otel extra is not installed", tracing.sampler)
    return Startup(
        settings, in_force, reason, loop_factory, loop_name, warnings, tracing, identities
    )


def identities_for(settings: Settings, limits: LimitsConfig | None) -> Identities:
    """Who may call: the upstream keys' secrets (setting, file, named ones of the limits file)
    and the tenants; a tenant left without an upstream key is a `ConfigError`."""
    secrets: dict[str | None, str] = {}
    default = _default_upstream_key(settings)
    if default is not None:
        secrets[None] = default
    tenants = limits.tenants if limits else ()
    for key in limits.upstream_keys if limits else ():
        secrets[key.name] = _named_upstream_key(key, settings.limits_file)
    for tenant in tenants:
        if tenant.upstream_key not in secrets:
            raise ConfigError(
                f"{settings.limits_file}: tenant '{tenant.name}' has no upstream key: set "
                "GATEWAY_UPSTREAM_API_KEY (or _FILE), or give the tenant an upstream_key"
            )
    return Identities(tenants, secrets)


def _named_upstream_key(key: UpstreamKey, limits_file: Path | None) -> str:
    """The secret an `upstream_keys` entry names, from its variable or its file."""
    where = f"{limits_file}: upstream key '{key.name}'"
    if key.env is not None:
        secret = environment_secret(key.env)
        if secret is None:
            raise ConfigError(f"{where}: environment variable {key.env} is unset or empty")
        return secret
    assert key.file is not None
    return _secret_file(key.file, where)


def _secret_file(path: Path, where: str) -> str:
    """A secret kept in a file (stripped); `ConfigError` when unreadable or empty."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return secret


def _default_upstream_key(settings: Settings) -> str | None:
    """`GATEWAY_UPSTREAM_API_KEY`, or the contents of `GATEWAY_UPSTREAM_API_KEY_FILE`."""
    if settings.upstream_api_key is not None and settings.upstream_api_key_file is not None:
        raise ConfigError(
            "GATEWAY_UPSTREAM_API_KEY and GATEWAY_UPSTREAM_API_KEY_FILE are both set: use one"
        )
    if settings.upstream_api_key is not None:
        return settings.upstream_api_key.get_secret_value().strip() or None
    path = settings.upstream_api_key_file
    return None if path is None else _secret_file(path, "GATEWAY_UPSTREAM_API_KEY_FILE")


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


def check_workers(settings: Settings, limits: LimitsConfig | None) -> tuple[str, ...]:
    """Refuse what several workers cannot serve, as one `ConfigError` line: port 0 (each
    worker would bind its own free port), a platform without SO_REUSEPORT, and in-process
    limits (`limits`: those in force) that nobody said how to divide, since each worker
    would enforce all of them and N workers admit N times each limit. A warning when
    GATEWAY_WORKER_LIMITS has nothing to do."""
    count = settings.workers
    if count == 1:
        return ()
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError(f"GATEWAY_WORKERS={count}: this platform has no SO_REUSEPORT")
    if settings.port == 0:
        raise ConfigError(
            f"GATEWAY_PORT: 0 (any free port) cannot be shared by GATEWAY_WORKERS={count} "
            "workers: choose a port"
        )
    if settings.redis_url is not None:
        if settings.worker_limits == "divide":
            return (
                "GATEWAY_WORKER_LIMITS=divide is ignored: the workers share the limits in "
                "GATEWAY_REDIS_URL",
            )
        return ()
    if limits is not None and settings.worker_limits != "divide":
        raise ConfigError(
            f"GATEWAY_WORKERS={count} with in-process limits: each worker would enforce every "
            f"limit on its own ({count}x in total); set GATEWAY_REDIS_URL to share one budget, "
            f"or GATEWAY_WORKER_LIMITS=divide to give each worker 1/{count} of every limit"
        )
    return ()


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
