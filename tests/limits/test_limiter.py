"""`Limiter`: queueing on the clock, cancellation, caps, settlement, failure policy (its
breaker: test_breaker.py)."""

from __future__ import annotations

from typing import Literal

import pytest

from gateway.limits import (
    Admitted,
    BackendUnavailable,
    Cost,
    Dimension,
    GroupLimits,
    Limiter,
    LimitsConfig,
    MemoryBackend,
    NeverFits,
    Refused,
    Reservation,
    UnknownModel,
    Unlimited,
)
from tests.limits.conftest import ONE_REQUEST, SCOPE, admit, admitted, bucket, limits
from tests.support.fake_clock import FakeClock
from tests.support.flaky_backend import FlakyBackend

RPM, ITPM = bucket(Dimension.REQUESTS, 60), bucket(Dimension.INPUT_TOKENS, 6_000)


@pytest.fixture
def backend(clock: FakeClock) -> FlakyBackend:
    """A healthy in-memory backend that a test can make fail."""
    return FlakyBackend(clock)


@pytest.fixture
def limiter(backend: FlakyBackend, clock: FakeClock) -> Limiter:
    """A limiter on the sonnet limits, failing open, breaker after 3 errors for 10 s."""
    return Limiter(backend, limits(), clock, breaker_threshold=3, breaker_cooldown=10.0)


async def drain_requests(limiter: Limiter) -> None:
    """Use up all 60 requests of the minute."""
    for _ in range(60):
        await admit(limiter)


async def test_admit_with_room_goes_at_once(limiter: Limiter, clock: FakeClock) -> None:
    """With room in every bucket the request is admitted without sleeping."""
    admission = await admit(limiter, Cost(1, 1_000))
    reservation = Reservation((RPM, ITPM), Cost(1, 1_000), 0.0, (59.0, 5_000.0))
    assert Admitted(reservation, "sonnet") == admission
    assert [] == clock.sleeps


async def test_a_queue_wait_is_returned_not_slept(limiter: Limiter, clock: FakeClock) -> None:
    """A request that fits within the queue cap is admitted with its wait; the limiter never
    sleeps (the request's ticket does, and refunds if cancelled meanwhile)."""
    await drain_requests(limiter)
    admission = await admitted(limiter)
    reservation = Reservation((RPM, ITPM), ONE_REQUEST, 1.0, (-1.0, 6_000.0))
    assert (Admitted(reservation, "sonnet"), 1.0, []) == (admission, admission.wait, clock.sleeps)


@pytest.mark.parametrize(
    ("cap", "requested", "admitted"),
    [(5.0, None, True), (5.0, 2.0, True), (5.0, 0.5, False), (0.5, 100.0, False)],
)
async def test_requested_max_wait_is_capped_by_config(
    clock: FakeClock, cap: float, requested: float | None, admitted: bool
) -> None:
    """No request header means the config's queue cap; a header may lower it, never raise it
    (here every request needs a 1 s wait)."""
    limiter = Limiter(MemoryBackend(clock), limits(queue={"max_wait_seconds": cap}), clock)
    await drain_requests(limiter)
    admission = await admit(limiter, max_wait=requested)
    assert admitted == isinstance(admission, Admitted)


async def test_wait_beyond_the_cap_is_rejected_with_retry_after(clock: FakeClock) -> None:
    """A wait longer than the (capped) queue limit is rejected with the wait as retry-after."""
    limiter = Limiter(MemoryBackend(clock), limits(queue={"max_wait_seconds": 0.5}), clock)
    await drain_requests(limiter)
    rejection = await admit(limiter, max_wait=10.0)
    assert Refused(RPM, retry_after=1.0, remaining=0.0) == rejection
    assert [] == clock.sleeps


async def test_cost_above_a_limit_is_never_admitted(limiter: Limiter) -> None:
    """A request bigger than a bucket is rejected at once, naming the bucket and its limit."""
    rejection = await admit(limiter, Cost(1, 7_000))
    assert NeverFits(ITPM, 7_000) == rejection


