"""bench/readme_table.py: the README's performance table from bench runs' JSON.

Taking the runs needs every server and minutes, so it is done on demand (`make perf-table`);
what is pinned here, with no run, is what the table says about given runs: ranges, #18's
targets met or missed, "not measured" where a run has no figure, and that README.md is
rewritten between its markers only. The runs are written by bench's own `Report` and
`write_json`, so a change of their shape breaks these tests rather than the table.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench import readme_table
from bench.procs import ROOT
from bench.readme_table import END, START, TableError, load_run, render
from bench.report import Report, write_json
from bench.scenario_proxy import ProxyRow
from bench.settings import preset

MACHINE = {
    "nproc": "2",
    "cpu": "AMD EPYC 7B13",
    "kernel": "6.8.0",
    "python": "3.11.7",
    "aiohttp": "3.14.5",
    "uvloop": "yes (0.23.0)",
    "claude-gateway": "0.9.0",
    "gateway logs": "GATEWAY_LOG_LEVEL=info, GATEWAY_LOG_FORMAT=json "
    "(access line on; production default)",
    "gateway source": "/work/main/gateway (commit 461fdf2)",
}
TARGETS = readme_table.TARGETS
README = f"# x\n\n## Performance\n\nbefore\n\n{START}\nold table\n{END}\n\nafter: [docs](d.md)\n"


def row(target: str, **figures: float | str | None) -> ProxyRow:
    """A measured row with a pass-through-like figure for whatever `figures` leaves out."""
    base: dict[str, object] = {
        "rps": 1_000.0,
        "pct_of_passthrough": 100.0,
        "cpu_ms_per_req": 0.60,
        "p50_ms": 1.25,
        "ttfb_p50_ms": 1.50,
        "rss_per_stream_kb": 31.0,
        "rss_before_kb": 40_960,
    }
    return ProxyRow(target, **(base | figures))  # type: ignore[arg-type]


def write_run(path: Path, rows: Sequence[ProxyRow], machine: dict[str, str] | None = None) -> Path:
    """A run's JSON exactly as `python -m bench --json` writes it."""
    settings = dataclasses.replace(preset(quick=False), targets=tuple(r.target for r in rows))
    command = f".venv/bin/python -m bench --targets {','.join(TARGETS)} --json {path}"
    placement = "Server under test pinned to CPU 0; load generator and mock upstream on CPU 1"
    report = Report(command, "default", machine or MACHINE, settings, placement, list(rows))
    write_json(report, path)
    return path


def three_runs(tmp_path: Path) -> list[Path]:
    """Three runs: gateway's % straddles its 90% target, Redis misses 80%, p50 meets +0.3 ms,
    LiteLLM was not installed."""
    paths = []
    for number, (gateway_pct, redis_pct, floor_p50) in enumerate(
        [(88.0, 75.0, 1.20), (92.0, 78.0, 1.30), (91.0, 79.4, 1.25)], start=1
    ):
        rows = [
            row("passthrough", p50_ms=floor_p50, cpu_ms_per_req=0.5 + number / 100),
            row("gateway", pct_of_passthrough=gateway_pct, p50_ms=floor_p50 + 0.2),
            row("gateway+memory", pct_of_passthrough=86.0 + number, rss_per_stream_kb=61.0),
            row("gateway+redis", pct_of_passthrough=redis_pct, ttfb_p50_ms=2.0 + number / 10),
            ProxyRow("litellm", skipped="LiteLLM not installed: no uv"),
        ]
        paths.append(write_run(tmp_path / f"run-{number}.json", rows))
    return paths


def cells(block: str, label: str) -> list[str]:
    """The cells of the table row named `label`."""
    (line,) = [line for line in block.splitlines() if line.startswith(f"| {label} |")]
    return [text.strip() for text in line.strip("|").split(" | ")]


def rendered(paths: Sequence[Path], targets: Sequence[str] = TARGETS) -> str:
    return render([load_run(path) for path in paths], targets)


def unwrapped(block: str) -> str:
    """The header paragraph on one line."""
    return block.split("\n\n", maxsplit=1)[0].replace("\n", " ")


