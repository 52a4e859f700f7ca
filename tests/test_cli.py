"""The command line: version, check-config, readable configuration errors, exit codes."""

from __future__ import annotations

from pathlib import Path

from gateway import __version__
from tests.support.processes import run_cli


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