@pytest.mark.parametrize(
    ("policy", "expected"), [("reject", UnknownModel("gpt-4o")), ("pass", Unlimited())]
)
async def test_unmatched_model_follows_the_policy(
    clock: FakeClock, policy: Literal["reject", "pass"], expected: object
) -> None:
    """A model no group matches is rejected or passed unlimited, as configured."""
    limiter = Limiter(MemoryBackend(clock), limits(unmatched_models=policy), clock)
    assert expected == await limiter.admit(
        scope=SCOPE, model="gpt-4o", cost=ONE_REQUEST, max_wait=0
    )


@pytest.mark.parametrize(
    "config",
    [LimitsConfig(), LimitsConfig(groups=(GroupLimits(name="free", models=("claude-*",)),))],
    ids=["no-groups", "group-without-limits"],
)
async def test_no_limits_configured_means_unlimited(clock: FakeClock, config: LimitsConfig) -> None:
    """With no groups, or a group that sets no limit, every request passes unlimited."""
    limiter = Limiter(MemoryBackend(clock), config, clock)
    assert Unlimited() == await admit(limiter)


@pytest.mark.parametrize(
    ("used", "levels"),
    [(Cost(1, 1_000), (58.0, 5_000.0)), (Cost(1, 5_000), (58.0, 1_000.0))],
    ids=["refund-unused", "charge-overuse"],
)
async def test_settle_moves_the_difference(
    limiter: Limiter, used: Cost, levels: tuple[float, float]
) -> None:
    """Settling refunds what a request reserved but did not use, or charges what it overused."""
    admission = await admit(limiter, Cost(1, 3_000))
    limiter.settle(admission, used)
    after = await admitted(limiter)
    assert levels == after.reservation.levels


async def test_second_settle_is_a_no_op(limiter: Limiter, backend: FlakyBackend) -> None:
    """Only the first settlement of an admission moves tokens."""
    admission = await admit(limiter, Cost(1, 3_000))
    limiter.settle(admission, Cost(1, 1_000))
    limiter.settle(admission, Cost())
    after = await admitted(limiter)
    assert ["reserve", "adjust", "reserve"] == backend.calls
    assert (58.0, 5_000.0) == after.reservation.levels


async def test_refund_gives_everything_back(limiter: Limiter) -> None:
    """A refund (nothing used) returns the whole reservation to every bucket."""
    limiter.settle(await admit(limiter, Cost(1, 3_000)), Cost())
    after = await admitted(limiter)
    assert (59.0, 6_000.0) == after.reservation.levels


async def test_fail_open_admits_on_a_local_share(backend: FlakyBackend, clock: FakeClock) -> None:
    """With Redis down and fail_open, the request is admitted on local buckets of the share."""
    limiter = Limiter(backend, limits(fail_open_share=0.5), clock)
    backend.failing = True
    admission = await admit(limiter, Cost(1, 1_000))
    local = (RPM.scaled(0.5), ITPM.scaled(0.5))
    reservation = Reservation(local, Cost(1, 1_000), 0.0, (29.0, 2_000.0))
    assert Admitted(reservation, "sonnet", fallback=True) == admission


async def test_fail_closed_reports_the_backend_unavailable(
    backend: FlakyBackend, clock: FakeClock
) -> None:
    """With Redis down and fail_closed, the request is refused as unavailable."""
    limiter = Limiter(backend, limits(redis_failure="fail_closed"), clock)
    backend.failing = True
    assert BackendUnavailable() == await admit(limiter)


async def test_fallback_admission_settles_on_the_fallback(
    limiter: Limiter, backend: FlakyBackend
) -> None:
    """An admission made while failing open is settled locally even after Redis is back."""
    backend.failing = True
    admission = await admit(limiter)
    backend.failing = False
    limiter.settle(admission, Cost())
    assert ["reserve"] == backend.calls


