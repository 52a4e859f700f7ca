"""The `LimitBackend` contract, run on every backend with one fake clock.

Each test asserts exact values; the same values on memory, fakeredis and a real Redis are
what proves the Lua scripts and the Python arithmetic agree.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.limits import (
    BucketSpec,
    Cost,
    Dimension,
    LimitBackend,
    MemoryBackend,
    NeverFits,
    Refused,
    Reservation,
)
from gateway.limits.redis_backend import RedisBackend
from tests.limits.conftest import bucket, open_backend
from tests.support.fake_clock import FakeClock

ONE_REQUEST = Cost(requests=1)


async def subscribed(backend: LimitBackend) -> None:
    """Wait until a Redis backend hears the fleet's changes (the memory backend always does)."""
    if isinstance(backend, RedisBackend):
        await asyncio.wait_for(backend.listening.wait(), 5)


async def reserved(
    backend: LimitBackend,
    buckets: list[BucketSpec],
    cost: Cost,
    clock: FakeClock,
    *,
    max_wait: float = 0.0,
) -> Reservation:
    """Reserve at the clock's time and insist the reservation was granted."""
    outcome = await backend.reserve(buckets, cost, max_wait=max_wait, now=clock.now())
    assert isinstance(outcome, Reservation), outcome
    return outcome


async def drain(backend: LimitBackend, spec: BucketSpec, clock: FakeClock) -> None:
    """Take everything `spec` holds (one request per unit of a requests bucket)."""
    if spec.dimension is Dimension.REQUESTS:
        for _ in range(int(spec.capacity)):
            await backend.reserve([spec], ONE_REQUEST, max_wait=0, now=clock.now())
    else:
        cost = Cost(input_tokens=int(spec.capacity))
        await backend.reserve([spec], cost, max_wait=0, now=clock.now())


async def test_fresh_bucket_admits_at_once(backend: LimitBackend, clock: FakeClock) -> None:
    """A bucket never seen is full: the first request goes now and leaves capacity - cost."""
    rpm = bucket(Dimension.REQUESTS, 60)
    reservation = await backend.reserve([rpm], ONE_REQUEST, max_wait=0, now=clock.now())
    assert Reservation((rpm,), ONE_REQUEST, 0.0, (59.0,)) == reservation


async def test_drained_bucket_refuses_then_refills(backend: LimitBackend, clock: FakeClock) -> None:
    """A drained bucket refuses with an honest retry-after and admits once refilled."""
    rpm = bucket(Dimension.REQUESTS, 60)  # one a second
    await drain(backend, rpm, clock)
    refused = await backend.reserve([rpm], ONE_REQUEST, max_wait=0, now=clock.now())
    clock.advance(1.0)
    admitted = await backend.reserve([rpm], ONE_REQUEST, max_wait=0, now=clock.now())
    assert Refused(bucket=rpm, retry_after=1.0, remaining=0.0) == refused
    assert Reservation((rpm,), ONE_REQUEST, 0.0, (0.0,)) == admitted


async def test_refill_is_continuous_not_windowed(backend: LimitBackend, clock: FakeClock) -> None:
    """Half a minute after draining, exactly half the requests fit again (no window reset)."""
    rpm = bucket(Dimension.REQUESTS, 60)
    await drain(backend, rpm, clock)
    clock.advance(30.0)
    admitted = 0
    while isinstance(
        await backend.reserve([rpm], ONE_REQUEST, max_wait=0, now=clock.now()), Reservation
    ):
        admitted += 1
    assert 30 == admitted


async def test_partial_refill_shows_as_remaining(backend: LimitBackend, clock: FakeClock) -> None:
    """Half a second after draining, half a request has refilled and half a second is owed."""
    rpm = bucket(Dimension.REQUESTS, 60)
    await drain(backend, rpm, clock)
    clock.advance(0.5)
    refused = await backend.reserve([rpm], ONE_REQUEST, max_wait=0, now=clock.now())
    assert Refused(rpm, retry_after=0.5, remaining=0.5) == refused


async def test_refusal_debits_no_bucket(backend: LimitBackend, clock: FakeClock) -> None:
    """When one bucket refuses, the other buckets of the request keep their level."""
    rpm, itpm = bucket(Dimension.REQUESTS, 60), bucket(Dimension.INPUT_TOKENS, 6_000)
    await backend.reserve([rpm, itpm], Cost(1, 6_000), max_wait=0, now=clock.now())
    refused = await backend.reserve([rpm, itpm], Cost(1, 10), max_wait=0, now=clock.now())
    after = await reserved(backend, [rpm], ONE_REQUEST, clock)
    assert Refused(itpm, retry_after=0.1, remaining=0.0) == refused
    assert (58.0,) == after.levels


