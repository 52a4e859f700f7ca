"""`RecentDecisions`: the last minute's decisions per group and tenant, and nothing older."""

from __future__ import annotations

from gateway.limits.recent import MAX_KEYS, RecentDecisions


def test_decisions_are_counted_over_the_last_minute_only() -> None:
    recent = RecentDecisions()
    recent.note("sonnet", "", "now", at=1_000.2)
    recent.note("sonnet", "a", "now", at=1_000.9)
    recent.note("sonnet", "a", "rejected", at=1_030.0)
    recent.note("haiku", "a", "queued", at=1_059.5)
    assert recent.per_minute(now=1_059.9) == {
        ("sonnet", ""): {"now": 1},
        ("sonnet", "a"): {"now": 1, "rejected": 1},
        ("haiku", "a"): {"queued": 1},
    }
    assert recent.per_minute(now=1_060.0) == {
        ("sonnet", "a"): {"rejected": 1},
        ("haiku", "a"): {"queued": 1},
    }
    recent.note("sonnet", "a", "now", at=1_200.0)  # old slots are dropped as new ones open
    assert recent.per_minute(now=1_200.0) == {("sonnet", "a"): {"now": 1}}


def test_the_pairs_counted_are_bounded() -> None:
    recent = RecentDecisions()
    for index in range(MAX_KEYS + 10):
        recent.note(f"g{index}", "", "now", at=0.0)
    assert len(recent.per_minute(now=0.0)) == MAX_KEYS
