"""Markdown tables (stdout) and JSON for a bench run, with the machine it ran on."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.scenario_errors import ErrorsRow
from bench.scenario_proxy import ProxyRow
from bench.scenario_redis import RedisRow
from bench.serving import uvloop_version
from bench.settings import DISTURBED_PCT, BenchSettings


@dataclass(slots=True)
class Report:
    """Everything one run measured."""

    command: str
    scenario: str
    machine: dict[str, str]
    settings: BenchSettings
    placement: str
    proxy: list[ProxyRow] | None = None
    errors: list[ErrorsRow] | None = None
    redis: list[RedisRow] | None = None
    workers: list[RedisRow] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_skips(self) -> bool:
        rows: list[ProxyRow | ErrorsRow | RedisRow] = [
            *(self.proxy or []),
            *(self.errors or []),
            *(self.redis or []),
            *(self.workers or []),
        ]
        return any(row.skipped for row in rows)


def machine_info(gateway: str | None) -> dict[str, str]:
    """nproc, CPU model, kernel, Python, aiohttp, uvloop, gateway version, fd limit."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    uv = uvloop_version()
    return {
        "nproc": str(os.cpu_count()),
        "cpus allowed": ",".join(map(str, sorted(os.sched_getaffinity(0)))),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": metadata.version("aiohttp"),
        "uvloop": f"yes ({uv})" if uv else "no",
        "claude-gateway": gateway or "not installed",
        "open files limit": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    }


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _diff(value: float | None, base: float | None) -> str:
    if value is None or base is None:
        return "-"
    return f"{value - base:+,.2f}"


def _rate(value: float) -> str:
    return f"{value:.2f}" if value >= 0.005 else "<0.01"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _failures(name: str, failures: dict[str, int]) -> str | None:
    if not failures:
        return None
    listed = ", ".join(f"{kind} x{count}" for kind, count in sorted(failures.items()))
    return f"- {name}: failures: {listed}"


SATURATED_PCT = 90.0


def _cpu_warnings(row: ProxyRow) -> list[str]:
    out = []
    for phase, pct in (("req/s", row.other_cpu_pct), ("latency", row.latency_other_cpu_pct)):
        if pct is not None and pct > DISTURBED_PCT:
            out.append(
                f"- {row.target}: WARNING: other processes used {pct:.0f}% of a core during the "
                f"{phase} measurement; those numbers are disturbed (rerun on a quiet machine)"
            )
    disturbed = [pct for pct in row.round_other_pct if pct > DISTURBED_PCT]
    if disturbed and len(row.round_other_pct) > 1:
        out.append(
            f"- {row.target}: other processes used more than {DISTURBED_PCT:.0f}% of a core in "
            f"{len(disturbed)} of {len(row.round_other_pct)} req/s rounds (up to "
            f"{max(disturbed):.0f}%); the medians above absorb a few"
        )
    load_core = (row.load_cpu_pct or 0) + (row.server_cpu_pct or 0 if row.target == "direct" else 0)
    if load_core > SATURATED_PCT:
        out.append(
            f"- {row.target}: the load CPU was {load_core:.0f}% busy: req/s is bounded by the "
            "load generator + mock, not by the server under test"
        )
    return out


def _rounds(row: ProxyRow) -> str:
    rates = ", ".join(f"{rate:,.0f}" for rate in row.round_rps)
    line = f"- {row.target}: req/s per round {rates}"
    if row.round_pct and row.target != "passthrough":
        line += "; % of passthrough per round " + ", ".join(f"{p:.0f}" for p in row.round_pct)
    return line


def _short_samples(row: ProxyRow, s: BenchSettings) -> str | None:
    """A slow server (LiteLLM: ~20 ms a request) runs out of the latency budget before the
    samples asked for: say how many its p50/p99 and TTFB come from."""
    latency, ttfb = row.latency_count, row.ttfb_count
    if latency is None or ttfb is None:
        return None
    if latency >= s.latency_samples and ttfb >= s.ttfb_samples:
        return None
    return (
        f"- {row.target}: latency from {latency:,} of {s.latency_samples:,} sequential "
        f"requests and TTFB from {ttfb:,} of {s.ttfb_samples:,} streams: the "
        f"{s.latency_budget:g} s budget ran out"
    )


