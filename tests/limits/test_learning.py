"""What settled usage teaches a group: a robust input ratio and the expected output."""

from __future__ import annotations

from gateway.limits.learning import Learning


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
        learning.observe_input("g", 1000, 1250)
    assert (1.25, 1250) == (round(learning.input_ratio("g"), 3), learning.scaled("g", 1000))


def test_one_outlier_moves_a_settled_ratio_by_at_most_the_clip_times_alpha() -> None:
    """A single 100x sample is clipped to 4x and weighted 0.1: the ratio moves to 4^0.1."""
    learning = Learning()
    for _ in range(50):
        learning.observe_input("g", 100, 100)
    learning.observe_input("g", 100, 10_000)
    assert 1.149 == round(learning.input_ratio("g"), 3)


def test_expected_output_is_the_mean_then_a_moving_average() -> None:
    """The first outputs are averaged plainly; each group learns on its own."""
    learning = Learning()
    for output in (100, 200, 300):
        learning.observe_output("a", output)
    assert (200.0, None) == (learning.expected_output("a"), learning.expected_output("b"))
