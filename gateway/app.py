"""`create_app()`: the one composition root: resources, routes, middlewares, cleanup contexts.

Each resource that opens something opens and closes in its own `app.cleanup_ctx` and is
published under its typed `AppKey` (`services.py`); no module globals. `open_backend()` is
the one place that picks the limiter's backend. Serving the app is `server.py`'s job.
Tracing (`tracing.py`, OpenTelemetry) is imported here only when it is on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.admin import add_admin_routes
from gateway.admissions import LimitedAdmissions, NoLimits
from gateway.background import Background
from gateway.clock import Clock, SystemClock
from gateway.config import Settings, TracingSwitch, mask_url
from gateway.exact_count import ExactCounter
from gateway.handler import handle_v1
from gateway.headers import CredentialPolicy
from gateway.limits import (
    LearningSync,
    LimitBackend,
    Limiter,
    LimitsConfig,
    MemoryBackend,
)
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.middlewares import gateway_middleware
from gateway.ops import READINESS_CHECKS, Dependency, add_ops_routes
from gateway.retry import RetryPolicy
from gateway.services import (
    ADMISSIONS,
    BACKGROUND,
    BODY_LIMITS,
    CLOCK,
    CREDENTIALS,
    IDENTITIES,
    LIFECYCLE,
    METRICS,
    TRACING,
    UPSTREAM,
    BodyLimits,
    Lifecycle,
)
from gateway.startup import Startup, startup_for
from gateway.targets import V1_METHODS
from gateway.ticket import TicketServices
from gateway.upstream import Upstream, UpstreamSettings, open_session

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = get_logger("gateway.app")
SETTLEMENT_DRAIN_SECONDS = 5.0
"""How long shutdown waits for settlements still running in the background."""
EXACT_COUNTER = web.AppKey("exact_counter", ExactCounter)
"""The API's own token counter, on the upstream session (for `estimate: count_tokens`)."""


