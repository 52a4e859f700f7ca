"""`pool_of`: aliases, dated ids and family members share the API's pool."""

from __future__ import annotations

import pytest

from gateway.limits.pools import pool_of


@pytest.mark.parametrize(
    ("model", "pool"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4"),
        ("claude-sonnet-4-6", "claude-sonnet-4"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4"),
        ("claude-opus-4-8", "claude-opus-4"),
        ("claude-opus-5", "claude-opus-5"),
        ("claude-sonnet-5-20261001", "claude-sonnet-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("Claude-Sonnet-4-5 ", "claude-sonnet-4"),
        ("some-other-model", "some-other-model"),
    ],
)
def test_models_map_to_the_pool_the_api_counts_them_in(model: str, pool: str) -> None:
    """Dates and `-latest` are dropped; Opus and Sonnet 4.x and 5.x pool by major version."""
    assert pool == pool_of(model)
