"""The pure retry policy: what is retryable, backoff, retry-after, the client hint, the budget."""

from __future__ import annotations

import gzip
import json
import random
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.errors import InvalidRequest
from gateway.retry import (
    RetryBudget,
    RetryPlan,
    RetryPolicy,
    client_retry_count,
    client_should_retry,
    is_retryable,
    is_spend_cap,
    requested_retries,
    retry_after,
)
from tests.support.fake_clock import FakeClock

SPEND_CAP = json.dumps(
    {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "You have reached your monthly spend limit.",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
        "request_id": "req_1",
    }
).encode()
RATE_LIMIT = json.dumps(
    {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many requests."}}
).encode()


def headers(**values: str) -> CIMultiDict[str]:
    """Case-insensitive headers from keyword arguments (underscores become dashes)."""
    return CIMultiDict({name.replace("_", "-"): value for name, value in values.items()})


def plan(
    policy: RetryPolicy,
    clock: FakeClock,
    *,
    allowed: int = 3,
    seed: int = 7,
    client_retries: int | None = None,
) -> RetryPlan:
    """A fresh plan for one request on a full budget (a client that does not announce its
    attempts unless `client_retries` is given)."""
    budget = RetryBudget.of(policy, clock)
    return RetryPlan.create(
        policy,
        budget,
        random.Random(seed),
        now=clock.now(),
        allowed=allowed,
        client_retries=client_retries,
    )


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, "429"), (500, "500"), (502, "502"), (503, "503"), (504, "504"), (529, "529")],
)
def test_transient_statuses_are_retryable(status: int, expected: str) -> None:
    """Overload, server errors, gateway errors and a rate-limit 429 are retried, cause = status."""
    assert expected == is_retryable(status, headers())


@pytest.mark.parametrize("status", [200, 400, 401, 402, 403, 404, 408, 409, 413, 501])
def test_client_errors_and_successes_are_not_retryable(status: int) -> None:
    """Client errors (and anything not listed) are never retried without x-should-retry."""
    assert None is is_retryable(status, headers())


def test_should_retry_header_decides_first() -> None:
    """x-should-retry: false stops a 529; x-should-retry: true makes even a 409 retryable."""
    assert (None, "409") == (
        is_retryable(529, headers(x_should_retry="false")),
        is_retryable(409, headers(x_should_retry="True")),
    )


def test_success_is_never_retryable_even_when_the_header_says_so() -> None:
    """x-should-retry: true on a 2xx or 3xx does not make a delivered answer retryable."""
    assert (None, None) == (
        is_retryable(200, headers(x_should_retry="true")),
        is_retryable(304, headers(x_should_retry="true")),
    )


def test_spend_cap_429_is_never_retryable() -> None:
    """The spend-cap 429 is final even with x-should-retry: true or a retry-after."""
    assert (None, None) == (
        is_retryable(429, headers(x_should_retry="true"), SPEND_CAP),
        is_retryable(429, headers(retry_after="5"), SPEND_CAP),
    )


def test_spend_cap_recognised_by_wording_only_without_retry_after() -> None:
    """A 429 without retry-after whose message names a spend limit is the spend cap."""
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Spend limit hit"}}'
    assert (True, False, False) == (
        is_spend_cap(429, headers(), body),
        is_spend_cap(429, headers(retry_after="3"), body),
        is_spend_cap(429, headers(), RATE_LIMIT),
    )


def test_gzipped_spend_cap_is_recognised() -> None:
    """A gzip-encoded spend-cap body is still read; an unreadable 429 body counts as final."""
    assert (True, True, False) == (
        is_spend_cap(429, headers(content_encoding="gzip"), gzip.compress(SPEND_CAP)),
        is_spend_cap(429, headers(content_encoding="br"), b"\x00\x01"),
        is_spend_cap(429, headers(content_encoding="br", retry_after="2"), b"\x00\x01"),
    )


def test_retry_after_ms_wins_over_retry_after() -> None:
    """retry-after-ms (milliseconds) is read before retry-after (seconds)."""
    assert (1.5, 2.0) == (
        retry_after(headers(retry_after_ms="1500", retry_after="9")),
        retry_after(headers(retry_after="2")),
    )


@pytest.mark.parametrize("raw", ["0", "-3", "soon", "nan", "inf", ""])
def test_useless_retry_after_is_ignored(raw: str) -> None:
    """Zero, negative, non-numeric and infinite retry-after values are treated as absent."""
    assert None is retry_after(headers(retry_after=raw))


def test_retry_after_http_date_needs_the_wall_clock() -> None:
    """An HTTP-date retry-after is read relative to the given wall time, else ignored."""
    now = 1_800_000_000.0
    later = formatdate(now + 30, usegmt=True)
    assert (30.0, None, None) == (
        retry_after(headers(retry_after=later), wall_now=now),
        retry_after(headers(retry_after=later)),
        retry_after(headers(retry_after=formatdate(now - 5, usegmt=True)), wall_now=now),
    )


