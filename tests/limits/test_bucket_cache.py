"""`BucketCache`: cached groups and buckets, bounded, and rebuilt when limits are learned."""

from __future__ import annotations

from gateway.limits import (
    Admitted,
    BucketSpec,
    Cost,
    Dimension,
    GroupLimits,
    Limiter,
    LimitsConfig,
    MemoryBackend,
    Unlimited,
)
from gateway.limits.bucket_cache import BucketCache
from gateway.limits.learned_limits import LearnedLimits
from tests.support.fake_clock import FakeClock

SONNET = GroupLimits(name="sonnet", models=("claude-sonnet-4*",), requests_per_minute=60)
LEARNING = GroupLimits(name="opus", models=("claude-opus-4*",), learn_limits=True)
CONFIG = LimitsConfig(
    headroom=0.0, groups=(SONNET, LEARNING), batch_requests_per_minute=10, fail_open_share=0.5
)


def cache(*, max_entries: int = 8) -> BucketCache:
    """A cache on `CONFIG` with a small bound and an empty learned table."""
    return BucketCache(CONFIG, LearnedLimits(max_groups=10), learn_all=False,
                       max_entries=max_entries)  # fmt: skip


def test_buckets_match_the_config_and_are_built_once() -> None:
    """A (group, scope) gets the file's buckets, the same tuple on every later call."""
    cached = cache()
    first = cached.buckets(SONNET, "k1")
    assert (tuple(CONFIG.buckets_for(SONNET, "k1")), True) == (
        first,
        first is cached.buckets(SONNET, "k1"),
    )


def test_distinct_scopes_and_models_never_exceed_the_bound() -> None:
    """A flood of scopes and model names keeps each table at its bound, answers still right."""
    cached = cache(max_entries=8)
    for index in range(100):
        cached.buckets(SONNET, f"k{index}")
        cached.group_for(f"claude-sonnet-4-{index}")
        cached.group_for(f"unknown-{index}")
    expected = (SONNET, None, tuple(CONFIG.buckets_for(SONNET, "k0")))
    assert expected == (
        cached.group_for("claude-sonnet-4-5"),
        cached.group_for("unknown-0"),
        cached.buckets(SONNET, "k0"),
    )
    assert len(cached) <= 16


def test_endpoint_buckets_match_the_config() -> None:
    """An endpoint's bucket comes from the file, and none when it sets no limit."""
    cached = cache()
    assert (tuple(CONFIG.endpoint_buckets("batches", "k1")), ()) == (
        cached.endpoint_buckets("batches", "k1"),
        cached.endpoint_buckets("count_tokens", "k1"),
    )


def test_fallback_buckets_hold_the_fail_open_share() -> None:
    """The fail-open copies hold `fail_open_share` of each bucket."""
    buckets = cache().buckets(SONNET, "k1")
    assert [bucket.scaled(0.5) for bucket in buckets] == cache().fallback(buckets)


def test_per_model_group_is_dropped_once_the_learned_table_is_full() -> None:
    """Without a file, a kept per-model group stops answering when no room is left for it."""
    learned = LearnedLimits(max_groups=1)
    cached = BucketCache(LimitsConfig(), learned, learn_all=True)
    first = cached.group_for("model-a")
    learned.learn("model-b", {Dimension.REQUESTS: 5})
    assert ("model-a", None) == (getattr(first, "name", None), cached.group_for("model-a"))


async def test_learned_limits_apply_to_the_next_admission() -> None:
    """Limits learned after the group's buckets were cached bind the very next request."""
    clock = FakeClock()
    limiter = Limiter(MemoryBackend(clock), CONFIG, clock)
    first = await limiter.admit(scope="k1", model="claude-opus-4-1", cost=Cost(1), max_wait=0)
    limiter.learn_limits("opus", {Dimension.REQUESTS: 1})
    second = await limiter.admit(scope="k1", model="claude-opus-4-1", cost=Cost(1), max_wait=0)
    expected = (BucketSpec.create("k1", "opus", Dimension.REQUESTS, 1),)
    assert isinstance(first, Admitted)
    assert isinstance(second, Admitted)
    assert ((), expected) == (first.reservation.buckets, second.reservation.buckets)


async def test_learned_limits_add_to_configured_buckets() -> None:
    """A learning group with a configured RPM gains the learned ITPM, after the RPM."""
    clock = FakeClock()
    group = SONNET.model_copy(update={"learn_limits": True})
    limiter = Limiter(MemoryBackend(clock), CONFIG.model_copy(update={"groups": (group,)}), clock)
    model = "claude-sonnet-4-5"
    await limiter.admit(scope="k1", model=model, cost=Cost(1), max_wait=0)
    limiter.learn_limits("sonnet", {Dimension.REQUESTS: 5, Dimension.INPUT_TOKENS: 100})
    admitted = await limiter.admit(scope="k1", model=model, cost=Cost(1), max_wait=0)
    expected = (
        BucketSpec.create("k1", "sonnet", Dimension.REQUESTS, 60),
        BucketSpec.create("k1", "sonnet", Dimension.INPUT_TOKENS, 100),
    )
    assert isinstance(admitted, Admitted)
    assert expected == admitted.reservation.buckets


async def test_unmatched_model_stays_unlimited_when_passing() -> None:
    """A cached miss still follows `unmatched_models: pass`."""
    clock = FakeClock()
    config = CONFIG.model_copy(update={"unmatched_models": "pass"})
    limiter = Limiter(MemoryBackend(clock), config, clock)
    outcomes = [
        await limiter.admit(scope="k1", model="other", cost=Cost(1), max_wait=0) for _ in range(2)
    ]
    assert [Unlimited(), Unlimited()] == outcomes


def test_a_workers_share_scales_every_bucket_as_the_fallback_does() -> None:
    """With `share` (GATEWAY_WORKER_LIMITS=divide) every group and endpoint bucket holds and
    refills that part of its limit, scaled by the same `BucketSpec.scaled`."""
    cached = BucketCache(CONFIG, LearnedLimits(max_groups=10), learn_all=False, share=0.25)
    assert (
        tuple(bucket.scaled(0.25) for bucket in CONFIG.buckets_for(SONNET, "k1")),
        tuple(bucket.scaled(0.25) for bucket in CONFIG.endpoint_buckets("batches", "k1")),
    ) == (cached.buckets(SONNET, "k1"), cached.endpoint_buckets("batches", "k1"))


async def test_a_limiter_with_half_the_share_admits_half_the_burst() -> None:
    """One of two workers dividing 60 RPM admits 30 at once and refuses the 31st."""
    clock = FakeClock()
    limiter = Limiter(MemoryBackend(clock), CONFIG, clock, share=0.5)
    outcomes = [
        await limiter.admit(scope="k1", model="claude-sonnet-4-5", cost=Cost(1), max_wait=0)
        for _ in range(31)
    ]
    assert [True] * 30 + [False] == [isinstance(outcome, Admitted) for outcome in outcomes]
