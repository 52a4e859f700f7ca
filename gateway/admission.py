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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from gateway.clock import wall_time
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    RateLimited,
    RequestTooLarge,
)
from gateway.limits import (
    Admission,
    Admitted,
    BackendUnavailable,
    BucketSpec,
    NeverFits,
    Refused,
    Reservation,
    UnknownModel,
)
from gateway.limits.ledger import BudgetState, OverBudget
from gateway.limits.outcomes import HeldBack, NotBudgeted
from gateway.limits.tenants import MICRO, Priority, TenantConfig
from gateway.retry import SDK_RETRY_AFTER_CAP

MAX_WAIT_HEADER = "x-gateway-max-wait"
PRIORITY_HEADER = "x-gateway-priority"
_LANES: dict[str, Priority] = {"interactive": "interactive", "batch": "batch"}


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
    if isinstance(decision, OverBudget):
        return "over_budget"
    if isinstance(decision, HeldBack):
        return "rejected"
    if isinstance(decision, NotBudgeted):
        return "not_budgeted"
    return "unlimited"


def group_of(decision: Admission) -> str:
    """The model group an answer concerns (`none` when it concerns none)."""
    if isinstance(decision, Admitted):
        return decision.group
    if isinstance(decision, Refused | NeverFits):
        return decision.bucket.group
    if isinstance(decision, HeldBack):
        return decision.refused.bucket.group
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


def priority_of(headers: Mapping[str, str], tenant: TenantConfig | None) -> Priority:
    """The request's lane: `x-gateway-priority` (`interactive` when absent), never above
    what its tenant may use; InvalidRequest for another value."""
    raw = headers.get(PRIORITY_HEADER)
    requested: Priority = "interactive"
    if raw is not None:
        found = _LANES.get(raw.strip().lower())
        if found is None:
            raise InvalidRequest(f"{PRIORITY_HEADER}: must be interactive or batch, got {raw!r}.")
        requested = found
    allowed = "interactive" if tenant is None else tenant.priority
    return "batch" if "batch" in (requested, allowed) else "interactive"


def refusal(decision: Admission) -> GatewayError | None:
    """The error to answer with, or None when the request may go."""
    if isinstance(decision, Refused):
        return rate_limited(decision)
    if isinstance(decision, HeldBack):
        return rate_limited(decision.refused)
    if isinstance(decision, NeverFits):
        bucket = decision.bucket
        dimension = bucket.dimension.value
        return RequestTooLarge(
            f"This request needs {decision.cost} {dimension} but {_whose(bucket)} "
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
    if isinstance(decision, OverBudget):
        return over_budget(decision)
    if isinstance(decision, NotBudgeted):
        return PermissionDenied(
            f"model: '{decision.model}' cannot be counted against this key's budget: "
            f"{decision.reason}.",
            headers={"x-should-retry": "false"},
        )
    return None


def over_budget(decision: OverBudget, now: float | None = None) -> RateLimited:
    """The 429 of a tenant whose budget is spent: which budget, and when it resets."""
    budget = decision.budget
    wall = wall_time() if now is None else now
    retry_after = max(1, math.ceil(budget.resets_at - wall))
    resets = _utc(budget.resets_at)
    headers = {
        "retry-after": str(retry_after),
        "x-gateway-ratelimit-tenant": budget.tenant,
        "x-gateway-ratelimit-bucket": budget.name,
        "x-gateway-ratelimit-limit": _amount(budget.limit, budget.unit),
        "x-gateway-ratelimit-remaining": _amount(budget.remaining, budget.unit),
        "x-gateway-ratelimit-reset": resets,
    }
    if retry_after > SDK_RETRY_AFTER_CAP:
        headers["x-should-retry"] = "false"
    return RateLimited(
        f"This request would pass tenant '{budget.tenant}''s {_budget_name(budget.name)} of "
        f"{_amount(budget.limit, budget.unit, words=True)} "
        f"({_amount(budget.spent, budget.unit, words=True)} used); it resets at {resets}.",
        headers=headers,
    )


def budget_headers(states: Sequence[BudgetState]) -> dict[str, str]:
    """A tenant's budgets on every answer: `x-gateway-ratelimit-tenant-<budget>-limit`,
    `-remaining` (dollars or tokens) and `-reset` (RFC 3339, UTC)."""
    headers: dict[str, str] = {}
    for state in states:
        name = f"x-gateway-ratelimit-tenant-{state.name.replace('_', '-')}"
        headers[f"{name}-limit"] = _amount(state.limit, state.unit)
        headers[f"{name}-remaining"] = _amount(state.remaining, state.unit)
        headers[f"{name}-reset"] = _utc(state.resets_at)
    return headers


def _utc(epoch: float) -> str:
    """Epoch seconds as RFC 3339 in UTC to the second (`2026-12-06T00:00:00Z`)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _budget_name(name: str) -> str:
    return {
        "usd_per_day": "daily spend budget",
        "usd_per_month": "monthly spend budget",
        "tokens_per_calendar_day": "daily token budget",
    }.get(name, name)


def _amount(value: int, unit: str, *, words: bool = False) -> str:
    """Micro-dollars as dollars (`12.345678`, or `$12.35` in words); tokens as they are."""
    if unit == "usd":
        return f"${value / MICRO:,.2f}" if words else f"{value / MICRO:.6f}"
    return f"{value:,} tokens" if words else str(value)


def tenant_headers(reservation: Reservation) -> dict[str, str]:
    """What the caller's tenant has left of each sub-quota the request was charged on, as
    `x-gateway-ratelimit-tenant-<dimension>-limit` and `-remaining` (after this request)."""
    headers: dict[str, str] = {}
    for bucket, level in zip(reservation.buckets, reservation.levels, strict=True):
        if bucket.tenant:
            name = f"x-gateway-ratelimit-tenant-{bucket.dimension.value.replace('_', '-')}"
            headers[f"{name}-limit"] = str(bucket.limit)
            headers[f"{name}-remaining"] = str(max(0, math.floor(level)))
    return headers


def _whose(bucket: BucketSpec) -> str:
    """Whose limit a bucket is, in a message: the gateway's, or a tenant's sub-quota."""
    return f"tenant '{bucket.tenant}''s" if bucket.tenant else "the gateway's"


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
    if bucket.tenant:
        headers["x-gateway-ratelimit-tenant"] = bucket.tenant
    if retry_after > SDK_RETRY_AFTER_CAP:
        headers["x-should-retry"] = "false"
    return RateLimited(
        f"This request would exceed {_whose(bucket)} '{bucket.group}' limit of "
        f"{bucket.limit} {dimension}{_per(dimension)}; capacity frees in "
        f"{retry_after} s, longer than this request may wait in the queue.",
        headers=headers,
    )
