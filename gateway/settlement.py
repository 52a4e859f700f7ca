"""Settlement arithmetic: what a finished request really cost, and what upstream says is left.

Pure functions over the upstream's answer and the usage the tap read; the admission ticket
(`gateway/ticket.py`) applies them. What is charged (the difference to the reservation is
settled in one `Limiter.settle` call):

- usage reported (JSON body, or the stream's last `message_delta`): that usage, as the API
  counts it (cache reads only where the group says they count). A client that left
  mid-stream, or a stream upstream dropped, is charged what the stream reported so far;
- an upstream error (4xx/5xx, or a stream `error` event) before any usage: the request
  only; input and output are refunded;
- the client left before any usage arrived: the reserved input, no output;
- a 2xx that ended without usage: the reservation as is (counted by `usage_missing`);
- a count upstream reported that was no sane count (negative, absurd, not an integer) is
  ignored: what was charged for it so far stands.

Feedback: the API's `anthropic-ratelimit-*-remaining` headers, and a 429's `retry-after`,
pull the shared buckets down (never up) when upstream has used more than this gateway
accounts for, by more than a threshold (`pull_down_ceilings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.limits import Admitted, BucketSpec, Cost, Dimension
from gateway.usage import UsageTap

AXES = {
    Dimension.REQUESTS: "requests",
    Dimension.INPUT_TOKENS: "input-tokens",
    Dimension.OUTPUT_TOKENS: "output-tokens",
}
PULL_SHARE = 0.05
"""Disagreements below this share of a bucket are noise (in-flight requests, rounding)."""
INPUT_FIELDS = frozenset({"input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"})
"""Usage fields that make up the charged input."""
TOKEN_ROUNDING = 500  # the API rounds token `remaining` to the nearest 1,000: +-500


@dataclass(slots=True)
class UpstreamAnswer:
    """How the upstream exchange went, as far as settlement cares."""

    status: int
    headers: Mapping[str, str]
    headers_at: float
    """This instance's clock when the response headers arrived."""
    requests: int = 1
    """Requests to charge: every attempt the API answered (retries included)."""
    client_left: bool = True
    """The client went away before the body was complete (True until the relay says)."""
    dropped: bool = False
    """Upstream broke the body off."""

    @property
    def complete(self) -> bool:
        """A success relayed in full: what the group learns its figures from."""
        return self.status < 300 and not self.client_left and not self.dropped


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
    admitted: Admitted, answer: UpstreamAnswer, reported: Mapping[Dimension, int] | None = None
) -> dict[Dimension, float]:
    """The highest level each bucket may hold, as of `answer.headers_at`, per upstream.

    Only where it looks worth a backend call: the bucket's level at reservation, refilled
    since, exceeds upstream's `remaining` by more than the threshold (the backend then
    compares with the bucket's level now, which already counts requests still queued). A
    429's `retry-after` holds every bucket until then: a ceiling of -retry_after * rate.
    `reported` is `reported_remaining(answer.headers)` when the caller already parsed it.
    """
    if reported is None:
        reported = reported_remaining(answer.headers)
    hold = _retry_after(answer.headers) if answer.status == 429 else None
    ceilings: dict[Dimension, float] = {}
    if not reported and hold is None:
        return ceilings  # nothing to compare with: most responses of non-Anthropic upstreams
    elapsed = max(0.0, answer.headers_at - admitted.reserved_at)
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


def actual_cost(
    admitted: Admitted, tap: UsageTap, answer: UpstreamAnswer, cache_reads: bool
) -> Cost:
    """What the request really cost; see the module docstring for each case."""
    usage = tap.usage
    reserved = admitted.reservation.cost
    if usage is not None:
        cost = usage.cost(cache_reads_count=cache_reads, requests=answer.requests)
        return _standing_in(cost, admitted, tap.rejected) if tap.rejected else cost
    if answer.status >= 400 or tap.errored:
        return Cost(requests=answer.requests)
    if answer.client_left:
        return Cost(answer.requests, reserved.input_tokens, 0)
    return Cost(answer.requests, reserved.input_tokens, reserved.output_tokens)


def _standing_in(cost: Cost, admitted: Admitted, rejected: Mapping[str, object]) -> Cost:
    """`cost` with what was charged so far standing in for a count upstream reported that
    was no sane count (it was ignored): neither refunded nor charged on a count not believed."""
    charged = admitted.reservation.cost.plus(admitted.live)
    input_tokens, output_tokens = cost.input_tokens, cost.output_tokens
    if rejected.keys() & INPUT_FIELDS:
        input_tokens = charged.input_tokens
    if "output_tokens" in rejected:
        output_tokens = charged.output_tokens
    return Cost(cost.requests, input_tokens, output_tokens)


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
