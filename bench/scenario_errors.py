"""`--scenario errors`: a flaky upstream (529 at --error-rate) seen through the real SDK.

Per target a fresh mock answers a seeded fraction with `529 overloaded_error` +
`x-should-retry: true`; `anthropic.AsyncAnthropic(max_retries=2)` sends `error_requests`
calls at the bench concurrency. Reports client-visible success, latency of successful calls
(retries and backoff included) and upstream attempts per client request (mock `/_stats`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import aiohttp

from bench.load import ms, percentile, sdk_messages
from bench.procs import Child, NotReadyError
from bench.settings import BenchSettings
from bench.targets import Launcher, Placement

ERROR_TARGETS = ("direct", "passthrough", "gateway")


@dataclass(slots=True)
class ErrorsRow:
    """One target under a flaky upstream; times in ms."""

    target: str
    skipped: str | None = None
    requests: int = 0
    ok: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    upstream_attempts: int = 0
    success_pct: float | None = None
    attempts_per_request: float | None = None
    failures: dict[str, int] = field(default_factory=dict)


async def mock_requests(mock: Child) -> int:
    """The mock's request counter (GET /_stats)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(mock.url + "/_stats") as response,
    ):
        stats = await response.json()
    return int(stats["requests"])


class ErrorsScenario:
    """Direct vs passthrough vs gateway with the SDK's default retries."""

    def __init__(self, launcher: Launcher, settings: BenchSettings, placement: Placement) -> None:
        self.launcher = launcher
        self.settings = settings
        self.placement = placement

    async def run(self) -> list[ErrorsRow]:
        targets = [t for t in self.settings.targets if t in ERROR_TARGETS] or list(ERROR_TARGETS)
        rows = []
        for target in targets:
            print(f"[bench] errors scenario: {target}", file=sys.stderr)
            row = ErrorsRow(target)
            try:
                await self._measure(row)
            except NotReadyError as exc:
                row.skipped = str(exc).splitlines()[0]
                print(f"[bench] {target} skipped: {exc}", file=sys.stderr)
            rows.append(row)
        return rows

    async def _measure(self, row: ErrorsRow) -> None:
        s = self.settings
        procs = self.launcher.procs
        mock = await self.launcher.mock(self.placement, error_rate=s.error_rate, seed=s.seed)
        server: Child | None = None
        try:
            if row.target == "passthrough":
                server = await self.launcher.passthrough(self.placement, mock)
            elif row.target == "gateway":
                server = await self.launcher.gateway(self.placement, mock)
            before = await mock_requests(mock)
            url = (server or mock).url
            result = await sdk_messages(url, s.error_requests, s.concurrency)
            row.upstream_attempts = await mock_requests(mock) - before
        finally:
            if server is not None:
                procs.stop(server)
            procs.stop(mock)
        row.requests = result.requests + sum(result.failures.values())
        row.ok = result.requests
        if row.requests:
            row.success_pct = 100 * row.ok / row.requests
            row.attempts_per_request = row.upstream_attempts / row.requests
        row.failures = dict(result.failures)
        lat = result.latencies
        row.p50_ms, row.p90_ms, row.p99_ms = (ms(percentile(lat, pct)) for pct in (50, 90, 99))
