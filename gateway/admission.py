"""Turn a limiter decision into "go" or a gateway error with honest headers.

A local 429 looks like the API's: `rate_limit_error` in the envelope, `retry-after` in whole
seconds rounded up, plus `x-gateway-ratelimit-*` naming the bucket and its state. Past 60 s
the Python SDK ignores `retry-after` and retries in ~0.5 s, so such answers also carry
`x-should-retry: false` (reference §7.4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.errors import GatewayError, InvalidRequest, NeverFits, Overloaded, RateLimited
from gateway.limits import (
    Admission,
    Admitted,
    BackendUnavailable,
    NeverFitsRejection,
    Rejected,
    UnknownModel,
)

MAX_WAIT_HEADER = "x-gateway-max-wait"
SDK_RETRY_AFTER_CAP = 60


def decision_labels(decision: Admission) -> tuple[str, str]:
    """(group, decision) labels for metrics."""
    if isinstance(decision, Admitted):
        return decision.group, "queued" if decision.waited_seconds > 0 else "now"
    if isinstance(decision, Rejected):
        return decision.group, "rejected"
    if isinstance(decision, NeverFitsRejection):
        return decision.group, "never_fits"
    if isinstance(decision, UnknownModel):
        return "none", "unknown_model"
    if isinstance(decision, BackendUnavailable):
        return "none", "unavailable"
    return "none", "unlimited"


def requested_max_wait(headers: Mapping[str, str]) -> float | None:
    """The client's `x-gateway-max-wait` in seconds (the limiter caps it), or None."""
    raw = headers.get(MAX_WAIT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{MAX_WAIT_HEADER}: must be a number of seconds >= 0, got {raw!r}.")
    return value


def refusal(decision: Admission) -> GatewayError | None:
    """The error to answer with, or None when the request may go."""
    if isinstance(decision, Rejected):
        return _rate_limited(decision)
    if isinstance(decision, NeverFitsRejection):
        dimension = decision.bucket.dimension.value
        return NeverFits(
            f"This request needs {decision.cost} {dimension} but the gateway's "
            f"'{decision.group}' limit is {decision.limit} {dimension}"
            f"{_per(decision.bucket.dimension.value)}: it can never be admitted. "
            "Lower max_tokens or shorten the prompt.",
            headers={"x-should-retry": "false"},
        )
    if isinstance(decision, UnknownModel):
        return InvalidRequest(
            f"model: '{decision.model}' matches no group in the gateway's limits file "
            "and unmatched models are rejected.",
            headers={"x-should-retry": "false"},
        )
    if isinstance(decision, BackendUnavailable):
        return Overloaded("The gateway's rate limiter is unavailable; try again shortly.")
    return None


def _per(dimension: str) -> str:
    return " per day" if dimension == "tokens_per_day" else " per minute"


def _rate_limited(decision: Rejected) -> RateLimited:
    retry_after = max(1, math.ceil(decision.retry_after_seconds))
    dimension = decision.bucket.dimension.value
    headers = {
        "retry-after": str(retry_after),
        "x-gateway-ratelimit-group": decision.group,
        "x-gateway-ratelimit-bucket": dimension,
        "x-gateway-ratelimit-limit": str(decision.limit),
        "x-gateway-ratelimit-remaining": str(max(0, math.floor(decision.remaining))),
        "x-gateway-ratelimit-retry-after-ms": str(math.ceil(decision.retry_after_seconds * 1000)),
    }
    if retry_after > SDK_RETRY_AFTER_CAP:
        headers["x-should-retry"] = "false"
    return RateLimited(
        f"This request would exceed the gateway's '{decision.group}' limit of "
        f"{decision.limit} {dimension}{_per(dimension)}; capacity frees in "
        f"{retry_after} s, longer than this request may wait in the queue.",
        headers=headers,
    )
