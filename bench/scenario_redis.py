"""`--scenario redis`: no limiter vs the in-process limiter vs the Redis backend, 1 vs 3 instances;
`--scenario workers`: one instance of 1 vs 2 worker processes (GATEWAY_WORKERS, one port).

Nothing is pinned here: with three gateways on two cores, pinning them to one core would
measure the core, not the backend. Load is spread round-robin over the instances at the
bench concurrency. Redis commands per request come from `INFO commandstats` deltas; the
admission latency at concurrency 1 from the first gateway's `gateway_limiter_backend_seconds`
histogram (operation `reserve`), scraped before and after a sequential run (not with several
workers: each scrape reaches one worker's own /metrics). Which worker served each request
comes from the access lines' `worker` field.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.load import client_session, closed_loop, ms, percentile
from bench.procs import Child, NotReadyError
from bench.settings import BenchSettings
from bench.targets import UNPINNED, Launcher, redis_commandstats
from bench.window import quietest_window

Config = tuple[str, int, int]
"""(backend, instances, workers per instance)."""
CONFIGS: Sequence[Config] = (
    ("no limits", 1, 1),
    ("no limits", 3, 1),
    ("memory", 1, 1),
    ("redis", 1, 1),
    ("redis", 3, 1),
)
"""`no limits`: no limits file, the limiter is off; `memory`: the never-hit limits file on
the in-process backend; `redis`: the same file on the Redis backend."""
WORKER_CONFIGS: Sequence[Config] = (
    ("no limits", 1, 1),
    ("no limits", 1, 2),
    ("redis", 1, 1),
    ("redis", 1, 2),
)
"""`--scenario workers`: one gateway of one, then of two worker processes on one port."""
ADMISSION_REQUESTS = 1_000
_BUCKET = re.compile(
    r'^gateway_limiter_backend_seconds_bucket\{le="([^"]+)",operation="reserve"\} (\S+)$', re.M
)


@dataclass(slots=True)
class RedisRow:
    """One backend x instance-count configuration; times in ms."""

    backend: str
    instances: int
    workers: int = 1
    skipped: str | None = None
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    other_cpu_pct: float | None = None
    gateway_cpu_pct: float | None = None  # % of one core, all instances and workers
    load_cpu_pct: float | None = None  # the harness and the mock
    gateway_cpu_ms_per_req: float | None = None
    redis_cpu_ms_per_req: float | None = None
    evalsha_per_req: float | None = None
    redis_cmds_per_req: float | None = None  # includes redis.call()s inside the scripts
    per_command: dict[str, float] = field(default_factory=dict)  # calls per request
    failures: dict[str, int] = field(default_factory=dict)
    admit_p50_ms: float | None = None  # backend reserve latency at concurrency 1
    admit_p99_ms: float | None = None
    served_by: dict[int, int] = field(default_factory=dict)  # worker -> requests it answered

    @property
    def name(self) -> str:
        """`redis x3`, `redis x1 (2 workers)`."""
        workers = f" ({self.workers} workers)" if self.workers > 1 else ""
        return f"{self.backend} x{self.instances}{workers}"


class RedisScenario:
    """Runs every (backend, instances, workers) configuration against one unpinned mock and
    Redis."""

    def __init__(
        self, launcher: Launcher, settings: BenchSettings, configs: Sequence[Config] = CONFIGS
    ) -> None:
        self.launcher = launcher
        self.settings = settings
        self.configs = configs

    async def run(self) -> list[RedisRow]:
        procs = self.launcher.procs
        mock = await self.launcher.mock(UNPINNED, deltas=self.settings.stream_deltas)
        redis = await self.launcher.redis(None)
        rows = []
        try:
            for backend, instances, workers in self.configs:
                row = RedisRow(backend, instances, workers)
                print(f"[bench] redis scenario: {row.name}", file=sys.stderr)
                try:
                    await self._measure(row, mock, redis)
                except NotReadyError as exc:
                    row.skipped = str(exc).splitlines()[0]
                    print(f"[bench] {row.name} skipped: {exc}", file=sys.stderr)
                rows.append(row)
        finally:
            procs.stop(redis)
            procs.stop(mock)
        return rows

    async def _gateways(self, row: RedisRow, mock: Child, redis: Child) -> list[Child]:
        launcher = self.launcher
        started: list[Child] = []
        env = {"GATEWAY_WORKERS": str(row.workers)}
        try:
            for _ in range(row.instances):
                if row.backend == "redis":
                    url = f"redis://127.0.0.1:{redis.port}/0"
                    limits = launcher.limits_file()
                    child = await launcher.gateway(
                        UNPINNED, mock, redis_url=url, limits_file=limits, env=env
                    )
                elif row.backend == "memory":
                    limits = launcher.limits_file()
                    child = await launcher.gateway(UNPINNED, mock, limits_file=limits, env=env)
                else:
                    child = await launcher.gateway(UNPINNED, mock, env=env)
                started.append(child)
        except BaseException:
            for child in started:
                launcher.procs.stop(child)
            raise
        return started

    async def _measure(self, row: RedisRow, mock: Child, redis: Child) -> None:
        s = self.settings
        gateways = await self._gateways(row, mock, redis)
        urls = [g.url for g in gateways]
        try:
            async with client_session() as session:
                await closed_loop(
                    session,
                    urls,
                    concurrency=s.concurrency,
                    duration=s.warmup,
                    max_requests=s.max_requests,
                )
                await asyncio.sleep(0.1)
                groups = {
                    "gateways": [g.pid for g in gateways],
                    "redis": [redis.pid],
                    "load": [os.getpid(), mock.pid],
                }
                stats_before = await redis_commandstats(redis.port)
                window = await quietest_window(
                    session,
                    urls,
                    groups,
                    concurrency=s.concurrency,
                    windows=s.windows,
                    extra=s.extra_windows,
                    duration=s.redis_duration,
                    max_requests=s.max_requests,
                )
                stats_after = await redis_commandstats(redis.port)
                if row.backend != "no limits" and row.workers == 1:
                    await self._admission_latency(row, session, gateways[0].url)
        finally:
            for child in gateways:
                self.launcher.procs.stop(child)
        if row.workers > 1:
            row.served_by = dict(sorted(served_by(gateways[0].log).items()))
        use, loop, done = window.use, window.loop, window.loop.requests
        row.rps = loop.rps
        row.p50_ms = ms(percentile(loop.latencies, 50))
        row.p99_ms = ms(percentile(loop.latencies, 99))
        row.other_cpu_pct = use.other_pct
        row.gateway_cpu_pct, row.load_cpu_pct = use.pct("gateways"), use.pct("load")
        row.failures = dict(window.failures)
        if not done:
            return
        row.gateway_cpu_ms_per_req = 1000 * use.seconds["gateways"] / done
        row.redis_cpu_ms_per_req = 1000 * use.seconds["redis"] / done
        # command counts span every window (INFO can't be read per window without skewing it)
        delta = {k: v - stats_before.get(k, 0) for k, v in stats_after.items()}
        delta.pop("info", None)  # our own INFO calls
        total = window.total_requests
        row.evalsha_per_req = delta.get("evalsha", 0) / total
        row.redis_cmds_per_req = sum(delta.values()) / total
        row.per_command = {k: v / total for k, v in sorted(delta.items()) if v}

    async def _admission_latency(
        self, row: RedisRow, session: aiohttp.ClientSession, url: str
    ) -> None:
        """Reserve latency percentiles over a sequential run, from the histogram's delta."""
        before = await _reserve_buckets(session, url)
        await closed_loop(
            session, [url], concurrency=1, duration=10.0, max_requests=ADMISSION_REQUESTS
        )
        after = await _reserve_buckets(session, url)
        delta = [(le, after[le] - before.get(le, 0.0)) for le in sorted(after)]
        row.admit_p50_ms = ms(histogram_quantile(0.50, delta))
        row.admit_p99_ms = ms(histogram_quantile(0.99, delta))


def served_by(log: Path) -> Counter[int]:
    """Requests per worker, from the access lines (`"component": "gateway.access"`) of a
    gateway's log: each carries its worker's number."""
    counts: Counter[int] = Counter()
    with log.open("rb") as lines:
        for line in lines:
            if b'"gateway.access"' in line:
                counts[int(json.loads(line).get("worker", 0))] += 1
    return counts


async def _reserve_buckets(session: aiohttp.ClientSession, url: str) -> dict[float, float]:
    """The cumulative `reserve` buckets of `gateway_limiter_backend_seconds`, by upper bound."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    return {float(le): float(count) for le, count in _BUCKET.findall(text)}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus-style: linear interpolation inside the cumulative bucket holding rank q."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower
