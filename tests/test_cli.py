"""The command line: version, check-config, readable configuration errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway import __version__
from tests.support.processes import run_cli, running_gateway


def test_version(tmp_path: Path) -> None:
    """--version prints the package version."""
    result = run_cli("--version", cwd=tmp_path)
    assert (0, f"claude-gateway {__version__}") == (result.returncode, result.stdout.strip())


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    """check-config validates and prints every setting, the Redis password masked."""
    result = run_cli(
        "check-config", cwd=tmp_path, redis_url="redis://app:hunter2@redis:6379/0", port="9000"
    )
    assert 0 == result.returncode
    assert "  GATEWAY_PORT=9000" in result.stdout.splitlines()
    assert "  GATEWAY_REDIS_URL=redis://app:***@redis:6379/0" in result.stdout.splitlines()
    assert "hunter2" not in result.stdout + result.stderr


def test_bad_setting_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    """A bad value gives one clear line naming the setting, exit code 2, no traceback."""
    result = run_cli("serve", cwd=tmp_path, port="eighty")
    assert 2 == result.returncode
    assert [
        "claude-gateway: invalid configuration: GATEWAY_PORT: Input should be a valid integer, "
        "unable to parse string as an integer (got 'eighty')"
    ] == result.stderr.splitlines()
    assert "Traceback" not in result.stderr


def test_dotenv_file_in_working_directory_is_read(tmp_path: Path) -> None:
    """A .env file in the working directory configures the gateway."""
    (tmp_path / ".env").write_text("GATEWAY_PORT=9123\n")
    result = run_cli("check-config", cwd=tmp_path)
    assert "  GATEWAY_PORT=9123" in result.stdout.splitlines()


def test_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    """Serving on a port that is taken exits 1 with a log line, no traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", cwd=tmp_path, host="127.0.0.1", port=str(port))
    assert 1 == result.returncode
    assert "cannot_listen" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_lists_the_limits_in_force(tmp_path: Path) -> None:
    """With the example limits file, check-config prints each group and its limits."""
    example = Path(__file__).resolve().parents[1] / "config" / "limits.example.yaml"
    result = run_cli("check-config", cwd=tmp_path, limits_file=str(example))
    assert 0 == result.returncode
    assert "limits: 3 group(s), unmatched models: reject" in result.stdout.splitlines()
    assert any(
        line.startswith("  sonnet [claude-sonnet-4*]") for line in result.stdout.splitlines()
    )
    assert {
        "endpoint limits: count_tokens_requests_per_minute=10000, batch_requests_per_minute=2000",
        "queue: max_wait_seconds=30, headroom=0.02, redis_failure=fail_open (fail_open_share=1)",
    } <= set(result.stdout.splitlines())


