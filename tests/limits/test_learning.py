"""What settled usage teaches a group: a robust input ratio and the expected output."""

from __future__ import annotations

import math

import pytest

from gateway.limits.learning import (
    _BOUNDS,
    COUNT_CAP,
    Figures,
    Learning,
    Lesson,
    Mean,
    Samples,
    _absorb,
    _moved_value,
    merged,
)


def test_nothing_learned_means_ratio_one_and_no_expected_output() -> None:
    """A group never observed scales nothing and has no expected output."""
    learning = Learning()
    assert (1.0, None, 101) == (
        learning.input_ratio("g"),
        learning.expected_output("g"),
        learning.scaled("g", 101),
    )


def test_ratio_converges_to_a_steady_bias() -> None:
    """A workload that always counts 25% above the estimate is learned as 1.25."""
    learning = Learning()
    for _ in range(40):
        learning.observe("g", 1000, 1250, None)
    assert (1.25, 1250) == (round(learning.input_ratio("g"), 3), learning.scaled("g", 1000))


def test_one_outlier_moves_a_settled_ratio_by_at_most_the_clip_times_alpha() -> None:
    """A single 100x sample is clipped to 4x and weighted 0.1: the ratio moves to 4^0.1."""
    learning = Learning()
    for _ in range(50):
        learning.observe("g", 100, 100, None)
    learning.observe("g", 100, 10_000, None)
    assert 1.149 == round(learning.input_ratio("g"), 3)


def test_expected_output_is_the_mean_then_a_moving_average() -> None:
    """The first outputs are averaged plainly; each group learns on its own."""
    learning = Learning()
    for output in (100, 200, 300):
        learning.observe("a", None, 0, output)
    assert (200.0, None) == (learning.expected_output("a"), learning.expected_output("b"))


def test_lessons_take_only_new_samples_once() -> None:
    """A lesson carries the group's figures and its samples since the last one, once."""
    learning = Learning()
    learning.observe("g", 100, 200, None)
    learning.observe("g", None, 0, 300)
    learning.observe("h", None, 0, 50)
    first = learning.lessons()
    learning.observe("h", None, 0, 70)
    second = learning.lessons()
    ratio = Mean(math.log(2), 1)
    figures = Figures(ratio, Mean(300.0, 1), Mean(90_000.0, 1))
    samples = (Samples(math.log(2), 1), Samples(300.0, 1), Samples(90_000.0, 1))
    assert Lesson(figures, *samples) == first["g"]
    assert (["g", "h"], ["h"], Samples(70.0, 1)) == (
        sorted(first),
        sorted(second),
        second["h"].outputs,
    )


def test_adopt_uses_the_fleet_figures_plus_samples_gathered_meanwhile() -> None:
    """The fleet's figures replace the local ones; samples since the lesson stay on top."""
    learning = Learning()
    learning.observe("g", None, 0, 1_000)
    learning.lessons()
    learning.observe("g", None, 0, 400)  # arrives while the sync is in flight
    learning.adopt("g", Figures(Mean(math.log(1.5), 50), Mean(200.0, 50)))
    again = learning.lessons()["g"]
    assert (1.5, 220.0, Samples(400.0, 1)) == (
        round(learning.input_ratio("g"), 9),
        learning.expected_output("g"),
        again.outputs,
    )


def test_restore_keeps_unsent_samples_for_the_next_lesson() -> None:
    """Samples of a lesson the backend did not take are sent with the next one."""
    learning = Learning()
    learning.observe("g", None, 0, 100)
    learning.restore("g", learning.lessons()["g"])
    learning.observe("g", None, 0, 300)
    assert (Samples(400.0, 2), 200.0) == (
        learning.lessons()["g"].outputs,
        learning.expected_output("g"),
    )


def test_a_merged_batch_equals_its_samples_one_by_one() -> None:
    """Batches from two instances move the fleet as their samples would, one at a time."""
    fleet = Figures(Mean(0.0, 200))
    a = Lesson(Figures(), Samples(5 * math.log(1.3), 5))
    b = Lesson(Figures(), Samples(3 * math.log(0.9), 3))
    one_by_one = fleet
    for sample in [math.log(1.3)] * 5 + [math.log(0.9)] * 3:
        one_by_one = merged(one_by_one, Lesson(Figures(), Samples(sample, 1)))
    batched = merged(merged(fleet, a), b)
    assert one_by_one.log_ratio.count == batched.log_ratio.count
    assert one_by_one.log_ratio.value == pytest.approx(batched.log_ratio.value, rel=1e-9)


def test_one_observe_learns_what_an_input_then_an_output_observation_learn() -> None:
    """Settlement's single `observe` call moves both figures exactly as two calls, one per
    figure, do, and keeps the same samples for the next fleet sync."""
    together, apart = Learning(), Learning()
    for estimated, actual, output in [(1000, 1250, 300), (800, 700, 50), (0, 10, 7)]:
        together.observe("g", estimated, actual, output)
        apart.observe("g", estimated, actual, None)
        apart.observe("g", None, 0, output)
    assert (together.snapshot(), together.lessons()) == (apart.snapshot(), apart.lessons())


@pytest.mark.parametrize("mean", [Mean(), Mean(0.2, 3), Mean(0.05, COUNT_CAP)])
@pytest.mark.parametrize("sample", [-5.0, -0.1, 0.0, 0.3, 5.0])
def test_one_sample_shortcut_moves_a_mean_as_the_batch_rule_does(mean: Mean, sample: float) -> None:
    """`observe` uses `_moved_value`, a one-sample form of `_absorb` (3x cheaper per
    settlement): both must move a mean's value the same way, clipping included."""
    low, high = _BOUNDS[0]
    moved = _moved_value(mean.value, mean.count, sample, low, high)
    absorbed = _absorb(mean, Samples(sample, 1), low, high)
    assert pytest.approx(absorbed.value, rel=1e-12, abs=1e-15) == moved


def test_the_high_output_is_a_quantile_above_the_mean() -> None:
    """With outputs of 100 and 300 the mean is 200 and the spread 100: the high figure is
    about the 90th percentile, 200 + 1.28 x 100; None before any response."""
    learning = Learning()
    before = learning.high_output("g")
    learning.observe("g", None, 0, 100)
    learning.observe("g", None, 0, 300)  # moving averages: two samples weigh alike
    assert (None, 328.2) == (before, round(learning.high_output("g") or 0, 1))


def test_cached_requests_learn_their_own_input_ratio() -> None:
    """A request with cache breakpoints moves the cached ratio, never the plain one."""
    learning = Learning()
    before = learning.cached_ratio("g")
    learning.observe("g", 100, 200, None, cached=True)
    learning.observe("g", 1_000, 1_000, None)
    assert (1.0, 1.0, 2.0) == (before, learning.input_ratio("g"), learning.cached_ratio("g"))
