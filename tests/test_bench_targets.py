"""bench/targets.py: the gateways' production logging, and the Redis servers the
`gateway+redis*` targets run on (plain, one-node Cluster, TLS with a throwaway CA).

The req/s runs themselves take minutes and are run on demand (`python -m bench`); what is
checked here is what each target is given: its settings and a Redis a client can reach.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio
import redis.asyncio.cluster

from bench.load import LoopResult
from bench.procs import ROOT, Child, CpuUse, Processes, compile_gateway, logged_lines
from bench.report import _cpu_warnings, workers_section
from bench.scenario_proxy import ProxyRow, disturbance, log_size
from bench.scenario_redis import CONFIGS, WORKER_CONFIGS, RedisRow, served_by
from bench.settings import FULL_TARGETS, TARGETS, check_target, preset, split_target
from bench.targets import (
    LISTENING,
    PRODUCTION_LOGS,
    REDIS_TARGETS,
    Launcher,
    env_item,
    gateway_env,
    gateway_source,
    log_settings,
    tls_files,
)

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def test_gateways_log_at_production_defaults(tmp_path: Path) -> None:
    """info and JSON, set explicitly: a .env or the caller's GATEWAY_* cannot change it."""
    mock = Child("mock", subprocess.Popen(["true"]), tmp_path / "mock.log", 12345)
    mock.popen.wait()
    env = gateway_env(23456, mock)
    assert ("info", "json") == (env["GATEWAY_LOG_LEVEL"], env["GATEWAY_LOG_FORMAT"])
    assert PRODUCTION_LOGS.items() <= env.items()


def test_the_report_says_which_log_level_was_measured() -> None:
    assert "GATEWAY_LOG_LEVEL=info, GATEWAY_LOG_FORMAT=json (access line on; production " + (
        "default)"
    ) == log_settings({})
    assert "GATEWAY_LOG_LEVEL=warning, GATEWAY_LOG_FORMAT=json (access line off; not the " + (
        "default)"
    ) == log_settings(dict([env_item("GATEWAY_LOG_LEVEL=warning"), env_item("X=1")]))


def test_gateway_env_items_need_a_key_and_an_equals_sign() -> None:
    assert ("GATEWAY_LOG_LEVEL", "a=b") == env_item("GATEWAY_LOG_LEVEL=a=b")
    for bad in ("GATEWAY_LOG_LEVEL", "=info"):
        with pytest.raises(argparse.ArgumentTypeError):
            env_item(bad)


def test_gateway_source_is_the_tree_the_bench_runs_in(tmp_path: Path) -> None:
    """Gateways start in the bench's own tree, whose `gateway/` comes first on sys.path: a
    PYTHONPATH pointing at another tree does not change it (run the bench from that tree)."""
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__init__.py").write_text("")
    assert gateway_source({"PYTHONPATH": str(tmp_path)}).startswith(f"{ROOT / 'gateway'} (")


def test_the_new_redis_rows_run_only_when_asked_for() -> None:
    assert set(REDIS_TARGETS) <= set(TARGETS)
    assert {"gateway+redis"} == set(REDIS_TARGETS) & set(FULL_TARGETS)
    assert {"GATEWAY_REDIS_CLIENT": "redis-py"} == REDIS_TARGETS["gateway+redis-py"].env
    assert {"GATEWAY_REDIS_CLUSTER": "true"} == REDIS_TARGETS["gateway+redis-cluster"].env