def test_bad_limits_file_names_the_line_and_exits_2(tmp_path: Path) -> None:
    """A limits file with a negative limit fails check-config and serve with the line number."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        "groups:\n  - name: sonnet\n    models: ['claude-*']\n    requests_per_minute: -5\n"
    )
    for command in ("check-config", "serve"):
        result = run_cli(command, cwd=tmp_path, limits_file=str(limits))
        assert 2 == result.returncode
        assert f"{limits}:4: groups[0].requests_per_minute:" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_limits_file_is_a_config_error(tmp_path: Path) -> None:
    """A limits file that does not exist is one readable line and exit code 2."""
    result = run_cli("check-config", cwd=tmp_path, limits_file=str(tmp_path / "nope.yaml"))
    assert 2 == result.returncode
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("redis_url", "line"),
    [
        (
            "http://localhost:6379",
            "GATEWAY_REDIS_URL: must start with redis://, rediss:// or unix:// "
            "(got 'http://localhost:6379')",
        ),
        (
            "redis://:hunter2@localhost:sixty/0",
            "GATEWAY_REDIS_URL: Port could not be cast to integer value as 'sixty' "
            "(got 'redis://:***@localhost:sixty/0')",
        ),
    ],
)
def test_check_config_and_serve_refuse_a_bad_redis_url_alike(
    tmp_path: Path, redis_url: str, line: str
) -> None:
    """A Redis URL serve could not use fails check-config and serve with one same line, exit 2."""
    limits = tmp_path / "limits.yaml"
    limits.write_text("groups:\n  - name: all\n    models: ['*']\n    requests_per_minute: 60\n")
    results = [
        run_cli(command, cwd=tmp_path, redis_url=redis_url, limits_file=str(limits))
        for command in ("check-config", "serve")
    ]
    expected = (2, [f"claude-gateway: invalid configuration: {line}"], "")
    assert [expected, expected] == [
        (r.returncode, r.stderr.splitlines(), r.stdout) for r in results
    ]


def test_a_misspelt_setting_is_named_with_its_closest_setting(tmp_path: Path) -> None:
    """check-config prints a warning for GATEWAY_REDIS_ULR; serve logs the same warning."""
    result = run_cli("check-config", cwd=tmp_path, redis_ulr="redis://localhost")
    warning = "GATEWAY_REDIS_ULR is not a setting: did you mean GATEWAY_REDIS_URL?"
    assert 0 == result.returncode
    assert f"warning: {warning}" in result.stdout.splitlines()
    with running_gateway(tmp_path, redis_ulr="redis://localhost") as gateway:
        logged = [json.loads(line) for line in gateway.logs().splitlines()]
    assert [warning] == [e["warning"] for e in logged if e["event"] == "configuration_warning"]


def test_an_empty_limits_file_means_pass_through_to_both_commands(tmp_path: Path) -> None:
    """check-config and serve agree that an empty limits file limits nothing."""
    limits = tmp_path / "limits.yaml"
    limits.write_text("")
    result = run_cli("check-config", cwd=tmp_path, limits_file=str(limits))
    with running_gateway(tmp_path, limits_file=str(limits)) as gateway:
        logged = [json.loads(line) for line in gateway.logs().splitlines()]
    reason = f"{limits} sets no limits"
    assert f"limits: none, plain pass-through ({reason})" in result.stdout.splitlines()
    assert [f"{reason}: plain pass-through"] == [
        e["reason"] for e in logged if e["event"] == "limits_disabled"
    ]


def test_credentials_in_the_upstream_url_are_masked_everywhere(tmp_path: Path) -> None:
    """A proxy password in GATEWAY_UPSTREAM_URL is hidden in check-config and in the logs."""
    upstream = "https://gw-user:s3cr3t-pa55@proxy.example/anthropic"
    shown = "https://gw-user:***@proxy.example/anthropic"
    result = run_cli("check-config", cwd=tmp_path, upstream_url=upstream)
    with running_gateway(tmp_path, upstream_url=upstream) as gateway:
        logs = gateway.logs()
    listening = [json.loads(line) for line in logs.splitlines() if '"listening"' in line]
    assert f"  GATEWAY_UPSTREAM_URL={shown}" in result.stdout.splitlines()
    assert [shown] == [line["upstream"] for line in listening]
    assert "s3cr3t" not in result.stdout + result.stderr + logs


def test_keys_new_prints_the_key_once_and_the_line_the_file_keeps(tmp_path: Path) -> None:
    """The printed hash, pasted into a tenant's keys, makes the printed key work: check-config
    then shows the tenant and gateway-key mode, with neither the key nor the upstream key."""
    result = run_cli("keys", "new", "--tenant", "search", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    key = lines[1].strip()
    stored_line = lines[3]
    assert key.startswith("cgw_")
    assert stored_line.startswith('      - "sha256:')
    limits = tmp_path / "limits.yaml"
    limits.write_text(f"tenants:\n  - name: search\n    keys:\n{stored_line}\n")
    checked = run_cli(
        "check-config", cwd=tmp_path, limits_file=str(limits),
        upstream_api_key="sk-ant-upstream-secret-1234",
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "identity: gateway keys; tenants: search (1 key(s))" in checked.stdout
    assert "  GATEWAY_UPSTREAM_API_KEY=(set, hidden)" in checked.stdout.splitlines()
    assert "sk-ant-upstream-secret-1234" not in checked.stdout + checked.stderr
    assert key not in checked.stdout + checked.stderr
    bad = run_cli("keys", "new", "--tenant", "no spaces", cwd=tmp_path)
    assert bad.returncode == 2
    assert "is not a tenant name" in bad.stderr


def test_a_tenant_without_an_upstream_key_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    limits = tmp_path / "limits.yaml"
    limits.write_text("tenants:\n  - name: search\n")
    result = run_cli("check-config", cwd=tmp_path, limits_file=str(limits))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"claude-gateway: invalid configuration: {limits}: tenant 'search' has no upstream key: "
        "set GATEWAY_UPSTREAM_API_KEY (or _FILE), or give the tenant an upstream_key"
    ]


def test_several_workers_with_undivided_in_process_limits_are_refused_alike(
    tmp_path: Path,
) -> None:
    """check-config and serve refuse GATEWAY_WORKERS=2 over in-process limits with one same
    line and exit code 2, before any worker starts."""
    limits = tmp_path / "limits.yaml"
    limits.write_text("groups:\n  - name: all\n    models: ['*']\n    requests_per_minute: 60\n")
    results = [
        run_cli(*command, cwd=tmp_path, limits_file=str(limits))
        for command in (("check-config", "--workers", "2"), ("serve", "--workers", "2"))
    ]
    line = (
        "claude-gateway: invalid configuration: GATEWAY_WORKERS=2 with in-process limits: each "
        "worker would enforce every limit on its own (2x in total); set GATEWAY_REDIS_URL to "
        "share one budget, or GATEWAY_WORKER_LIMITS=divide to give each worker 1/2 of every limit"
    )
    expected = (2, [line], "")
    assert [expected, expected] == [
        (r.returncode, r.stderr.splitlines(), r.stdout) for r in results
    ]


def test_check_config_says_how_workers_share_the_limits(tmp_path: Path) -> None:
    """With several workers, check-config's last line names them, the port, and the limits'
    division."""
    limits = tmp_path / "limits.yaml"
    limits.write_text("groups:\n  - name: all\n    models: ['*']\n    requests_per_minute: 60\n")
    result = run_cli(
        "check-config", cwd=tmp_path, limits_file=str(limits), workers="2", worker_limits="divide"
    )
    line = (
        "workers: 2 on port 8080 (SO_REUSEPORT), each enforcing 1/2 of every limit in process "
        "(GATEWAY_WORKER_LIMITS)"
    )
    assert (0, line) == (result.returncode, result.stdout.splitlines()[-1])


@pytest.mark.parametrize("count", ["0", "two"])
def test_a_bad_workers_flag_is_a_usage_error(tmp_path: Path, count: str) -> None:
    """`--workers` takes a whole number of at least 1; anything else is argparse's exit 2."""
    result = run_cli("serve", "--workers", count, cwd=tmp_path)
    error = f"must be a whole number >= 1 (got '{count}')"
    line = f"claude-gateway serve: error: argument --workers: {error}"
    assert (2, line) == (result.returncode, result.stderr.splitlines()[-1])


def test_the_tenants_example_is_valid_and_check_config_lists_its_tenants(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "config" / "tenants.example.yaml"
    result = run_cli(
        "check-config", cwd=tmp_path, limits_file=str(example),
        upstream_api_key="sk-ant-upstream-example",
        extra_env={"ANTHROPIC_RESEARCH_KEY": "sk-ant-research-example"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "identity: gateway keys; tenants: search (1 key(s)), research (0 key(s))" in lines
    assert (
        "  tenant search: models=claude-sonnet-4*,claude-haiku-4*, keys=1, "
        "sonnet.input_tokens=800000, sonnet.output_tokens=160000, usd_per_day=250, "
        "usd_per_month=5000"
    ) in lines
    assert "sk-ant-" not in result.stdout + result.stderr
    missing = run_cli(
        "check-config", cwd=tmp_path, limits_file=str(example),
        upstream_api_key="sk-ant-upstream-example",
    )  # fmt: skip
    assert missing.returncode == 2
    assert "upstream key 'research-workspace': environment variable ANTHROPIC_RESEARCH_KEY" in (
        missing.stderr
    )
