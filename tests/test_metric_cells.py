"""Lock-free metric cells: exact exposition, Prometheus semantics, parity with prometheus_client."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.exposition import generate_latest

from gateway.metric_cells import CounterFamily, GaugeFamily, HistogramFamily
from gateway.metrics import GatewayMetrics

CREATED = 1700000000.0
BUCKETS = (0.1, 0.5, 1.0)


def at_created() -> float:
    """The fixed wall clock of these tests' families."""
    return CREATED


def lines(registry: CollectorRegistry) -> list[str]:
    """The registry's exposition, one string per line."""
    return generate_latest(registry).decode().splitlines()


def masked(text: bytes) -> list[str]:
    """Sorted exposition lines with `_created` values replaced by `<ts>` (wall time differs)."""
    return sorted(
        re.sub(r"^(\S+_created(?:\{.*\})?) \S+$", r"\1 <ts>", line)
        for line in text.decode().splitlines()
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    """An empty registry."""
    return CollectorRegistry()


@pytest.fixture
def created_disabled() -> Iterator[None]:
    """prometheus_client's `_created` series switched off for one test, then back on."""
    prometheus_metrics.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        prometheus_metrics.enable_created_metrics()  # type: ignore[no-untyped-call]


def test_labelled_counter_lines(registry: CollectorRegistry) -> None:
    """`_total` and `_created` per touched series, in first-use order; untouched: none.

    The 0.0.4 text format carries `_created` as a gauge family of its own, as for Counter.
    """
    family = CounterFamily("demo_requests", "Requests.", ["group", "status"], now=at_created)
    registry.register(family)
    assert ["# HELP demo_requests_total Requests.", "# TYPE demo_requests_total counter"] == lines(
        registry
    )
    family.labels("a", "200").inc()
    family.labels("a", "200").inc(2)
    family.labels("b", "529").inc(0.5)
    assert [
        "# HELP demo_requests_total Requests.",
        "# TYPE demo_requests_total counter",
        'demo_requests_total{group="a",status="200"} 3.0',
        'demo_requests_total{group="b",status="529"} 0.5',
        "# HELP demo_requests_created Requests.",
        "# TYPE demo_requests_created gauge",
        'demo_requests_created{group="a",status="200"} 1.7e+09',
        'demo_requests_created{group="b",status="529"} 1.7e+09',
    ] == lines(registry)


def test_unlabelled_counter_exists_from_the_start(registry: CollectorRegistry) -> None:
    """An unlabelled counter is exposed at 0 before its first increment."""
    registry.register(CounterFamily("demo_fail_open", "Fail-opens.", now=at_created))
    assert [
        "# HELP demo_fail_open_total Fail-opens.",
        "# TYPE demo_fail_open_total counter",
        "demo_fail_open_total 0.0",
        "# HELP demo_fail_open_created Fail-opens.",
        "# TYPE demo_fail_open_created gauge",
        "demo_fail_open_created 1.7e+09",
    ] == lines(registry)


def test_counter_refuses_negative_increments() -> None:
    """Like prometheus_client: a counter only goes up."""
    cell = CounterFamily("demo", "Demo.").labels()
    with pytest.raises(ValueError, match="non-negative"):
        cell.inc(-1)
    assert 0.0 == cell.value


def test_histogram_lines(registry: CollectorRegistry) -> None:
    """Cumulative buckets; a value on a bound counts in that bound's `le`; above: only +Inf."""
    family = HistogramFamily("demo_seconds", "Time.", ["route"], buckets=BUCKETS, now=at_created)
    registry.register(family)
    for seconds in (0.05, 0.5, 0.7, 2.0):
        family.labels("/v1/messages").observe(seconds)
    assert [
        "# HELP demo_seconds Time.",
        "# TYPE demo_seconds histogram",
        'demo_seconds_bucket{le="0.1",route="/v1/messages"} 1.0',
        'demo_seconds_bucket{le="0.5",route="/v1/messages"} 2.0',
        'demo_seconds_bucket{le="1.0",route="/v1/messages"} 3.0',
        'demo_seconds_bucket{le="+Inf",route="/v1/messages"} 4.0',
        'demo_seconds_count{route="/v1/messages"} 4.0',
        'demo_seconds_sum{route="/v1/messages"} 3.25',
        "# HELP demo_seconds_created Time.",
        "# TYPE demo_seconds_created gauge",
        'demo_seconds_created{route="/v1/messages"} 1.7e+09',
    ] == lines(registry)


def test_histogram_refuses_unsorted_buckets() -> None:
    """Like prometheus_client: bucket bounds must be sorted."""
    with pytest.raises(ValueError, match="sorted"):
        HistogramFamily("demo", "Demo.", buckets=(1.0, 0.5))


def test_gauge_lines(registry: CollectorRegistry) -> None:
    """An unlabelled gauge exists at 0 and moves with inc/dec; a labelled one is set."""
    depth = GaugeFamily("demo_depth", "Depth.")
    remaining = GaugeFamily("demo_remaining", "Remaining.", ["group", "axis"])
    registry.register(depth)
    registry.register(remaining)
    assert "demo_depth 0.0" in lines(registry)
    depth.labels().inc()
    depth.labels().inc(2)
    depth.labels().dec()
    remaining.labels("a", "requests").set(42)
    remaining.labels("a", "requests").set(41)
    assert [
        "# HELP demo_depth Depth.",
        "# TYPE demo_depth gauge",
        "demo_depth 2.0",
        "# HELP demo_remaining Remaining.",
        "# TYPE demo_remaining gauge",
        'demo_remaining{axis="requests",group="a"} 41.0',
    ] == lines(registry)


@pytest.mark.usefixtures("created_disabled")
def test_created_series_follow_prometheus_client_switch(registry: CollectorRegistry) -> None:
    """With `_created` disabled in prometheus_client, cells emit none either."""
    registry.register(CounterFamily("demo_total", "Demo."))
    registry.register(HistogramFamily("demo_seconds", "Demo.", buckets=BUCKETS))
    assert not [line for line in lines(registry) if "_created" in line]


def test_wrong_label_count_and_duplicate_names_are_refused(registry: CollectorRegistry) -> None:
    """A label count mismatch raises; registering a clashing name raises like metrics do."""
    family = CounterFamily("demo", "Demo.", ["group"])
    registry.register(family)
    with pytest.raises(ValueError, match="expected labels"):
        family.labels("a", "b")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("demo", "Again.", registry=registry)


@given(
    observations=st.lists(
        st.one_of(
            st.sampled_from([0.0, *BUCKETS, 7.0]),
            st.floats(min_value=-1.0, max_value=5.0, allow_nan=False),
        ),
        max_size=30,
    ),
    increments=st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), max_size=10),
    levels=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), max_size=10),
)
def test_exposition_matches_prometheus_client(
    observations: list[float], increments: list[float], levels: list[float]
) -> None:
    """The same updates give the same text as prometheus_client's own metric objects."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("demo_events", "Events.", ["kind"], registry=theirs)
    histogram = Histogram("demo_seconds", "Time.", ["route"], buckets=BUCKETS, registry=theirs)
    gauge = Gauge("demo_level", "Level.", ["axis"], registry=theirs)
    cells = CounterFamily("demo_events", "Events.", ["kind"])
    buckets = HistogramFamily("demo_seconds", "Time.", ["route"], buckets=BUCKETS)
    level = GaugeFamily("demo_level", "Level.", ["axis"])
    for family in (cells, buckets, level):
        ours.register(family)
    for amount in increments:
        counter.labels("x").inc(amount)
        cells.labels("x").inc(amount)
    for seconds in observations:
        histogram.labels("/r").observe(seconds)
        buckets.labels("/r").observe(seconds)
    for value in levels:
        gauge.labels("tokens").set(value)
        level.labels("tokens").set(value)
        gauge.labels("requests").inc(value)
        level.labels("requests").inc(value)
    assert masked(generate_latest(theirs)) == masked(generate_latest(ours))


def test_gateway_metrics_exposition() -> None:
    """GatewayMetrics on cells: exact lines for a labelled counter, a histogram, two gauges."""
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.upstream_attempt("200")
    metrics.upstream_attempt("200")
    metrics.upstream_attempt("timeout")
    for seconds in (0.0004, 0.0025, 0.0025, 0.2, 700.0):
        metrics.backend_call("reserve", seconds, ok=seconds < 1)
    metrics.queue_entered()
    metrics.queue_entered()
    metrics.queue_left()
    metrics.api_remaining("sonnet", "requests", 42)
    text = masked(metrics.render())
    le_counts = {
        "0.0001": 0, "0.00025": 0, "0.0005": 1, "0.001": 1, "0.0025": 3, "0.005": 3,
        "0.01": 3, "0.025": 3, "0.05": 3, "0.1": 3, "0.25": 4, "0.5": 4, "1.0": 4, "2.5": 4,
        "5.0": 4, "10.0": 4, "30.0": 4, "60.0": 4, "120.0": 4, "300.0": 4, "600.0": 4,
        "+Inf": 5,
    }  # fmt: skip
    expected = [
        "# HELP gateway_upstream_attempts_total Upstream attempts by status "
        "(or connect_error, timeout).",
        "# TYPE gateway_upstream_attempts_total counter",
        'gateway_upstream_attempts_total{status="200"} 2.0',
        'gateway_upstream_attempts_total{status="timeout"} 1.0',
        'gateway_upstream_attempts_created{status="200"} <ts>',
        'gateway_upstream_attempts_created{status="timeout"} <ts>',
        "# TYPE gateway_limiter_backend_seconds histogram",
        *[
            f'gateway_limiter_backend_seconds_bucket{{le="{le}",operation="reserve"}} {count}.0'
            for le, count in le_counts.items()
        ],
        'gateway_limiter_backend_seconds_count{operation="reserve"} 5.0',
        'gateway_limiter_backend_seconds_sum{operation="reserve"} 700.2054',
        'gateway_limiter_backend_seconds_created{operation="reserve"} <ts>',
        'gateway_limiter_backend_errors_total{operation="reserve"} 1.0',
        "# TYPE gateway_queue_depth gauge",
        "gateway_queue_depth 1.0",
        "# TYPE gateway_upstream_ratelimit_remaining gauge",
        'gateway_upstream_ratelimit_remaining{axis="requests",model_group="sonnet"} 42.0',
        "gateway_in_flight_requests 0.0",
        "gateway_open_streams 0.0",
        "gateway_limiter_fail_open_total 0.0",
        "gateway_limiter_fail_open_created <ts>",
        "gateway_upstream_retry_budget_exhausted_total 0.0",
    ]
    assert [] == [line for line in expected if line not in text]
    assert not [line for line in text if line.startswith("gateway_requests_total")]
