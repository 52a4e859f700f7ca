"""Child processes for the bench: start pinned, wait until ready, sample /proc, always stop.

Every process goes through a `Processes` registry; `Processes.stop_all()` runs from a
`finally` in `bench.__main__`, so Ctrl-C, SIGTERM or a crash still ends everything started.
Each child gets its own session (process group), so stopping one also ends its children.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def compile_gateway(tree: Path = ROOT) -> None:
    """Write the bytecode of `tree`'s `gateway` package before a bench starts it, as pip and
    the image do at install (`make install` does the same for the venv). A process that
    compiles its modules from source, as it must under PYTHONDONTWRITEBYTECODE=1 without
    .pyc files, keeps the compiler's memory: idle RSS would not be what users run (the venv
    uncompiled cost 15 MB, the package 1 MB, #18). Up-to-date files are only stat()ed."""
    compileall.compile_dir(tree / "gateway", quiet=1)


class NotReadyError(RuntimeError):
    """A child did not become ready in time (or exited); the message says why."""


@dataclass(slots=True)
class Child:
    """One started process, its log file and the port it serves."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class Processes:
    """Registry of started children: start pinned, stop one, stop all."""

    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-")))
    children: list[Child] = field(default_factory=list)
    all_cpus: frozenset[int] = field(default_factory=lambda: frozenset(os.sched_getaffinity(0)))

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        *,
        cpus: Collection[int] | None,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
        inherit_env: bool = True,
    ) -> Child:
        """Start `argv` in its own process group, on `cpus` (None: every allowed CPU), in
        `cwd` (a `python -m` child imports the packages of that tree first). `env` adds to
        this environment, or with `inherit_env=False` is the whole of it (a server from
        another venv must not see this one's VIRTUAL_ENV or PYTHONPATH)."""
        allowed = sorted(self.all_cpus if cpus is None else cpus)
        prefix = ["taskset", "-c", ",".join(map(str, allowed))] if shutil.which("taskset") else []
        log = self.logdir / f"{name}-{port}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [*prefix, *argv],
                cwd=cwd,
                env={**(os.environ if inherit_env else {}), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not prefix:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(popen.pid, allowed)
        child = Child(name, popen, log, port)
        self.children.append(child)
        return child

    def start_python(
        self,
        name: str,
        module_args: Sequence[str],
        port: int,
        *,
        cpus: Collection[int] | None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start `python -m ...` with this interpreter (the project venv's)."""
        return self.start(name, [sys.executable, "-m", *module_args], port, cpus=cpus, env=env)

    def stop(self, child: Child) -> None:
        """SIGTERM the child's process group, then SIGKILL after a grace period.

        The leader is reaped only after the group has been signalled: until then its pid
        (the group's id) cannot be reused, so the signals reach only what we started.
        """
        if child in self.children:
            self.children.remove(child)
        popen = child.popen
        if popen.returncode is None:  # not reaped yet: the group id is still ours
            _signal_group(popen, signal.SIGTERM)
            if not _exited(popen, STOP_GRACE_SECONDS):
                _signal_group(popen, signal.SIGKILL)
                _exited(popen, STOP_GRACE_SECONDS)
            _signal_group(popen, signal.SIGKILL)  # stragglers the child left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(STOP_GRACE_SECONDS)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child)


def _exited(popen: subprocess.Popen[bytes], within: float) -> bool:
    """Wait for the child to exit without reaping it (WNOWAIT); False on timeout."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG):
                return True
        except ChildProcessError:
            return True
        time.sleep(0.02)
    return False


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)  # the group we created with start_new_session


async def wait_tcp(child: Child, within: float = 10.0) -> None:
    """Poll a TCP connect to the child's port until it accepts, bounded by `within`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        _raise_if_exited(child)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", child.port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise NotReadyError(f"{child.name} did not accept TCP within {within:.0f} s")


async def wait_http(child: Child, path: str = "/healthz", within: float = 10.0) -> None:
    """Poll GET `path` until it answers 200, bounded by `within`."""
    deadline = time.monotonic() + within
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            _raise_if_exited(child)
            try:
                async with session.get(child.url + path) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.1)
    raise NotReadyError(f"{child.name}: GET {path} not 200 within {within:.0f} s ({last})")


async def wait_logged(child: Child, text: str, count: int, within: float = 10.0) -> None:
    """Poll the child's log until `text` appears on `count` lines, bounded by `within`
    (a gateway with several workers: each logs its own `listening` line)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        _raise_if_exited(child)
        with contextlib.suppress(OSError):
            if logged_lines(child.log, text) >= count:
                return
        await asyncio.sleep(0.05)
    raise NotReadyError(
        f"{child.name}: {count} lines with {text!r} not logged within {within:.0f} s"
    )


def logged_lines(log: Path, text: str) -> int:
    """How many lines of `log` hold `text`."""
    with log.open("rb") as lines:
        return sum(1 for line in lines if text.encode() in line)


def _raise_if_exited(child: Child) -> None:
    code = child.popen.poll()
    if code is not None:
        raise NotReadyError(f"{child.name} exited with code {code}")


def _process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (the gateway could fork workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of `pid` (and its descendants), from /proc/<pid>/stat."""
    total = 0
    for member in _process_tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


async def wait_quiet(within: float, *, window: float = 3.0, threshold_pct: float = 15.0) -> bool:
    """Wait until the machine used at most `threshold_pct` of a core over `window` s.

    Bounded by `within` seconds; False if it never got that quiet.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        before = busy_seconds()
        await asyncio.sleep(window)
        if 100 * (busy_seconds() - before) / window <= threshold_pct:
            return True
    return False


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Wall clock, CPU seconds per named group of processes, and the whole machine's."""

    wall: float
    groups: dict[str, float]
    busy: float


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU used over a window: seconds per group; `other_pct` is everything else."""

    wall: float
    seconds: dict[str, float]
    other_pct: float  # % of one core used by processes in no group (other users, tests)

    def pct(self, group: str) -> float:
        """CPU of `group` as % of one core."""
        return 100 * self.seconds[group] / self.wall


def sample_cpu(groups: Mapping[str, Sequence[int]]) -> CpuSample:
    """Snapshot for `cpu_use`; the harness's own pid counts without its children."""
    harness = os.getpid()
    seconds = {
        name: sum(cpu_seconds(pid, tree=pid != harness) for pid in pids)
        for name, pids in groups.items()
    }
    return CpuSample(time.perf_counter(), seconds, busy_seconds())


def cpu_use(before: CpuSample, after: CpuSample) -> CpuUse:
    wall = after.wall - before.wall
    seconds = {name: after.groups[name] - before.groups[name] for name in before.groups}
    other = max(0.0, after.busy - before.busy - sum(seconds.values()))
    return CpuUse(wall, seconds, 100 * other / wall)


def rss_kb(pid: int) -> int:
    """Resident set size in KB of `pid` and its descendants, from /proc/<pid>/status."""
    total = 0
    for member in _process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total
