"""Loading a limits file: every mistake is one line naming the file, the line and the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.limits import LimitsConfig, LimitsFileError, load_limits

DATA = Path(__file__).parent / "data"


BAD_FILES = [
    ("negative_limit.yaml", "4: groups[0].requests_per_minute: must be >= 0"),
    ("unknown_group_key.yaml", "4: groups[0].request_per_minute: unknown key"),
    ("unknown_top_key.yaml", "3: headrom: unknown key"),
    ("duplicate_group.yaml", "5: groups[1].name: duplicate group name 'sonnet'"),
    ("duplicate_key.yaml", "5: groups[0].requests_per_minute: duplicate key"),
    ("empty_models.yaml", "3: groups[0].models: must not be empty"),
    ("models_not_a_list.yaml", "3: groups[0].models: must be a list"),
    ("missing_name.yaml", "3: groups[0].name: required"),
    (
        "bad_group_name.yaml",
        "2: groups[0].name: must contain only letters, digits, '_', '.' and '-'",
    ),
    ("fractional_limit.yaml", "4: groups[0].tokens_per_day: must be an integer"),
    ("headroom_too_big.yaml", "3: headroom: must be < 1"),
    ("negative_queue_wait.yaml", "2: queue.max_wait_seconds: must be >= 0"),
    ("bad_unmatched.yaml", "1: unmatched_models: must be 'reject' or 'pass'"),
    ("bad_redis_failure.yaml", "1: redis_failure: must be 'fail_open' or 'fail_closed'"),
    ("zero_share.yaml", "2: fail_open_share: must be > 0"),
    (
        "bad_output_reservation.yaml",
        "4: groups[0].output_reservation: "
        "must be estimate, max_tokens, expected, a fraction from 0 to 1, or 'fixed N'",
    ),
    ("negative_count_tokens_rpm.yaml", "2: count_tokens_requests_per_minute: must be >= 0"),
    ("fractional_batch_rpm.yaml", "1: batch_requests_per_minute: must be an integer"),
    (
        "reserved_group_name.yaml",
        "2: groups[0].name: names starting with '_' are reserved for the gateway",
    ),
    ("bad_learn_limits.yaml", "4: groups[0].learn_limits: must be true or false"),
    ("not_a_mapping.yaml", "1: (top level): must be a mapping"),
    ("bad_yaml.yaml", "4: invalid YAML: expected ',' or ']', but got '<scalar>'"),
    ("burst_too_long.yaml", "5: groups[0].burst_seconds: must be <= 60"),
]


@pytest.mark.parametrize(("name", "problem"), BAD_FILES)
def test_bad_file_is_reported_with_file_line_and_problem(name: str, problem: str) -> None:
    """Each tiny bad file fails with one message naming the file, the line and the mistake."""
    path = DATA / name
    with pytest.raises(LimitsFileError) as caught:
        load_limits(path)
    assert f"{path}:{problem}" == str(caught.value)


def test_every_bad_file_has_a_case() -> None:
    """No file in tests/limits/data goes untested."""
    expected = sorted(path.name for path in DATA.glob("*.yaml"))
    assert expected == sorted(name for name, _ in BAD_FILES)


def test_missing_file_is_reported() -> None:
    """A path that does not exist fails with the path and the reason."""
    path = DATA / "absent.yaml"
    with pytest.raises(LimitsFileError) as caught:
        load_limits(path)
    assert f"{path}: cannot read: No such file or directory" == str(caught.value)


def test_several_mistakes_are_reported_together(tmp_path: Path) -> None:
    """Every validation error of a file is listed, one per line."""
    path = tmp_path / "limits.yaml"
    path.write_text("headroom: -1\ngroups:\n  - name: a\n    models: []\n")
    with pytest.raises(LimitsFileError) as caught:
        load_limits(path)
    expected = [
        f"{path}:1: headroom: must be >= 0",
        f"{path}:4: groups[0].models: must not be empty",
    ]
    assert expected == str(caught.value).splitlines()


def test_empty_file_means_no_limits(tmp_path: Path) -> None:
    """An empty limits file loads as the defaults, with no groups."""
    path = tmp_path / "limits.yaml"
    path.write_text("# nothing yet\n")
    assert LimitsConfig() == load_limits(path)


STARTUP_THEN_LOAD = """
import sys
from pathlib import Path

import gateway.app, gateway.cli  # what `python -m gateway serve` imports
assert "yaml" not in sys.modules, "PyYAML imported at start-up"

from gateway.limits import load_limits

config = load_limits(Path(sys.argv[1]))
assert "yaml" in sys.modules
print(",".join(group.name for group in config.groups))
"""


def test_pyyaml_loads_only_when_a_limits_file_is_read(tmp_path: Path) -> None:
    """Starting the gateway does not import PyYAML; reading a limits file does, and works."""
    path = tmp_path / "limits.yaml"
    path.write_text("groups:\n  - name: sonnet\n    models: [claude-sonnet-4]\n")
    done = subprocess.run(
        [sys.executable, "-c", STARTUP_THEN_LOAD, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert "sonnet" == done.stdout.strip()
