"""`Background`: tasks held until done, failures logged never raised, a bounded drain."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from gateway.background import Background
from gateway.logs import configure_logging


def task_named(name: str) -> asyncio.Task[Any]:
    """The running task spawned under `name`."""
    (task,) = [task for task in asyncio.all_tasks() if task.get_name() == name]
    return task


async def test_a_spawned_task_runs_and_is_held_until_done() -> None:
    """A spawned task runs on its own, is held while it waits (asyncio keeps only weak
    references), and is let go once done."""
    background, release, done = Background(), asyncio.Event(), []

    async def settle() -> None:
        await release.wait()
        done.append("settled")

    background.spawn(settle(), name="settle")
    await asyncio.sleep(0)  # let it start and block on the event
    held = len(background)
    release.set()
    await task_named("settle")
    assert (1, ["settled"], 0) == (held, done, len(background))


async def test_a_failing_task_is_logged_and_never_raised() -> None:
    """A task that raises is logged as `background_task_failed` with its name and traceback;
    nothing reaches the spawner or the loop's exception handler."""
    logs = io.StringIO()
    configure_logging("info", "json", stream=logs)
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: loop_errors.append(context))
    background = Background()

    async def fail() -> None:
        raise RuntimeError("backend gone")

    background.spawn(fail(), name="settle-gw_1")
    await asyncio.wait({task_named("settle-gw_1")})
    (line,) = [json.loads(text) for text in logs.getvalue().splitlines()]
    assert ("background_task_failed", "settle-gw_1", "error", [], 0) == (
        line["event"],
        line["task"],
        line["level"],
        loop_errors,
        len(background),
    )
    assert "RuntimeError: backend gone" in line["exception"]


async def test_drain_waits_for_running_tasks() -> None:
    """`drain()` returns once the running tasks finish, well within its bound."""
    background, release, done = Background(), asyncio.Event(), []

    async def settle() -> None:
        await release.wait()
        done.append("settled")

    background.spawn(settle(), name="settle")
    draining = asyncio.get_running_loop().create_task(background.drain(60))
    await asyncio.sleep(0)  # drain is now waiting on the task
    waiting = not draining.done()
    release.set()
    await asyncio.wait_for(draining, timeout=5)
    assert (True, ["settled"], 0) == (waiting, done, len(background))


async def test_drain_cancels_what_is_left_after_the_bound() -> None:
    """A task still running when the bound passes is cancelled; one that finished is not."""
    background, release, ended = Background(), asyncio.Event(), []

    async def quick() -> None:
        await release.wait()
        ended.append("quick finished")

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            ended.append("stuck cancelled")
            raise

    background.spawn(quick(), name="quick")
    background.spawn(stuck(), name="stuck")
    release.set()
    await background.drain(0.05)
    assert (["quick finished", "stuck cancelled"], 0) == (ended, len(background))


async def test_drain_with_nothing_running_returns_at_once() -> None:
    """With no task running, `drain()` returns without waiting for its bound."""
    await asyncio.wait_for(Background().drain(3600), timeout=1)
