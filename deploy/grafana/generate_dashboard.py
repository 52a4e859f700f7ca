"""Generate deploy/grafana/dashboards/claude-gateway.json, the gateway's Grafana dashboard.

Run `python deploy/grafana/generate_dashboard.py` after editing a panel here and commit both
files; tests/test_dashboards.py fails when the JSON and this script disagree. Every query
filters on the `$instance` and (where the metric has it) `$model_group` variables, reads the
datasource from the `$datasource` variable, and prefers the recording rules of
deploy/prometheus/rules/gateway-recording.yml where the raw query would be expensive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "claude-gateway.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INST = 'instance=~"$instance"'  # every query carries this selector
INST_GROUP = f'{INST}, model_group=~"$model_group"'
RATE = "$__rate_interval"
Panel = dict[str, Any]


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    """One Prometheus query of a panel."""
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    *,
    unit: str = "short",
    kind: str = "timeseries",
    width: int = 8,
    stack: bool = False,
    thresholds: list[tuple[str, float | None]] | None = None,
) -> Panel:
    """A panel of `(expr, legend)` queries; position is filled in by `layout`."""
    steps = [{"color": color, "value": value} for color, value in (thresholds or [])]
    defaults: dict[str, Any] = {"unit": unit}
    if steps:
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "fillOpacity": 10,
            "lineWidth": 1,
            "showPoints": "never",
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
    options: dict[str, Any] = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    if kind == "stat":
        options = {"colorMode": "background", "graphMode": "none", "textMode": "value_and_name"}
        options["reduceOptions"] = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width, "x": 0, "y": 0},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            target(expr, legend, chr(ord("A") + n)) for n, (expr, legend) in enumerate(queries)
        ],
    }


def quantiles(buckets: str, by: str = "") -> list[tuple[str, str]]:
    """p50, p95 and p99 over a per-`le` rate expression, optionally kept `by` a label."""
    keep = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({keep}) ({buckets}))", f"{prefix}p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]


def traffic() -> list[Panel]:
    """Requests by outcome and status, concurrency, fleet versions."""
    requests = f"instance_group_outcome_status:gateway_requests:rate5m{{{INST_GROUP}}}"
    return [
        panel(
            "Requests by outcome",
            "Answered requests per second by outcome (ok, queued_ok, rejected, ...).",
            [(f"sum by (outcome) ({requests})", "{{outcome}}")],
            unit="reqps",
            stack=True,
        ),
        panel(
            "Requests by status",
            "Answered requests per second by HTTP status sent to clients.",
            [(f"sum by (status) ({requests})", "{{status}}")],
            unit="reqps",
            stack=True,
        ),
        panel(
            "In flight and open streams",
            "Requests being handled and SSE streams being relayed, summed over instances.",
            [
                (f"sum(gateway_in_flight_requests{{{INST}}})", "in flight"),
                (f"sum(gateway_open_streams{{{INST}}})", "open streams"),
                (f"count by (version) (gateway_build_info{{{INST}}})", "instances {{version}}"),
            ],
        ),
    ]


def limits() -> list[Panel]:
    """Bucket utilisation and token throughput against the configured limits."""
    return [
        panel(
            "Limit utilisation",
            "1 - last seen bucket fill ratio, per group and dimension (above 100%: requests "
            "queued on debt). The fleet shares one bucket, so the max over instances.",
            [
                (
                    "max by (model_group, dimension) "
                    f"(instance_group_dimension:gateway_limiter_utilisation:ratio{{{INST_GROUP}}})",
                    "{{model_group}} {{dimension}}",
                )
            ],
            unit="percentunit",
            width=12,
            thresholds=[("green", None), ("orange", 0.8), ("red", 0.95)],
        ),
        panel(
            "Token throughput vs configured limit",
            "Settled tokens per minute by kind, against the limits file's per-minute limits.",
            [
                (
                    "60 * sum by (model_group, kind) "
                    f"(instance_group_kind:gateway_tokens:rate5m{{{INST_GROUP}}})",
                    "{{model_group}} {{kind}}",
                ),
                (
                    "max by (model_group, dimension) (gateway_limiter_limit{"
                    f'{INST_GROUP}, dimension=~"input_tokens|output_tokens|tokens"}})',
                    "{{model_group}} {{dimension}} limit",
                ),
            ],
            width=12,
        ),
    ]


def queue() -> list[Panel]:
    """Queue depth and queue wait percentiles."""
    waits = f"instance_group_le:gateway_queue_wait_seconds_bucket:rate5m{{{INST_GROUP}}}"
    return [
        panel(
            "Queue depth",
            "Requests waiting for admission (limiter call and queue wait), per instance.",
            [(f"sum by (instance) (gateway_queue_depth{{{INST}}})", "{{instance}}")],
            width=12,
        ),
        panel(
            "Queue wait percentiles",
            "Time admitted requests waited for capacity (0 when sent at once).",
            quantiles(waits),
            unit="s",
            width=12,
        ),
    ]


def rejections() -> list[Panel]:
    """Limiter decisions and refusals by reason."""
    decisions = f"instance_group_decision:gateway_limiter_admissions:rate5m{{{INST_GROUP}}}"
    refused = decisions.replace("}", ', decision=~"rejected|never_fits|unknown_model|unavailable"}')
    return [
        panel(
            "Limiter decisions",
            "Admissions per second: now, queued, and every refusal.",
            [(f"sum by (decision) ({decisions})", "{{decision}}")],
            unit="reqps",
            stack=True,
            width=12,
        ),
        panel(
            "Rejections by group and reason",
            "Refusals per second: rejected (429, queue cap), never_fits (413), "
            "unknown_model (400), unavailable (503, limiter down and fail_closed).",
            [(f"sum by (model_group, decision) ({refused})", "{{model_group}} {{decision}}")],
            unit="reqps",
            width=12,
        ),
    ]


def upstream() -> list[Panel]:
    """Upstream attempts, retries, 429s and the API's own remaining headroom."""
    return [
        panel(
            "Upstream attempts by status",
            "Attempts to the Anthropic API by status (or connect_error, timeout, cancelled).",
            [
                (
                    f"sum by (status) (instance_status:gateway_upstream_attempts:rate5m{{{INST}}})",
                    "{{status}}",
                )
            ],
            unit="reqps",
            stack=True,
        ),
        panel(
            "Upstream retries",
            "Retries per second by cause, and retries skipped because the budget was spent.",
            [
                (
                    f"sum by (cause) (rate(gateway_upstream_retries_total{{{INST}}}[{RATE}]))",
                    "{{cause}}",
                ),
                (
                    f"sum(rate(gateway_upstream_retry_budget_exhausted_total{{{INST}}}[{RATE}]))",
                    "budget exhausted",
                ),
            ],
            unit="reqps",
        ),
        panel(
            "Upstream 429s",
            "Rate-limit answers from the API in the selected range; the gateway's promise is zero.",
            [
                (
                    "sum by (model_group) "
                    f"(increase(gateway_upstream_rate_limited_total{{{INST_GROUP}}}[$__range]))",
                    "{{model_group}}",
                )
            ],
            kind="stat",
            thresholds=[("green", None), ("red", 1)],
        ),
        panel(
            "API remaining (anthropic-ratelimit-*-remaining)",
            "The API's own remaining capacity per group and axis, last seen (min over instances).",
            [
                (
                    "min by (model_group, axis) "
                    f"(gateway_upstream_ratelimit_remaining{{{INST_GROUP}}})",
                    "{{model_group}} {{axis}}",
                )
            ],
            width=12,
        ),
        panel(
            "Token estimate accuracy",
            "Actual / estimated input tokens per settled request (1.0 = exact).",
            [
                (
                    "histogram_quantile(0.5, sum by (le, model_group) "
                    f"(rate(gateway_token_estimate_ratio_bucket{{{INST_GROUP}}}[{RATE}])))",
                    "{{model_group}} p50",
                ),
                (
                    "sum by (model_group) "
                    f"(rate(gateway_usage_missing_total{{{INST_GROUP}}}[{RATE}]))",
                    "{{model_group}} usage missing /s",
                ),
            ],
            width=12,
        ),
        panel(
            "Input estimates by method",
            "How admissions estimated their input tokens: count_tokens (the API's exact count, "
            "groups with `estimate: count_tokens`) or the heuristic; for a count that fell "
            "back, why (timeout, error, rate_limited).",
            [
                (
                    "sum by (model_group, method, reason) "
                    f"(rate(gateway_input_estimates_total{{{INST_GROUP}}}[{RATE}]))",
                    "{{model_group}} {{method}} {{reason}}",
                )
            ],
            unit="reqps",
            stack=True,
            width=12,
        ),
    ]


