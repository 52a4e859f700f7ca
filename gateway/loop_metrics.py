"""Labelled counters and histograms for metrics that move on every request, on one event loop.

prometheus-client's `Counter` and `Histogram` take a lock for every value they change: a
histogram observation is two locked increments (its sum and one bucket), and `labels()`
validates its values and takes another. A finished request updates about two dozen values,
which cost 9% of a Redis-limited request's instructions (callgrind, `bench.instructions`).
Every one of those updates happens on the gateway's event loop, and so does the scrape
(`GatewayMetrics.render` runs in the `/metrics` handler), so nothing here needs a lock:
an update is a float add on a list.

The registry renders these exactly as prometheus-client renders its own: the same names,
help, label order, `le` values, cumulative buckets, `_count`, `_sum` and `_created` samples
(tests/test_loop_metrics.py compares the two renderings).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as client_metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

from gateway.clock import wall_time


class CounterChild:
    """One label set's count: [value, created]."""

    __slots__ = ("_cell",)

    def __init__(self, cell: list[float]) -> None:
        self._cell = cell

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (never negative, as a Prometheus counter)."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._cell[0] += amount


class HistogramChild:
    """One label set's observations: a count per bucket (not cumulative), and their sum."""

    __slots__ = ("_bounds", "_counts", "_total")

    def __init__(self, bounds: Sequence[float], counts: list[int], total: list[float]) -> None:
        self._bounds = bounds
        self._counts = counts
        self._total = total

    def observe(self, amount: float) -> None:
        """Count `amount` in the first bucket whose upper bound is at least it."""
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._total[0] += amount


class LoopCounter(Collector):
    """A labelled counter updated and scraped on one event loop; see the module docstring."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name.removesuffix("_total")
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._cells: dict[tuple[str, ...], list[float]] = {}
        self._children: dict[tuple[str, ...], CounterChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> CounterChild:
        """The child for `values` (positional, in `labelnames` order), made on first use."""
        child = self._children.get(values)
        if child is None:
            _check_labels(self._labelnames, values)
            cell = self._cells[values] = [0.0, wall_time()]
            child = self._children[values] = CounterChild(cell)
        return child

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with_created = _created_series()
        for values, (value, created) in self._cells.items():
            family.add_metric(values, value, created=created if with_created else None)
        return [family]


class LoopHistogram(Collector):
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
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(bounds)
        self._les = tuple(_le(bound) for bound in bounds)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float], float]] = {}
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The child for `values` (positional, in `labelnames` order), made on first use."""
        child = self._children.get(values)
        if child is None:
            _check_labels(self._labelnames, values)
            counts, total = [0] * len(self._bounds), [0.0]
            self._series[values] = (counts, total, wall_time())
            child = self._children[values] = HistogramChild(self._bounds, counts, total)
        return child

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with_created = _created_series()
        for values, (counts, total, created) in self._series.items():
            cumulative, buckets = 0, []
            for le, count in zip(self._les, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, total[0])
            if with_created:
                labels = dict(zip(self._labelnames, values, strict=True))
                family.samples.append(Sample(f"{self._name}_created", labels, created))
        return [family]


def _check_labels(names: tuple[str, ...], values: tuple[str, ...]) -> None:
    """As prometheus-client's `labels()`: one string per label name."""
    if len(values) != len(names):
        raise ValueError(f"Incorrect label count: expected {len(names)}, got {len(values)}")
    if not all(isinstance(value, str) for value in values):
        raise TypeError("Label values must be strings")


def _created_series() -> bool:
    """Whether prometheus-client renders `_created` samples now: off with
    `PROMETHEUS_DISABLE_CREATED_SERIES` or `disable_created_metrics()`, which set this flag."""
    return bool(getattr(client_metrics, "_use_created", True))


def _le(bound: float) -> str:
    """A bucket's `le` label, written as prometheus-client writes it (`+Inf`, `0.005`)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]  # untyped upstream
    return text
