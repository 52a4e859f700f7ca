"""The limits file's model: groups and their matching, bucket specs, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.limits import (
    BucketSpec,
    Dimension,
    GroupLimits,
    LimitsConfig,
    load_limits,
)

DATA = Path(__file__).parent / "data"
EXAMPLE = Path(__file__).parents[2] / "config" / "limits.example.yaml"


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
