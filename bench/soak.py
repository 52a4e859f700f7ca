"""`python -m bench.soak [--minutes 10]`: a bounded, loopback-only soak of a two-gateway fleet.

Starts a redis-server, the fake Anthropic API (`tests/support/fake_upstream.py`, enforcing
the limits file's RPM, ITPM and OTPM as the API would) and two gateway processes at
production defaults (`GATEWAY_LOG_LEVEL=info`, JSON logs) sharing one limits file and Redis.
For `--minutes` it sends mixed traffic: JSON and streaming, three models, bodies of 0.3-9 KB,
`max_tokens` 64-1024, arriving at random (Poisson) at half the RPM limit for 40 s of every
minute and twice it for the other 20 s: the group's buckets hold 5 s of its limit, so the
gateways queue (up to 5 s) and refuse in those 20 s. Every 45 s the
upstream answers a burst of consecutive 529s; `--restarts` times, spread over the run, Redis
is killed (SIGKILL) and started again, empty, on the same port after `--redis-down` seconds.

Every 10 s it samples each gateway's RSS (`/proc/<pid>/status`) and open descriptors
(`/proc/<pid>/fd`). At the end it prints the answers by cause, the samples, the gateways' own
counters and log lines above info, and the upstream's 429s: the fleet's promise is none.
It exits 1 when the upstream answered a 429 or a gateway died. Everything it starts is
stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.ports import free_port
from bench.procs import Child, Processes, compile_gateway, rss_kb, wait_http, wait_tcp
from bench.serving import raise_nofile_limit, run_main

MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
KEY = "sk-ant-soak-0001"
SAMPLE_SECONDS = 10.0
BURST_EVERY_SECONDS = 45.0
BURST_529S = 25
BURST_LOAD = 2.0
"""The offered load in the last 20 s of each minute, as a multiple of the RPM limit."""
OUTPUT_TOKENS = 40
"""Output tokens of every upstream answer (the fake's `--output-tokens`)."""
COUNTERS = (
    "gateway_limiter_fail_open_total",
    "gateway_limiter_backend_errors_total",
    "gateway_upstream_attempts_total",
    "gateway_upstream_retries_total",
    "gateway_upstream_rate_limited_total",
)
WORDS = ("token", "bucket", "refill", "queue", "limit", "request", "gateway", "stream", "usage")


@dataclass(frozen=True)
class SoakSettings:
    minutes: float
    rpm: int
    restarts: int
    redis_down: float
    seed: int

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def itpm(self) -> int:
        return self.rpm * 4_000  # bodies average ~1,600 tokens: RPM binds first

    @property
    def otpm(self) -> int:
        return self.rpm * 200  # answers are 40 tokens; reservations start at 1,024

    def rate(self, at: float) -> float:
        """Requests per second offered `at` seconds in: half the limit, twice it for
        the last 20 s of each minute."""
        return self.rpm / 60 * (BURST_LOAD if at % 60 >= 40 else 0.5)

    def restart_times(self) -> list[float]:
        return [(i + 0.5) * self.seconds / self.restarts for i in range(self.restarts)]

    def limits_yaml(self) -> str:
        return f"""\
headroom: 0.02
redis_failure: fail_open
fail_open_share: 0.5   # two instances: together they keep the limit while Redis is away
queue:
  max_wait_seconds: 5
groups:
  - name: claude
    models: ["claude-*"]
    burst_seconds: 5       # the buckets hold 5 s of their limit: a load burst drains them
    requests_per_minute: {self.rpm}
    input_tokens_per_minute: {self.itpm}
    output_tokens_per_minute: {self.otpm}
unmatched_models: reject
"""


@dataclass
class Sample:
    at: float
    gateway: str
    rss_kb: int
    fds: int
    in_flight: int
    healthz_ms: float | None
    """GET /healthz latency; None: no answer within 2 s (a stuck event loop)."""


@dataclass
class Results:
    settings: SoakSettings
    causes: collections.Counter[str] = field(default_factory=collections.Counter)
    samples: list[Sample] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    bursts: int = 0
    sent: int = 0
    in_flight: int = 0
    upstream: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, dict[str, float]] = field(default_factory=dict)
    log_events: dict[str, collections.Counter[str]] = field(default_factory=dict)
    died: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        reasons = [f"{name} exited" for name in self.died]
        if stuck := sum(1 for sample in self.samples if sample.healthz_ms is None):
            reasons.append(f"{stuck} /healthz probes unanswered within 2 s")
        if self.upstream.get("rejected_429", 0):
            reasons.append(f"upstream answered {self.upstream['rejected_429']} 429s")
        return reasons


