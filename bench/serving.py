"""Run a bench aiohttp app as its own process: uvloop if importable, raised fd limit, clean stop.

Shared by `bench.mock_upstream` and `bench.passthrough`. The server stops on SIGTERM/SIGINT
and also when its parent (the harness) goes away, so a killed harness leaves no orphan.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from collections.abc import Coroutine
from importlib import metadata
from typing import Any

from aiohttp import web

PARENT_POLL_SECONDS = 1.0
BACKLOG = 4096  # the open-streams phase connects ~1,000 clients at once


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def uvloop_version() -> str | None:
    """The uvloop version if it is importable, else None."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return None
    return metadata.version("uvloop")


def run_main(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` on uvloop when importable (as the gateway does), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


async def _parent_gone(parent: int) -> None:
    while True:
        await asyncio.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            return


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve `app` on host:port until SIGTERM/SIGINT or until the parent process exits."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_parent_gone(os.getppid()))
    watcher.add_done_callback(lambda _: stop.set())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        await runner.cleanup()
