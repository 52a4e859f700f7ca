"""`Supervisor`: workers started together, the stop signal forwarded to each, one failure
failing the run; `stop_with_supervisor`: a worker stops once its supervisor is gone.

The workers here are tiny Python processes standing in for gateways (the real thing, on a
real port, is tests/e2e/test_workers.py); each writes a file once its signal handler is set,
and the tests wait for those files, never for time to pass.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.supervisor import Supervisor, WorkerCommand, stop_with_supervisor, worker_command

WORKER = """
import pathlib, signal, sys
home, index, on_term = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if on_term == "exit-now":
    sys.exit(3)
if on_term != "default":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(int(on_term)))
signal.signal(signal.SIGHUP, lambda *_: (home / f"hup-{index}").touch())
(home / f"ready-{index}").touch()
while True:
    signal.pause()
"""
"""A stand-in worker: `exit-now` exits 3 at once; `default` keeps SIGTERM's default
action (killed); a number exits with it on SIGTERM. SIGHUP leaves a `hup-N` file."""


def workers(home: Path, *behaviours: str) -> WorkerCommand:
    """A command running worker I as `behaviours[I]` says."""

    def command(index: int, count: int) -> list[str]:
        return [sys.executable, "-c", WORKER, str(home), str(index), behaviours[index]]

    return command


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Return once `condition` holds; fail after `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"not within {seconds:g} s")
        await asyncio.sleep(0.01)


def readied(home: Path) -> list[str]:
    """The workers that have set their signal handlers, by file name."""
    return sorted(path.name for path in home.glob("ready-*"))


async def ready(home: Path, count: int) -> None:
    """Wait until `count` workers have set their signal handlers."""
    await until(lambda: len(readied(home)) == count)


async def test_stop_reaches_every_worker_and_a_clean_exit_is_success(tmp_path: Path) -> None:
    """SIGTERM is forwarded to each worker; all exiting 0 makes the run a success."""
    supervisor = Supervisor(2, workers(tmp_path, "0", "0"))
    with capture_logs() as logs:
        running = asyncio.ensure_future(supervisor.run())
        await ready(tmp_path, 2)
        supervisor.stop(signal.SIGTERM)
        clean = await asyncio.wait_for(running, 10)
    assert True is clean
    assert [("worker_started", 0), ("worker_started", 1)] == sorted(
        (line["event"], line["worker"]) for line in logs if line["event"] == "worker_started"
    )
    assert [(0, 0), (1, 0)] == sorted(
        (line["worker"], line["exit_code"]) for line in logs if line["event"] == "worker_stopped"
    )


async def test_sighup_reaches_every_worker_and_stops_none(tmp_path: Path) -> None:
    """SIGHUP (reload the limits file) is relayed to each worker, which keeps running."""
    supervisor = Supervisor(2, workers(tmp_path, "0", "0"))
    running = asyncio.ensure_future(supervisor.run())
    await ready(tmp_path, 2)
    supervisor.relay(signal.SIGHUP)
    await until(lambda: len(list(tmp_path.glob("hup-*"))) == 2)
    still_running = not running.done()
    supervisor.stop(signal.SIGTERM)
    assert (True, True) == (still_running, await asyncio.wait_for(running, 10))


async def test_a_worker_exiting_on_its_own_stops_the_others_and_fails(tmp_path: Path) -> None:
    """A worker that exits before any signal fails the run, and the others are stopped."""
    supervisor = Supervisor(2, workers(tmp_path, "exit-now", "0"))
    with capture_logs() as logs:
        clean = await asyncio.wait_for(supervisor.run(), 10)
    stopped = {line["worker"]: line for line in logs if line["event"] == "worker_stopped"}
    assert False is clean
    assert (3, False, "error") == (
        stopped[0]["exit_code"],
        stopped[0]["expected"],
        stopped[0]["log_level"],
    )
    assert "info" == stopped[1]["log_level"]  # stopped: exit 0, or SIGTERM while starting


async def test_a_worker_killed_by_the_forwarded_signal_stopped_cleanly(tmp_path: Path) -> None:
    """A worker still starting (its handler not yet set) dies of the signal: that is a stop."""
    supervisor = Supervisor(1, workers(tmp_path, "default"))
    running = asyncio.ensure_future(supervisor.run())
    await ready(tmp_path, 1)
    supervisor.stop(signal.SIGTERM)
    assert True is await asyncio.wait_for(running, 10)


async def test_a_worker_failing_its_drain_fails_the_run(tmp_path: Path) -> None:
    """A worker that answers the stop with a non-zero exit makes the run a failure."""
    supervisor = Supervisor(2, workers(tmp_path, "0", "1"))
    running = asyncio.ensure_future(supervisor.run())
    await ready(tmp_path, 2)
    supervisor.stop(signal.SIGTERM)
    assert False is await asyncio.wait_for(running, 10)


async def test_a_stop_before_the_start_starts_nothing(tmp_path: Path) -> None:
    """Stopped before it ran, the supervisor starts no worker and reports a clean stop."""
    supervisor = Supervisor(2, workers(tmp_path, "0", "0"))
    supervisor.stop(signal.SIGTERM)
    assert (True, []) == (await supervisor.run(), supervisor.pids)


async def test_a_worker_stops_once_the_supervisor_pipe_closes() -> None:
    """Bytes on the pipe are ignored; its end (the supervisor exited) calls `stop` once."""
    read_end, write_end = os.pipe()
    stopped = asyncio.Event()
    calls: list[int] = []

    def stop() -> None:
        calls.append(1)
        stopped.set()

    try:
        stop_with_supervisor(asyncio.get_running_loop(), stop, read_end)
        os.write(write_end, b"x")
        await until(lambda: not select.select([read_end], [], [], 0)[0])  # read, ignored
        assert not stopped.is_set()
        os.close(write_end)
        await asyncio.wait_for(stopped.wait(), 5)
    finally:
        os.close(read_end)
    assert [1] == calls


def test_a_worker_runs_the_cli_with_its_number_and_the_count() -> None:
    """Worker 1 of 3 is `python -m gateway serve --workers 3 --worker 1`, this interpreter."""
    assert [sys.executable, "-m", "gateway", "serve", "--workers", "3", "--worker", "1"] == (
        worker_command(1, 3)
    )


@pytest.mark.parametrize("count", [1, 3])
async def test_every_worker_gets_its_own_number(tmp_path: Path, count: int) -> None:
    """Workers are numbered 0..count-1, each its own process."""
    supervisor = Supervisor(count, workers(tmp_path, *["0"] * count))
    running = asyncio.ensure_future(supervisor.run())
    await ready(tmp_path, count)
    supervisor.stop(signal.SIGTERM)
    await asyncio.wait_for(running, 10)
    assert (
        [f"ready-{index}" for index in range(count)],
        count,
    ) == (readied(tmp_path), len(set(supervisor.pids)))
