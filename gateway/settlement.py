"""Settle one admitted request once its response is relayed, and learn from upstream.

What is charged, in one `Limiter.settle` call (the difference to the reservation):

- usage reported (JSON body, or the stream's last `message_delta`): that usage, as the API
  counts it (cache reads only where the group says they count). A client that left
  mid-stream, or a stream upstream dropped, is charged what the stream reported so far;
- an upstream error (4xx/5xx, or a stream `error` event) before any usage: the request
  only; input and output are refunded;
- the client left before any usage arrived: the reserved input, no output;
- a 2xx that ended without usage: the reservation as is, counted by `usage_missing`.

Complete responses also teach the group's `Learning` (input ratio, expected output).

Feedback: the API's `anthropic-ratelimit-*-limit/-remaining` headers, and a 429's
`retry-after`, pull the shared buckets down (never up) when upstream has used more than this
gateway accounts for, by more than `pull_threshold`: one extra backend call, only then.
For groups that learn their limits, the `-limit` headers of a 2xx or 429 teach them.

Endpoint admissions (count_tokens, batches: their own RPM bucket) are not settled: the one
request stays charged, and the Messages headers on their responses teach nothing.
"""

from __future__ import annotations

import math
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.limits import Admission, Admitted, BucketSpec, Cost, Dimension, Limiter
from gateway.metrics import GatewayMetrics
from gateway.tokens import UsageTap

AXES = {
    Dimension.REQUESTS: "requests",
    Dimension.INPUT_TOKENS: "input-tokens",
    Dimension.OUTPUT_TOKENS: "output-tokens",
}
PULL_SHARE = 0.05
"""Disagreements below this share of a bucket are noise (in-flight requests, rounding)."""
TOKEN_ROUNDING = 500  # the API rounds token `remaining` to the nearest 1,000: +-500


@dataclass(slots=True)
class Outcome:
    """How the upstream exchange went, as far as settlement cares."""

    status: int
    headers: Mapping[str, str]
    headers_at: float
    """This instance's clock when the response headers arrived."""
    requests: int = 1
    """Requests to charge: every attempt the API answered (retries included)."""
    client_left: bool = False
    dropped: bool = False
    """Upstream broke the stream off."""


def reported_remaining(headers: Mapping[str, str]) -> dict[Dimension, int]:
    """`anthropic-ratelimit-*-remaining` per axis; absent or bad values skipped."""
    return _reported(headers, "remaining")


def reported_limits(headers: Mapping[str, str]) -> dict[Dimension, int]:
    """`anthropic-ratelimit-*-limit` per axis; absent or bad values skipped."""
    return _reported(headers, "limit")


_HEADER_NAMES = {
    field: tuple(
        (dimension, f"anthropic-ratelimit-{axis}-{field}") for dimension, axis in AXES.items()
    )
    for field in ("remaining", "limit")
}  # built once: read on every settled response


def _reported(headers: Mapping[str, str], field: str) -> dict[Dimension, int]:
    """`anthropic-ratelimit-<axis>-<field>` as an integer per axis that sent a valid one."""
    found: dict[Dimension, int] = {}
    for dimension, name in _HEADER_NAMES[field]:
        value = _int(headers.get(name))
        if value is not None:
            found[dimension] = value
    return found


def pull_down_ceilings(
    admitted: Admitted, outcome: Outcome, reported: Mapping[Dimension, int] | None = None
) -> dict[Dimension, float]:
    """The highest level each bucket may hold, as of `outcome.headers_at`, per upstream.

    Only where it looks worth a backend call: the bucket's level at reservation, refilled
    since, exceeds upstream's `remaining` by more than the threshold (the backend then
    compares with the bucket's level now, which already counts requests still queued). A
    429's `retry-after` holds every bucket until then: a ceiling of -retry_after * rate.
    `reported` is `reported_remaining(outcome.headers)` when the caller already parsed it.
    """
    if reported is None:
        reported = reported_remaining(outcome.headers)
    hold = _retry_after(outcome.headers) if outcome.status == 429 else None
    ceilings: dict[Dimension, float] = {}
    if not reported and hold is None:
        return ceilings  # nothing to compare with: most responses of non-Anthropic upstreams
    elapsed = max(0.0, outcome.headers_at - admitted.reserved_at)
    reservation = admitted.reservation
    for bucket, level in zip(reservation.buckets, reservation.levels, strict=True):
        remaining = reported.get(bucket.dimension)  # only AXES dimensions are reported
        if remaining is None and (hold is None or bucket.dimension not in AXES):
            continue
        capacity = bucket.capacity
        if capacity <= 0:
            continue
        local_level = min(capacity, level + elapsed * bucket.rate)
        ceiling = math.inf
        if remaining is not None and local_level - remaining > _threshold(bucket):
            ceiling = float(remaining)
        if hold is not None:
            ceiling = min(ceiling, -hold * bucket.rate)
        if ceiling < local_level:
            ceilings[bucket.dimension] = ceiling
    return ceilings


