"""The default scenario: what each hop costs (direct, passthrough, gateway[, gateway+redis]).

Per target: req/s at concurrency 16 with the server's CPU time, latency at concurrency 1,
stream TTFB, then (restarted against a slow-streaming mock) RSS per held-open stream.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import ClientSession

from bench.load import (
    LoopResult,
    StreamHolder,
    client_session,
    closed_loop,
    ms,
    percentile,
    stream_ttfb,
)
from bench.procs import Child, CpuUse, NotReadyError, cpu_use, rss_kb, sample_cpu
from bench.settings import BenchSettings
from bench.targets import Launcher, Placement

LATENCY_WARMUP = 20
MAX_SEQUENTIAL_SECONDS = 120.0  # bound on the concurrency-1 loops


@dataclass(slots=True)
class ProxyRow:
    """One target's numbers; None where not measured. Times in ms, memory in KB."""

    target: str
    skipped: str | None = None
    rps: float | None = None
    server_cpu_pct: float | None = None
    load_cpu_pct: float | None = None  # harness + mock, on the load CPU
    other_cpu_pct: float | None = None  # everything else on the machine
    latency_other_cpu_pct: float | None = None  # the same, during the concurrency-1 loops
    cpu_ms_per_req: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ttfb_p50_ms: float | None = None
    rss_before_kb: int | None = None
    rss_during_kb: int | None = None
    streams_open: int | None = None
    streams_completed: int | None = None
    rss_per_stream_kb: float | None = None
    failures: dict[str, int] = field(default_factory=dict)


class ProxyScenario:
    """Runs the default scenario with one fast and one slow-streaming mock upstream."""

    def __init__(self, launcher: Launcher, settings: BenchSettings, placement: Placement) -> None:
        self.launcher = launcher
        self.settings = settings
        self.placement = placement
        self._redis: Child | None = None

    async def run(self) -> list[ProxyRow]:
        s = self.settings
        fast = await self.launcher.mock(self.placement, deltas=s.stream_deltas)
        slow = await self.launcher.mock(
            self.placement, chunk_delay=s.stream_chunk_delay, deltas=s.stream_deltas
        )
        rows = []
        try:
            for target in s.targets:
                rows.append(await self._measure(target, fast, slow))
        finally:
            for child in (fast, slow, self._redis):
                if child is not None:
                    self.launcher.procs.stop(child)
        return rows

    async def _measure(self, target: str, fast: Child, slow: Child) -> ProxyRow:
        print(f"[bench] proxy scenario: {target}", file=sys.stderr)
        row = ProxyRow(target)
        try:
            await self._fast_phase(row, fast)
            await self._streams_phase(row, slow)
        except NotReadyError as exc:
            row.skipped = str(exc).splitlines()[0]
            print(f"[bench] {target} skipped: {exc}", file=sys.stderr)
        return row

    @asynccontextmanager
    async def _server(self, target: str, upstream: Child) -> AsyncIterator[Child]:
        """The server under test for `target`, stopped on exit ("direct" is the mock itself)."""
        if target == "direct":
            yield upstream
            return
        launcher = self.launcher
        if target == "passthrough":
            child = await launcher.passthrough(self.placement, upstream)
        elif target == "gateway":
            child = await launcher.gateway(self.placement, upstream)
        elif target == "gateway+redis":
            if self._redis is None:
                self._redis = await launcher.redis(self.placement.load)
            url = f"redis://127.0.0.1:{self._redis.port}/0"
            limits = launcher.limits_file()
            child = await launcher.gateway(
                self.placement, upstream, redis_url=url, limits_file=limits
            )
        else:
            raise ValueError(f"unknown target {target!r}")
        try:
            yield child
        finally:
            launcher.procs.stop(child)

    async def _fast_phase(self, row: ProxyRow, upstream: Child) -> None:
        async with self._server(row.target, upstream) as server, client_session() as session:
            load_pids = [os.getpid()] + ([upstream.pid] if server is not upstream else [])
            await self._throughput(row, server, session, load_pids)
            await self._latency(row, server, session, load_pids)

    async def _throughput(
        self, row: ProxyRow, server: Child, session: ClientSession, load_pids: list[int]
    ) -> None:
        """req/s and CPU at concurrency 16: the quietest of `windows` sub-windows."""
        s = self.settings
        urls = [server.url]
        c = s.concurrency
        await closed_loop(
            session, urls, concurrency=c, duration=s.warmup, max_requests=s.max_requests
        )
        best: tuple[CpuUse, LoopResult] | None = None
        for _ in range(s.windows):
            before = sample_cpu(server.pid, load_pids)
            loop = await closed_loop(
                session,
                urls,
                concurrency=c,
                duration=s.duration / s.windows,
                max_requests=s.max_requests,
            )
            use = cpu_use(before, sample_cpu(server.pid, load_pids))
            for kind, count in loop.failures.items():
                row.failures[kind] = row.failures.get(kind, 0) + count
            if best is None or (use.other_pct, -loop.rps) < (best[0].other_pct, -best[1].rps):
                best = (use, loop)
        if best is None:  # windows == 0
            return
        use, loop = best
        row.rps = loop.rps
        row.server_cpu_pct, row.load_cpu_pct = use.server_pct, use.load_pct
        row.other_cpu_pct = use.other_pct
        row.cpu_ms_per_req = 1000 * use.server_s / loop.requests if loop.requests else None

    async def _latency(
        self, row: ProxyRow, server: Child, session: ClientSession, load_pids: list[int]
    ) -> None:
        """Latency at concurrency 1 and stream TTFB, sequential."""
        s = self.settings
        urls = [server.url]
        await closed_loop(session, urls, concurrency=1, duration=10, max_requests=LATENCY_WARMUP)
        before = sample_cpu(server.pid, load_pids)
        seq = await closed_loop(
            session,
            urls,
            concurrency=1,
            duration=MAX_SEQUENTIAL_SECONDS,
            max_requests=s.latency_samples,
        )
        ttfb = await stream_ttfb(session, server.url, s.ttfb_samples)
        row.latency_other_cpu_pct = cpu_use(before, sample_cpu(server.pid, load_pids)).other_pct
        row.p50_ms = ms(percentile(seq.latencies, 50))
        row.p99_ms = ms(percentile(seq.latencies, 99))
        row.ttfb_p50_ms = ms(percentile(ttfb.latencies, 50))
        for kind, count in (seq.failures + ttfb.failures).items():
            row.failures[kind] = row.failures.get(kind, 0) + count

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
            for kind, count in holder.failures.items():
                row.failures[f"stream {kind}"] = count
