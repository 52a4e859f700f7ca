"""The loop metrics render exactly as prometheus-client's own Counter and Histogram do."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import metrics as client_metrics
from prometheus_client.exposition import generate_latest

from gateway.loop_metrics import LoopCounter, LoopHistogram
from gateway.metrics import DURATION_BUCKETS, RATIO_BUCKETS

CREATED = re.compile(rb"^(\w+_created\{[^}]*\}) \S+$", re.MULTILINE)
OBSERVED = (0.0, 0.0001, 0.00012, 0.0005, 0.003, 0.25, 1.0, 7.5, 599.0, 600.0, 601.0, 1e9)


def _rendered(registry: CollectorRegistry) -> bytes:
    """The registry's text, `_created` values masked (each metric notes its own clock)."""
    return CREATED.sub(rb"\1 <created>", generate_latest(registry))


def _fill(counter: Counter | LoopCounter, histogram: Histogram | LoopHistogram) -> None:
    for status in ("200", "429", "529"):
        counter.labels("all", status).inc()
    counter.labels("all", "200").inc(41)
    counter.labels("other", "200").inc(0.5)
    for amount in OBSERVED:
        histogram.labels("/v1/messages").observe(amount)
    histogram.labels("/v1/models").observe(0.002)


def _registries(buckets: tuple[float, ...]) -> tuple[CollectorRegistry, CollectorRegistry]:
    native, loop = CollectorRegistry(), CollectorRegistry()
    help_text = "Requests answered, by outcome: ok, rejected."
    _fill(
        Counter("gateway_requests", help_text, ["model_group", "status"], registry=native),
        Histogram("gateway_x_seconds", "Time.", ["route"], buckets=buckets, registry=native),
    )
    _fill(
        LoopCounter("gateway_requests", help_text, ["model_group", "status"], registry=loop),
        LoopHistogram("gateway_x_seconds", "Time.", ["route"], registry=loop, buckets=buckets),
    )
    return native, loop


@pytest.mark.parametrize("buckets", [DURATION_BUCKETS, RATIO_BUCKETS, (1.0, 2.0, float("inf"))])
def test_the_text_is_the_client_s_own(buckets: tuple[float, ...]) -> None:
    native, loop = _registries(buckets)
    text = _rendered(loop)
    assert text == _rendered(native)
    assert b'gateway_requests_total{model_group="all",status="200"} 42.0' in text
    assert b'gateway_x_seconds_bucket{le="+Inf",route="/v1/messages"} 12.0' in text
    assert b"gateway_requests_created{" in text
    assert b"gateway_x_seconds_created{" in text


def test_created_series_follow_the_client_s_switch() -> None:
    client_metrics.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        native, loop = _registries(DURATION_BUCKETS)
        text = generate_latest(loop)
        assert b"_created" not in text
        assert _rendered(loop) == _rendered(native)
    finally:
        client_metrics.enable_created_metrics()  # type: ignore[no-untyped-call]


def test_a_bound_observation_lands_in_its_own_bucket() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("h", "H.", ["route"], registry=registry, buckets=(1.0, 2.0))
    histogram.labels("r").observe(1.0)  # le="1.0" holds values <= 1.0
    histogram.labels("r").observe(1.0000001)
    text = generate_latest(registry)
    assert b'h_bucket{le="1.0",route="r"} 1.0' in text
    assert b'h_bucket{le="2.0",route="r"} 2.0' in text
    assert b'h_sum{route="r"} 2.0000001' in text


def test_labels_are_checked_as_the_client_checks_them() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("c", "C.", ["a", "b"], registry=registry)
    with pytest.raises(ValueError, match="Incorrect label count"):
        counter.labels("only one")
    with pytest.raises(TypeError):
        counter.labels("x", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("x", "y").inc(-1)


def test_a_name_is_registered_once() -> None:
    registry = CollectorRegistry()
    LoopCounter("gateway_requests", "C.", ["a"], registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("gateway_requests", "C.", ["a"], registry=registry)


def test_the_same_labels_give_the_same_child() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("h", "H.", ["route"], registry=registry, buckets=(1.0,))
    assert histogram.labels("r") is histogram.labels("r")