def test_each_figure_is_its_range_over_the_runs_next_to_its_target(tmp_path: Path) -> None:
    block = rendered(three_runs(tmp_path))
    assert [
        "gateway, no limits file",
        "1,000",
        "88-92% (target at least 90%: met in 2 of 3 runs)",
        "0.60",
        "+0.20 (target at most +0.3 ms: **met**)",
        "+0.00",
        "31 (target at most 60 KB: **met**)",
        "40.0",
    ] == cells(block, "gateway, no limits file")
    redis = cells(block, "gateway, never-hit limits in Redis")
    assert "75-79% (target at least 80%: **missed**)" == redis[2]
    assert "+0.60 to +0.80 (target at most +1 ms: **met**)" == redis[5]
    memory = cells(block, "gateway, never-hit limits in process")
    assert ("87-89% (target at least 85%: **met**)", "61 (target at most 60 KB: **missed**)") == (
        memory[2],
        memory[6],
    )


def test_the_pass_through_is_the_reference(tmp_path: Path) -> None:
    assert [
        "bare aiohttp pass-through",
        "1,000",
        "100% (the reference)",
        "0.51-0.53",
        "its own: 1.20-1.30 (the reference)",
        "its own: 1.50 (the reference)",
        "31",
        "40.0",
    ] == cells(rendered(three_runs(tmp_path)), "bare aiohttp pass-through")


def test_a_row_no_run_measured_says_so_and_why(tmp_path: Path) -> None:
    """LiteLLM skipped in every run (not installed), gateway+redis-py never asked for."""
    block = rendered(three_runs(tmp_path), [*TARGETS, "gateway+redis-py"])
    assert [
        "LiteLLM proxy",
        "not measured (skipped: LiteLLM not installed: no uv); gateway+redis vs this: "
        "not measured (target gateway+redis at least 50x: not measured)",
        *["not measured"] * 6,
    ] == cells(block, "LiteLLM proxy")
    assert [
        "gateway+redis-py",
        "not measured (not in these runs)",
        *["not measured"] * 6,
    ] == cells(block, "gateway+redis-py")


def test_a_row_one_run_skipped_is_noted_with_its_reason(tmp_path: Path) -> None:
    paths = [
        write_run(tmp_path / "run-1.json", [row("passthrough"), row("gateway")]),
        write_run(
            tmp_path / "run-2.json", [row("passthrough"), ProxyRow("gateway", skipped="no 200")]
        ),
    ]
    block = rendered(paths, ["passthrough", "gateway"])
    assert "1,000 (1 of 2 runs)" == cells(block, "gateway, no limits file")[1]
    assert "- Run 2, gateway: skipped: no 200." in block.splitlines()


def test_a_figure_some_runs_lack_says_how_many_runs_it_comes_from(tmp_path: Path) -> None:
    paths = [
        write_run(
            tmp_path / f"run-{n}.json",
            [row("passthrough"), row("gateway+redis", ttfb_p50_ms=ttfb, pct_of_passthrough=85.0)],
        )
        for n, ttfb in enumerate([2.0, None, 3.0])
    ]
    redis = cells(rendered(paths), "gateway, never-hit limits in Redis")
    assert "+0.50 to +1.50 (2 of 3 runs) (target at most +1 ms: met in 1 of 2 runs)" == redis[5]
    assert "85% (target at least 80%: **met**)" == redis[2]


def test_the_litellm_row_gives_gateway_redis_as_a_multiple_of_it(tmp_path: Path) -> None:
    paths = [
        write_run(
            tmp_path / f"run-{n}.json",
            [
                row("passthrough"),
                row("gateway+redis", rps=2_000.0),
                row("litellm", label="LiteLLM proxy (PyPI 1.108.0)", rps=theirs),
            ],
        )
        for n, theirs in enumerate([38.0, 40.0])
    ]
    (litellm,) = [line for line in rendered(paths).splitlines() if "LiteLLM" in line]
    assert litellm.startswith(
        "| LiteLLM proxy (PyPI 1.108.0) | 38-40; gateway+redis vs this: 50.0-52.6x "
        "(target gateway+redis at least 50x: **met**) |"
    )


def test_the_header_gives_date_commit_machine_command_and_log_settings(tmp_path: Path) -> None:
    header = unwrapped(rendered(three_runs(tmp_path)))
    command = shlex.join([".venv/bin/python", "-m", "bench", "--targets", ",".join(TARGETS)])
    for part in (
        "at commit 461fdf2",
        f"3 run(s) of `{command}` (8 req/s rounds each",
        "2 CPUs (AMD EPYC 7B13), kernel 6.8.0, Python 3.11.7",
        "Server under test pinned to CPU 0",
        "Production defaults: access line at `info`, JSON logs",
        "`make perf-table`",
    ):
        assert part in header
    assert "--json" not in header


