"""`serve()`: run the app on its port until SIGTERM/SIGINT, then drain.

SIGHUP reloads the limits file (`admin.reload`), as `POST /gateway/v1/reload` does.

The drain: `/readyz` fails at once (load balancers stop sending), the listener stays open for
`GATEWAY_SHUTDOWN_DRAIN_SECONDS`, then closes; in-flight requests and open streams get
`GATEWAY_SHUTDOWN_GRACE_SECONDS` to finish, and the cleanup contexts close what `app.py`
opened.

Client connections are bounded (`connections.py`): each request's head by
`GATEWAY_CLIENT_HEADER_TIMEOUT_SECONDS`, idle keep-alive by
`GATEWAY_KEEPALIVE_TIMEOUT_SECONDS`, their number by `GATEWAY_MAX_CONNECTIONS`, which
`serve()` fits to the process's file-descriptor limit (raising the soft limit first).

A worker of a supervisor (`supervisor.py`, `GATEWAY_WORKERS` above 1) listens with
SO_REUSEPORT beside the other workers, says which worker and process it is in its
`listening` line, and also stops when the supervisor is gone. Every bound above is then per
worker.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from typing import Any

from aiohttp import web

from gateway.admin import reload
from gateway.config import ConfigError, Settings
from gateway.connections import ClientConnections, ConnectionLimits, EdgeSite, descriptor_budget
from gateway.gc_tuning import tune_collector
from gateway.logs import get_logger
from gateway.services import CLOCK, LIFECYCLE, METRICS
from gateway.supervisor import stop_with_supervisor

log = get_logger("gateway.server")
LISTEN_BACKLOG = 1024


async def serve(settings: Settings, app: web.Application, *, worker: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain: /readyz fails, in-flight work finishes.
    `worker`: this process is that worker of a supervisor's (shares the port)."""
    limits = connection_limits(settings, _fit_descriptors(settings.max_connections))
    runner, site = await listen(settings, app, limits, reuse_port=worker is not None)
    tune_collector()  # start-up is over: what it allocated stays for good
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_on_signal, app)
    which: dict[str, Any] = {}
    if worker is not None:
        stop_with_supervisor(loop, stop.set)
        which = {"worker": worker, "pid": os.getpid()}
    log.info(
        "listening",
        host=settings.host,
        port=site.port,
        upstream=settings.upstream_shown,
        max_connections=limits.max_connections,
        **which,
    )
    try:
        await stop.wait()
        log.info("shutting_down", grace_seconds=settings.shutdown_grace_seconds)
        app[LIFECYCLE].accepting = False
        await app[CLOCK].sleep(settings.shutdown_drain_seconds)
    finally:
        await runner.cleanup()
        log.info("stopped")


def reload_on_signal(app: web.Application) -> None:
    """SIGHUP: reload the limits file; a bad one is logged and the old one stays in force."""
    try:
        reload(app)
    except ConfigError as exc:
        log.warning("limits.reload_refused", error=str(exc), signal="SIGHUP")


def connection_limits(settings: Settings, max_connections: int | None = None) -> ConnectionLimits:
    """The client-connection bounds of `settings` (`max_connections` overrides the cap)."""
    return ConnectionLimits(
        header_timeout=settings.client_header_timeout_seconds,
        max_connections=max_connections or settings.max_connections,
    )


async def listen(
    settings: Settings,
    app: web.Application,
    limits: ConnectionLimits | None = None,
    *,
    reuse_port: bool = False,
) -> tuple[web.AppRunner, EdgeSite]:
    """Start the app and listen on `settings.host:port` with bounded client connections
    (`limits`: from `settings` when None; `reuse_port`: beside other workers); the caller
    cleans the runner up."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=settings.shutdown_grace_seconds,
        access_log=None,
        keepalive_timeout=settings.keepalive_timeout_seconds,
    )
    await runner.setup()
    connections = ClientConnections(limits or connection_limits(settings), app[METRICS], app[CLOCK])
    site = EdgeSite(
        runner,
        connections,
        settings.host,
        settings.port,
        backlog=LISTEN_BACKLOG,
        reuse_port=reuse_port,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site


def _fit_descriptors(wanted: int) -> int:
    """The connection cap the file-descriptor limit allows, raising the soft limit if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap, new_soft = descriptor_budget(wanted, soft, hard)
    if new_soft != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    if cap < wanted:
        log.warning(
            "max_connections_lowered",
            configured=wanted,
            allowed=cap,
            reason=f"RLIMIT_NOFILE is {new_soft} (hard {hard}); each connection may hold 2",
        )
    return cap