def test_log_size_counts_lines_and_bytes(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(b'{"event": "request"}\n' * 3)
    child = Child("gateway", subprocess.Popen(["true"]), log, 1)
    child.popen.wait()
    assert (3, 63) == log_size(child)


def test_disturbed_rounds_are_noted_without_a_warning() -> None:
    row = ProxyRow("gateway", other_cpu_pct=3.0, round_other_pct=[2.0, 40.0, 1.0, 22.0])
    assert [
        "- gateway: other processes used more than 15% of a core in 2 of 4 req/s rounds "
        "(up to 40%); the medians above absorb a few"
    ] == _cpu_warnings(row)


@needs_openssl
def test_the_throwaway_ca_signs_a_certificate_for_127_0_0_1(tmp_path: Path) -> None:
    files = tls_files(tmp_path / "tls")
    verify = ["openssl", "verify", "-CAfile", str(files.ca), "-verify_ip", "127.0.0.1"]
    done = subprocess.run([*verify, str(files.cert)], capture_output=True, text=True, check=False)
    assert f"{files.cert}: OK" == done.stdout.strip()
    assert files == tls_files(tmp_path / "tls")  # made once per folder


@pytest.fixture
async def launcher() -> AsyncIterator[Launcher]:
    procs = Processes()
    try:
        yield Launcher(procs)
    finally:
        procs.stop_all()
        shutil.rmtree(procs.logdir, ignore_errors=True)


@needs_redis
async def test_a_plain_redis_answers_on_its_url(launcher: Launcher) -> None:
    server = await launcher.redis(kind="plain")
    client = redis.asyncio.Redis.from_url(launcher.redis_url(server, "plain"))
    try:
        assert await client.ping()
    finally:
        await client.aclose()


@needs_redis
async def test_a_cluster_node_owns_every_slot(launcher: Launcher) -> None:
    server = await launcher.redis(kind="cluster")
    client = redis.asyncio.cluster.RedisCluster.from_url(launcher.redis_url(server, "cluster"))
    try:
        assert "ok" == (await client.cluster_info())["cluster_state"]
        assert await client.set("{scope:group}:x", "1")
    finally:
        await client.aclose()


@needs_redis
@needs_openssl
async def test_a_tls_redis_answers_rediss_with_the_throwaway_ca(launcher: Launcher) -> None:
    """The URL the gateway gets: rediss:// with `ssl_ca_certs`; the certificate verifies
    (hostname checks included) against the CA made for the run."""
    server = await launcher.redis(kind="tls")
    url = launcher.redis_url(server, "tls")
    assert url.startswith("rediss://127.0.0.1:")
    assert "ssl_ca_certs=" in url
    client = redis.asyncio.Redis.from_url(url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


def test_a_gateway_target_may_come_from_another_tree(tmp_path: Path) -> None:
    """`gateway+redis@/tmp/clone` serves that clone's gateway next to this tree's, for an A/B
    within one run; the tree must hold a gateway package, and only gateways can move."""
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__main__.py").write_text("")
    (tmp_path / "gateway" / "__init__.py").write_text("")
    assert ("gateway+redis", tmp_path) == split_target(f"gateway+redis@{tmp_path}")
    assert ("gateway", None) == split_target("gateway")
    assert check_target(f"gateway+redis-py@{tmp_path}") is None
    assert f"{tmp_path / 'x'} holds no gateway/ package" in str(
        check_target(f"gateway@{tmp_path / 'x'}")
    )
    assert "only gateway targets" in str(check_target(f"passthrough@{tmp_path}"))
    assert "unknown target gateway+sqlite" == check_target("gateway+sqlite")
    assert gateway_source({}, tmp_path).startswith(f"{tmp_path / 'gateway'} (")


def test_a_round_is_as_disturbed_as_its_worst_window() -> None:
    """Other processes' CPU in any target's window of a round marks the whole round for a
    redo: the per-round ratios compare windows of the same round."""
    loop = LoopResult(requests=100, elapsed=1.0, failures=Counter())
    windows = [(CpuUse(1.0, {"server": 0.9}, other), loop) for other in (3.0, 41.0, 0.0)]
    assert 41.0 == disturbance(windows)
    assert 0.0 == disturbance([])


def test_the_workers_scenario_compares_one_and_two_workers_of_one_gateway() -> None:
    """`--scenario workers` runs one instance of 1 then 2 workers, without and with Redis."""
    assert [("no limits", 1, 1), ("no limits", 1, 2), ("redis", 1, 1), ("redis", 1, 2)] == list(
        WORKER_CONFIGS
    )
    assert all(workers == 1 for _, _, workers in CONFIGS)


def test_served_by_counts_each_workers_access_lines(tmp_path: Path) -> None:
    """Requests per worker come from the access lines' `worker` field; other lines are not
    requests, and the bench waits for as many `listening` lines as workers."""
    log = tmp_path / "gateway.log"
    lines = [
        {"component": "gateway.server", "event": "listening", "worker": 0},
        {"component": "gateway.server", "event": "listening", "worker": 1},
        *({"component": "gateway.access", "event": "request", "worker": w} for w in (0, 1, 1)),
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert ({0: 1, 1: 2}, 2) == (dict(served_by(log)), logged_lines(log, LISTENING))


def test_the_workers_table_gives_the_speed_up_and_the_split() -> None:
    """Each row's req/s relative to the same backend with one worker, and each worker's
    share of the requests."""
    rows = [
        RedisRow("redis", 1, 1, rps=2_000.0),
        RedisRow("redis", 1, 2, rps=2_500.0, served_by={0: 300, 1: 100}),
    ]
    table = [line for line in workers_section(rows, preset(quick=True)) if "| redis |" in line]
    assert [["1", "2,000", "1.00x", "-"], ["2", "2,500", "1.25x", "75% / 25%"]] == [
        [cells[1], cells[2], cells[3], cells[-1]]
        for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in table)
    ]
    assert "redis x1 (2 workers)" == rows[1].name


def test_the_served_package_is_compiled_even_where_python_writes_no_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bench gateways start from .pyc files as installed ones do: a process that compiles
    its modules keeps the compiler's memory, and the RSS columns would not be what users run."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    package = tmp_path / "gateway"
    (package / "limits").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "limits" / "backend.py").write_text("VALUE = 1\n")
    compile_gateway(tmp_path)
    tag = sys.implementation.cache_tag
    assert (package / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    assert (package / "limits" / "__pycache__" / f"backend.{tag}.pyc").is_file()
