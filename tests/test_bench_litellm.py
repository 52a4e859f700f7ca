"""bench's `litellm` row: LiteLLM's proxy from its own venv, in front of the same mock.

The row itself needs LiteLLM installed (`python -m bench.litellm_env`) and is run on demand
(`python -m bench --targets passthrough,gateway+redis,litellm`); what is checked here, with
no install and no network, is what LiteLLM is given (config, environment, command line),
that the pinned requirements are consistent and hash-locked, that a missing install skips
the row instead of failing the bench, and how the report names the row and the ratio.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench import litellm_env, litellm_proxy
from bench.load import HEADERS, MODEL
from bench.mock_upstream import LIMITS
from bench.report import proxy_section, versus_litellm
from bench.scenario_proxy import ProxyRow
from bench.settings import FULL_TARGETS, TARGETS, check_target, preset

MOCK = "http://127.0.0.1:40001"


def config(redis_port: int | None = 40002) -> dict[str, Any]:
    loaded = yaml.safe_load(litellm_proxy.config_yaml(MOCK, redis_port))
    assert isinstance(loaded, dict)
    return loaded


def test_the_bench_model_goes_to_the_mock_as_an_anthropic_deployment() -> None:
    """The load generator's model name, routed as `anthropic/<model>` to the mock, so that
    LiteLLM's /v1/messages gets the same body as every other target."""
    (deployment,) = config()["model_list"]
    assert MODEL == deployment["model_name"]
    params = deployment["litellm_params"]
    assert (f"anthropic/{MODEL}", MOCK) == (params["model"], params["api_base"])
    assert params["api_key"]


def test_its_limits_are_never_hit_and_counted_in_redis() -> None:
    """rpm/tpm far above any bench load (and below nothing the mock enforces), counted by
    usage-based-routing-v2 in the bench's redis-server: LiteLLM pays for its limiter."""
    loaded = config()
    params = loaded["model_list"][0]["litellm_params"]
    assert params["rpm"] >= 1_000_000
    assert params["tpm"] >= 1_000_000_000
    assert params["rpm"] <= LIMITS["requests"]
    router = loaded["router_settings"]
    assert "usage-based-routing-v2" == router["routing_strategy"]
    assert ("127.0.0.1", 40002) == (router["redis_host"], router["redis_port"])
    assert not {"redis_host", "redis_port"} & set(config(None)["router_settings"])


def test_the_bench_key_is_its_master_key_and_logging_is_production() -> None:
    """LiteLLM refuses to start without a master key: the bench's x-api-key is it."""
    loaded = config()
    assert HEADERS["x-api-key"] == loaded["general_settings"]["master_key"]
    assert {"set_verbose": False, "json_logs": True}.items() <= loaded["litellm_settings"].items()


def test_its_environment_is_its_own_offline_and_production() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "VIRTUAL_ENV": "/work/main/.venv",
        "PYTHONPATH": "/elsewhere",
        "LITELLM_LOG": "DEBUG",
        "REDIS_HOST": "10.0.0.1",
        "DATABASE_URL": "postgresql://x",
    }
    env = litellm_proxy.server_env(base)
    assert {"PATH": "/usr/bin", "HOME": "/root"}.items() <= env.items()
    assert not {"VIRTUAL_ENV", "PYTHONPATH", "REDIS_HOST", "DATABASE_URL"} & set(env)
    assert "True" == env["LITELLM_LOCAL_MODEL_COST_MAP"]
    assert ("ERROR", "True") == (env["LITELLM_LOG"], env["LITELLM_TELEMETRY_DISABLED"])


def test_one_worker_on_loopback_from_its_own_cli(tmp_path: Path) -> None:
    argv = litellm_proxy.server_argv(tmp_path / "bin" / "litellm", tmp_path / "c.yaml", 4321)
    assert str(tmp_path / "bin" / "litellm") == argv[0]
    flags = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert {"--host": "127.0.0.1", "--port": "4321", "--num_workers": "1"}.items() <= (
        flags.items()
    )


def test_litellm_is_a_target_run_only_when_named() -> None:
    assert "litellm" in TARGETS
    assert "litellm" not in FULL_TARGETS
    assert "litellm" not in preset(quick=True).targets
    assert check_target("litellm") is None
    assert "only gateway targets" in (check_target("litellm@/tmp") or "")