async def test_refusal_names_the_bucket_needing_longest(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """With several short buckets, the refusal names the one whose debt takes longest."""
    rpm, itpm = bucket(Dimension.REQUESTS, 60), bucket(Dimension.INPUT_TOKENS, 6_000)
    await drain(backend, rpm, clock)
    await drain(backend, itpm, clock)
    refused = await backend.reserve([rpm, itpm], Cost(1, 500), max_wait=0, now=clock.now())
    assert Refused(itpm, retry_after=5.0, remaining=0.0) == refused


async def test_queued_requests_go_first_come_first_served(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """Requests that go into debt get successive go times, in arrival order."""
    rpm = bucket(Dimension.REQUESTS, 60)
    await drain(backend, rpm, clock)
    first = await backend.reserve([rpm], ONE_REQUEST, max_wait=10, now=clock.now())
    second = await backend.reserve([rpm], ONE_REQUEST, max_wait=10, now=clock.now())
    assert Reservation((rpm,), ONE_REQUEST, 1.0, (-1.0,)) == first
    assert Reservation((rpm,), ONE_REQUEST, 2.0, (-2.0,)) == second


async def test_wait_beyond_max_wait_debits_nothing(backend: LimitBackend, clock: FakeClock) -> None:
    """A refusal for too long a wait leaves the queue as it was for the next request."""
    rpm = bucket(Dimension.REQUESTS, 60)
    await drain(backend, rpm, clock)
    refused = await backend.reserve([rpm], ONE_REQUEST, max_wait=0.5, now=clock.now())
    queued = await backend.reserve([rpm], ONE_REQUEST, max_wait=1.0, now=clock.now())
    assert Refused(rpm, retry_after=1.0, remaining=0.0) == refused
    assert Reservation((rpm,), ONE_REQUEST, 1.0, (-1.0,)) == queued


@pytest.mark.parametrize(("limit", "retry_after"), [(6_000, 2.5), (7_000, 2.143)])
async def test_retry_after_is_honest(
    backend: LimitBackend, clock: FakeClock, limit: int, retry_after: float
) -> None:
    """After waiting the refusal's retry-after (whole ms, rounded up), the request fits."""
    itpm = bucket(Dimension.INPUT_TOKENS, limit)
    await drain(backend, itpm, clock)
    cost = Cost(input_tokens=250)
    refused = await backend.reserve([itpm], cost, max_wait=0, now=clock.now())
    assert Refused(itpm, retry_after=retry_after, remaining=0.0) == refused
    clock.advance(retry_after)
    admitted = await reserved(backend, [itpm], cost, clock)
    assert 0.0 == admitted.wait


async def test_cost_above_the_limit_never_fits(backend: LimitBackend, clock: FakeClock) -> None:
    """A cost larger than a bucket's limit is refused at once and debits nothing."""
    rpm = bucket(Dimension.REQUESTS, 60)
    itpm = bucket(Dimension.INPUT_TOKENS, 6_000, headroom=0.5)  # holds 3,000
    never = await backend.reserve([rpm, itpm], Cost(1, 6_001), max_wait=60, now=clock.now())
    after = await reserved(backend, [rpm], ONE_REQUEST, clock)
    assert NeverFits(itpm, 6_001) == never
    assert (59.0,) == after.levels


async def test_cost_between_capacity_and_limit_waits_in_debt(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """A cost above what headroom leaves but within the limit queues until its debt is repaid."""
    itpm = bucket(Dimension.INPUT_TOKENS, 6_000, headroom=0.5)  # holds 3,000, 50 a second
    admitted = await backend.reserve([itpm], Cost(input_tokens=3_100), max_wait=2, now=clock.now())
    assert isinstance(admitted, Reservation)
    assert (2.0, (-100.0,)) == (admitted.wait, admitted.levels)


async def test_headroom_leaves_a_requests_bucket_one_request(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """`requests_per_minute: 1` with 2% headroom admits at once, then after 61.2 s, not 60."""
    rpm = bucket(Dimension.REQUESTS, 1, headroom=0.02)
    first = await reserved(backend, [rpm], ONE_REQUEST, clock)
    clock.advance(60.0)
    early = await backend.reserve([rpm], ONE_REQUEST, max_wait=0, now=clock.now())
    assert isinstance(early, Refused)
    assert (0.0, 1.225, 0.98) == (first.wait, early.retry_after, round(early.remaining, 9))


async def test_refund_gives_capacity_back(backend: LimitBackend, clock: FakeClock) -> None:
    """Adjusting by minus the cost restores every bucket of the reservation."""
    rpm, itpm = bucket(Dimension.REQUESTS, 60), bucket(Dimension.INPUT_TOKENS, 6_000)
    cost = Cost(1, 600)
    reservation = await reserved(backend, [rpm, itpm], cost, clock)
    backend.adjust(reservation, Cost().minus(cost), now=clock.now())
    again = await reserved(backend, [rpm, itpm], cost, clock)
    assert (59.0, 5_400.0) == again.levels


async def test_refund_never_fills_past_capacity(backend: LimitBackend, clock: FakeClock) -> None:
    """A refund landing after the bucket refilled leaves it at capacity, not above."""
    rpm = bucket(Dimension.REQUESTS, 60)
    reservation = await reserved(backend, [rpm], ONE_REQUEST, clock)
    clock.advance(60.0)
    backend.adjust(reservation, Cost(requests=-1), now=clock.now())
    again = await reserved(backend, [rpm], ONE_REQUEST, clock)
    assert (59.0,) == again.levels


async def test_charge_puts_bucket_into_debt(backend: LimitBackend, clock: FakeClock) -> None:
    """Usage above the reservation is charged, and later requests wait for the debt."""
    itpm = bucket(Dimension.INPUT_TOKENS, 6_000)
    cost = Cost(input_tokens=100)
    reservation = await reserved(backend, [itpm], cost, clock)
    backend.adjust(reservation, Cost(input_tokens=6_000), now=clock.now())
    refused = await backend.reserve([itpm], cost, max_wait=0, now=clock.now())
    assert Refused(itpm, retry_after=2.0, remaining=-100.0) == refused


async def test_cap_lowers_a_fuller_bucket_and_refill_resumes(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """Capping a full bucket at 1,000 leaves 1,000, refilling from there at the usual rate."""
    otpm = bucket(Dimension.OUTPUT_TOKENS, 6_000)
    await backend.cap([otpm], [1_000.0], now=clock.now())
    clock.advance(1.0)
    reservation = await reserved(backend, [otpm], Cost(output_tokens=100), clock)
    assert (1_000.0,) == reservation.levels


async def test_cap_never_raises_a_bucket(backend: LimitBackend, clock: FakeClock) -> None:
    """A ceiling above the bucket's level leaves it as it was."""
    otpm = bucket(Dimension.OUTPUT_TOKENS, 6_000)
    await reserved(backend, [otpm], Cost(output_tokens=5_000), clock)
    await backend.cap([otpm], [4_000.0], now=clock.now())
    again = await reserved(backend, [otpm], Cost(output_tokens=100), clock)
    assert (900.0,) == again.levels


async def test_negative_cap_holds_requests_until_the_debt_is_repaid(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """A ceiling of -6 s of refill makes the next request wait 6 s (plus its own cost)."""
    rpm = bucket(Dimension.REQUESTS, 60)
    await backend.cap([rpm], [-6.0], now=clock.now())
    refused = await backend.reserve([rpm], ONE_REQUEST, max_wait=0, now=clock.now())
    assert Refused(rpm, retry_after=7.0, remaining=-6.0) == refused


async def test_tokens_bucket_counts_input_and_output(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """A combined tokens-per-minute bucket takes input plus output tokens."""
    tpm = bucket(Dimension.TOKENS, 6_000)
    reservation = await reserved(backend, [tpm], Cost(1, 1_000, 2_000), clock)
    assert (3_000.0,) == reservation.levels


async def test_tokens_per_day_refills_over_a_simulated_day(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """A day bucket refills at capacity per 86,400 s: half after 12 hours, all after a day."""
    tpd = bucket(Dimension.TOKENS_PER_DAY, 86_400)  # one token a second
    await backend.reserve([tpd], Cost(0, 50_000, 36_400), max_wait=0, now=clock.now())
    refused = await backend.reserve([tpd], Cost(0, 3_600), max_wait=0, now=clock.now())
    clock.advance(12 * 3_600)
    half = await backend.reserve([tpd], Cost(0, 43_200), max_wait=0, now=clock.now())
    clock.advance(24 * 3_600)
    full = await backend.reserve([tpd], Cost(0, 86_400), max_wait=0, now=clock.now())
    assert Refused(tpd, retry_after=3_600.0, remaining=0.0) == refused
    assert Reservation((tpd,), Cost(0, 43_200), 0.0, (0.0,)) == half
    assert Reservation((tpd,), Cost(0, 86_400), 0.0, (0.0,)) == full


async def test_bucket_the_request_takes_nothing_from_never_delays_it(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """Debt on a bucket this request does not draw from does not queue the request."""
    rpm, otpm = bucket(Dimension.REQUESTS, 60), bucket(Dimension.OUTPUT_TOKENS, 600)
    await backend.reserve([rpm, otpm], Cost(1, 0, 600), max_wait=0, now=clock.now())
    await backend.reserve([rpm, otpm], Cost(1, 0, 300), max_wait=60, now=clock.now())
    reservation = await backend.reserve([rpm, otpm], Cost(1, 10, 0), max_wait=0, now=clock.now())
    assert Reservation((rpm, otpm), Cost(1, 10, 0), 0.0, (57.0, -300.0)) == reservation


async def test_buckets_of_two_hash_tags_are_refused(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """One admission may not span two scopes: its keys would fall in two Cluster slots."""
    mine, theirs = bucket(Dimension.REQUESTS, 60), bucket(Dimension.REQUESTS, 60, scope="k2")
    with pytest.raises(ValueError, match="share scope and group"):
        await backend.reserve([mine, theirs], ONE_REQUEST, max_wait=0, now=clock.now())


async def test_reserve_without_now_uses_the_backend_clock(backend: LimitBackend) -> None:
    """Production calls pass no time: the backend's own clock (Redis TIME) is used."""
    rpm = bucket(Dimension.REQUESTS, 60)
    reservation = await backend.reserve([rpm], ONE_REQUEST, max_wait=0)
    assert Reservation((rpm,), ONE_REQUEST, 0.0, (59.0,)) == reservation


async def random_traffic(backend: LimitBackend, clock: FakeClock, seed: int) -> list[object]:
    """Every outcome of 300 random reserves, adjusts and clock steps on awkward rates."""
    rng = random.Random(seed)
    buckets = [
        bucket(Dimension.REQUESTS, 97),
        bucket(Dimension.INPUT_TOKENS, 1_000, headroom=0.02),
        bucket(Dimension.OUTPUT_TOKENS, 599),
        bucket(Dimension.TOKENS_PER_DAY, 100_000),
    ]
    outcomes: list[object] = []
    held: list[Reservation] = []
    for _ in range(300):
        step = rng.random()
        if step < 0.5:
            cost = Cost(1, rng.randrange(0, 300), rng.randrange(0, 80))
            wait = rng.choice([0.0, 0.5, 3.0, 30.0])
            outcome = await backend.reserve(buckets, cost, max_wait=wait, now=clock.now())
            held += [outcome] if isinstance(outcome, Reservation) else []
            outcomes.append(outcome)
        elif step < 0.7 and held:
            reservation = held.pop(rng.randrange(len(held)))
            delta = Cost(0, rng.randrange(-300, 100), rng.randrange(-80, 60))
            backend.adjust(reservation, delta, now=clock.now())
        else:
            clock.advance(rng.randrange(0, 4_000) / 1_000)
    return outcomes


@pytest.mark.parametrize(
    "kind",
    [
        "fakeredis",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-py", marks=pytest.mark.redis),
    ],
)
async def test_lua_agrees_with_python_on_random_traffic(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The scripts give exactly the memory backend's outcomes, bit for bit, on random traffic."""
    memory_clock, redis_clock = FakeClock(), FakeClock()
    expected = await random_traffic(MemoryBackend(memory_clock), memory_clock, seed=7)
    async with open_backend(kind, redis_clock, request) as backend:
        actual = await random_traffic(backend, redis_clock, seed=7)
    assert expected == actual


async def test_settlements_in_a_row_all_land(backend: LimitBackend, clock: FakeClock) -> None:
    """Twenty settlements of one group in a row all count (on Redis they travel together
    with the next reservation)."""
    rpm, itpm = bucket(Dimension.REQUESTS, 60), bucket(Dimension.INPUT_TOKENS, 60_000)
    held = [await reserved(backend, [rpm, itpm], Cost(1, 2_000), clock) for _ in range(20)]
    deltas = [Cost(-1, -1_000) if n % 2 else Cost(0, 500) for n in range(20)]
    for reservation, delta in zip(held, deltas, strict=True):
        backend.adjust(reservation, delta, now=clock.now())
    after = await reserved(backend, [rpm, itpm], Cost(1, 0), clock)
    # 20 requests less 10 refunded, then this one; 40,000 tokens less 10 x 1,000 plus 10 x 500
    assert (49.0, 25_000.0) == after.levels


async def test_the_first_organization_shared_becomes_the_fleets_primary(
    backend: LimitBackend,
) -> None:
    """Instances share key -> organisation mappings; the first organisation any of them
    sent stays the primary, and every instance gets the whole mapping back."""
    nothing_yet = await backend.share_organizations({})
    first = await backend.share_organizations({"k1": "org-a"})
    second = await backend.share_organizations({"k2": "org-b", "k3": "org-a"})
    assert (None, {}) == nothing_yet
    assert ("org-a", {"k1": "org-a"}) == first
    assert ("org-a", {"k1": "org-a", "k2": "org-b", "k3": "org-a"}) == second


async def test_changes_of_a_bucket_in_debt_reach_the_listeners(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """A refund and a charge on a bucket with queued debt are told to every listener with
    the key, how far the level moved (Redis may tell both as one net move: settlements
    travel together) and a stamp later than the queued reservation's; a refund on a bucket
    with room, made between them, is not told."""
    heard: list[tuple[str, float, float]] = []
    both = asyncio.Event()

    def listener(key: str, delta: float, at: float) -> None:
        heard.append((key, delta, at))
        if round(sum(d for _, d, _ in heard), 6) == -1.0:
            both.set()

    backend.on_change(listener)
    rpm, roomy = bucket(Dimension.REQUESTS, 60), bucket(Dimension.REQUESTS, 60, scope="other")
    for _ in range(60):
        await reserved(backend, [rpm], ONE_REQUEST, clock)
    queued = await backend.reserve([rpm], ONE_REQUEST, max_wait=5, now=clock.now())
    assert isinstance(queued, Reservation)
    spare = await reserved(backend, [roomy], ONE_REQUEST, clock)
    await subscribed(backend)
    backend.adjust(queued, Cost().minus(ONE_REQUEST), now=clock.now() + 0.5)
    backend.adjust(spare, Cost().minus(ONE_REQUEST), now=clock.now() + 0.5)
    backend.adjust(queued, Cost(requests=2), now=clock.now() + 0.5)
    await asyncio.wait_for(both.wait(), 5)  # messages of one channel arrive in order
    assert {rpm.key} == {key for key, _, _ in heard}
    assert all(at > queued.at for _, _, at in heard)


async def test_a_floor_keeps_a_share_back_and_never_queues(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """A lower-priority request (`floor`) may use only what lies above that share of each
    bucket; one that does not fit above it is refused with the wait until it would, even
    within `max_wait`, and debits nothing; a request without a floor still takes the rest
    and may queue into debt as before."""
    rpm = bucket(Dimension.REQUESTS, 60)  # one a second, 60 held
    tpm = bucket(Dimension.INPUT_TOKENS, 6_000)  # 100 a second
    cost = Cost(requests=1, input_tokens=100)
    for _ in range(15):  # 45 requests and 4,500 tokens are left: the floor is 15 and 1,500
        outcome = await backend.reserve([rpm, tpm], cost, max_wait=30, now=clock.now(), floor=0.25)
        assert isinstance(outcome, Reservation), outcome
    held = await backend.reserve(
        [rpm, tpm], Cost(1, 3_001), max_wait=30, now=clock.now(), floor=0.25
    )
    assert held == Refused(bucket=tpm, retry_after=0.01, remaining=4_500.0)
    for _ in range(30):
        outcome = await backend.reserve([rpm, tpm], cost, max_wait=30, now=clock.now(), floor=0.25)
        assert isinstance(outcome, Reservation)
    refused = await backend.reserve([rpm, tpm], cost, max_wait=30, now=clock.now(), floor=0.25)
    assert refused == Refused(bucket=rpm, retry_after=1.0, remaining=15.0)
    interactive = await reserved(backend, [rpm, tpm], Cost(16, 100), clock, max_wait=30)
    assert (interactive.wait, interactive.levels) == (1.0, (-1.0, 1_400.0))
    clock.advance(0.5)
    still = await backend.reserve([rpm, tpm], cost, max_wait=30, now=clock.now(), floor=0.25)
    assert still == Refused(bucket=rpm, retry_after=16.5, remaining=-0.5)
