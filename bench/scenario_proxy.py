"""The default scenario: what each hop costs (direct, passthrough, gateway[+memory, +redis]).

Per target: req/s at concurrency 16 with the server's CPU time, latency at concurrency 1,
stream TTFB, then (restarted against a slow-streaming mock) RSS per held-open stream.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
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
from bench.procs import Child, NotReadyError, rss_kb
from bench.settings import BenchSettings
from bench.targets import Launcher, Placement
from bench.window import CHUNK_SECONDS, quiet_samples, quietest_window

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


Groups = Mapping[str, Sequence[int]]


def _add(into: dict[str, int], more: Mapping[str, int]) -> None:
    for kind, count in more.items():
        into[kind] = into.get(kind, 0) + count


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
        elif target == "gateway+memory":  # the never-hit limits on the in-process backend
            limits = launcher.limits_file()
            child = await launcher.gateway(self.placement, upstream, limits_file=limits)
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
            load = [os.getpid()] + ([upstream.pid] if server is not upstream else [])
            groups = {"server": [server.pid], "load": load}
            await self._throughput(row, server, session, groups)
            await self._latency(row, server, session, groups)

    async def _throughput(
        self, row: ProxyRow, server: Child, session: ClientSession, groups: Groups
    ) -> None:
        """req/s and CPU at concurrency 16, from the quietest window."""
        s = self.settings
        urls = [server.url]
        c = s.concurrency
        await closed_loop(
            session, urls, concurrency=c, duration=s.warmup, max_requests=s.max_requests
        )
        window = await quietest_window(
            session,
            urls,
            groups,
            concurrency=c,
            windows=s.windows,
            extra=s.extra_windows,
            duration=s.duration,
            max_requests=s.max_requests,
        )
        use, done = window.use, window.loop.requests
        row.rps = window.loop.rps
        row.server_cpu_pct, row.load_cpu_pct = use.pct("server"), use.pct("load")
        row.other_cpu_pct = use.other_pct
        row.cpu_ms_per_req = 1000 * use.seconds["server"] / done if done else None
        _add(row.failures, window.failures)

    async def _latency(
        self, row: ProxyRow, server: Child, session: ClientSession, groups: Groups
    ) -> None:
        """Latency at concurrency 1 and stream TTFB, sequential, from quiet chunks."""
        s = self.settings
        urls = [server.url]
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
