"""`create_app()`: the one composition root: services, routes, middlewares, cleanup contexts.

Shared clients open and close in `app.cleanup_ctx`; state lives under typed `AppKey`s; no
module globals. `run()` serves an app with graceful SIGTERM/SIGINT draining.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.clock import Clock, SystemClock
from gateway.config import Settings
from gateway.exact_count import ExactCounter
from gateway.handler import handle_v1
from gateway.limits import (
    LearningSync,
    LimitBackend,
    LimitBackendError,
    Limiter,
    MemoryBackend,
)
from gateway.limits.redis_backend import RedisBackend
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.middlewares import gateway_middleware
from gateway.ops import READINESS_CHECKS, add_ops_routes
from gateway.retry import RetryPolicy
from gateway.services import SERVICES, BodyLimits, Services
from gateway.startup import Startup, startup_for
from gateway.upstream import Upstream, UpstreamSettings, open_session

log = get_logger("gateway.app")


def upstream_settings(settings: Settings) -> UpstreamSettings:
    """The upstream section of the settings."""
    return UpstreamSettings(
        base_url=settings.upstream_base,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        connection_limit=settings.upstream_connection_limit,
        retry=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_seconds=settings.retry_base_seconds,
            cap_seconds=settings.retry_cap_seconds,
            budget_seconds=settings.retry_budget_seconds,
            budget_ratio=settings.retry_budget_ratio,
            budget_min_per_second=settings.retry_budget_min_per_second,
            budget_burst=settings.retry_budget_burst,
            charge_rpm=settings.retry_charge_rpm,
        ),
        jitter_seed=settings.retry_seed,
    )


def upstream_ctx(
    cfg: UpstreamSettings,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Open the pooled upstream session (and its retry loop) for the app's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        session = open_session(cfg)
        services = app[SERVICES]
        rng = random.Random(cfg.jitter_seed)
        services.upstream = Upstream(session, cfg, services.clock, rng, services.metrics)
        services.exact_counter = ExactCounter(
            session, cfg.base_url, credentials=services.credentials, observer=services.metrics
        )
        try:
            yield
        finally:
            await session.close()

    return ctx


def limiter_ctx(startup: Startup) -> Callable[[web.Application], AsyncIterator[None]]:
    """Open the limiter's backend (Redis when configured, else in-process) for the app."""
    settings = startup.settings

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        if startup.limits is None:
            log.info("limits_disabled", reason=f"{startup.pass_through_reason}: plain pass-through")
            yield
            return
        config = startup.limits
        backend: LimitBackend
        if settings.redis_url is not None:
            backend = RedisBackend.from_url(
                settings.redis_url.get_secret_value(),
                cluster=settings.redis_cluster,
                timeout=settings.redis_timeout_seconds,
                on_backend_call=services.metrics.backend_call,
            )
            app[READINESS_CHECKS]["redis"] = _pinger(backend)
        else:
            backend = MemoryBackend(services.clock)
        services.limiter = Limiter(
            backend,
            config,
            services.clock,
            on_backend_call=services.metrics.backend_call,
            learn_limits=settings.learn_limits,
        )
        limiter = services.limiter
        services.metrics.limits_configured(
            {(g.name, d.value): n for g in config.groups for d, n in g.limits().items()}
        )
        services.metrics.watch_learning(limiter.learning.snapshot)
        syncing: asyncio.Task[None] | None = None
        if settings.redis_url is not None:  # in process there is no fleet to share with
            sync = LearningSync(
                limiter.learning,
                backend,
                services.clock,
                on_backend_call=services.metrics.backend_call,
            )
            syncing = asyncio.get_running_loop().create_task(sync.run())
        services.metrics.watch_limiter(
            lambda: {(g, d.value): ratio for (g, d), ratio in limiter.bucket_fill().items()},
            lambda: limiter.breaker_open,
        )
        log.info(
            "limits_enabled",
            backend="redis" if settings.redis_url is not None else "memory",
            groups=[group.name for group in config.groups],
            learn_limits=settings.learn_limits,
        )
        try:
            yield
        finally:
            if syncing is not None:
                syncing.cancel()
                await asyncio.gather(syncing, return_exceptions=True)
            await backend.aclose()

    return ctx


def _pinger(backend: LimitBackend) -> Callable[[], Awaitable[bool]]:
    async def ping() -> bool:
        try:
            await backend.ping()
        except LimitBackendError:
            return False
        return True

    return ping


def create_app(
    settings: Settings,
    *,
    startup: Startup | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """Build the gateway application from validated settings (`startup`: what `prepare()`
    made of them; without it, they are validated here, raising `ConfigError`)."""
    if startup is None:
        startup = startup_for(settings)
    services = Services(
        clock=clock or SystemClock(),
        metrics=GatewayMetrics(registry),
        body_limits=BodyLimits(
            buffered=settings.max_body_bytes, streamed=settings.max_upload_bytes
        ),
    )
    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=settings.max_upload_bytes,
        handler_args={"max_field_size": 65536},
    )
    app[SERVICES] = services
    app[READINESS_CHECKS] = {}
    app.cleanup_ctx.append(upstream_ctx(upstream_settings(settings)))
    app.cleanup_ctx.append(limiter_ctx(startup))
    add_ops_routes(app)
    app.router.add_route("*", "/v1/{tail:.*}", handle_v1)
    return app


async def serve(settings: Settings, app: web.Application) -> None:
    """Serve until SIGTERM/SIGINT, then drain: /readyz fails, in-flight work finishes."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_grace_seconds,
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "listening",
        host=settings.host,
        port=_bound_port(site, settings.port),
        upstream=settings.upstream_shown,
    )
    try:
        await stop.wait()
        log.info("shutting_down", grace_seconds=settings.shutdown_grace_seconds)
        app[SERVICES].lifecycle.accepting = False
        await app[SERVICES].clock.sleep(settings.shutdown_drain_seconds)
    finally:
        await runner.cleanup()
        log.info("stopped")


def _bound_port(site: web.TCPSite, configured: int) -> int:
    server = site._server  # the asyncio server; aiohttp exposes no public accessor
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else configured
