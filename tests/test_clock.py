"""`SystemClock`: monotonic seconds and a sleep that never waits for a non-positive time."""

from __future__ import annotations

from gateway.clock import SystemClock, wall_time, wall_time_ns


def test_now_never_goes_backwards() -> None:
    """Successive readings of the system clock never decrease."""
    clock = SystemClock()
    readings = [clock.now() for _ in range(1000)]
    assert sorted(readings) == readings


async def test_sleep_of_zero_or_less_returns_at_once() -> None:
    """`sleep(0)` and a negative sleep return without waiting (a yield to the loop)."""
    clock = SystemClock()
    before = clock.now()
    await clock.sleep(0)
    await clock.sleep(-5)
    assert clock.now() - before < 1.0


async def test_sleep_waits_about_the_time_asked() -> None:
    """A short positive sleep moves the monotonic clock on by about as long as asked."""
    clock = SystemClock()
    before = clock.now()
    await clock.sleep(0.01)
    assert clock.now() - before > 0.009  # asyncio may wake within its clock resolution


def test_wall_time_is_seconds_since_the_epoch() -> None:
    """`wall_time()` is Unix time: after 2020-01-01 and before 2100-01-01."""
    assert 1_577_836_800 < wall_time() < 4_102_444_800


def test_wall_time_ns_is_wall_time_in_nanoseconds() -> None:
    """`wall_time_ns()` is the same timeline as `wall_time()`, in nanoseconds (span ends)."""
    before = wall_time()
    stamp = wall_time_ns()
    assert before - 1 < stamp / 1e9 < wall_time() + 1
