"""The limits file: validation with file:line messages, group matching and bucket specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.limits import (
    BucketSpec,
    Dimension,
    GroupLimits,
    LimitsConfig,
    LimitsFileError,
    load_limits,
)

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parents[2] / "config" / "limits.example.yaml"

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


def test_example_file_loads_with_build_tier_groups() -> None:
    """The shipped example is valid and maps each model class to its Build-tier limits."""
    config = load_limits(EXAMPLE)
    build_tier = {
        Dimension.REQUESTS: 5_000,
        Dimension.INPUT_TOKENS: 5_000_000,
        Dimension.OUTPUT_TOKENS: 1_000_000,
    }
    models = ["claude-opus-4-1", "claude-sonnet-4-5-20250929", "claude-haiku-4-5"]
    groups = [config.group_for(model) for model in models]
    expected = [("opus", build_tier), ("sonnet", build_tier), ("haiku", build_tier)]
    assert expected == [(g.name, g.limits()) for g in groups if g is not None]


def test_defaults_match_the_documented_ones() -> None:
    """Without a file: 30 s queue, 2% headroom, reject unknown models, fail open at full share."""
    config = LimitsConfig()
    actual = (
        config.queue.max_wait_seconds,
        config.headroom,
        config.unmatched_models,
        config.redis_failure,
        config.fail_open_share,
    )
    assert (30.0, 0.02, "reject", "fail_open", 1.0) == actual


def test_first_matching_group_wins() -> None:
    """Groups are tried in file order with glob patterns; the first match is the group."""
    config = LimitsConfig(
        groups=(
            GroupLimits(name="sonnet-45", models=("claude-sonnet-4-5*",), requests_per_minute=1),
            GroupLimits(name="sonnet", models=("claude-sonnet-4*", "claude-3-7-sonnet*")),
        )
    )
    names = [
        getattr(config.group_for(model), "name", None)
        for model in ("claude-sonnet-4-5", "claude-sonnet-4-0", "claude-3-7-sonnet-latest", "gpt")
    ]
    assert ["sonnet-45", "sonnet", "sonnet", None] == names


def test_buckets_for_takes_headroom_off_each_limit() -> None:
    """Each configured dimension becomes a bucket of the scope holding limit less headroom."""
    group = GroupLimits(
        name="haiku", models=("claude-haiku-*",), requests_per_minute=4_000, tokens_per_day=1_000
    )
    config = LimitsConfig(headroom=0.5, groups=(group,))
    expected = [
        BucketSpec("k1", "haiku", Dimension.REQUESTS, 4_000, 2_000.0),
        BucketSpec("k1", "haiku", Dimension.TOKENS_PER_DAY, 1_000, 500.0),
    ]
    assert expected == config.buckets_for(group, "k1")


def test_config_is_frozen() -> None:
    """A loaded config cannot be changed in place."""
    config = LimitsConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.headroom = 0.5
