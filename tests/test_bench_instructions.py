"""`python -m bench.instructions`: its report and its reading of callgrind's dumps.

The counting itself needs valgrind and minutes per target, so it is run on demand, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.instructions import _total, parse_args, table


def test_total_takes_the_largest_figure_over_every_dump(tmp_path: Path) -> None:
    """callgrind writes `out` and, per `--dump`, `out.N`; the dump after counting holds it."""
    out = tmp_path / "callgrind-gateway.out"
    out.write_text("events: Ir\nsummary: 0\n")
    (tmp_path / "callgrind-gateway.out.1").write_text("events: Ir\ntotals: 912345678\n")
    (tmp_path / "callgrind-other.out.1").write_text("totals: 999999999999\n")
    assert 912345678 == _total(out)


def test_total_refuses_a_run_that_counted_nothing(tmp_path: Path) -> None:
    """Instrumentation never switched on leaves zeros: an error, not a 0 kIr/request row."""
    out = tmp_path / "callgrind-passthrough.out"
    out.write_text("events: Ir\nsummary: 0\n")
    with pytest.raises(RuntimeError, match="counted nothing"):
        _total(out)


def test_table_compares_every_target_with_the_pass_through() -> None:
    report = table({"passthrough": 711.1, "gateway": 959.0, "gateway+redis": 1468.8}, 600, 16)
    assert [
        "| passthrough | 711.1 | 100% |",
        "| gateway | 959.0 | 74% |",
        "| gateway+redis | 1,468.8 | 48% |",
    ] == report.splitlines()[-3:]


def test_unknown_targets_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--targets", "gateway,gateway+sqlite"])
    assert "unknown targets: gateway+sqlite" in capsys.readouterr().err
