"""`Limiter`: queueing on the clock, cancellation, caps, settlement, failure policy, breaker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import pytest

from gateway.limits import (
    Admission,
    Admitted,
    BackendUnavailable,
    BucketSpec,
    Cost,
    Dimension,
    GroupLimits,
    LimitBackendError,
    Limiter,
    LimitsConfig,
    MemoryBackend,
    NeverFits,
    NeverFitsRejection,
    Refused,
    Rejected,
    Reservation,
    UnknownModel,
    Unlimited,
)
from gateway.limits.learning import Figures, Lesson
from tests.limits.conftest import SCOPE, bucket
from tests.support.fake_clock import FakeClock

MODEL = "claude-sonnet-4-5"
SONNET = GroupLimits(
    name="sonnet",
    models=("claude-sonnet-4*",),
    requests_per_minute=60,
    input_tokens_per_minute=6_000,
)
RPM, ITPM = bucket(Dimension.REQUESTS, 60), bucket(Dimension.INPUT_TOKENS, 6_000)
ONE_REQUEST = Cost(requests=1)


def limits(**overrides: object) -> LimitsConfig:
    """The sonnet group at 60 RPM / 6,000 ITPM, no headroom, plus `overrides`."""
    fields: dict[str, object] = {"headroom": 0.0, "groups": (SONNET,), **overrides}
    return LimitsConfig.model_validate(fields)


class FlakyBackend:
    """A MemoryBackend that raises LimitBackendError while `failing`, counting every call."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryBackend(clock)
        self.failing = False
        self.calls: list[str] = []

    async def reserve(
        self,
        buckets: Sequence[BucketSpec],
        cost: Cost,
        *,
        max_wait: float,
        now: float | None = None,
    ) -> Reservation | Refused | NeverFits:
        self._call("reserve")
        return await self.inner.reserve(buckets, cost, max_wait=max_wait, now=now)

    def adjust(self, reservation: Reservation, delta: Cost, *, now: float | None = None) -> None:
        self._call("adjust")
        self.inner.adjust(reservation, delta, now=now)

    async def cap(
        self, buckets: Sequence[BucketSpec], ceilings: Sequence[float], *, now: float | None = None
    ) -> None:
        self._call("cap")
        await self.inner.cap(buckets, ceilings, now=now)

    async def learn(self, group: str, lesson: Lesson, *, now: float | None = None) -> Figures:
        self._call("learn")
        return await self.inner.learn(group, lesson, now=now)

    async def ping(self) -> None:
        self._call("ping")

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failing:
            raise LimitBackendError("connection refused")


class HeldClock(FakeClock):
    """A fake clock whose sleeps never end, so a test can cancel a queued request."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await asyncio.get_running_loop().create_future()


@pytest.fixture
def backend(clock: FakeClock) -> FlakyBackend:
    """A healthy in-memory backend that a test can make fail."""
    return FlakyBackend(clock)


@pytest.fixture
def limiter(backend: FlakyBackend, clock: FakeClock) -> Limiter:
    """A limiter on the sonnet limits, failing open, breaker after 3 errors for 10 s."""
    return Limiter(backend, limits(), clock, breaker_threshold=3, breaker_cooldown=10.0)


async def admit(
    limiter: Limiter, cost: Cost = ONE_REQUEST, max_wait: float | None = None
) -> Admission:
    """Admit `cost` for the test scope and the sonnet model."""
    return await limiter.admit(scope=SCOPE, model=MODEL, cost=cost, max_wait=max_wait)


async def admitted(limiter: Limiter, cost: Cost = ONE_REQUEST) -> Admitted:
    """Admit `cost` and insist it was admitted."""
    admission = await admit(limiter, cost)
    assert isinstance(admission, Admitted), admission
    return admission


async def drain_requests(limiter: Limiter) -> None:
    """Use up all 60 requests of the minute."""
    for _ in range(60):
        await admit(limiter)


async def test_admit_with_room_goes_at_once(limiter: Limiter, clock: FakeClock) -> None:
    """With room in every bucket the request is admitted without sleeping."""
    admission = await admit(limiter, Cost(1, 1_000))
    reservation = Reservation((RPM, ITPM), Cost(1, 1_000), 0.0, (59.0, 5_000.0))
    assert Admitted(reservation, 0.0, "sonnet") == admission
    assert [] == clock.sleeps


async def test_queue_wait_is_slept_on_the_clock(limiter: Limiter, clock: FakeClock) -> None:
    """A request that fits within the queue cap sleeps its wait on the clock, then goes."""
    await drain_requests(limiter)
    start = clock.now()
    admission = await admit(limiter)
    reservation = Reservation((RPM, ITPM), ONE_REQUEST, 1.0, (-1.0, 6_000.0))
    assert Admitted(reservation, 1.0, "sonnet") == admission
    assert ([1.0], start + 1.0) == (clock.sleeps, clock.now())


async def test_cancel_while_queued_refunds_reservation() -> None:
    """A request cancelled while it sleeps in the queue gives its whole reservation back."""
    clock = HeldClock()
    backend = MemoryBackend(clock)
    limiter = Limiter(backend, limits(), clock)
    await drain_requests(limiter)
    queued = asyncio.create_task(admit(limiter))
    await clock.sleeping.wait()
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    after = await backend.reserve([RPM, ITPM], ONE_REQUEST, max_wait=0)
    assert Refused(RPM, retry_after=1.0, remaining=0.0) == after  # not 2.0: no debt left


@pytest.mark.parametrize(
    ("requested", "allowed"), [(None, 5.0), (2.0, 2.0), (100.0, 5.0), (-1.0, 0.0)]
)
def test_requested_max_wait_is_capped_by_config(
    clock: FakeClock, requested: float | None, allowed: float
) -> None:
    """No request header means the config's queue cap; a header may lower it, never raise it."""
    limiter = Limiter(MemoryBackend(clock), limits(queue={"max_wait_seconds": 5}), clock)
    assert allowed == limiter.queue_limit(requested)