LITELLM_TARGET_RATIO = 50.0  # #18: gateway+redis serves at least 50x LiteLLM's req/s


def versus_litellm(by_name: dict[str, ProxyRow]) -> str | None:
    """The note "gateway+redis is Nx LiteLLM's req/s" when both rows ran: #18's side-by-side
    target (both with never-hit limits counted in the same redis-server)."""
    ours, theirs = by_name.get("gateway+redis"), by_name.get("litellm")
    if not (ours and theirs and ours.rps and theirs.rps):
        return None
    ratio = ours.rps / theirs.rps
    verdict = "meets" if ratio >= LITELLM_TARGET_RATIO else "misses"
    line = (
        f"- gateway+redis is {ratio:,.1f}x LiteLLM's req/s ({ours.rps:,.0f} vs "
        f"{theirs.rps:,.1f}); {verdict} #18's target of {LITELLM_TARGET_RATIO:g}x"
    )
    if ours.cpu_ms_per_req and theirs.cpu_ms_per_req:
        line += (
            f"; server CPU ms/req {ours.cpu_ms_per_req:.3f} vs {theirs.cpu_ms_per_req:.3f} "
            f"({theirs.cpu_ms_per_req / ours.cpu_ms_per_req:,.1f}x)"
        )
    return line


def proxy_section(rows: list[ProxyRow], s: BenchSettings, placement: str) -> list[str]:
    by_name = {row.target: row for row in rows}
    direct, floor = by_name.get("direct"), by_name.get("passthrough")
    header = [
        "target",
        f"req/s @{s.concurrency}",
        "% of passthrough",
        "server CPU %",
        "load CPU %",
        "other CPU %",
        "CPU ms/req",
        "p50 @1 (ms)",
        "p99 @1 (ms)",
        "added p50 (ms)",
        "added p99 (ms)",
        "stream TTFB p50 (ms)",
        "RSS/stream (KB)",
        "streams open",
    ]
    table, notes = [], []
    for row in rows:
        if row.skipped:
            name = row.label or row.target
            table.append([name, f"skipped: {row.skipped}", *["-"] * (len(header) - 2)])
            notes += row.notes
            continue
        pct = row.pct_of_passthrough
        if pct is None and row.rps and floor and floor.rps:
            pct = 100 * row.rps / floor.rps
        base = direct if direct and not direct.skipped else None
        table.append(
            [
                row.label or row.target,
                _num(row.rps, 0),
                _num(pct, 0),
                _num(row.server_cpu_pct, 0),
                _num(row.load_cpu_pct, 0),
                _num(row.other_cpu_pct, 0),
                _num(row.cpu_ms_per_req, 3),
                _num(row.p50_ms, 3),
                _num(row.p99_ms, 3),
                _diff(row.p50_ms, base.p50_ms) if base and row is not base else "-",
                _diff(row.p99_ms, base.p99_ms) if base and row is not base else "-",
                _num(row.ttfb_p50_ms, 3),
                _num(row.rss_per_stream_kb, 1),
                f"{row.streams_open}/{s.streams}" if row.streams_open is not None else "-",
            ]
        )
        notes += _cpu_warnings(row)
        if len(row.round_rps) > 1:
            notes.append(_rounds(row))
        if row.rounds_redone and row is rows[0]:
            notes.append(
                f"- {row.rounds_redone} req/s round(s) were disturbed by other processes and run "
                "again (every target's window of that round), after waiting for quiet"
            )
        if row.log_lines is not None:
            notes.append(
                f"- {row.target}: its log holds {row.log_lines:,} lines "
                f"({(row.log_bytes or 0) / 1e6:,.1f} MB) after the req/s and latency phases"
            )
        if row.rss_before_kb is not None:
            notes.append(
                f"- {row.target}: RSS {row.rss_before_kb:,} KB before, {row.rss_during_kb:,} KB "
                f"with {row.streams_open} streams open; {row.streams_completed} streams completed"
            )
        notes.append(_failures(row.target, row.failures) or "")
        notes.append(_short_samples(row, s) or "")
        notes += row.notes
    notes.append(versus_litellm(by_name) or "")
    return [
        "## Proxy overhead (default scenario)",
        "",
        f"{placement}. req/s: {s.rounds} round(s), each driving every target in turn (rotated "
        f"order): {s.warmup:g} s warm-up, then {s.duration / s.rounds:g} s at concurrency "
        f"{s.concurrency}; the median round is reported, and % of passthrough is the median "
        f"of per-round ratios; latency: {s.latency_samples} "
        f"sequential requests; TTFB: {s.ttfb_samples} sequential streams; RSS: {s.streams} "
        f"streams held open ~{s.stream_seconds:g} s each.",
        "",
        *_table(header, table),
        "",
        "The direct row's CPU, RSS and TTFB columns are the mock upstream's own.",
        *[note for note in notes if note],
    ]