def actual_cost(admitted: Admitted, tap: UsageTap, outcome: Outcome, cache_reads: bool) -> Cost:
    """What the request really cost; see the module docstring for each case."""
    usage = tap.usage
    reserved = admitted.reservation.cost
    if usage is not None:
        return usage.cost(cache_reads_count=cache_reads, requests=outcome.requests)
    if outcome.status >= 400 or tap.errored:
        return Cost(requests=outcome.requests)
    if outcome.client_left:
        return Cost(outcome.requests, reserved.input_tokens, 0)
    return Cost(outcome.requests, reserved.input_tokens, reserved.output_tokens)


def settle(
    limiter: Limiter | None,
    metrics: GatewayMetrics,
    decision: Admission | None,
    *,
    input_estimate: int | None,
    tap: UsageTap,
    outcome: Outcome,
) -> Coroutine[Any, Any, None] | None:
    """Settle the usage and learn from it, at once; or, when upstream reported less room
    than the buckets hold, return the pull-down and settlement still to make, in that order,
    for the caller to await (the only part that waits on the backend).

    Called for model-group admissions only; `input_estimate` is the raw heuristic estimate
    made at admission, reused here to calibrate instead of estimating the body again.
    """
    if limiter is None or not isinstance(decision, Admitted):
        return None
    learns = outcome.status < 300 or outcome.status == 429
    if learns and limiter.learns_limits(decision.group):
        limiter.learn_limits(decision.group, reported_limits(outcome.headers))
    reported = reported_remaining(outcome.headers)
    for dimension, remaining in reported.items():
        metrics.api_remaining(decision.group, AXES[dimension], remaining)
    ceilings = pull_down_ceilings(decision, outcome, reported)
    if ceilings:
        return _pull_down_and_settle(
            limiter, metrics, decision, ceilings, input_estimate=input_estimate, tap=tap,
            outcome=outcome,
        )  # fmt: skip
    _settle(limiter, metrics, decision, input_estimate=input_estimate, tap=tap, outcome=outcome)
    return None


async def _pull_down_and_settle(
    limiter: Limiter,
    metrics: GatewayMetrics,
    decision: Admitted,
    ceilings: Mapping[Dimension, float],
    *,
    input_estimate: int | None,
    tap: UsageTap,
    outcome: Outcome,
) -> None:
    """Lower the buckets to upstream's view first, then settle on top of it."""
    await limiter.pull_down(decision, ceilings, at=outcome.headers_at)
    _settle(limiter, metrics, decision, input_estimate=input_estimate, tap=tap, outcome=outcome)


def _settle(
    limiter: Limiter,
    metrics: GatewayMetrics,
    decision: Admitted,
    *,
    input_estimate: int | None,
    tap: UsageTap,
    outcome: Outcome,
) -> None:
    """Charge or refund what the request really cost, and observe the usage."""
    group = limiter.group(decision.group)
    cache_reads = group is not None and group.cache_reads_count
    limiter.settle(decision, actual_cost(decision, tap, outcome, cache_reads))
    _observe(limiter, metrics, decision, input_estimate=input_estimate, tap=tap, outcome=outcome)


def _observe(
    limiter: Limiter,
    metrics: GatewayMetrics,
    admitted: Admitted,
    *,
    input_estimate: int | None,
    tap: UsageTap,
    outcome: Outcome,
) -> None:
    """Metrics for the settled usage; complete 2xx responses teach the group."""
    name, usage = admitted.group, tap.usage
    if usage is None:
        if outcome.status < 400 and not tap.errored and not outcome.client_left:
            metrics.usage_missing(name)
        return
    metrics.tokens_used(name, usage.by_kind())
    total_input = (
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    )
    metrics.estimate_observed(name, admitted.reservation.cost.input_tokens, total_input)
    if outcome.status >= 300 or tap.errored or outcome.client_left or outcome.dropped:
        return
    limiter.learning.observe(name, input_estimate, total_input, usage.output_tokens)


def _threshold(bucket: BucketSpec) -> float:
    floor = 1 if bucket.dimension is Dimension.REQUESTS else TOKEN_ROUNDING
    return max(floor, PULL_SHARE * bucket.capacity)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = _int(headers.get("retry-after"))
    return float(value) if value is not None and value > 0 else None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None