def test_runs_not_at_production_defaults_are_not_called_so(tmp_path: Path) -> None:
    logs = "GATEWAY_LOG_LEVEL=warning, GATEWAY_LOG_FORMAT=json (access line off; not the default)"
    quiet = MACHINE | {"gateway logs": logs}
    path = write_run(tmp_path / "run.json", [row("passthrough"), row("gateway")], quiet)
    header = unwrapped(rendered([path]))
    assert "Production defaults" not in header
    assert "**Not at production defaults**: GATEWAY_LOG_LEVEL=warning" in header


def test_a_disturbed_row_is_noted(tmp_path: Path) -> None:
    path = write_run(
        tmp_path / "run.json", [row("passthrough"), row("gateway", latency_other_cpu_pct=40.0)]
    )
    assert "- Run 1, gateway: other processes used up to 40% of a core" in rendered([path])


def test_json_of_another_shape_is_refused(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.json", [row("passthrough")])
    path.write_text(path.read_text().replace('"p50_ms"', '"p50_milliseconds"'))
    with pytest.raises(TableError, match="not the JSON of `python -m bench --json`"):
        load_run(path)


def test_the_readme_is_rewritten_between_its_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    paths = three_runs(tmp_path)
    argv = ["--readme", str(readme), "--from-json", *map(str, paths)]
    assert 0 == readme_table.main(argv)
    text = readme.read_text()
    before, rest = text.split(START)
    inside, after = rest.split(END)
    assert (README.split(START, maxsplit=1)[0], README.split(END)[1]) == (before, after)
    assert f"\n\n{rendered(paths)}\n" == inside
    assert 0 == readme_table.main(argv)  # again: the same README
    assert text == readme.read_text()


@pytest.mark.parametrize(
    "text",
    [
        "# x\n\nno markers\n",
        f"# x\n{START}\nonly the start\n",
        f"# x\n{START}\n{END}\n{START}\n{END}\n",
    ],
    ids=["none", "no end", "twice"],
)
def test_a_readme_without_its_markers_is_refused_before_any_run(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    monkeypatch.setattr(readme_table, "run_bench", pytest.fail)
    assert 2 == readme_table.main(["--readme", str(readme)])
    assert f"exactly one {START} and one {END}" in capsys.readouterr().err
    assert text == readme.read_text()


def test_the_command_takes_its_runs_one_after_another_and_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--runs` bench runs, each as `python -m bench --targets ... --json DIR/run-N.json`."""
    readme = tmp_path / "README.md"
    readme.write_text(README)
    keep = tmp_path / "kept"
    taken: list[list[str]] = []

    def fake_bench(argv: Sequence[str], report: Path) -> int:
        taken.append(list(argv))
        json_path = Path(argv[argv.index("--json") + 1])
        write_run(json_path, [row("passthrough"), row("gateway", pct_of_passthrough=91.0)])
        report.write_text("# claude-gateway bench\n")
        return 0

    monkeypatch.setattr(readme_table, "run_bench", fake_bench)
    argv = ["--readme", str(readme), "--keep", str(keep), "--runs", "2", "--rounds", "4"]
    assert 0 == readme_table.main(argv)
    assert [[*readme_table.bench_argv(TARGETS, keep / f"run-{n}.json", 4)] for n in (1, 2)] == taken
    assert ["-m", "bench", "--targets", ",".join(TARGETS)] == taken[0][1:5]
    assert {"run-1.json", "run-1.md", "run-2.json", "run-2.md"} == {
        path.name for path in keep.iterdir()
    }
    assert "91% (target at least 90%: **met**)" in readme.read_text()


def test_a_failed_run_leaves_the_readme_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    monkeypatch.setattr(readme_table, "run_bench", lambda argv, report: 1)
    assert 2 == readme_table.main(["--readme", str(readme), "--keep", str(tmp_path / "k")])
    assert README == readme.read_text()


def test_dry_run_prints_the_block_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = three_runs(tmp_path)
    missing = tmp_path / "no-README.md"
    argv = ["--dry-run", "--readme", str(missing), "--from-json", *map(str, paths)]
    assert 0 == readme_table.main(argv)
    assert rendered(paths) == capsys.readouterr().out
    assert not missing.exists()


def test_targets_without_the_pass_through_are_refused() -> None:
    with pytest.raises(SystemExit):
        readme_table.parse_args(["--targets", "gateway,litellm"])


def test_the_repository_readme_has_the_markers() -> None:
    """`make perf-table` can rewrite README.md: its Performance section holds them once."""
    text = readme_table.check_readme(ROOT / "README.md")
    section = text.split("## Performance", 1)[1].split("\n## ", 1)[0]
    assert START in section
    assert END in section
