"""The proxy scenario's req/s rounds: what a row reports from them.

Running the rounds needs every server and minutes, so it is run on demand (`python -m
bench`); the summary of the rounds is plain arithmetic and is pinned here.
"""

from __future__ import annotations

from collections import Counter

from bench.load import LoopResult
from bench.procs import CpuUse
from bench.report import _rounds
from bench.scenario_proxy import ProxyRow, _summarise


def run(rps: float, server_seconds: float) -> tuple[CpuUse, LoopResult]:
    """One 2 s window at `rps` in which the server used `server_seconds` of CPU."""
    loop = LoopResult(requests=round(rps * 2), elapsed=2.0, failures=Counter({"HTTP 502": 1}))
    return CpuUse(2.0, {"server": server_seconds, "load": 1.0}, 0.5), loop


def test_a_row_reports_its_median_round_and_the_median_of_per_round_ratios() -> None:
    """Ratios pair each round with the passthrough's window of the same round: a drift that
    slows both in round 3 does not move the ratio, only the raw req/s."""
    floor = [run(1_600, 1.6), run(1_600, 1.6), run(800, 1.6), run(1_600, 1.6)]
    row = ProxyRow("gateway+redis")
    _summarise(row, [run(960, 1.92), run(1_040, 1.92), run(480, 1.92), run(800, 1.92)], floor)
    assert (880.0, 60.0, [60.0, 65.0, 60.0, 50.0], 96.0, 50.0, 1.1, 4) == (
        row.rps,
        row.pct_of_passthrough,
        row.round_pct,
        row.server_cpu_pct,
        row.load_cpu_pct,
        None if row.cpu_ms_per_req is None else round(row.cpu_ms_per_req, 9),
        row.failures["HTTP 502"],
    )


def test_the_note_lists_every_round() -> None:
    row = ProxyRow("gateway", round_rps=[1_401.2, 1_177.0], round_pct=[87.4, 74.0])
    assert "- gateway: req/s per round 1,401, 1,177; % of passthrough per round 87, 74" == (
        _rounds(row)
    )