class Fleet:
    """The processes under test: Redis, the fake API, two gateways."""

    def __init__(self, procs: Processes, settings: SoakSettings) -> None:
        self.procs = procs
        self.settings = settings
        self.redis_port = free_port()
        self.redis: Child | None = None
        self.fake: Child | None = None
        self.gateways: list[Child] = []

    async def start(self) -> None:
        await self.start_redis()
        port = free_port()
        args = ["tests.support.fake_upstream", "--port", str(port), "--rpm", str(self.settings.rpm)]
        args += ["--itpm", str(self.settings.itpm), "--otpm", str(self.settings.otpm)]
        args += ["--input-tokens-from-body", "--output-tokens", str(OUTPUT_TOKENS)]
        self.fake = self.procs.start_python("fake-upstream", args, port, cpus=None)
        await wait_tcp(self.fake)
        limits = self.procs.logdir / "limits.yaml"
        limits.write_text(self.settings.limits_yaml())
        compile_gateway()
        for name in ("gateway-1", "gateway-2"):
            port = free_port()
            env = {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(port),
                "GATEWAY_UPSTREAM_URL": self.fake.url,
                "GATEWAY_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "GATEWAY_LIMITS_FILE": str(limits),
                "GATEWAY_LOG_LEVEL": "info",
                "GATEWAY_LOG_FORMAT": "json",
            }
            argv = [sys.executable, "-m", "gateway", "serve"]
            gateway = self.procs.start(name, argv, port, cpus=None, env=env)
            await wait_http(gateway, "/healthz", within=15)
            self.gateways.append(gateway)

    async def start_redis(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server not found on PATH")
        argv = [server, "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.procs.logdir)]
        self.redis = self.procs.start("redis", argv, self.redis_port, cpus=None)
        await wait_tcp(self.redis)

    async def restart_redis(self) -> None:
        """SIGKILL Redis, leave it down `redis_down` seconds, start it again (empty)."""
        assert self.redis is not None
        self.redis.popen.send_signal(signal.SIGKILL)
        self.redis.popen.wait()
        self.procs.stop(self.redis)
        await asyncio.sleep(self.settings.redis_down)
        await self.start_redis()


async def send(session: aiohttp.ClientSession, url: str, body: bytes, results: Results) -> None:
    """One request; its answer counted by cause."""
    results.in_flight += 1
    try:
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        headers["content-type"] = "application/json"
        async with session.post(url + "/v1/messages", data=body, headers=headers) as response:
            raw = await response.read()
            results.causes[cause(response.status, dict(response.headers), raw)] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        results.causes[f"client {type(exc).__name__}"] += 1
    finally:
        results.in_flight -= 1


def cause(status: int, headers: dict[str, str], raw: bytes) -> str:
    """`200 json`, `200 stream`, `200 stream error <type>`, `429 rate_limit_error (gateway)`..."""
    if status == 200:
        if not raw.startswith(b"event:"):
            return "200 json"
        if b"event: error" in raw:
            data = raw.split(b"event: error", 1)[1].split(b"data: ", 1)[1].split(b"\n", 1)[0]
            return f"200 stream, then error {json.loads(data)['error']['type']}"
        return "200 stream" if b"message_stop" in raw else "200 stream, truncated"
    try:
        kind = str(json.loads(raw)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        kind = "no envelope"
    origin = " (gateway)" if "x-gateway-ratelimit-bucket" in headers else ""
    return f"{status} {kind}{origin}"


def bodies(rng: random.Random, count: int = 64) -> Iterator[bytes]:
    """Varied Messages bodies: model, size, max_tokens, JSON or stream."""
    for _ in range(count):
        words = rng.randrange(60, 1800)
        content = " ".join(rng.choice(WORDS) for _ in range(words))
        yield json.dumps(
            {
                "model": rng.choice(MODELS),
                "max_tokens": rng.choice((64, 256, 1024)),
                "stream": rng.random() < 0.5,
                "messages": [{"role": "user", "content": content}],
            }
        ).encode()


async def traffic(fleet: Fleet, results: Results, started: float, rng: random.Random) -> None:
    """Poisson arrivals at `settings.rate`, round-robin over the gateways, until the end."""
    pool = list(bodies(rng))
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        index = 0
        while (now := time.monotonic() - started) < fleet.settings.seconds:
            await asyncio.sleep(rng.expovariate(fleet.settings.rate(now)))
            url = fleet.gateways[index % len(fleet.gateways)].url
            task = asyncio.create_task(send(session, url, rng.choice(pool), results))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            results.sent += 1
            index += 1
        if tasks:  # each ends by its client timeout at the latest
            await asyncio.wait(tasks)


async def faults(fleet: Fleet, results: Results, started: float) -> None:
    """529 bursts every 45 s and the Redis restarts, on schedule, until the end."""
    assert fleet.fake is not None
    burst = [{"type": "reply", "status": 529}] * BURST_529S
    restarts = fleet.settings.restart_times()
    next_burst = 15.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while (now := time.monotonic() - started) < fleet.settings.seconds:
            if restarts and now >= restarts[0]:
                restarts.pop(0)
                print(f"[soak] {now:6.1f} s: Redis killed", file=sys.stderr)
                await fleet.restart_redis()
                results.restarts.append(round(now, 1))
            if now >= next_burst:
                async with session.post(fleet.fake.url + "/_fake/script", json=burst) as r:
                    r.raise_for_status()
                results.bursts += 1
                next_burst += BURST_EVERY_SECONDS
            await asyncio.sleep(0.2)


async def sampler(fleet: Fleet, results: Results, started: float) -> None:
    """RSS, descriptors and /healthz latency of each gateway every 10 s (and at the end)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            at = round(time.monotonic() - started, 1)
            for gateway in fleet.gateways:
                if gateway.popen.poll() is not None:
                    if gateway.name not in results.died:
                        results.died.append(gateway.name)
                    continue
                fds = len(os.listdir(f"/proc/{gateway.pid}/fd"))
                rss = rss_kb(gateway.pid)
                healthz = await _healthz_ms(session, gateway)
                results.samples.append(
                    Sample(at, gateway.name, rss, fds, results.in_flight, healthz)
                )
            if at >= fleet.settings.seconds:
                return
            await asyncio.sleep(min(SAMPLE_SECONDS, max(0.0, fleet.settings.seconds - at)))


async def _healthz_ms(session: aiohttp.ClientSession, gateway: Child) -> float | None:
    started = time.perf_counter()
    try:
        async with session.get(gateway.url + "/healthz") as response:
            await response.read()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return round(1000 * (time.perf_counter() - started), 1)


async def collect(fleet: Fleet, results: Results) -> None:
    """The fake's counters, each gateway's own, and their log lines above info."""
    assert fleet.fake is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(fleet.fake.url + "/_fake/stats") as response:
            stats = await response.json()
        results.upstream = {"requests": stats["requests"], "rejected_429": stats["rejected_429"]}
        for gateway in fleet.gateways:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(gateway.url + "/metrics") as response:
                    text = await response.text()
                totals: dict[str, float] = collections.defaultdict(float)
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name in COUNTERS:
                            totals[sample.name] += sample.value
                results.counters[gateway.name] = dict(totals)
    for gateway in fleet.gateways:
        events: collections.Counter[str] = collections.Counter()
        for line in gateway.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                events["(not JSON) " + line[:60]] += 1
                continue
            if isinstance(entry, dict) and entry.get("level") in ("warning", "error", "critical"):
                events[f"{entry['level']} {entry.get('event')}"] += 1
        results.log_events[gateway.name] = events


async def soak(settings: SoakSettings) -> Results:
    raise_nofile_limit()
    procs = Processes()
    results = Results(settings)
    try:
        fleet = Fleet(procs, settings)
        await fleet.start()
        print(f"[soak] running {settings.minutes:g} min; logs in {procs.logdir}", file=sys.stderr)
        started = time.monotonic()
        rng = random.Random(settings.seed)
        await asyncio.gather(
            traffic(fleet, results, started, rng),
            faults(fleet, results, started),
            sampler(fleet, results, started),
        )
        await collect(fleet, results)
    finally:
        procs.stop_all()
    return results


def report(results: Results) -> str:
    """The Markdown tables."""
    s = results.settings
    answered = sum(results.causes.values())
    lines = [
        f"## Soak: {s.minutes:g} min, two gateways, RPM {s.rpm}, {len(results.restarts)} Redis "
        f"restarts ({s.redis_down:g} s down), {results.bursts} bursts of {BURST_529S} "
        "upstream 529s",
        "",
        f"Sent {results.sent}, answered {answered}; upstream saw {results.upstream.get('requests')}"
        f" requests and answered **{results.upstream.get('rejected_429')} 429s**. Redis killed at"
        f" {', '.join(f'{t:g}' for t in results.restarts)} s.",
        "",
        "| answer | count | share |",
        "|---|---:|---:|",
    ]
    for name, count in results.causes.most_common():
        lines.append(f"| {name} | {count} | {100 * count / max(answered, 1):.2f}% |")
    names = _names(results)
    lines += ["", "| t (s) | " + " | ".join(f"{g} RSS MB | fds | healthz ms" for g in names)]
    lines[-1] += " | in flight |"
    lines.append("|---:|" + "---:|---:|---:|" * len(names) + "---:|")
    for at, row in _rows(results):
        cells = " | ".join(f"{r.rss_kb / 1024:.1f} | {r.fds} | {_ms(r.healthz_ms)}" for r in row)
        lines.append(f"| {at:g} | {cells} | {row[0].in_flight} |")
    stuck = sum(1 for sample in results.samples if sample.healthz_ms is None)
    lines += ["", f"/healthz unanswered within 2 s: {stuck} of {len(results.samples)} probes."]
    lines += ["", "| gateway | " + " | ".join(c.removeprefix("gateway_") for c in COUNTERS) + " |"]
    lines.append("|---|" + "---:|" * len(COUNTERS))
    for name, totals in results.counters.items():
        lines.append(f"| {name} | " + " | ".join(f"{totals.get(c, 0):g}" for c in COUNTERS) + " |")
    lines += ["", "Gateway log lines above info:", ""]
    for name, events in results.log_events.items():
        shown = ", ".join(f"{event} x{count}" for event, count in events.most_common(8))
        lines.append(f"- {name}: {shown or 'none'}")
    verdict = "; ".join(results.failed) or "no upstream 429, both gateways alive"
    lines += ["", f"Result: {'FAILED: ' if results.failed else 'ok: '}{verdict}"]
    return "\n".join(lines)


def as_json(results: Results) -> dict[str, Any]:
    """Everything measured, for `--json`."""
    return {
        "settings": asdict(results.settings),
        "sent": results.sent,
        "causes": dict(results.causes),
        "upstream": results.upstream,
        "restarts": results.restarts,
        "bursts_of_529": results.bursts,
        "samples": [asdict(sample) for sample in results.samples],
        "counters": results.counters,
        "log_events": {name: dict(events) for name, events in results.log_events.items()},
        "failed": results.failed,
    }


def _ms(value: float | None) -> str:
    return "no answer" if value is None else f"{value:g}"


def _names(results: Results) -> list[str]:
    return sorted({sample.gateway for sample in results.samples})


def _rows(results: Results) -> list[tuple[float, list[Sample]]]:
    """Sample rows with every gateway present: every one for a short run, else one a minute
    (and the last)."""
    by_time: dict[float, list[Sample]] = collections.defaultdict(list)
    for sample in results.samples:
        by_time[sample.at].append(sample)
    names = _names(results)
    rows = [(at, sorted(row, key=lambda r: r.gateway)) for at, row in sorted(by_time.items())]
    rows = [(at, row) for at, row in rows if [r.gateway for r in row] == names]
    if len(rows) <= 20:
        return rows
    return [row for i, row in enumerate(rows) if i % 6 == 0 or i == len(rows) - 1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--rpm", type=int, default=2_400, help="the group's RPM limit")
    parser.add_argument("--restarts", type=int, default=3, help="Redis kills over the run")
    parser.add_argument("--redis-down", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = SoakSettings(args.minutes, args.rpm, args.restarts, args.redis_down, args.seed)
    results: list[Results] = []

    async def run() -> None:
        results.append(await soak(settings))

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop everything, as Ctrl-C
    run_main(run())
    print(report(results[0]))
    if args.json:
        args.json.write_text(json.dumps(as_json(results[0]), indent=2))
    return 1 if results[0].failed else 0


if __name__ == "__main__":
    sys.exit(main())
