"""Scrape-time collectors: bucket fill and learned figures read from callbacks, per group."""

from __future__ import annotations

from gateway.metric_collectors import BucketFillCollector, LearningCollector


def test_bucket_fill_is_read_at_scrape_time() -> None:
    """Each (group, dimension) of the reader becomes one sample, sorted."""
    collector = BucketFillCollector()
    collector.read = lambda: {("sonnet", "requests"): 0.5, ("opus", "input_tokens"): -0.25}
    (family,) = collector.collect()
    assert [(("opus", "input_tokens"), -0.25), (("sonnet", "requests"), 0.5)] == [
        ((s.labels["model_group"], s.labels["dimension"]), s.value) for s in family.samples
    ]


def test_learned_figures_skip_an_unknown_expected_output() -> None:
    """Every group has its input ratio; only groups that settled a response have an
    expected output."""
    collector = LearningCollector()
    collector.read = lambda: {"sonnet": (1.25, 300.0), "opus": (1.0, None)}
    ratio, output = collector.collect()
    assert ([("opus", 1.0), ("sonnet", 1.25)], [("sonnet", 300.0)]) == (
        [(s.labels["model_group"], s.value) for s in ratio.samples],
        [(s.labels["model_group"], s.value) for s in output.samples],
    )
