"""`serve()`: run the app on its port until SIGTERM/SIGINT, then drain.

The drain: `/readyz` fails at once (load balancers stop sending), the listener stays open for
`GATEWAY_SHUTDOWN_DRAIN_SECONDS`, then closes; in-flight requests and open streams get
`GATEWAY_SHUTDOWN_GRACE_SECONDS` to finish, and the cleanup contexts close what `app.py`
opened.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from gateway.config import Settings
from gateway.logs import get_logger
from gateway.services import CLOCK, LIFECYCLE

log = get_logger("gateway.server")


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
        app[LIFECYCLE].accepting = False
        await app[CLOCK].sleep(settings.shutdown_drain_seconds)
    finally:
        await runner.cleanup()
        log.info("stopped")


def _bound_port(site: web.TCPSite, configured: int) -> int:
    server = site._server  # the asyncio server; aiohttp exposes no public accessor
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else configured