def errors_section(rows: list[ErrorsRow], settings: BenchSettings, placement: str) -> list[str]:
    direct = next((r for r in rows if r.target == "direct" and not r.skipped), None)
    header = ["target", "requests", "success %", "p50 (ms)", "p90 (ms)", "p99 (ms)"]
    header += ["added p50 (ms)", "added p99 (ms)", "upstream attempts/request"]
    table, notes = [], []
    for row in rows:
        if row.skipped:
            table.append([row.target, f"skipped: {row.skipped}", *["-"] * (len(header) - 2)])
            continue
        rel = direct is not None and row is not direct
        table.append(
            [
                row.target,
                str(row.requests),
                _num(row.success_pct, 1),
                _num(row.p50_ms, 1),
                _num(row.p90_ms, 1),
                _num(row.p99_ms, 1),
                _diff(row.p50_ms, direct.p50_ms) if rel and direct else "-",
                _diff(row.p99_ms, direct.p99_ms) if rel and direct else "-",
                _num(row.attempts_per_request, 2),
            ]
        )
        notes.append(_failures(row.target, row.failures) or "")
    return [
        f"## Flaky upstream (`--scenario errors`, 529 rate {settings.error_rate:g})",
        "",
        f"{placement}. {settings.error_requests} calls of "
        f"anthropic.AsyncAnthropic(max_retries=2) at concurrency {settings.concurrency}; "
        "latency of successful calls, SDK backoff included; attempts counted on the mock.",
        "",
        *_table(header, table),
        *[note for note in notes if note],
    ]


def redis_section(rows: list[RedisRow], settings: BenchSettings) -> list[str]:
    header = ["backend", "instances", f"req/s @{settings.concurrency}", "p50 (ms)", "p99 (ms)"]
    header += [
        "other CPU %",
        "gateway CPU ms/req",
        "redis CPU ms/req",
        "EVALSHA/req",
        "redis cmds/req (incl. in-script)",
        "admission p50 @1 (ms)",
        "admission p99 @1 (ms)",
    ]
    table, notes = [], []
    for row in rows:
        if row.skipped:
            cells = [row.backend, str(row.instances), f"skipped: {row.skipped}"]
            table.append([*cells, *["-"] * (len(header) - 3)])
            continue
        table.append(
            [
                row.backend,
                str(row.instances),
                _num(row.rps, 0),
                _num(row.p50_ms, 2),
                _num(row.p99_ms, 2),
                _num(row.other_cpu_pct, 0),
                _num(row.gateway_cpu_ms_per_req, 3),
                _num(row.redis_cpu_ms_per_req, 3),
                _num(row.evalsha_per_req, 2),
                _num(row.redis_cmds_per_req, 2),
                _num(row.admit_p50_ms, 3),
                _num(row.admit_p99_ms, 3),
            ]
        )
        name = f"{row.backend} x{row.instances}"
        if row.other_cpu_pct is not None and row.other_cpu_pct > DISTURBED_PCT:
            notes.append(
                f"- {name}: WARNING: other processes used {row.other_cpu_pct:.0f}% of a core; "
                "this row is disturbed"
            )
        if row.per_command:
            calls = ", ".join(f"{cmd} {_rate(rate)}" for cmd, rate in row.per_command.items())
            notes.append(f"- {name}: Redis calls per request: {calls}")
        notes.append(_failures(name, row.failures) or "")
    return [
        "## Limiter backend (`--scenario redis`)",
        "",
        "Not pinned: gateways, mock, Redis and the load generator share every CPU. "
        f"{settings.warmup:g} s warm-up, then {settings.redis_duration:g} s at concurrency "
        f"{settings.concurrency} spread round-robin over the instances; latency at that "
        "concurrency. Redis calls from INFO commandstats deltas. Admission: the limiter "
        "backend's reserve latency (gateway_limiter_backend_seconds, interpolated within its "
        "buckets) over 1,000 sequential requests to the first instance.",
        "",
        *_table(header, table),
        *[note for note in notes if note],
    ]


