"""The limiter's answers in the gateway's words: a metrics label, and the error each refusal is.

One vocabulary: `Admitted` and `Unlimited` go; `Refused` becomes `RateLimited` (429),
`NeverFits` a `RequestTooLarge` (413, outcome `never_fits`), `UnknownModel` an
`InvalidRequest` (400) and `BackendUnavailable` an `Overloaded` (503).

A local 429 looks like the API's: `rate_limit_error` in the envelope, `retry-after` in whole
seconds rounded up, plus `x-gateway-ratelimit-*` naming the bucket and its state. Past 60 s
the Python SDK ignores `retry-after` and retries in ~0.5 s, so such answers also carry
`x-should-retry: false` (reference §7.4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.errors import GatewayError, InvalidRequest, Overloaded, RateLimited, RequestTooLarge
from gateway.limits import (
    Admission,
    Admitted,
    BackendUnavailable,
    NeverFits,
    Refused,
    UnknownModel,
)
from gateway.retry import SDK_RETRY_AFTER_CAP

MAX_WAIT_HEADER = "x-gateway-max-wait"


def decision_label(decision: Admission) -> str:
    """The `decision` label of `gateway_limiter_admissions_total` for one answer."""
    if isinstance(decision, Admitted):
        return "queued" if decision.wait > 0 else "now"
    if isinstance(decision, Refused):
        return "rejected"
    if isinstance(decision, NeverFits):
        return "never_fits"
    if isinstance(decision, UnknownModel):
        return "unknown_model"
    if isinstance(decision, BackendUnavailable):
        return "unavailable"
    return "unlimited"


def group_of(decision: Admission) -> str:
    """The model group an answer concerns (`none` when it concerns none)."""
    if isinstance(decision, Admitted):
        return decision.group
    if isinstance(decision, Refused | NeverFits):
        return decision.bucket.group
    return "none"


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
    if isinstance(decision, Refused):
        return rate_limited(decision)
    if isinstance(decision, NeverFits):
        bucket = decision.bucket
        dimension = bucket.dimension.value
        return RequestTooLarge(
            f"This request needs {decision.cost} {dimension} but the gateway's "
            f"'{bucket.group}' limit is {bucket.limit} {dimension}"
            f"{_per(dimension)}: it can never be admitted. "
            "Lower max_tokens or shorten the prompt.",
            headers={"x-should-retry": "false"},
            outcome="never_fits",
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


def rate_limited(decision: Refused) -> RateLimited:
    """The 429 a refusal becomes: honest `retry-after` and `x-gateway-ratelimit-*`."""
    bucket = decision.bucket
    retry_after = max(1, math.ceil(decision.retry_after))
    dimension = bucket.dimension.value
    headers = {
        "retry-after": str(retry_after),
        "x-gateway-ratelimit-group": bucket.group,
        "x-gateway-ratelimit-bucket": dimension,
        "x-gateway-ratelimit-limit": str(bucket.limit),
        "x-gateway-ratelimit-remaining": str(max(0, math.floor(decision.remaining))),
        "x-gateway-ratelimit-retry-after-ms": str(math.ceil(decision.retry_after * 1000)),
    }
    if retry_after > SDK_RETRY_AFTER_CAP:
        headers["x-should-retry"] = "false"
    return RateLimited(
        f"This request would exceed the gateway's '{bucket.group}' limit of "
        f"{bucket.limit} {dimension}{_per(dimension)}; capacity frees in "
        f"{retry_after} s, longer than this request may wait in the queue.",
        headers=headers,
    )
