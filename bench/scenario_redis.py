"""`--scenario redis`: the in-process limiter vs the Redis backend, 1 vs 3 gateway instances.

Nothing is pinned here: with three gateways on two cores, pinning them to one core would
measure the core, not the backend. Load is spread round-robin over the instances at the
bench concurrency. Redis commands per request come from `INFO commandstats` deltas.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field

from bench.load import client_session, closed_loop, ms, percentile
from bench.procs import Child, NotReadyError
from bench.settings import BenchSettings
from bench.targets import UNPINNED, Launcher, redis_commandstats
from bench.window import quietest_window

CONFIGS = (("in-process", 1), ("in-process", 3), ("redis", 1), ("redis", 3))


@dataclass(slots=True)
class RedisRow:
    """One backend x instance-count configuration; times in ms."""

    backend: str
    instances: int
    skipped: str | None = None
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    other_cpu_pct: float | None = None
    gateway_cpu_ms_per_req: float | None = None
    redis_cpu_ms_per_req: float | None = None
    evalsha_per_req: float | None = None
    redis_cmds_per_req: float | None = None  # includes redis.call()s inside the scripts
    per_command: dict[str, float] = field(default_factory=dict)  # calls per request
    failures: dict[str, int] = field(default_factory=dict)


class RedisScenario:
    """Runs every (backend, instances) configuration against one unpinned mock and Redis."""

    def __init__(self, launcher: Launcher, settings: BenchSettings) -> None:
        self.launcher = launcher
        self.settings = settings

    async def run(self) -> list[RedisRow]:
        procs = self.launcher.procs
        mock = await self.launcher.mock(UNPINNED, deltas=self.settings.stream_deltas)
        redis = await self.launcher.redis(None)
        rows = []
        try:
            for backend, instances in CONFIGS:
                print(f"[bench] redis scenario: {backend} x{instances}", file=sys.stderr)
                row = RedisRow(backend, instances)
                try:
                    await self._measure(row, mock, redis)
                except NotReadyError as exc:
                    row.skipped = str(exc).splitlines()[0]
                    print(f"[bench] {backend} x{instances} skipped: {exc}", file=sys.stderr)
                rows.append(row)
        finally:
            procs.stop(redis)
            procs.stop(mock)
        return rows

    async def _gateways(self, row: RedisRow, mock: Child, redis: Child) -> list[Child]:
        launcher = self.launcher
        started: list[Child] = []
        try:
            for _ in range(row.instances):
                if row.backend == "redis":
                    url = f"redis://127.0.0.1:{redis.port}/0"
                    limits = launcher.limits_file()
                    child = await launcher.gateway(
                        UNPINNED, mock, redis_url=url, limits_file=limits
                    )
                else:
                    child = await launcher.gateway(UNPINNED, mock)
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
        finally:
            for child in gateways:
                self.launcher.procs.stop(child)
        use, loop, done = window.use, window.loop, window.loop.requests
        row.rps = loop.rps
        row.p50_ms = ms(percentile(loop.latencies, 50))
        row.p99_ms = ms(percentile(loop.latencies, 99))
        row.other_cpu_pct = use.other_pct
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