async def test_wait_beyond_the_cap_is_rejected_with_retry_after(clock: FakeClock) -> None:
    """A wait longer than the (capped) queue limit is rejected with the wait as retry-after."""
    limiter = Limiter(MemoryBackend(clock), limits(queue={"max_wait_seconds": 0.5}), clock)
    await drain_requests(limiter)
    rejection = await admit(limiter, max_wait=10.0)
    assert Rejected("sonnet", RPM, 1.0, 0.0, 60) == rejection
    assert [] == clock.sleeps


async def test_cost_above_a_limit_is_never_admitted(limiter: Limiter) -> None:
    """A request bigger than a bucket is rejected at once, naming the bucket and its limit."""
    rejection = await admit(limiter, Cost(1, 7_000))
    assert NeverFitsRejection("sonnet", ITPM, 7_000, 6_000) == rejection


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
    limiter.refund(admission)
    after = await admitted(limiter)
    assert ["reserve", "adjust", "reserve"] == backend.calls
    assert (58.0, 5_000.0) == after.reservation.levels


async def test_refund_gives_everything_back(limiter: Limiter) -> None:
    """A refund (nothing used) returns the whole reservation to every bucket."""
    limiter.refund(await admit(limiter, Cost(1, 3_000)))
    after = await admitted(limiter)
    assert (59.0, 6_000.0) == after.reservation.levels


async def test_fail_open_admits_on_a_local_share(backend: FlakyBackend, clock: FakeClock) -> None:
    """With Redis down and fail_open, the request is admitted on local buckets of the share."""
    limiter = Limiter(backend, limits(fail_open_share=0.5), clock)
    backend.failing = True
    admission = await admit(limiter, Cost(1, 1_000))
    local = (RPM.scaled(0.5), ITPM.scaled(0.5))
    reservation = Reservation(local, Cost(1, 1_000), 0.0, (29.0, 2_000.0))
    assert Admitted(reservation, 0.0, "sonnet", fallback=True) == admission


async def test_fail_closed_reports_the_backend_unavailable(
    backend: FlakyBackend, clock: FakeClock
) -> None:
    """With Redis down and fail_closed, the request is refused as unavailable."""
    limiter = Limiter(backend, limits(redis_failure="fail_closed"), clock)
    backend.failing = True
    assert BackendUnavailable() == await admit(limiter)


async def test_breaker_opens_after_consecutive_errors(
    limiter: Limiter, backend: FlakyBackend
) -> None:
    """After three errors in a row the backend is skipped: no call, no latency."""
    backend.failing = True
    for _ in range(4):
        await admit(limiter)
    assert (["reserve"] * 3, True) == (backend.calls, limiter.breaker_open)


async def test_breaker_closes_after_cooldown_when_backend_recovers(
    limiter: Limiter, backend: FlakyBackend, clock: FakeClock
) -> None:
    """After the cooldown one request tries the backend again; success closes the breaker."""
    backend.failing = True
    for _ in range(3):
        await admit(limiter)
    backend.failing = False
    clock.advance(9.9)
    skipped = await admitted(limiter)
    clock.advance(0.1)
    tried = await admitted(limiter)
    expected = (True, False, 4, False)
    assert expected == (skipped.fallback, tried.fallback, len(backend.calls), limiter.breaker_open)


async def test_failed_trial_keeps_the_breaker_open_another_cooldown(
    limiter: Limiter, backend: FlakyBackend, clock: FakeClock
) -> None:
    """A trial that fails skips the backend for a whole new cooldown."""
    backend.failing = True
    for _ in range(3):
        await admit(limiter)
    clock.advance(10.0)
    await admit(limiter)  # the trial, failing
    clock.advance(5.0)
    await admit(limiter)  # skipped
    assert (4, True) == (len(backend.calls), limiter.breaker_open)


async def test_fallback_admission_settles_on_the_fallback(
    limiter: Limiter, backend: FlakyBackend
) -> None:
    """An admission made while failing open is settled locally even after Redis is back."""
    backend.failing = True
    admission = await admit(limiter)
    backend.failing = False
    limiter.refund(admission)
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
