"""Bucket values and the shared arithmetic (the Python copy the Lua scripts transcribe)."""

from __future__ import annotations

import pytest

from gateway.limits.model import (
    EXPIRY_MARGIN_MS,
    BucketSpec,
    Cost,
    Dimension,
    NeverFits,
    Refused,
    adjusted,
    changes,
    check_request,
    decide,
    need_ms,
    refilled,
    ttl_ms,
)

RPM = BucketSpec.create("k1", "sonnet", Dimension.REQUESTS, 60)
ITPM = BucketSpec.create("k1", "sonnet", Dimension.INPUT_TOKENS, 6_000)


def test_cost_minus_subtracts_each_field() -> None:
    """`minus` gives the settlement delta field by field, negative where less was used."""
    assert Cost(0, -700, 50) == Cost(1, 300, 250).minus(Cost(1, 1_000, 200))


def test_cost_maps_onto_each_dimension() -> None:
    """Requests, input and output map one to one; tokens and tokens per day are in + out."""
    cost = Cost(1, 300, 200)
    assert [1, 300, 200, 500, 500] == [cost.on(dimension) for dimension in Dimension]


def test_bucket_key_carries_scope_and_group_in_one_hash_tag() -> None:
    """The key is `cgw:{scope:group}:dimension`, so one admission's keys share a slot."""
    assert "cgw:{k1:sonnet}:input_tokens" == ITPM.key


def test_headroom_and_share_reduce_capacity_not_limit() -> None:
    """Headroom and the fail-open share shrink what a bucket holds; `limit` stays as configured."""
    spec = BucketSpec.create("k1", "sonnet", Dimension.REQUESTS, 4_000, headroom=0.5).scaled(0.25)
    assert (4_000, 500.0) == (spec.limit, spec.capacity)


def test_rate_is_capacity_per_period() -> None:
    """Minute buckets refill capacity/60 per second, the day bucket capacity/86400."""
    tpd = BucketSpec.create("k1", "sonnet", Dimension.TOKENS_PER_DAY, 86_400)
    assert (1.0, 100.0, 1.0) == (RPM.rate, ITPM.rate, tpd.rate)


@pytest.mark.parametrize(("scope", "group"), [("", "sonnet"), ("a}b", "sonnet"), ("k1", "a:b")])
def test_names_that_would_break_the_key_are_refused(scope: str, group: str) -> None:
    """An empty scope, braces in a scope or a colon in a group name could collide or split slots."""
    with pytest.raises(ValueError, match="must"):
        BucketSpec.create(scope, group, Dimension.REQUESTS, 60)


def test_check_request_finds_the_bucket_a_cost_never_fits() -> None:
    """A cost above any bucket's capacity is found without touching state."""
    assert NeverFits(ITPM, 6_001) == check_request([RPM, ITPM], Cost(1, 6_001))


@pytest.mark.parametrize(
    "other",
    [
        BucketSpec.create("k2", "sonnet", Dimension.REQUESTS, 60),
        BucketSpec.create("k1", "opus", Dimension.REQUESTS, 60),
    ],
)
def test_check_request_refuses_buckets_of_two_hash_tags(other: BucketSpec) -> None:
    """One admission's buckets must share scope and group, so they share one Redis slot."""
    with pytest.raises(ValueError, match="share scope and group"):
        check_request([RPM, other], Cost(1))


def test_derived_fields_follow_a_scaled_copy() -> None:
    """A scaled copy keeps its key, refills at its own rate and compares unequal."""
    half = ITPM.scaled(0.5)
    assert (ITPM.key, 50.0, False) == (half.key, half.rate, half == ITPM)


def test_equal_specs_share_one_dict_entry() -> None:
    """Specs built twice from the same figures are one dict key (the Redis encoding cache)."""
    again = BucketSpec.create("k1", "sonnet", Dimension.INPUT_TOKENS, 6_000)
    assert {ITPM: 2} == {ITPM: 1, again: 2}


def test_check_request_refuses_a_negative_cost() -> None:
    """Only settlement deltas may be negative, never a reserved cost."""
    with pytest.raises(ValueError, match="negative"):
        check_request([RPM], Cost(-1))


def test_refilled_is_continuous_and_capped() -> None:
    """Refill is linear in elapsed time, capped at capacity; no state means full."""
    actual = [refilled(RPM, (0.0, 10.0), now) for now in (10.5, 40.0, 500.0)]
    assert [0.5, 30.0, 60.0, 60.0] == [*actual, refilled(RPM, None, 0.0)]


def test_refilled_ignores_time_running_backwards() -> None:
    """A `now` before the last write refills nothing (never drains)."""
    assert -3.0 == refilled(RPM, (-3.0, 10.0), 9.0)


def test_need_ms_rounds_up_to_whole_milliseconds() -> None:
    """The wait is rounded up, so sleeping it always repays the debt."""
    rpm7 = BucketSpec.create("k1", "sonnet", Dimension.REQUESTS, 7)
    assert [0, 1_000, 8_572] == [need_ms(RPM, 1.0, 1), need_ms(RPM, 0.0, 1), need_ms(rpm7, 0.0, 1)]


def test_decide_admits_within_max_wait_and_refuses_beyond() -> None:
    """The wait is the longest any bucket needs; beyond max_wait it names that bucket."""
    buckets, amounts, levels = [RPM, ITPM], [1, 500], [0.0, 0.0]
    assert 5_000 == decide(buckets, amounts, levels, max_wait=5.0)
    assert Refused(ITPM, 5.0, 0.0) == decide(buckets, amounts, levels, max_wait=4.999)


def test_ttl_lasts_until_full_plus_margin() -> None:
    """State expires once the bucket would be full again, plus a margin."""
    expected = [EXPIRY_MARGIN_MS, 2_000 + EXPIRY_MARGIN_MS, 62_000 + EXPIRY_MARGIN_MS]
    assert expected == [ttl_ms(RPM, 60.0), ttl_ms(RPM, 58.0), ttl_ms(RPM, -2.0)]


def test_adjusted_caps_refunds_at_capacity() -> None:
    """A refund fills up to capacity and no further; a charge may go into debt."""
    assert [60.0, -10.0] == [adjusted(RPM, 59.5, -3), adjusted(RPM, 0.0, 10)]


def test_changes_skip_zero_amounts_and_empty_buckets() -> None:
    """An adjustment touches only buckets it moves and that can hold anything."""
    blocked = BucketSpec.create("k1", "sonnet", Dimension.OUTPUT_TOKENS, 0)
    assert [(ITPM, -200)] == changes([RPM, ITPM, blocked], Cost(0, -200, 50))


def test_burst_seconds_shrinks_a_minute_bucket_but_not_its_refill() -> None:
    """`burst_seconds: 1` on 60 RPM holds one request and refills one a second; a day bucket
    and a requests bucket below one request are left alone."""
    rpm = BucketSpec.create("s", "g", Dimension.REQUESTS, 60, burst_seconds=1)
    tpd = BucketSpec.create("s", "g", Dimension.TOKENS_PER_DAY, 86_400, burst_seconds=1)
    tiny = BucketSpec.create("s", "g", Dimension.REQUESTS, 30, headroom=0.5, burst_seconds=1)
    assert ((1.0, 1.0), (86_400.0, 1.0), (1.0, 0.25)) == (
        (rpm.capacity, rpm.rate),
        (tpd.capacity, tpd.rate),
        (tiny.capacity, tiny.rate),
    )
