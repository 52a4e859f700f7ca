"""`python -m bench.access_line`: what one access line costs the request that writes it.

Times `log_access(record)` for a typical `/v1/messages` record, with its request id bound
as the middleware binds it, output to /dev/null: best of `--repeat` runs of `--lines` lines,
in µs a line. Each case runs in a child process of its own, configured as the server
configures logging (`cache=True`, which a process keeps for good), so no case sees
another's configuration:

    fast      JSON at info: the access line's own rendering (`access_line.py`), the default
    chain     JSON at info: the same line through structlog's whole chain (before #18)
    skipped   JSON at warning: no line
    console   GATEWAY_LOG_FORMAT=console at info: the chain, rendered for a terminal

Python work only: the figures move by 5-10% with this VM's neighbours (run it twice).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import structlog

from bench.procs import ROOT
from gateway.access_line import log_access, log_access_generic
from gateway.logs import configure_logging
from gateway.record import RequestRecord

CASES: dict[str, tuple[str, str]] = {
    # case: (level, format)
    "fast": ("info", "json"),
    "chain": ("info", "json"),
    "skipped": ("warning", "json"),
    "console": ("info", "console"),
}
TARGET_US = 5.0
"""Issue #18: the access line at info costs at most 5 µs a request."""


def typical_record() -> RequestRecord:
    """A finished non-streamed Messages call, as the access line sees it."""
    record = RequestRecord("gw_0123456789abcdef01234567", 1000.0, "POST", "/v1/messages")
    record.route, record.model, record.group = "/v1/messages", "claude-sonnet-4-5", "sonnet"
    record.status, record.outcome, record.bytes_out = 200, "ok", 512
    record.upstream_request_id = "req_011CSHbDBfjQ7bZeXqQwRrT2"
    record.first_byte_at, record.ended_at = 1000.00321, 1000.012345
    return record


def best_us(write: Callable[[RequestRecord], None], lines: int, repeat: int) -> float:
    """The best of `repeat` runs of `lines` calls of `write`, in µs a call."""
    record = typical_record()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(lines):
            write(record)
        best = min(best, time.perf_counter() - started)
    return best / lines * 1e6


def measure(case: str, lines: int, repeat: int) -> float:
    """Configure logging for `case` as the server does, then time it (in this process)."""
    level, fmt = CASES[case]
    with open(os.devnull, "w") as out:  # a text stream, as stdout is
        configure_logging(level, fmt, stream=out, cache=True)
        write = log_access_generic if case == "chain" else log_access
        with structlog.contextvars.bound_contextvars(request_id=typical_record().request_id):
            return best_us(write, lines, repeat)


def run_case(case: str, lines: int, repeat: int) -> float:
    """`measure` in a child process: a cached logging configuration dies with it."""
    command = [sys.executable, "-m", "bench.access_line", "--case", case]
    command += ["--lines", str(lines), "--repeat", str(repeat)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout)


def table(figures: dict[str, float], lines: int, repeat: int) -> str:
    """The Markdown report: µs a line per case, and the fast path against the chain."""
    rows = [
        f"Python {platform.python_version()}, best of {repeat} x {lines:,} lines, "
        f"output to /dev/null; target at info: <= {TARGET_US:g} µs a line (#18).",
        "",
        "| case | µs a line |",
        "|---|---|",
        *(f"| {case} | {us:.2f} |" for case, us in figures.items()),
    ]
    if "fast" in figures and "chain" in figures:
        rows += ["", f"The fast path takes {figures['fast'] / figures['chain']:.0%} of the chain."]
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.access_line", description=__doc__)
    parser.add_argument("--lines", type=int, default=20_000, help="lines per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    parser.add_argument("--cases", default=",".join(CASES), help="a subset of " + ",".join(CASES))
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one, in this process
    args = parser.parse_args(argv)
    args.cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case:
        print(f"{measure(args.case, args.lines, args.repeat):.4f}")
        return 0
    figures = {case: run_case(case, args.lines, args.repeat) for case in args.cases}
    print(table(figures, args.lines, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
