"""`python -m bench.access_line`: it times the access line's fast path, and reports it."""

from __future__ import annotations

import io

import pytest

from bench import access_line as bench
from gateway import access_line
from gateway.logs import configure_logging
from gateway.record import RequestRecord


def test_the_timed_record_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The record the bench times is written without the chain: `fast` measures what it says."""
    chain: list[RequestRecord] = []
    monkeypatch.setattr(access_line, "log_access_generic", chain.append)
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    access_line.log_access(bench.typical_record())
    assert (1, []) == (len(out.getvalue().splitlines()), chain)


def test_the_report_gives_each_case_and_the_fast_paths_share() -> None:
    """One row per case in µs a line, and the fast path as a share of the chain."""
    report = bench.table({"fast": 4.5, "chain": 18.0, "skipped": 0.1}, 20_000, 5)
    assert ["| fast | 4.50 |", "| chain | 18.00 |", "| skipped | 0.10 |"] == [
        line for line in report.splitlines() if line.startswith("| ") and "µs" not in line
    ]
    assert report.endswith("The fast path takes 25% of the chain.")


def test_each_case_runs_in_a_child_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    """A short run prints a figure for every case asked for, each timed in its own process
    (a cached logging configuration stays with the process that made it)."""
    assert 0 == bench.main(["--lines", "200", "--repeat", "1", "--cases", "fast,skipped"])
    rows = [line.split("|")[1:3] for line in capsys.readouterr().out.splitlines()[-2:]]
    assert ["fast", "skipped"] == [case.strip() for case, _ in rows]
    assert all(float(us) > 0 for _, us in rows)


def test_an_unknown_case_is_refused() -> None:
    """A typo in --cases is an error, not a silently shorter report."""
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "fast,fsat"])