def workers_section(rows: list[RedisRow], settings: BenchSettings) -> list[str]:
    """One gateway of 1 vs N worker processes: req/s and what each worker served."""
    header = ["backend", "workers", f"req/s @{settings.concurrency}", "vs 1 worker"]
    header += ["p50 (ms)", "p99 (ms)", "gateway CPU %", "load CPU %", "other CPU %"]
    header += ["gateway CPU ms/req", "requests per worker"]
    single = {row.backend: row.rps for row in rows if row.workers == 1 and not row.skipped}
    table, notes = [], []
    for row in rows:
        if row.skipped:
            cells = [row.backend, str(row.workers), f"skipped: {row.skipped}"]
            table.append([*cells, *["-"] * (len(header) - 3)])
            continue
        base = single.get(row.backend)
        total = sum(row.served_by.values())
        split = " / ".join(f"{100 * n / total:.0f}%" for n in row.served_by.values()) or "-"
        table.append(
            [
                row.backend,
                str(row.workers),
                _num(row.rps, 0),
                f"{row.rps / base:.2f}x" if row.rps and base else "-",
                _num(row.p50_ms, 2),
                _num(row.p99_ms, 2),
                _num(row.gateway_cpu_pct, 0),
                _num(row.load_cpu_pct, 0),
                _num(row.other_cpu_pct, 0),
                _num(row.gateway_cpu_ms_per_req, 3),
                split if row.workers > 1 else "-",
            ]
        )
        if row.other_cpu_pct is not None and row.other_cpu_pct > DISTURBED_PCT:
            notes.append(
                f"- {row.name}: WARNING: other processes used {row.other_cpu_pct:.0f}% of a "
                "core; this row is disturbed"
            )
        notes.append(_failures(row.name, row.failures) or "")
    return [
        "## Worker processes (`--scenario workers`)",
        "",
        "One gateway with GATEWAY_WORKERS=1, then 2: worker processes on one port "
        "(SO_REUSEPORT), the kernel spreading connections over them. Not pinned: workers, "
        "mock, Redis and the load generator share every CPU. "
        f"{settings.warmup:g} s warm-up, then {settings.redis_duration:g} s at concurrency "
        f"{settings.concurrency} (the least disturbed of the windows). Gateway CPU counts "
        "the supervisor and its workers, load CPU the load generator and the mock (Redis "
        "apart), both in % of one core; requests per worker from the access lines.",
        "",
        *_table(header, table),
        *[note for note in notes if note],
    ]


def to_markdown(report: Report) -> str:
    s = report.settings
    lines = ["# claude-gateway bench", "", f"Command: `{report.command}`", ""]
    lines += [f"- {key}: {value}" for key, value in report.machine.items()]
    lines += [f"- mode: {'quick' if s.quick else 'full'}; scenario: {report.scenario}", ""]
    if report.proxy is not None:
        lines += [*proxy_section(report.proxy, s, report.placement), ""]
    if report.errors is not None:
        lines += [*errors_section(report.errors, s, report.placement), ""]
    if report.redis is not None:
        lines += [*redis_section(report.redis, s), ""]
    if report.workers is not None:
        lines += [*workers_section(report.workers, s), ""]
    lines += report.notes
    return "\n".join(lines).rstrip() + "\n"


def to_json(report: Report) -> dict[str, Any]:
    return dataclasses.asdict(report)


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(to_json(report), indent=2) + "\n")
