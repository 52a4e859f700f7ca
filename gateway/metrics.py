"""Every Prometheus metric of the gateway, on an injected registry, behind named methods.

Callers never touch a metric object: they call `request_finished(...)`, `upstream_attempt(...)`
and friends, so label sets stay consistent and bounded in one place. Cardinality bounds:
`model` keeps the first `MAX_MODELS` distinct names and folds the rest into `other`;
`model_group` is a configured group name (or `none`); `route` folds ids into `{id}`;
`status` is an HTTP status; every other label is from a fixed set named in its help text.
No request ids, keys or tenants without a configured name ever become labels.

Gauges that describe shared state (bucket fill) are read at scrape time from a callback that
returns the limiter's last known levels: a scrape costs no Redis call.

A request's metrics are all updated once, when it ends, from its `RequestRecord`
(`request_finished`); only the live gauges (in flight, queue depth, open streams) and the
limiter's backend timings move while it runs. The labelled counters and histograms are
`loop_metrics.py`'s: lock-free, since every update and every scrape runs on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
)
from prometheus_client.exposition import generate_latest

from gateway import __version__
from gateway.limits.recent import RecentDecisions
from gateway.loop_metrics import LoopCounter, LoopHistogram
from gateway.metric_collectors import (
    BucketFillCollector,
    FillReader,
    LearningCollector,
    LearningReader,
)
from gateway.record import RequestRecord

MAX_MODELS = 50
OTHER = "other"
# Sub-millisecond to minutes: overhead lives at the bottom, long generations at the top.
DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 4.0)


class GatewayMetrics:
    """The gateway's metrics; one instance per app, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self.recent = RecentDecisions()
        """The last minute's limiter decisions, for the live view (`admin.py`)."""
        self._models: set[str] = set()
        self._remaining_children: dict[tuple[str, str], Gauge] = {}
        self._in_flight_count = 0
        self._define_requests(registry)
        self._define_limiter(registry)
        self._define_upstream(registry)
        self._define_tokens(registry)
        self._define_estimates(registry)
        self._fill = BucketFillCollector()
        registry.register(self._fill)
        self._learning = LearningCollector()
        registry.register(self._learning)
        Info("gateway_build", "Build information.", registry=registry).info(
            {"version": __version__}
        )

    def _define_requests(self, registry: CollectorRegistry) -> None:
        self._requests = LoopCounter(
            "gateway_requests",
            "Requests answered, by outcome: ok, queued_ok, rejected, never_fits, "
            "invalid_request, upstream_error, upstream_unavailable, upstream_timeout, "
            "upstream_dropped, client_disconnect, client_timeout, over_capacity, "
            "gateway_error, internal_error.",
            ["model_group", "model", "route", "status", "outcome"],
            registry=registry,
        )
        self._duration = LoopHistogram(
            "gateway_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._ttfb = LoopHistogram(
            "gateway_time_to_first_byte_seconds",
            "Time from request received to the first response body byte relayed.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._overhead = LoopHistogram(
            "gateway_overhead_seconds",
            "Time the gateway itself spent before sending upstream, queue wait excluded.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        in_flight = Gauge(
            "gateway_in_flight_requests", "Requests being handled.", registry=registry
        )
        in_flight.set_function(lambda: float(self._in_flight_count))  # a plain int, no lock
        self._open_streams = Gauge(
            "gateway_open_streams", "SSE responses being relayed.", registry=registry
        )
        self._client_connections = Gauge(
            "gateway_client_connections",
            "Open client connections (at most GATEWAY_MAX_CONNECTIONS).",
            registry=registry,
        )
        self._bytes_out = LoopCounter(
            "gateway_response_bytes",
            "Response body bytes relayed to clients.",
            ["route"],
            registry=registry,
        )

    def _define_limiter(self, registry: CollectorRegistry) -> None:
        self._admissions = LoopCounter(
            "gateway_limiter_admissions",
            "Limiter decisions: now, queued, rejected, never_fits, unknown_model, unavailable; "
            "shadow_<decision> for one not enforced (enforce: false).",
            ["model_group", "decision"],
            registry=registry,
        )
        self._queue_wait = LoopHistogram(
            "gateway_queue_wait_seconds",
            "Time admitted requests waited for capacity (0 when sent at once).",
            ["model_group"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._queue_depth = Gauge(
            "gateway_queue_depth",
            "Requests of this instance waiting for admission (limiter call and queue wait).",
            registry=registry,
        )
        self._backend_latency = LoopHistogram(
            "gateway_limiter_backend_seconds",
            "Latency of one limiter backend call (Redis round trip), by operation.",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._backend_errors = LoopCounter(
            "gateway_limiter_backend_errors",
            "Limiter backend calls that failed (Redis errors, timeouts), by operation.",
            ["operation"],
            registry=registry,
        )
        self._fail_open = Counter(
            "gateway_limiter_fail_open",
            "Admissions decided on local buckets because the shared backend failed.",
            registry=registry,
        )
        self._breaker_open = Gauge(
            "gateway_limiter_breaker_open",
            "1 while the circuit breaker skips the shared backend.",
            registry=registry,
        )
        self._degraded = Gauge(
            "gateway_limiter_degraded",
            "1 while the shared backend's last call failed (unreachable, timeout, or an error "
            "reply such as OOM or READONLY): requests follow the redis_failure policy.",
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
        self._attempts = LoopCounter(
            "gateway_upstream_attempts",
            "Upstream attempts by status (or connect_error, timeout).",
            ["status"],
            registry=registry,
        )
        self._retries = LoopCounter(
            "gateway_upstream_retries",
            "Retries by cause: status code, connect_error, timeout.",
            ["cause"],
            registry=registry,
        )
        self._retry_budget_exhausted = Counter(
            "gateway_upstream_retry_budget_exhausted",
            "Retries skipped because the retry budget was spent.",
            registry=registry,
        )
        self._upstream_429 = LoopCounter(
            "gateway_upstream_rate_limited",
            "Upstream 429 responses (should stay at zero: the gateway's promise).",
            ["model_group"],
            registry=registry,
        )
        self._api_remaining = Gauge(
            "gateway_upstream_ratelimit_remaining",
            "The API's own anthropic-ratelimit-*-remaining, last seen, per group and axis.",
            ["model_group", "axis"],
            registry=registry,
        )

    def _define_tokens(self, registry: CollectorRegistry) -> None:
        self._tokens = LoopCounter(
            "gateway_tokens",
            "Tokens used, from settled usage, by kind: input, output, cache_read, cache_creation.",
            ["model_group", "kind"],
            registry=registry,
        )
        self._estimate_ratio = LoopHistogram(
            "gateway_token_estimate_ratio",
            "Actual / estimated input tokens per settled request (1.0 = exact).",
            ["model_group"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self._missing_usage = LoopCounter(
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

    def _remaining(self, group: str, axis: str) -> Gauge:
        """The API-remaining gauge's child, remembered: set four times a request, and
        prometheus-client's `labels()` validates and locks on every call (1.0-1.4 µs)."""
        child = self._remaining_children.get((group, axis))
        if child is None:
            child = self._remaining_children[group, axis] = self._api_remaining.labels(group, axis)
        return child

    # Requests -------------------------------------------------------------------------

    def request_started(self) -> None:
        self._in_flight_count += 1

    def request_finished(self, record: RequestRecord) -> None:
        """Everything one finished request did: its answer and timings, the limiter's
        decision, its upstream attempts and the usage it settled."""
        self._in_flight_count -= 1
        name = self.model_label(record.model, register=record.status < 400)
        route, group = record.route, record.group
        self._requests.labels(group, name, route, str(record.status), record.outcome).inc()
        self._duration.labels(route).observe(record.ended_at - record.started_at)
        ttfb, overhead = record.ttfb, record.overhead
        if ttfb is not None:
            self._ttfb.labels(route).observe(ttfb)
        if overhead is not None:
            self._overhead.labels(route).observe(max(0.0, overhead))
        if record.bytes_out:
            self._bytes_out.labels(route).inc(record.bytes_out)
        if record.decision is not None:
            self._admitted(record)
        if record.attempts:
            self._upstream(record)
        if record.usage is not None or record.usage_missing or record.api_remaining:
            self._settled(record)

    def watch_connections(self, read: Callable[[], int]) -> None:
        """Read the number of open client connections at scrape time."""
        self._client_connections.set_function(lambda: float(read()))

    @contextmanager
    def streaming(self, active: bool) -> Iterator[None]:
        """Count an SSE response as open while it is relayed (`active`: it is one)."""
        if not active:
            yield
            return
        self._open_streams.inc()
        try:
            yield
        finally:
            self._open_streams.dec()

    # Limiter --------------------------------------------------------------------------

    def _admitted(self, record: RequestRecord) -> None:
        """The limiter's decision, how long it queued, and how input was estimated."""
        group, decision = record.group, record.decision or "unlimited"
        self._admissions.labels(group, decision).inc()
        self.recent.note(group, record.tenant or "", decision, record.started_at)
        if decision in ("now", "queued"):
            self._queue_wait.labels(group).observe(record.queue_wait)
        if record.fail_open:
            self._fail_open.inc()
        if record.estimate is not None:
            self._input_estimates.labels(group, *record.estimate).inc()

    def queue_entered(self) -> None:
        self._queue_depth.inc()

    def queue_left(self) -> None:
        self._queue_depth.dec()

    def backend_call(self, operation: str, seconds: float, ok: bool) -> None:
        """One limiter backend round trip (reserve, adjust, cap, learn, ping) and whether it
        failed."""
        self._backend_latency.labels(operation).observe(seconds)
        if not ok:
            self._backend_errors.labels(operation).inc()

    def limits_configured(self, limits: Mapping[tuple[str, str], int]) -> None:
        """The limits file's limit per (group, dimension), for utilisation panels."""
        for (group, dimension), limit in limits.items():
            self._limit.labels(group, dimension).set(limit)

    def watch_learning(self, read: LearningReader) -> None:
        """Read the estimator's learned ratio and expected output at scrape time."""
        self._learning.read = read

    def watch_limiter(
        self,
        read_fill: FillReader,
        breaker_open: Callable[[], bool],
        degraded: Callable[[], bool],
    ) -> None:
        """Read bucket fill, breaker state and degradation from the limiter at scrape time."""
        self._fill.read = read_fill
        self._breaker_open.set_function(lambda: 1.0 if breaker_open() else 0.0)
        self._degraded.set_function(lambda: 1.0 if degraded() else 0.0)

    # Upstream -------------------------------------------------------------------------

    def _upstream(self, record: RequestRecord) -> None:
        """Each attempt, each retry and why, the retry budget, upstream 429s."""
        for status in record.attempts:
            self._attempts.labels(status).inc()
        for cause in record.retries:
            self._retries.labels(cause).inc()
        if record.budget_ran_out:
            self._retry_budget_exhausted.inc()
        if record.upstream_429s:
            self._upstream_429.labels(record.group).inc(record.upstream_429s)

    # Tokens ---------------------------------------------------------------------------

    def _settled(self, record: RequestRecord) -> None:
        """The usage a request settled, the estimator's error on it, the API's remaining
        limits; or that a response ended without usage."""
        group, usage = record.group, record.usage
        for axis, remaining in record.api_remaining.items():
            self._remaining(group, axis).set(remaining)
        if usage is None:
            if record.usage_missing:
                self._missing_usage.labels(group).inc()
            return
        for kind, amount in usage.by_kind().items():
            if amount:
                self._tokens.labels(group, kind).inc(amount)
        total_input = (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        )
        if record.reserved_input > 0:
            self._estimate_ratio.labels(group).observe(total_input / record.reserved_input)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def _define_estimates(self, registry: CollectorRegistry) -> None:
        self._input_estimates = LoopCounter(
            "gateway_input_estimates",
            "Input estimates at admission by method (count_tokens, heuristic) and reason: "
            "configured (the group's method), or why an exact count fell back: timeout, "
            "error, rate_limited.",
            ["model_group", "method", "reason"],
            registry=registry,
        )
