"""`Background`: work a request starts but must not wait for, nor lose when it is cancelled.

A settlement that needs a backend round trip (a pull-down before the charge) runs here, not
in the request's task: a client closing its connection right after the last byte cancels
the request's task, and must not cancel, delay or mislabel what the limiter still has to
do. Tasks are held until done (asyncio keeps only weak references), a failure is logged,
and `drain()` lets the last ones finish at shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from gateway.logs import get_logger

log = get_logger("gateway.background")


class Background:
    """A set of fire-and-forget tasks that are never garbage-collected mid-flight."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run `work` on its own; a failure is logged with `name`, never raised."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), exc_info=task.exception())

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for the running tasks, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)
