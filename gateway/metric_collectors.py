"""Metrics read at scrape time from the limiter's state, never updated per request.

Gauges that describe shared state (bucket fill, the learned figures) are read when
Prometheus scrapes, from callbacks the app wires to the limiter: a scrape costs no Redis
call, and a request costs nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

FillReader = Callable[[], Mapping[tuple[str, str], float]]


class BucketFillCollector(Collector):
    """`gateway_limiter_bucket_fill_ratio`, read from the limiter's in-memory snapshot."""

    def __init__(self) -> None:
        self.read: FillReader = dict

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gateway_limiter_bucket_fill_ratio",
            "Last seen bucket level / capacity per group and dimension (below 0: queued debt).",
            labels=["model_group", "dimension"],
        )
        for (group, dimension), ratio in sorted(self.read().items()):
            family.add_metric([group, dimension], ratio)
        yield family


LearningReader = Callable[[], Mapping[str, tuple[float, float | None]]]


class LearningCollector(Collector):
    """The token estimator's learned figures per group, read at scrape time."""

    def __init__(self) -> None:
        self.read: LearningReader = dict

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ratio = GaugeMetricFamily(
            "gateway_token_learned_input_ratio",
            "Learned actual / estimated input tokens per group (scales new estimates).",
            labels=["model_group"],
        )
        output = GaugeMetricFamily(
            "gateway_token_learned_expected_output",
            "Learned mean output tokens per group (the `expected` output reservation).",
            labels=["model_group"],
        )
        for group, (input_ratio, expected) in sorted(self.read().items()):
            ratio.add_metric([group], input_ratio)
            if expected is not None:
                output.add_metric([group], expected)
        yield ratio
        yield output
