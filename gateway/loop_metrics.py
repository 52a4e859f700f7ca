"""Labelled counters and histograms for metrics that move on every request, on one event loop.

prometheus-client's `Counter` and `Histogram` take a lock for every value they change: a
histogram observation is two locked increments (its sum and one bucket), and `labels()`
validates its values and takes another. A finished request updates about two dozen values,
which cost 9% of a Redis-limited request's instructions (callgrind, `bench.instructions`).
Every one of those updates happens on the gateway's event loop, and so does the scrape
(`GatewayMetrics.render` runs in the `/metrics` handler), so nothing here needs a lock:
an update is a float add on an attribute.

The registry renders these exactly as prometheus-client renders its own: the same names,
help, label order, `le` values, cumulative buckets, `_count`, `_sum` and `_created` samples
(tests/test_loop_metrics.py compares the two renderings).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as client_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

from gateway.clock import wall_time

ChildT = TypeVar("ChildT")


class CounterChild:
    """One label set's count, and when the set was first used."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = wall_time()

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (never negative, as a Prometheus counter)."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramChild:
    """One label set's observations: a count per bucket (not cumulative), and their sum."""

    __slots__ = ("_bounds", "counts", "created", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0
        self.created = wall_time()

    def observe(self, amount: float) -> None:
        """Count `amount` in the first bucket whose upper bound is at least it."""
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.total += amount


class _LoopFamily(Collector, ABC, Generic[ChildT]):
    """A labelled family whose children are made on first use and remembered; registered on
    construction like prometheus-client's own metrics."""

    #: prometheus-client names a counter's family without `_total` and adds it per sample.
    _name_suffix_dropped = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name.removesuffix(self._name_suffix_dropped)
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], ChildT] = {}
        registry.register(self)

    def labels(self, *values: str) -> ChildT:
        """The child for `values` (positional, in `labelnames` order), made on first use."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(
                    f"Incorrect label count: expected {len(self._labelnames)}, got {len(values)}"
                )
            if not all(isinstance(value, str) for value in values):
                raise TypeError("Label values must be strings")
            child = self._children[values] = self._new_child()
        return child

    @abstractmethod
    def _new_child(self) -> ChildT:
        """A fresh child for a label set seen for the first time."""


class LoopCounter(_LoopFamily[CounterChild]):
    """A labelled counter updated and scraped on one event loop; see the module docstring."""

    _name_suffix_dropped = "_total"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with_created = _created_series()
        for values, child in self._children.items():
            family.add_metric(values, child.value, created=child.created if with_created else None)
        return [family]


class LoopHistogram(_LoopFamily[HistogramChild]):
    """A labelled histogram updated and scraped on one event loop; see the module docstring."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if not bounds or bounds[-1] != INF:
            bounds.append(INF)
        self._bounds = tuple(bounds)
        self._les = tuple(_le(bound) for bound in bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with_created = _created_series()
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for le, count in zip(self._les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, child.total)
            if with_created:
                labels = dict(zip(self._labelnames, values, strict=True))
                family.samples.append(Sample(f"{self._name}_created", labels, child.created))
        return [family]


def _created_series() -> bool:
    """Whether prometheus-client renders `_created` samples now: off with
    `PROMETHEUS_DISABLE_CREATED_SERIES` or `disable_created_metrics()`, which set this flag."""
    return bool(getattr(client_metrics, "_use_created", True))


def _le(bound: float) -> str:
    """A bucket's `le` label, written as prometheus-client writes it (`+Inf`, `0.005`)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]  # untyped upstream
    return text