def upstream_settings(settings: Settings) -> UpstreamSettings:
    """The upstream section of the settings."""
    return UpstreamSettings(
        base_url=settings.upstream_base,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        connection_limit=settings.upstream_connection_limit,
        retry=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            client_attempts=settings.retry_client_attempts,
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


def upstream_ctx(cfg: UpstreamSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """Open the pooled upstream session (the retry loop and the exact counter share it)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        session = open_session(cfg)
        app[UPSTREAM] = Upstream(session, cfg, app[CLOCK], random.Random(cfg.jitter_seed))
        app[EXACT_COUNTER] = ExactCounter(session, cfg.base_url, credentials=app[CREDENTIALS])
        try:
            yield
        finally:
            await session.close()

    return ctx


def tracing_ctx(
    switch: TracingSwitch, upstream_url: str, tracing: Tracing | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Publish the tracer (`tracing`, or one exporting to `switch.endpoint`); at cleanup,
    export the spans still buffered and shut it down."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        opened = tracing
        if opened is None:
            from gateway.tracing import open_tracing  # noqa: PLC0415 (optional extra: only when on)

            assert switch.endpoint is not None
            opened = open_tracing(switch.endpoint, upstream_url)
            log.info("tracing_enabled", endpoint=mask_url(switch.endpoint), sampler=switch.sampler)
        app[TRACING] = opened
        try:
            yield
        finally:
            await opened.aclose()

    return ctx


def open_backend(settings: Settings, clock: Clock, metrics: GatewayMetrics) -> LimitBackend:
    """The limiter's backend: Redis when `GATEWAY_REDIS_URL` is set, else in process."""
    if settings.redis_url is None:
        return MemoryBackend(clock)
    # Imported only here: redis-py (and the OpenTelemetry it loads) is 9 MB of an idle
    # gateway's RSS that a gateway without Redis never uses (#18).
    from gateway.limits.redis_backend import RedisBackend  # noqa: PLC0415

    return RedisBackend.from_url(
        settings.redis_url.get_secret_value(),
        cluster=settings.redis_cluster,
        kind=settings.redis_client,
        timeout=settings.redis_timeout_seconds,
        on_backend_call=metrics.backend_call,
    )


def limiter_ctx(startup: Startup) -> Callable[[web.Application], AsyncIterator[None]]:
    """Open the limiter's backend for the app and publish its admissions (`NoLimits` when
    nothing is limited)."""
    settings = startup.settings

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if startup.limits is None:
            log.info("limits_disabled", reason=f"{startup.pass_through_reason}: plain pass-through")
            app[ADMISSIONS] = NoLimits()
            yield
            return
        clock, metrics, config = app[CLOCK], app[METRICS], startup.limits
        backend = open_backend(settings, clock, metrics)
        shared = settings.redis_url is not None  # a Redis backend: a fleet to share with
        limiter = Limiter(
            backend,
            config,
            clock,
            on_backend_call=metrics.backend_call,
            learn_limits=settings.learn_limits,
            shared=shared,
            share=startup.limit_share,
        )
        app[ADMISSIONS] = LimitedAdmissions(
            TicketServices(limiter, app[EXACT_COUNTER], clock, metrics, app[BACKGROUND])
        )
        _watch(metrics, limiter, config)
        syncing: asyncio.Task[None] | None = None
        if shared:  # in process there is no fleet to share with
            app[READINESS_CHECKS]["redis"] = Dependency(
                limiter.probe,
                required=config.redis_failure == "fail_closed",
                degraded_means="admitting on this instance's share of each limit (fail_open)",
            )
            sync = LearningSync(
                limiter.learning,
                backend,
                clock,
                on_backend_call=metrics.backend_call,
                organizations=limiter.organizations,
                ledger=limiter.ledger,
            )
            syncing = asyncio.get_running_loop().create_task(sync.run())
        log.info(
            "limits_enabled",
            backend="redis" if shared else "memory",
            groups=[group.name for group in config.groups],
            learn_limits=settings.learn_limits,
            limit_share=startup.limit_share,
        )
        try:
            yield
        finally:
            await app[BACKGROUND].drain(SETTLEMENT_DRAIN_SECONDS)
            if syncing is not None:
                syncing.cancel()
                await asyncio.gather(syncing, return_exceptions=True)
            await backend.aclose()

    return ctx


def _watch(metrics: GatewayMetrics, limiter: Limiter, config: LimitsConfig) -> None:
    """Let the metrics read the limiter's state at scrape time."""
    metrics.limits_configured(config.configured_limits())
    metrics.watch_learning(limiter.learning.snapshot)
    metrics.watch_limiter(
        lambda: {(g, d.value): ratio for (g, d), ratio in limiter.bucket_fill().items()},
        lambda: limiter.breaker_open,
        lambda: limiter.degraded,
    )


def create_app(
    settings: Settings,
    *,
    startup: Startup | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    tracing: Tracing | None = None,
) -> web.Application:
    """Build the gateway application from validated settings (`startup`: what `prepare()`
    made of them; without it, they are validated here, raising `ConfigError`). `tracing`
    traces every `/v1` request whatever the `OTEL_*` variables say (tests)."""
    if startup is None:
        startup = startup_for(settings)
    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=settings.max_upload_bytes,
        handler_args={"max_field_size": 65536},
    )
    app[CLOCK] = clock or SystemClock()
    app[METRICS] = GatewayMetrics(registry)
    app[BODY_LIMITS] = BodyLimits(
        buffered=settings.max_body_bytes,
        streamed=settings.max_upload_bytes,
        stall_seconds=settings.client_body_timeout_seconds,
    )
    app[CREDENTIALS] = CredentialPolicy()
    app[IDENTITIES] = startup.identities
    app[LIFECYCLE] = Lifecycle()
    app[BACKGROUND] = Background()
    app[READINESS_CHECKS] = {}
    if tracing is not None or startup.tracing.endpoint is not None:
        app.cleanup_ctx.append(tracing_ctx(startup.tracing, settings.upstream_base, tracing))
    app.cleanup_ctx.append(upstream_ctx(upstream_settings(settings)))
    app.cleanup_ctx.append(limiter_ctx(startup))
    add_ops_routes(app)
    add_admin_routes(app, settings)
    for method in V1_METHODS:
        app.router.add_route(method, "/v1/{tail:.*}", handle_v1)
    return app
