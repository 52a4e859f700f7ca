"""`CircuitBreaker`: open after consecutive errors, one trial per cooldown, close on success;
and the limiter skipping its backend while the breaker is open."""

from __future__ import annotations

import pytest
import structlog.testing

from gateway.limits import Limiter
from gateway.limits.breaker import CircuitBreaker
from tests.limits.conftest import admit, admitted, limits
from tests.support.fake_clock import FakeClock
from tests.support.flaky_backend import FlakyBackend


def failed_in_a_row(breaker: CircuitBreaker, count: int) -> CircuitBreaker:
    """`breaker` after `count` consecutive failures."""
    for _ in range(count):
        breaker.failed()
    return breaker


def test_stays_closed_below_the_threshold(clock: FakeClock) -> None:
    """Fewer consecutive failures than the threshold leave the breaker closed."""
    breaker = failed_in_a_row(CircuitBreaker(clock, threshold=3, cooldown=10.0), 2)
    assert (False, True) == (breaker.is_open, breaker.allow())


def test_a_success_resets_the_count_of_failures(clock: FakeClock) -> None:
    """Only failures in a row count: a success in between starts the count again."""
    breaker = failed_in_a_row(CircuitBreaker(clock, threshold=3, cooldown=10.0), 2)
    breaker.succeeded()
    failed_in_a_row(breaker, 2)
    assert (False, True) == (breaker.is_open, breaker.allow())


def test_opens_after_the_threshold_and_skips_calls(clock: FakeClock) -> None:
    """At the threshold the breaker opens and refuses calls until the cooldown passes."""
    breaker = failed_in_a_row(CircuitBreaker(clock, threshold=3, cooldown=10.0), 3)
    clock.advance(9.9)
    assert (True, False) == (breaker.is_open, breaker.allow())


def test_allows_one_trial_after_the_cooldown(clock: FakeClock) -> None:
    """After the cooldown one call is allowed; the next waits, as the trial restarts it."""
    breaker = failed_in_a_row(CircuitBreaker(clock, threshold=3, cooldown=10.0), 3)
    clock.advance(10.0)
    assert (True, False, True) == (breaker.allow(), breaker.allow(), breaker.is_open)


def test_a_successful_trial_closes_it(clock: FakeClock) -> None:
    """A trial that succeeds closes the breaker: every call is allowed again."""
    breaker = failed_in_a_row(CircuitBreaker(clock, threshold=3, cooldown=10.0), 3)
    clock.advance(10.0)
    breaker.allow()
    breaker.succeeded()
    assert (False, True, True) == (breaker.is_open, breaker.allow(), breaker.allow())


def test_a_failed_trial_reopens_it_for_another_cooldown(clock: FakeClock) -> None:
    """A trial that fails re-opens the breaker for a whole new cooldown from its failure."""
    breaker = failed_in_a_row(CircuitBreaker(clock, threshold=3, cooldown=10.0), 3)
    clock.advance(10.0)
    breaker.allow()
    breaker.failed()
    clock.advance(9.9)
    skipped = breaker.allow()
    clock.advance(0.1)
    assert (True, False, True) == (breaker.is_open, skipped, breaker.allow())


# The limiter's breaker, through a backend that fails ------------------------------------


@pytest.fixture
def backend(clock: FakeClock) -> FlakyBackend:
    """A healthy in-memory backend that a test can make fail."""
    return FlakyBackend(clock)


@pytest.fixture
def limiter(backend: FlakyBackend, clock: FakeClock) -> Limiter:
    """A limiter on the sonnet limits, failing open, breaker after 3 errors for 10 s."""
    return Limiter(backend, limits(), clock, breaker_threshold=3, breaker_cooldown=10.0)


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


def test_one_failure_degrades_and_one_success_recovers_each_logged_once(
    clock: FakeClock,
) -> None:
    """The limiter is degraded from the first failed call to the next good one; an outage is
    two log lines, however many calls failed in between."""
    breaker = CircuitBreaker(clock, threshold=3, cooldown=10.0)
    with structlog.testing.capture_logs() as logs:
        failed_in_a_row(breaker, 5)
        degraded = breaker.healthy
        clock.advance(12.5)
        breaker.succeeded()
        breaker.succeeded()
    assert (
        False,
        True,
        [("limits.degraded", "warning"), ("limits.recovered", "info")],
        12.5,
    ) == (
        degraded,
        breaker.healthy,
        [(line["event"], line["log_level"]) for line in logs],
        logs[1]["degraded_seconds"],
    )


async def test_a_readiness_probe_feeds_the_breaker(
    limiter: Limiter, backend: FlakyBackend, clock: FakeClock
) -> None:
    """A failing probe counts like a failed request call; a passing one closes an open
    breaker at once, so requests use the recovered backend before any cooldown ends."""
    backend.failing = True
    probes = [await limiter.probe() for _ in range(3)]
    opened, degraded = limiter.breaker_open, limiter.degraded
    backend.failing = False
    probes.append(await limiter.probe())
    served = await admitted(limiter)
    assert ([False, False, False, True], True, True, False, False) == (
        probes,
        opened,
        degraded,
        limiter.degraded,
        served.fallback,
    )
