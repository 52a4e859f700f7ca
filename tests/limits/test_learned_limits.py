"""`LearnedLimits`: what the API's `-limit` headers taught, per pool, bounded."""

from __future__ import annotations

from gateway.limits import Dimension
from gateway.limits.learned_limits import LearnedLimits


def test_a_model_learns_under_its_pools_name() -> None:
    """Without a limits file a model's learning group is named after its pool."""
    learned = LearnedLimits(max_groups=5)
    alias, dated = (
        learned.model_group("claude-sonnet-4-5"),
        learned.model_group("claude-sonnet-4-5-20250929"),
    )
    assert ("claude-sonnet-4", "claude-sonnet-4") == (
        alias.name if alias else None,
        dated.name if dated else None,
    )


def test_only_positive_limits_are_learned_and_a_change_is_reported() -> None:
    """Zero or negative figures are ignored; learning the same again changes nothing."""
    learned = LearnedLimits(max_groups=5)
    first = learned.learn("g", {Dimension.REQUESTS: 50, Dimension.OUTPUT_TOKENS: 0})
    again = learned.learn("g", {Dimension.REQUESTS: 50})
    assert (True, False, {Dimension.REQUESTS: 50}) == (first, again, learned.limits("g"))


def test_the_table_is_bounded() -> None:
    """Past `max_groups`, a new pool is neither learned nor given a group."""
    learned = LearnedLimits(max_groups=1)
    learned.learn("claude-opus-4", {Dimension.REQUESTS: 10})
    assert (False, None) == (
        learned.learn("claude-haiku-4-5", {Dimension.REQUESTS: 10}),
        learned.model_group("claude-haiku-4-5"),
    )