def test_backoff_is_full_jitter_under_the_doubling_ceiling() -> None:
    """Retry n waits rng.random() * min(cap, base * 2**n): reproducible from the seed."""
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=8.0)
    draws = random.Random(3)
    expected = [draws.random() * ceiling for ceiling in (0.5, 1.0, 2.0, 4.0, 8.0, 8.0)]
    rng = random.Random(3)
    assert expected == [policy.backoff(n, rng) for n in range(6)]


def test_attempts_respect_the_client_cap_and_unreplayable_bodies() -> None:
    """The client may lower the attempts, never raise them; a streamed body gets one attempt."""
    policy = RetryPolicy(max_attempts=3)
    assert (3, 1, 2, 3, 1) == (
        policy.attempts_for(None, replayable=True),
        policy.attempts_for(0, replayable=True),
        policy.attempts_for(1, replayable=True),
        policy.attempts_for(9, replayable=True),
        policy.attempts_for(None, replayable=False),
    )


def test_requested_retries_parses_and_caps_the_header() -> None:
    """x-gateway-max-retries is a whole number, capped at max_attempts - 1."""
    policy = RetryPolicy(max_attempts=3)
    assert (None, 0, 1, 2) == (
        requested_retries(None, policy),
        requested_retries("0", policy),
        requested_retries(" 1 ", policy),
        requested_retries("50", policy),
    )


@pytest.mark.parametrize("raw", ["-1", "1.5", "two", "", "²"])
def test_bad_requested_retries_is_an_invalid_request(raw: str) -> None:
    """A malformed x-gateway-max-retries is a 400 naming the header."""
    with pytest.raises(InvalidRequest) as caught:
        requested_retries(raw, RetryPolicy())
    assert (400, True) == (caught.value.status, "x-gateway-max-retries" in caught.value.message)


@pytest.mark.parametrize(
    ("status", "given", "done", "hopeless", "expected"),
    [
        (200, {}, True, False, None),
        (529, {"x_should_retry": "true"}, True, False, "false"),
        (529, {"x_should_retry": "true"}, False, False, None),
        (429, {"retry_after": "20", "x_should_retry": "true"}, True, False, "false"),
        (429, {"retry_after": "20", "x_should_retry": "true"}, False, False, None),
        (429, {}, False, False, "false"),
        (429, {"x_should_retry": "true"}, False, True, "false"),
        (400, {}, True, False, None),
        (409, {}, True, False, "false"),
    ],
)
def test_client_sees_should_retry_false_once_the_gateway_made_its_attempts(
    status: int, given: dict[str, str], done: bool, hopeless: bool, expected: str | None
) -> None:
    """`false` on an error the SDK would retry only once the gateway made the attempts the
    client would have (`client_done`); the spend cap and its shape always; never on a 400."""
    actual = client_should_retry(status, headers(**given), client_done=done, hopeless=hopeless)
    assert expected == actual


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("0", 0), ("2", 2), (" 1 ", 1), ("-1", None), ("x", None), ("1e3", None)],
)
def test_client_retry_count_reads_the_sdk_header(raw: str | None, expected: int | None) -> None:
    """`x-stainless-retry-count` is a small whole number, or the client did not say."""
    given = CIMultiDict({} if raw is None else {"x-stainless-retry-count": raw})
    assert expected == client_retry_count(given)


def test_budget_allows_ratio_of_first_attempts_plus_a_floor() -> None:
    """Drained, 10 first attempts earn 2 retries at ratio 0.2; a second of floor earns 1 more.
    A retry taken at once waits 0; one the budget cannot pay for now is refused."""
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.2, min_per_second=1.0, burst=5)
    drained = [budget.withdraw() for _ in range(6)]
    for _ in range(10):
        budget.deposit()
    earned = [budget.withdraw() for _ in range(3)]
    clock.advance(1.0)
    floor = [budget.withdraw() for _ in range(2)]
    assert ([0.0] * 5 + [None], [0.0, 0.0, None], [0.0, None]) == (drained, earned, floor)


def test_budget_paces_retries_in_order_instead_of_refusing_them() -> None:
    """Spent, the budget lends against its floor: each retry waits one more 1/floor behind
    the one before it (0.5 s at 2/s), as long as that is within the caller's bound."""
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.2, min_per_second=2.0, burst=1)
    waits = [budget.withdraw(within=1.6) for _ in range(5)]
    clock.advance(1.0)
    later = budget.withdraw(within=1.6)
    assert ([0.0, 0.5, 1.0, 1.5, None], 1.0) == (waits, later)


