"""The default scenario: what each hop costs (direct, passthrough, gateway[+memory, +redis]).

Every target's server runs at once (pinned to the same CPU, idle until driven). req/s at
concurrency 16 is measured in rounds: each round drives every target in turn, in a rotated
order, so a target and the passthrough it is compared with always ran seconds apart. On a
shared VM whose speed drifts by 10-30% over minutes, one window per target made the "% of
passthrough" swing with the drift; the median of per-round ratios does not. Then per target:
latency at concurrency 1, stream TTFB, and (restarted against a slow-streaming mock) RSS per
held-open stream.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import ClientSession

from bench import litellm_proxy
from bench.load import (
    LoopResult,
    StreamHolder,
    client_session,
    closed_loop,
    ms,
    percentile,
    stream_ttfb,
)
from bench.procs import Child, CpuUse, NotReadyError, cpu_use, rss_kb, sample_cpu, wait_quiet
from bench.settings import DISTURBED_PCT, BenchSettings, split_target
from bench.targets import REDIS_TARGETS, Launcher, Placement, RedisKind
from bench.window import CHUNK_SECONDS, quiet_samples

LATENCY_WARMUP = 20
MAX_SEQUENTIAL_SECONDS = 120.0  # bound on the concurrency-1 loops


@dataclass(slots=True)
class ProxyRow:
    """One target's numbers; None where not measured. Times in ms, memory in KB."""

    target: str
    label: str | None = None  # the row's name in the report, when not the target's
    skipped: str | None = None
    rps: float | None = None
    server_cpu_pct: float | None = None
    load_cpu_pct: float | None = None  # harness + mock, on the load CPU
    other_cpu_pct: float | None = None  # everything else on the machine
    latency_other_cpu_pct: float | None = None  # the same, during the concurrency-1 loops
    cpu_ms_per_req: float | None = None
    pct_of_passthrough: float | None = None  # median over rounds of this / passthrough req/s
    round_rps: list[float] = field(default_factory=list)
    round_pct: list[float] = field(default_factory=list)  # per round, % of passthrough
    round_other_pct: list[float] = field(default_factory=list)  # per round, foreign CPU
    round_cpu_ms: list[float] = field(default_factory=list)  # per round, server CPU ms/req
    p50_ms: float | None = None
    p99_ms: float | None = None
    ttfb_p50_ms: float | None = None
    latency_count: int | None = None  # samples behind p50/p99 (fewer: the budget ran out)
    ttfb_count: int | None = None
    rss_before_kb: int | None = None
    rss_during_kb: int | None = None
    streams_open: int | None = None
    streams_completed: int | None = None
    rss_per_stream_kb: float | None = None
    log_lines: int | None = None  # lines in a gateway's log after the fast phase
    log_bytes: int | None = None
    rounds_redone: int = 0  # req/s rounds run again because other processes disturbed them
    failures: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what this row's server was given


Groups = Mapping[str, Sequence[int]]


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for kind, count in more.items():
        into[kind] = into.get(kind, 0) + count


def disturbance(runs: Iterable[tuple[CpuUse, LoopResult]]) -> float:
    """The most CPU (% of one core) other processes used in any window of a round."""
    return max((use.other_pct for use, _ in runs), default=0.0)


def log_size(child: Child) -> tuple[int, int]:
    """Lines and bytes in a child's log (its stdout and stderr): at `info`, one access line
    per request shows here; at `warning`, next to nothing."""
    lines = size = 0
    try:
        with child.log.open("rb") as log:
            for chunk in iter(lambda: log.read(1 << 20), b""):
                lines += chunk.count(b"\n")
                size += len(chunk)
    except OSError:
        pass
    return lines, size


async def _started(
    stack: AsyncExitStack, server: AbstractAsyncContextManager[Child], into: dict[str, Child],
    target: str,
) -> None:  # fmt: skip
    """Enter `server` on `stack` (stopped when the stack closes) and file it under `target`."""
    into[target] = await stack.enter_async_context(server)