def test_the_pin_is_one_version_hash_locked() -> None:
    """The .in pins one litellm[proxy]; the compiled .txt holds that version, and every
    requirement in it carries hashes (uv pip sync --require-hashes installs nothing else)."""
    source = (litellm_env.REQUIREMENTS.with_suffix(".in")).read_text()
    (pin,) = re.findall(r"^litellm\[proxy\]==(\S+)$", source, re.MULTILINE)
    assert pin == litellm_env.pinned_version()
    text = litellm_env.REQUIREMENTS.read_text()
    entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
    assert entries
    assert all("--hash=sha256:" in entry for entry in entries)
    assert "uv pip compile" in source
    assert "--generate-hashes" in source


def test_the_env_lives_outside_the_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tmp_path / "claude-gateway-bench" / "litellm-9.9.9" == litellm_env.env_dir("9.9.9")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert litellm_env.env_dir("9.9.9").is_relative_to(Path.home())


def test_an_env_is_reused_only_when_completed_from_these_requirements(tmp_path: Path) -> None:
    requirements = tmp_path / "req.txt"
    requirements.write_text("litellm==9.9.9 \\\n    --hash=sha256:00\n")
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "litellm").write_text("")
    assert not litellm_env.is_complete(root, requirements)  # no marker: a half-made env
    (root / litellm_env.MARKER).write_text(litellm_env.digest(requirements))
    assert litellm_env.is_complete(root, requirements)
    requirements.write_text("litellm==9.9.10 \\\n    --hash=sha256:01\n")
    assert not litellm_env.is_complete(root, requirements)  # another lock: reinstall


def test_no_install_means_a_reason_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without uv, or with an install that fails (no network), ensure_env raises its own
    error with the reason, which the launcher turns into a skipped row; nothing half-made
    stays behind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    requirements = tmp_path / "req.txt"
    requirements.write_text("litellm==9.9.9 \\\n    --hash=sha256:00\n")
    monkeypatch.setattr(litellm_env, "find_uv", lambda: None)
    with pytest.raises(litellm_env.LitellmUnavailableError, match="uv not found"):
        litellm_env.ensure_env(requirements, quiet=True)
    failing = tmp_path / "uv"
    failing.write_text("#!/bin/sh\necho 'error: Failed to fetch: no network' >&2\nexit 2\n")
    failing.chmod(0o755)
    monkeypatch.setattr(litellm_env, "find_uv", lambda: str(failing))
    with pytest.raises(litellm_env.LitellmUnavailableError, match="no network"):
        litellm_env.ensure_env(requirements, quiet=True)
    assert not litellm_env.env_dir("9.9.9").exists()


def test_the_report_names_the_row_and_gives_the_ratio() -> None:
    ours = ProxyRow("gateway+redis", rps=3050.0, cpu_ms_per_req=0.33)
    theirs = ProxyRow("litellm", label=litellm_proxy.label("9.9.9"), rps=61.0)
    theirs.cpu_ms_per_req = 15.9
    theirs.notes.append("- litellm: configured so")
    note = versus_litellm({"gateway+redis": ours, "litellm": theirs})
    assert note is not None
    assert note.startswith("- gateway+redis is 50.0x LiteLLM's req/s (3,050 vs 61.0); meets")
    section = "\n".join(proxy_section([ours, theirs], preset(quick=True), "pinned"))
    assert "| LiteLLM proxy (PyPI 9.9.9) | 61 |" in section
    assert "- litellm: configured so" in section
    assert versus_litellm({"gateway+redis": ours}) is None


def test_a_skipped_litellm_row_says_why() -> None:
    row = ProxyRow("litellm", label="LiteLLM proxy (PyPI 9.9.9)", skipped="LiteLLM not installed")
    section = "\n".join(proxy_section([row], preset(quick=True), "pinned"))
    assert "| LiteLLM proxy (PyPI 9.9.9) | skipped: LiteLLM not installed |" in section


def test_a_slow_rows_short_latency_samples_are_told() -> None:
    """At ~20 ms a request the 15 s budget ends LiteLLM's latency loop early: a note says
    how many samples its percentiles come from; a row that got them all has no such note."""
    s = preset(quick=False)
    slow = ProxyRow("litellm", rps=50.0, latency_count=640, ttfb_count=200)
    fast = ProxyRow("gateway+redis", rps=2000.0, latency_count=1000, ttfb_count=200)
    section = "\n".join(proxy_section([fast, slow], s, "pinned"))
    assert "- litellm: latency from 640 of 1,000 sequential requests" in section
    assert "- gateway+redis: latency from" not in section