def test_budget_never_saves_up_more_than_its_burst() -> None:
    """However long the quiet spell, at most `burst` retries are saved up."""
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.5, min_per_second=2.0, burst=3)
    clock.advance(3600)
    for _ in range(100):
        budget.deposit()
    assert 3.0 == budget.tokens


def test_plan_stops_after_the_allowed_attempts() -> None:
    """With 3 attempts allowed, two retries are planned and the third asks to stop."""
    clock, policy = FakeClock(), RetryPolicy()
    retries = plan(policy, clock)
    delays = []
    for _ in range(3):
        retries.attempt_started()
        delays.append(retries.next_delay(None, clock.now()))
    assert (True, True, None, "attempts") == (
        delays[0] is not None,
        delays[1] is not None,
        delays[2],
        retries.stopped,
    )


def test_plan_uses_retry_after_and_stops_when_it_passes_the_deadline() -> None:
    """A retry-after inside the time budget is the delay; one beyond it stops the retries."""
    clock, policy = FakeClock(), RetryPolicy(budget_seconds=30)
    fits, late = plan(policy, clock), plan(policy, clock)
    fits.attempt_started()
    late.attempt_started()
    assert (12.0, None, "deadline") == (
        fits.next_delay(12.0, clock.now()),
        late.next_delay(31.0, clock.now()),
        late.stopped,
    )


def test_plan_stops_when_the_budget_is_spent() -> None:
    """An exhausted budget with no floor stops the retry and says so; the client, whose
    attempts the gateway has not made, keeps its own retries."""
    clock = FakeClock()
    policy = RetryPolicy(budget_ratio=0.0, budget_min_per_second=0.0, budget_burst=1)
    first, second = plan(policy, clock), plan(policy, clock)
    first.budget = second.budget
    first.attempt_started()
    second.attempt_started()
    assert (True, None, "budget", False) == (
        first.next_delay(None, clock.now()) is not None,
        second.next_delay(None, clock.now()),
        second.stopped,
        second.client_done,
    )


def test_plan_waits_for_budget_within_its_deadline() -> None:
    """A retry the budget cannot pay for at once waits for the floor, not less than its
    backoff; one that could only be paid for after the deadline is not made."""
    clock = FakeClock()
    policy = RetryPolicy(budget_ratio=0.0, budget_min_per_second=0.05, budget_burst=1)
    budget = RetryBudget.of(policy, clock)
    budget.withdraw()
    paced, hopeless = plan(policy, clock), plan(policy, clock)
    paced.budget = hopeless.budget = budget
    paced.attempt_started()
    hopeless.attempt_started()
    assert (20.0, None, "budget") == (
        paced.next_delay(None, clock.now()),
        hopeless.next_delay(None, clock.now()),
        hopeless.stopped,
    )


@pytest.mark.parametrize(
    ("client_retries", "expected"),
    [(0, (3, True, 3.0)), (1, (2, True, 3.0)), (2, (1, True, 3.0)), (None, (3, True, 1.0))],
)
def test_an_sdk_clients_own_attempts_cost_no_budget(
    client_retries: int | None, expected: tuple[int, bool, float]
) -> None:
    """For an SDK at its attempt n (of 3), the gateway makes the 3 - n attempts it would
    still have made without drawing on the budget, and says `client_done` after them; for
    a client that does not announce its attempts every retry is budgeted."""
    clock = FakeClock()
    policy = RetryPolicy(budget_burst=3)
    retries = plan(policy, clock, allowed=6, client_retries=client_retries)
    done_after = 0
    while not retries.client_done:
        retries.attempt_started()
        done_after += 1
        if not retries.client_done:
            assert retries.next_delay(None, clock.now()) is not None
    assert expected == (done_after, retries.client_done, retries.budget.tokens)


@given(
    seed=st.integers(min_value=0, max_value=2**32),
    attempts=st.integers(min_value=1, max_value=10),
    base=st.floats(min_value=0.01, max_value=5.0),
    cap=st.floats(min_value=0.01, max_value=20.0),
    budget_seconds=st.floats(min_value=0.0, max_value=60.0),
)
def test_delays_stay_within_cap_and_sum_within_the_budget(
    seed: int, attempts: int, base: float, cap: float, budget_seconds: float
) -> None:
    """Every backoff delay is in [0, cap] and all of them together fit the time budget."""
    clock = FakeClock()
    policy = RetryPolicy(
        max_attempts=attempts, base_seconds=base, cap_seconds=cap, budget_seconds=budget_seconds
    )
    retries = plan(policy, clock, allowed=attempts, seed=seed)
    delays: list[float] = []
    while True:
        retries.attempt_started()
        delay = retries.next_delay(None, clock.now())
        if delay is None:
            break
        delays.append(delay)
        clock.advance(delay)
    assert (True, True, True) == (
        all(0.0 <= delay <= cap for delay in delays),
        sum(delays) <= budget_seconds,
        len(delays) <= attempts - 1,
    )
