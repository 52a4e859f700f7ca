"""Tests mirror the modules (as mitmproxy's test/filename_matching.py checks): each gateway
module has its test file, and each test file names a module or is a known behaviour suite."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "gateway"
TESTS = ROOT / "tests"
E2E = TESTS / "e2e"
NOT_MODULES = {"__init__", "__main__"}
"""Files that hold no behaviour of their own: the package marker and `python -m gateway`."""

BEHAVIOUR_SUITES = {
    # tests/<path>: what it tests, since it names no gateway module.
    "test_layout.py": "this file: the layout of gateway/ and tests/",
    "test_sdk_python.py": "the official Python SDK, end to end through the gateway",
    "test_typescript_sdk.py": "the official TypeScript SDK, end to end through the gateway",
    "test_fake_upstream.py": "the fake Anthropic API the suite runs against (tests/support)",
    "test_endpoint_limits.py": "limits on count_tokens and batches, across admission and ticket",
    "test_learned_limits.py": "limits learned from the API's headers, across limiter and ticket",
    "test_dashboards.py": "the Grafana dashboard and alert rules name real metrics",
    "test_prometheus.py": "promtool on the rules and scrape config; a real Prometheus scrape",
    "test_deploy.py": "the Dockerfile, Compose file and Kubernetes manifests, statically",
    "test_docs.py": "the commands and settings quoted in the documentation",
    "test_lock.py": "uv.lock, requirements.lock and pyproject.toml agree",
    "test_ports.py": "bench/ports.py: free ports for the servers tests and the bench start",
    "test_bench_instructions.py": "bench/instructions.py: the callgrind report",
    "test_bench_rounds.py": "bench/report.py and scenario_proxy.py: a row from its rounds",
    "test_bench_targets.py": "bench/targets.py: production logging, the Redis servers",
    "test_bench_access_line.py": "bench/access_line.py: the access line's microbenchmark",
    "test_bench_litellm.py": "bench/litellm_proxy.py and litellm_env.py: the LiteLLM row",
    "test_bench_readme_table.py": "bench/readme_table.py: the README's performance table",
    "limits/test_backends_contract.py": "one contract suite run on every LimitBackend",
    "limits/test_backends_learn.py": "learned-figure merging, the same on every LimitBackend",
    "limits/test_redis_faults.py": "RedisBackend at the moments Redis faults make likely",
}


def gateway_modules() -> list[Path]:
    """Every module under gateway/, relative to it (package markers and __main__ excepted)."""
    return sorted(
        path.relative_to(GATEWAY)
        for path in GATEWAY.rglob("*.py")
        if path.stem not in NOT_MODULES and "__pycache__" not in path.parts
    )


def mirrors(module: Path) -> list[Path]:
    """Where a module's tests may live: the mirrored path, or tests/e2e/ for real processes."""
    name = f"test_{module.stem}.py"
    return [TESTS / module.parent / name, E2E / name]


def mirrored_test_files() -> list[Path]:
    """Test files that should each name a module: tests/ and its subpackages but e2e/,
    relative to tests/ (e2e suites are process-level by nature)."""
    return sorted(
        path.relative_to(TESTS)
        for path in TESTS.rglob("test_*.py")
        if E2E not in path.parents and "node_modules" not in path.parts
    )


def test_every_gateway_module_has_a_test_file() -> None:
    """Each gateway/<pkg>/<name>.py has tests/<pkg>/test_<name>.py (or tests/e2e/test_<name>.py)."""
    missing = [
        f"gateway/{module} -> tests/{module.parent / f'test_{module.stem}.py'}"
        for module in gateway_modules()
        if not any(path.exists() for path in mirrors(module))
    ]
    assert [] == missing


def test_every_test_file_names_a_module_or_is_a_known_suite() -> None:
    """Each tests/<pkg>/test_<name>.py tests gateway/<pkg>/<name>.py, unless it is one of the
    behaviour suites listed (with a reason) in BEHAVIOUR_SUITES."""
    orphans = [
        str(path)
        for path in mirrored_test_files()
        if not (GATEWAY / path.parent / f"{path.stem.removeprefix('test_')}.py").exists()
        and path.as_posix() not in BEHAVIOUR_SUITES
    ]
    assert [] == orphans


def test_every_listed_behaviour_suite_exists_and_names_no_module() -> None:
    """The allowlist does not rot: each entry is a test file that really names no module."""
    stale = [
        name
        for name in BEHAVIOUR_SUITES
        if not (TESTS / name).exists()
        or (GATEWAY / Path(name).parent / f"{Path(name).stem.removeprefix('test_')}.py").exists()
    ]
    assert [] == stale