def latency() -> list[Panel]:
    """Time to first byte, gateway overhead and total duration."""
    ttfb = f"instance_route_le:gateway_time_to_first_byte_seconds_bucket:rate5m{{{INST}}}"
    overhead = f"instance_route_le:gateway_overhead_seconds_bucket:rate5m{{{INST}}}"
    duration = (
        "instance_route_le:gateway_request_duration_seconds_bucket:rate5m"
        f'{{{INST}, route=~"/v1/.*"}}'
    )
    return [
        panel(
            "Time to first byte",
            "Request received to first body byte relayed.",
            quantiles(ttfb),
            unit="s",
        ),
        panel(
            "Gateway overhead",
            "Time the gateway spent before sending upstream, queue wait excluded.",
            quantiles(overhead),
            unit="s",
        ),
        panel(
            "Request duration p95 by route",
            "Request received to last byte sent, /v1 routes.",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, route) ({duration}))",
                    "{{route}}",
                )
            ],
            unit="s",
        ),
    ]


def redis() -> list[Panel]:
    """The limiter backend: latency, errors, fail-open and the breaker."""
    backend = f"rate(gateway_limiter_backend_seconds_bucket{{{INST}}}[{RATE}])"
    return [
        panel(
            "Limiter backend latency",
            "One limiter backend (Redis) call, by operation: reserve, adjust.",
            [
                (
                    f"histogram_quantile({q}, sum by (le, operation) ({backend}))",
                    f"{{{{operation}}}} p{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            unit="s",
        ),
        panel(
            "Limiter backend errors and fail-open",
            "Failed Redis calls per second, and admissions decided on local buckets.",
            [
                (
                    "sum by (operation) "
                    f"(rate(gateway_limiter_backend_errors_total{{{INST}}}[{RATE}]))",
                    "errors {{operation}}",
                ),
                (
                    f"sum(rate(gateway_limiter_fail_open_total{{{INST}}}[{RATE}]))",
                    "fail-open admissions",
                ),
            ],
            unit="reqps",
        ),
        panel(
            "Redis degraded / circuit breaker open",
            "Degraded: 1 while an instance's last Redis call failed (unreachable, OOM, "
            "READONLY); breaker: 1 while it skips Redis after repeated errors.",
            [
                (
                    f"max by (instance) (gateway_limiter_degraded{{{INST}}})",
                    "degraded {{instance}}",
                ),
                (
                    f"max by (instance) (gateway_limiter_breaker_open{{{INST}}})",
                    "breaker {{instance}}",
                ),
            ],
            thresholds=[("green", None), ("red", 1)],
        ),
    ]


ROWS = (
    ("Traffic and status", traffic),
    ("Limits and token throughput", limits),
    ("Queue", queue),
    ("Rejections", rejections),
    ("Upstream", upstream),
    ("Latency", latency),
    ("Redis (limiter backend)", redis),
)


def layout() -> list[Panel]:
    """Rows and their panels, positioned left to right, top to bottom, with unique ids."""
    placed: list[Panel] = []
    y = 0
    for title, build in ROWS:
        placed.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        y, x = y + 1, 0
        for item in build():
            width = item["gridPos"]["w"]
            if x + width > 24:
                y, x = y + 8, 0
            item["gridPos"] = {"h": 8, "w": width, "x": x, "y": y}
            x += width
            placed.append(item)
        y += 8
    for number, item in enumerate(placed, start=1):
        item["id"] = number
    return placed


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-select query variable with an `All` (regex `.*`) option."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    """The whole dashboard document."""
    return {
        "uid": "claude-gateway",
        "title": "Claude Gateway",
        "description": "claude-gateway: traffic, limits, queue, upstream, latency, Redis.",
        "tags": ["claude-gateway", "anthropic"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("instance", "Instance", "label_values(gateway_build_info, instance)"),
                variable(
                    "model_group",
                    "Model group",
                    'label_values(gateway_requests_total{instance=~"$instance"}, model_group)',
                ),
            ]
        },
        "panels": layout(),
    }


def render() -> str:
    """The dashboard as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