def _summarise(
    row: ProxyRow,
    runs: Sequence[tuple[CpuUse, LoopResult]],
    floor: Sequence[tuple[CpuUse, LoopResult]] | None,
) -> None:
    """The median round's req/s and CPU; % of passthrough as the median per-round ratio."""
    if not runs:
        return
    row.round_rps = [loop.rps for _, loop in runs]
    row.round_other_pct = [use.other_pct for use, _ in runs]
    use = sorted(runs, key=lambda run: run[1].rps)[len(runs) // 2][0]
    row.rps = statistics.median(row.round_rps)
    row.server_cpu_pct, row.load_cpu_pct = use.pct("server"), use.pct("load")
    row.other_cpu_pct = use.other_pct
    per_request = [1000 * u.seconds["server"] / lp.requests for u, lp in runs if lp.requests]
    row.round_cpu_ms = per_request
    row.cpu_ms_per_req = statistics.median(per_request) if per_request else None
    if floor is not None and len(floor) == len(runs):
        row.round_pct = [
            100 * lp.rps / base.rps
            for (_, lp), (_, base) in zip(runs, floor, strict=True)
            if base.rps
        ]
        row.pct_of_passthrough = statistics.median(row.round_pct) if row.round_pct else None
    for _, lp in runs:
        _add(row.failures, lp.failures)


class ProxyScenario:
    """Runs the default scenario with one fast and one slow-streaming mock upstream."""

    def __init__(self, launcher: Launcher, settings: BenchSettings, placement: Placement) -> None:
        self.launcher = launcher
        self.settings = settings
        self.placement = placement
        self._redis: dict[RedisKind, Child] = {}

    async def run(self) -> list[ProxyRow]:
        s = self.settings
        fast = await self.launcher.mock(self.placement, deltas=s.stream_deltas)
        slow = await self.launcher.mock(
            self.placement, chunk_delay=s.stream_chunk_delay, deltas=s.stream_deltas
        )
        rows = {target: ProxyRow(target) for target in s.targets}
        if "litellm" in rows:
            rows["litellm"].label = litellm_proxy.row_label()
            rows["litellm"].notes.append(litellm_proxy.describe())
        try:
            await self._fast_phase(rows, fast)
            for row in rows.values():
                if row.skipped is None:
                    print(f"[bench] proxy scenario: {row.target} streams", file=sys.stderr)
                    await self._guarded(row, self._streams_phase(row, slow))
        finally:
            for child in (fast, slow, *self._redis.values()):
                self.launcher.procs.stop(child)
        return list(rows.values())

    @staticmethod
    async def _guarded(row: ProxyRow, phase: Awaitable[None]) -> None:
        """Run a phase; a server that does not come up marks the row skipped."""
        try:
            await phase
        except NotReadyError as exc:
            row.skipped = str(exc).splitlines()[0]
            print(f"[bench] {row.target} skipped: {exc}", file=sys.stderr)

    @asynccontextmanager
    async def _server(self, target: str, upstream: Child) -> AsyncIterator[Child]:
        """The server under test for `target`, stopped on exit ("direct" is the mock itself)."""
        if target == "direct":
            yield upstream
            return
        launcher = self.launcher
        target, tree = split_target(target)
        if target == "passthrough":
            child = await launcher.passthrough(self.placement, upstream)
        elif target == "gateway":
            child = await launcher.gateway(self.placement, upstream, tree=tree)
        elif target == "gateway+memory":  # the never-hit limits on the in-process backend
            limits = launcher.limits_file()
            child = await launcher.gateway(self.placement, upstream, limits_file=limits, tree=tree)
        elif target == "litellm":  # never-hit rpm/tpm counted in gateway+redis's redis-server
            redis = await self._redis_server("plain")
            child = await launcher.litellm(self.placement, upstream, redis.port)
        elif target in REDIS_TARGETS:  # never-hit limits in Redis, on that target's server
            spec = REDIS_TARGETS[target]
            redis = await self._redis_server(spec.server)
            url = launcher.redis_url(redis, spec.server)
            limits = launcher.limits_file()
            child = await launcher.gateway(
                self.placement,
                upstream,
                redis_url=url,
                limits_file=limits,
                env=spec.env,
                tree=tree,
            )
        else:
            raise ValueError(f"unknown target {target!r}")
        try:
            yield child
        finally:
            launcher.procs.stop(child)

    async def _redis_server(self, kind: RedisKind) -> Child:
        """The redis-server of `kind`, started on the load CPU the first time it is needed."""
        redis = self._redis.get(kind)
        if redis is None:
            redis = await self.launcher.redis(self.placement.load, kind=kind)
            self._redis[kind] = redis
        return redis

    async def _fast_phase(self, rows: Mapping[str, ProxyRow], upstream: Child) -> None:
        """Start every target against the fast mock; req/s in rounds, then latency each."""
        async with AsyncExitStack() as stack:
            servers: dict[str, Child] = {}
            for target, row in rows.items():
                print(f"[bench] proxy scenario: starting {target}", file=sys.stderr)
                starting = self._server(target, upstream)
                await self._guarded(row, _started(stack, starting, servers, target))
            session = await stack.enter_async_context(client_session())
            groups = {
                target: {
                    "server": [server.pid],
                    "load": [os.getpid()] + ([upstream.pid] if server is not upstream else []),
                }
                for target, server in servers.items()
            }
            await self._throughput(rows, servers, session, groups)
            for target, server in servers.items():
                print(f"[bench] proxy scenario: {target} latency", file=sys.stderr)
                await self._latency(rows[target], server, session, groups[target])
            for target, server in servers.items():
                if target.startswith("gateway") or target == "litellm":
                    rows[target].log_lines, rows[target].log_bytes = log_size(server)

    async def _throughput(
        self,
        rows: Mapping[str, ProxyRow],
        servers: Mapping[str, Child],
        session: ClientSession,
        groups: Mapping[str, Groups],
    ) -> None:
        """req/s and CPU at concurrency 16: `rounds` rounds, each target in turn."""
        s = self.settings
        runs: dict[str, list[tuple[CpuUse, LoopResult]]] = {target: [] for target in servers}
        order = list(servers)
        redos = 0
        for number in range(s.rounds):
            shift = number % len(order) if order else 0
            while True:
                print(
                    f"[bench] proxy scenario: req/s round {number + 1}/{s.rounds}", file=sys.stderr
                )
                measured = {
                    target: await self._window(servers[target], session, groups[target])
                    for target in order[shift:] + order[:shift]
                }
                other = disturbance(measured.values())
                if other <= DISTURBED_PCT or redos >= s.round_redos:
                    break
                redos += 1
                print(
                    f"[bench] round disturbed (other processes: {other:.0f}% of a core); "
                    f"waiting up to {s.quiet_wait:g} s for quiet, then again ({redos}/"
                    f"{s.round_redos} redos)",
                    file=sys.stderr,
                )
                await wait_quiet(s.quiet_wait)
            for target, run in measured.items():
                runs[target].append(run)
        floor = runs.get("passthrough")
        for target, series in runs.items():
            _summarise(rows[target], series, floor)
            rows[target].rounds_redone = redos

    async def _window(
        self, server: Child, session: ClientSession, groups: Groups
    ) -> tuple[CpuUse, LoopResult]:
        """A warm-up, then one timed closed loop with the CPU it used."""
        s = self.settings
        urls, c = [server.url], s.concurrency
        await closed_loop(
            session, urls, concurrency=c, duration=s.warmup, max_requests=s.max_requests
        )
        before = sample_cpu(groups)
        loop = await closed_loop(
            session,
            urls,
            concurrency=c,
            duration=s.duration / s.rounds,
            max_requests=s.max_requests,
        )
        return cpu_use(before, sample_cpu(groups)), loop

    async def _latency(
        self, row: ProxyRow, server: Child, session: ClientSession, groups: Groups
    ) -> None:
        """Latency at concurrency 1 and stream TTFB, sequential, from quiet chunks."""
        s = self.settings
        urls = [server.url]
        if s.quiet_wait > 0:
            await wait_quiet(s.quiet_wait)
        await closed_loop(session, urls, concurrency=1, duration=10, max_requests=LATENCY_WARMUP)

        async def sequential(remaining: int) -> LoopResult:
            return await closed_loop(
                session, urls, concurrency=1, duration=CHUNK_SECONDS, max_requests=remaining
            )

        async def streams(remaining: int) -> LoopResult:
            return await stream_ttfb(session, server.url, remaining, duration=CHUNK_SECONDS)

        budget = s.latency_budget
        seq = await quiet_samples(sequential, groups, samples=s.latency_samples, budget=budget)
        ttfb = await quiet_samples(streams, groups, samples=s.ttfb_samples, budget=budget / 2)
        row.latency_other_cpu_pct = max(seq.other_pct, ttfb.other_pct)
        row.p50_ms = ms(percentile(seq.latencies, 50))
        row.p99_ms = ms(percentile(seq.latencies, 99))
        row.ttfb_p50_ms = ms(percentile(ttfb.latencies, 50))
        row.latency_count, row.ttfb_count = len(seq.latencies), len(ttfb.latencies)
        _add(row.failures, seq.failures + ttfb.failures)

    async def _streams_phase(self, row: ProxyRow, upstream: Child) -> None:
        """Hold `streams` slow streams open; RSS delta / concurrently open streams."""
        s = self.settings
        timeout = s.stream_seconds * 2 + 60
        async with (
            self._server(row.target, upstream) as server,
            client_session(timeout=timeout) as session,
        ):
            await closed_loop(
                session, [server.url], concurrency=s.concurrency, duration=0.5, max_requests=5000
            )
            await asyncio.sleep(0.2)
            before = rss_kb(server.pid)
            async with StreamHolder(session, server.url, s.streams) as holder:
                await holder.wait_opened(within=s.stream_seconds)
                samples = [(rss_kb(server.pid), holder.open_now)]
                await asyncio.sleep(min(0.5, s.stream_seconds / 10))
                samples.append((rss_kb(server.pid), holder.open_now))
                during, open_now = max(samples)
                await holder.wait_done(within=s.stream_seconds + 15)
            row.rss_before_kb, row.rss_during_kb = before, during
            row.streams_open, row.streams_completed = open_now, holder.completed
            if open_now:
                row.rss_per_stream_kb = (during - before) / open_now
            _add(row.failures, {f"stream {kind}": n for kind, n in holder.failures.items()})
