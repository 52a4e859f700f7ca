"""Every Prometheus metric of the gateway, on an injected registry, behind named methods.

Callers never touch a metric object: they call `observe_request(...)` and friends, so label
sets stay consistent and bounded in one place. `model` labels are normalised: the first
`MAX_MODELS` distinct model names keep their name, later ones fold into `other`.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.exposition import generate_latest

from gateway import __version__

MAX_MODELS = 50
OTHER = "other"
# Sub-millisecond to minutes: overhead lives at the bottom, long generations at the top.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class GatewayMetrics:
    """The gateway's metrics; one instance per app, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self._models: set[str] = set()
        self._requests = Counter(
            "gateway_requests",
            "Requests answered, by route, model, status and outcome.",
            ["route", "model", "status", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to last byte sent.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._ttfb = Histogram(
            "gateway_time_to_first_byte_seconds",
            "Time from request received to the first response body byte relayed.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "gateway_in_flight_requests", "Requests being handled.", registry=self.registry
        )
        self._open_streams = Gauge(
            "gateway_open_streams", "SSE responses being relayed.", registry=self.registry
        )
        self._bytes_out = Counter(
            "gateway_response_bytes",
            "Response body bytes relayed to clients.",
            ["route"],
            registry=self.registry,
        )
        self._admissions = Counter(
            "gateway_limiter_admissions",
            "Limiter decisions: now, queued, rejected, never_fits, unknown_model, unavailable.",
            ["group", "decision"],
            registry=self.registry,
        )
        self._queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time admitted requests waited for capacity (0 when sent at once).",
            ["group"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        Info("gateway_build", "Build information.", registry=self.registry).info(
            {"version": __version__}
        )

    def model_label(self, model: str | None) -> str:
        """The bounded label for `model`: known names, `none`, or `other` past the cap."""
        if not model:
            return "none"
        if model in self._models:
            return model
        if len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return OTHER

    def request_started(self) -> None:
        self._in_flight.inc()

    def request_finished(
        self,
        *,
        route: str,
        model: str | None,
        status: int,
        outcome: str,
        duration: float,
        ttfb: float | None,
        bytes_out: int,
    ) -> None:
        """Count one answered request and its timings."""
        self._in_flight.dec()
        self._requests.labels(route, self.model_label(model), str(status), outcome).inc()
        self._duration.labels(route).observe(duration)
        if ttfb is not None:
            self._ttfb.labels(route).observe(ttfb)
        if bytes_out:
            self._bytes_out.labels(route).inc(bytes_out)

    def admission(self, *, group: str, decision: str, waited: float | None) -> None:
        """Count one limiter decision; `waited` is set for admitted requests."""
        self._admissions.labels(group, decision).inc()
        if waited is not None:
            self._queue_wait.labels(group).observe(waited)

    def stream_opened(self) -> None:
        self._open_streams.inc()

    def stream_closed(self) -> None:
        self._open_streams.dec()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
