"""Every Prometheus metric of the gateway, on an injected registry, behind named methods.

Callers never touch a metric object: they call `request_finished(...)`, `upstream_attempt(...)`
and friends, so label sets stay consistent and bounded in one place. Cardinality bounds:
`model` keeps the first `MAX_MODELS` distinct names and folds the rest into `other`;
`model_group` is a configured group name (or `none`); `route` folds ids into `{id}`;
`status` is an HTTP status; every other label is from a fixed set named in its help text.
No request ids, keys or tenants without a configured name ever become labels.

Gauges that describe shared state (bucket fill) are read at scrape time from a callback that
returns the limiter's last known levels: a scrape costs no Redis call.

Metrics updated per request are lock-free cells (gateway/metric_cells.py) rather than
prometheus_client objects, with the same exposition; metrics read at scrape time or set
rarely (bucket fill, learned figures, breaker, limits, build info) stay prometheus_client's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Info,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.metric_cells import (
    CounterCell,
    CounterFamily,
    GaugeFamily,
    HistogramCell,
    HistogramFamily,
)

MAX_MODELS = 50
OTHER = "other"
# Sub-millisecond to minutes: overhead lives at the bottom, long generations at the top.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation")
FillReader = Callable[[], Mapping[tuple[str, str], float]]


class _BucketFillCollector(Collector):
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


class _LearningCollector(Collector):
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


class GatewayMetrics:
    """The gateway's metrics; one instance per app, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self._models: set[str] = set()
        self._per_route: dict[
            str, tuple[HistogramCell, HistogramCell, HistogramCell, CounterCell]
        ] = {}
        """Per route: the duration, ttfb, overhead and bytes cells, found in one lookup."""
        self._define_requests(registry)
        self._define_limiter(registry)
        self._define_upstream(registry)
        self._define_tokens(registry)
        self._define_estimates(registry)
        self._fill = _BucketFillCollector()
        registry.register(self._fill)
        self._learning = _LearningCollector()
        registry.register(self._learning)
        Info("gateway_build", "Build information.", registry=registry).info(
            {"version": __version__}
        )

    def _define_requests(self, registry: CollectorRegistry) -> None:
        self._requests = CounterFamily(
            "gateway_requests",
            "Requests answered, by outcome: ok, queued_ok, rejected, never_fits, "
            "invalid_request, upstream_error, upstream_unavailable, upstream_timeout, "
            "upstream_dropped, client_disconnect, gateway_error, internal_error.",
            ["model_group", "model", "route", "status", "outcome"],
            registry=registry,
        )
        self._duration = HistogramFamily(
            "gateway_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._ttfb = HistogramFamily(
            "gateway_time_to_first_byte_seconds",
            "Time from request received to the first response body byte relayed.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._overhead = HistogramFamily(
            "gateway_overhead_seconds",
            "Time the gateway itself spent before sending upstream, queue wait excluded.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._in_flight = GaugeFamily(
            "gateway_in_flight_requests", "Requests being handled.", registry=registry
        ).labels()
        self._open_streams = GaugeFamily(
            "gateway_open_streams", "SSE responses being relayed.", registry=registry
        ).labels()
        self._bytes_out = CounterFamily(
            "gateway_response_bytes",
            "Response body bytes relayed to clients.",
            ["route"],
            registry=registry,
        )

    def _define_limiter(self, registry: CollectorRegistry) -> None:
        self._admissions = CounterFamily(
            "gateway_limiter_admissions",
            "Limiter decisions: now, queued, rejected, never_fits, unknown_model, unavailable.",
            ["model_group", "decision"],
            registry=registry,
        )
        self._queue_wait = HistogramFamily(
            "gateway_queue_wait_seconds",
            "Time admitted requests waited for capacity (0 when sent at once).",
            ["model_group"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._queue_depth = GaugeFamily(
            "gateway_queue_depth",
            "Requests of this instance waiting for admission (limiter call and queue wait).",
            registry=registry,
        ).labels()
        self._backend_latency = HistogramFamily(
            "gateway_limiter_backend_seconds",
            "Latency of one limiter backend call (Redis round trip), by operation.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._backend_errors = CounterFamily(
            "gateway_limiter_backend_errors",
            "Limiter backend calls that failed (Redis errors, timeouts), by operation.",
            ["operation"],
            registry=registry,
        )
        self._fail_open = CounterFamily(
            "gateway_limiter_fail_open",
            "Admissions decided on local buckets because the shared backend failed.",
            registry=registry,
        ).labels()
        self._breaker_open = Gauge(
            "gateway_limiter_breaker_open",
            "1 while the circuit breaker skips the shared backend.",
            registry=registry,
        )
        self._limit = Gauge(
            "gateway_limiter_limit",
            "Configured limit per group and dimension, from the limits file (per minute; "
            "per day for tokens_per_day), before headroom.",
            ["model_group", "dimension"],
            registry=registry,
        )

    def _define_upstream(self, registry: CollectorRegistry) -> None:
        self._attempts = CounterFamily(
            "gateway_upstream_attempts",
            "Upstream attempts by status (or connect_error, timeout).",
            ["status"],
            registry=registry,
        )
        self._retries = CounterFamily(
            "gateway_upstream_retries",
            "Retries by cause: status code, connect_error, timeout.",
            ["cause"],
            registry=registry,
        )
        self._retry_budget_exhausted = CounterFamily(
            "gateway_upstream_retry_budget_exhausted",
            "Retries skipped because the retry budget was spent.",
            registry=registry,
        ).labels()
        self._upstream_429 = CounterFamily(
            "gateway_upstream_rate_limited",
            "Upstream 429 responses (should stay at zero: the gateway's promise).",
            ["model_group"],
            registry=registry,
        )
        self._api_remaining = GaugeFamily(
            "gateway_upstream_ratelimit_remaining",
            "The API's own anthropic-ratelimit-*-remaining, last seen, per group and axis.",
            ["model_group", "axis"],
            registry=registry,
        )

    def _define_tokens(self, registry: CollectorRegistry) -> None:
        self._tokens = CounterFamily(
            "gateway_tokens",
            "Tokens used, from settled usage, by kind: input, output, cache_read, cache_creation.",
            ["model_group", "kind"],
            registry=registry,
        )
        self._estimate_ratio = HistogramFamily(
            "gateway_token_estimate_ratio",
            "Actual / estimated input tokens per settled request (1.0 = exact).",
            ["model_group"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self._missing_usage = CounterFamily(
            "gateway_usage_missing",
            "Responses that ended without usage; the reservation was charged as is.",
            ["model_group"],
            registry=registry,
        )

    def model_label(self, model: str | None, *, register: bool = True) -> str:
        """The bounded label for `model`: known names, `none`, or `other` past the cap.

        A name joins the known set only from a successful answer (`register`), so clients
        sending made-up model names (which the API refuses) cannot use up the cap.
        """
        if not model:
            return "none"
        if model in self._models:
            return model
        if register and len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return OTHER

    # Requests -------------------------------------------------------------------------

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_finished(
        self,
        *,
        route: str,
        model_group: str,
        model: str | None,
        status: int,
        outcome: str,
        duration: float,
        ttfb: float | None,
        overhead: float | None,
        bytes_out: int,
    ) -> None:
        """Count one answered request and its timings."""
        self._in_flight.dec()
        name = self.model_label(model, register=status < 400)
        self._requests.labels(model_group, name, route, str(status), outcome).inc()
        per_route = self._per_route.get(route)
        if per_route is None:
            per_route = self._per_route[route] = (
                self._duration.labels(route),
                self._ttfb.labels(route),
                self._overhead.labels(route),
                self._bytes_out.labels(route),
            )
        duration_child, ttfb_child, overhead_child, bytes_child = per_route
        duration_child.observe(duration)
        if ttfb is not None:
            ttfb_child.observe(ttfb)
        if overhead is not None:
            overhead_child.observe(max(0.0, overhead))
        if bytes_out:
            bytes_child.inc(bytes_out)

    def stream_opened(self) -> None:
        self._open_streams.inc()

    def stream_closed(self) -> None:
        self._open_streams.dec()

    # Limiter --------------------------------------------------------------------------

    def admission(self, *, group: str, decision: str, waited: float | None) -> None:
        """Count one limiter decision; `waited` is set for admitted requests."""
        self._admissions.labels(group, decision).inc()
        if waited is not None:
            self._queue_wait.labels(group).observe(waited)

    def queue_entered(self) -> None:
        self._queue_depth.inc()

    def queue_left(self) -> None:
        self._queue_depth.dec()

    def backend_call(self, operation: str, seconds: float, ok: bool) -> None:
        """One limiter backend round trip (reserve, adjust, cap, learn) and whether it failed."""
        self._backend_latency.labels(operation).observe(seconds)
        if not ok:
            self._backend_errors.labels(operation).inc()

    def fail_open_used(self) -> None:
        self._fail_open.inc()

    def limits_configured(self, limits: Mapping[tuple[str, str], int]) -> None:
        """The limits file's limit per (group, dimension), for utilisation panels."""
        for (group, dimension), limit in limits.items():
            self._limit.labels(group, dimension).set(limit)

    def watch_learning(self, read: LearningReader) -> None:
        """Read the estimator's learned ratio and expected output at scrape time."""
        self._learning.read = read

    def watch_limiter(self, read_fill: FillReader, breaker_open: Callable[[], bool]) -> None:
        """Read bucket fill and breaker state from the limiter at scrape time."""
        self._fill.read = read_fill
        self._breaker_open.set_function(lambda: 1.0 if breaker_open() else 0.0)

    # Upstream -------------------------------------------------------------------------

    def upstream_attempt(self, status: str) -> None:
        """One attempt upstream: its HTTP status, or `connect_error` / `timeout`."""
        self._attempts.labels(status).inc()

    def upstream_retry(self, cause: str) -> None:
        self._retries.labels(cause).inc()

    def retry_budget_exhausted(self) -> None:
        self._retry_budget_exhausted.inc()

    def upstream_rate_limited(self, group: str) -> None:
        self._upstream_429.labels(group).inc()

    def api_remaining(self, group: str, axis: str, remaining: float) -> None:
        """The API's `anthropic-ratelimit-<axis>-remaining` for a group."""
        self._api_remaining.labels(group, axis).set(remaining)

    # Tokens ---------------------------------------------------------------------------

    def tokens_used(self, group: str, usage: Mapping[str, int]) -> None:
        """Settled usage by kind (`input`, `output`, `cache_read`, `cache_creation`)."""
        for kind in TOKEN_KINDS:
            amount = usage.get(kind, 0)
            if amount:
                self._tokens.labels(group, kind).inc(amount)

    def estimate_observed(self, group: str, estimated: int, actual: int) -> None:
        """The estimator's error on one request, as actual / estimated input tokens."""
        if estimated > 0:
            self._estimate_ratio.labels(group).observe(actual / estimated)

    def usage_missing(self, group: str) -> None:
        self._missing_usage.labels(group).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    # Input estimates ------------------------------------------------------------------
    # How each model-group admission estimated its input: `estimate: count_tokens` groups
    # ask the API (gateway/exact_count.py) and fall back to the heuristic; `reason` says why.

    def _define_estimates(self, registry: CollectorRegistry) -> None:
        self._input_estimates = CounterFamily(
            "gateway_input_estimates",
            "Input estimates at admission by method (count_tokens, heuristic) and reason: "
            "configured (the group's method), or why an exact count fell back: timeout, "
            "error, rate_limited.",
            ["model_group", "method", "reason"],
            registry=registry,
        )

    def input_estimate(self, group: str, method: str, reason: str) -> None:
        """One admission's input estimate: how it was made and, for a fallback, why."""
        self._input_estimates.labels(group, method, reason).inc()
