"""`Supervisor`: run GATEWAY_WORKERS gateway processes on one port and stop them together.

With `GATEWAY_WORKERS` (or `serve --workers`) above 1, `claude-gateway serve` becomes this
small parent. It starts N workers, each `python -m gateway serve --workers N --worker I`: a
whole gateway with its own event loop and its own app, listening with SO_REUSEPORT, so the
kernel spreads new connections over them (Linux by a hash of each connection's addresses).
With `GATEWAY_REDIS_URL` they share the limits in Redis exactly as separate instances do.

**Why subprocesses re-running the CLI, not `multiprocessing`.** A worker is then exactly
what `claude-gateway serve` runs: it reads and validates its own configuration (the
supervisor passes only the worker count and the worker's number), so nothing is pickled (not
the settings with their secrets, not the event-loop factory), no parent `__main__` is
re-imported the way the "spawn" and "forkserver" contexts do (fragile under a console-script
wrapper), no resource-tracker process is left behind by a crash, and "fork" (unsafe in a
process with threads) never runs. The price is one interpreter start per worker, once.

**Signals.** Workers run in their own process group, so a terminal's Ctrl-C reaches the
supervisor alone; it forwards SIGTERM and SIGINT to every worker (`Supervisor.stop`), each
drains as a lone `serve` does, and the supervisor exits 0 once all stopped cleanly. A worker
that exits before any signal is a failure: the supervisor stops the others and exits 1.
SIGHUP (reload the limits file) is forwarded to every worker too, and stops nothing.
**Orphans.** A worker's stdin is a pipe from the supervisor that nothing writes: it reads
end-of-file when the supervisor is gone, however it died (SIGKILL, OOM killer), and the worker
then drains and exits too (`stop_with_supervisor`), so no orphan keeps serving the port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

from gateway.logs import get_logger

log = get_logger("gateway.supervisor")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELAYED_SIGNALS = (signal.SIGHUP,)
"""Passed on to every worker, which handles it itself (SIGHUP: reload the limits file)."""

WorkerCommand = Callable[[int, int], Sequence[str]]
"""(worker number, worker count) -> the command line that runs that worker."""


def worker_command(index: int, count: int) -> list[str]:
    """`python -m gateway serve --workers COUNT --worker INDEX`, with this interpreter."""
    return [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--workers",
        str(count),
        "--worker",
        str(index),
    ]


class Supervisor:
    """`count` worker processes, started together, stopped together, failed together."""

    def __init__(self, count: int, command: WorkerCommand = worker_command) -> None:
        self._count = count
        self._command = command
        self._workers: list[asyncio.subprocess.Process] = []
        self._stopping: int | None = None
        """The signal forwarded to the workers, once one was: their exits are expected."""

    @property
    def pids(self) -> list[int]:
        """The workers started so far."""
        return [worker.pid for worker in self._workers]

    def relay(self, signum: int) -> None:
        """Pass `signum` on to every running worker, stopping nothing."""
        for worker in self._workers:
            if worker.returncode is None:
                worker.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward `signum` to every running worker; from now on their exits are expected."""
        self._stopping = signum
        self.relay(signum)

    async def run(self) -> bool:
        """Start the workers and wait until every one has exited: True when each stopped
        cleanly after `stop` (exit code 0, or killed by the forwarded signal before it could
        handle it), False when one exited on its own or failed to drain."""
        try:
            for index in range(self._count):
                if self._stopping is not None:
                    break
                worker = await asyncio.create_subprocess_exec(
                    *self._command(index, self._count), stdin=subprocess.PIPE, process_group=0
                )
                self._workers.append(worker)
                log.info("worker_started", worker=index, pid=worker.pid)
                if self._stopping is not None:  # stopped while this one was starting
                    worker.send_signal(self._stopping)
            return await self._wait()
        finally:
            for worker in self._workers:
                if worker.returncode is None:  # only on an error or cancellation
                    worker.send_signal(signal.SIGTERM)

    async def _wait(self) -> bool:
        """Reap every worker, logging each exit; the first unexpected one stops the rest."""
        clean = True
        exits = {asyncio.ensure_future(worker.wait()): i for i, worker in enumerate(self._workers)}
        pending = set(exits)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for exited in done:
                index = exits[exited]
                code = exited.result()
                worker = self._workers[index]
                if worker.stdin is not None:
                    worker.stdin.close()  # its reader has exited
                pid = worker.pid
                if self._stopping is not None and code in (0, -self._stopping):
                    log.info("worker_stopped", worker=index, pid=pid, exit_code=code)
                    continue
                clean = False
                log.error("worker_stopped", worker=index, pid=pid, exit_code=code, expected=False)
                if self._stopping is None:
                    self.stop(signal.SIGTERM)
        return clean


async def supervise(count: int, command: WorkerCommand = worker_command) -> bool:
    """Run `count` workers until SIGTERM or SIGINT (forwarded to them) or a worker's
    failure, relaying SIGHUP; True when all stopped cleanly."""
    supervisor = Supervisor(count, command)
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, supervisor.stop, signum)
    for signum in RELAYED_SIGNALS:
        loop.add_signal_handler(signum, supervisor.relay, signum)
    try:
        return await supervisor.run()
    finally:
        for signum in (*STOP_SIGNALS, *RELAYED_SIGNALS):
            loop.remove_signal_handler(signum)


def stop_with_supervisor(
    loop: asyncio.AbstractEventLoop, stop: Callable[[], None], pipe: int = 0
) -> None:
    """Call `stop` once `pipe` (a worker's stdin: the supervisor's pipe, never written to)
    reaches its end, which happens only when the supervisor has exited."""

    def readable() -> None:
        try:
            if os.read(pipe, 4096):
                return  # nothing is ever written; ignore it
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(pipe)
        log.warning("supervisor_gone", action="draining and exiting")
        stop()

    loop.add_reader(pipe, readable)