async def test_settle_failure_is_dropped(limiter: Limiter, backend: FlakyBackend) -> None:
    """A settlement the backend cannot take is logged and dropped, never raised."""
    admission = await admit(limiter, Cost(1, 3_000))
    backend.failing = True
    limiter.settle(admission, Cost(1, 1_000))
    assert ["reserve", "adjust"] == backend.calls


async def test_bucket_fill_reports_last_seen_levels(limiter: Limiter) -> None:
    """The metrics snapshot holds level / capacity per (group, dimension) from the last admit."""
    await admit(limiter, Cost(1, 3_000))
    expected = {("sonnet", Dimension.REQUESTS): 59 / 60, ("sonnet", Dimension.INPUT_TOKENS): 0.5}
    assert expected == limiter.bucket_fill()


def group_limiter(clock: FakeClock, **group: object) -> Limiter:
    """A limiter whose one group `g` (model `m`) has the given settings."""
    config = LimitsConfig.model_validate({"groups": [{"name": "g", "models": ["m"], **group}]})
    return Limiter(MemoryBackend(clock), config, clock)


def test_the_estimate_reserves_a_learned_high_quantile_not_max_tokens(clock: FakeClock) -> None:
    """By default output is reserved as the group's ~90th percentile (1,024 before it has
    one), never more than max_tokens; with `max_tokens` it is max_tokens."""
    estimate = group_limiter(clock, output_tokens_per_minute=100_000)
    pre_charged = group_limiter(
        clock, output_tokens_per_minute=100_000, output_reservation="max_tokens"
    )
    cold = estimate.cost_for("m", 10, 64_000).output_tokens
    for output in (100, 300):
        estimate.learning.observe("g", None, 0, output)
    assert (1_024, 329, 50, 64_000) == (
        cold,
        estimate.cost_for("m", 10, 64_000).output_tokens,
        estimate.cost_for("m", 10, 50).output_tokens,
        pre_charged.cost_for("m", 10, 64_000).output_tokens,
    )


def test_an_output_reservation_never_exceeds_what_the_limits_hold(clock: FakeClock) -> None:
    """Charged as generated, a reservation is capped by the output limit and by what the
    combined limit leaves beside the input, so max_tokens alone never makes it never fit."""
    capped = group_limiter(clock, output_tokens_per_minute=500, output_reservation="fixed 900")
    combined = group_limiter(clock, tokens_per_minute=1_000)
    assert (500, 700) == (
        capped.cost_for("m", 10, 64_000).output_tokens,
        combined.cost_for("m", 300, 64_000).output_tokens,
    )


def test_a_cached_request_reserves_its_uncached_part_as_learned(clock: FakeClock) -> None:
    """A request with cache breakpoints reserves the input after its last one, scaled by
    what the group's cached requests were charged of theirs (cold: as estimated), never
    more than the whole prompt; a request without breakpoints reserves the whole."""
    limiter = group_limiter(clock, input_tokens_per_minute=30_000)
    cold = limiter.cost_for("m", 50_000, 100, uncached=120).input_tokens
    limiter.learning.observe("g", 100, 150, None, cached=True)
    learned = limiter.cost_for("m", 50_000, 100, uncached=120).input_tokens
    uncached = limiter.cost_for("m", 50_000, 100).input_tokens
    assert (120, 180, 50_000) == (cold, learned, uncached)


async def test_a_live_charge_counts_toward_settlement(limiter: Limiter) -> None:
    """Output charged while a stream ran is not charged again when it settles."""
    admission = await admitted(limiter, Cost(1, 1_000))
    limiter.charge(admission, Cost(input_tokens=500))
    limiter.settle(admission, Cost(1, 1_500))
    refused = await admit(limiter, Cost(1, 4_600), max_wait=0)
    assert Refused(ITPM, retry_after=1.0, remaining=4_500.0) == refused
