"""`LimitedCall`: what the limiter needs of one request, and which requests it looks at.

Generations (`/v1/messages`, `/v1/complete`) with a model are admitted on their model
group's buckets; `POST /v1/messages/count_tokens` and every `/v1/messages/batches*` call on
their endpoint's own RPM bucket (when the limits file sets one); everything else passes
through without meeting the limiter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.admission import requested_max_wait
from gateway.exact_count import Caller
from gateway.headers import Credential, Headers
from gateway.limits.policy import Endpoint
from gateway.limits.tenants import Priority
from gateway.messages import BATCHES_PATH, COUNT_TOKENS_PATH, RequestFacts

ANONYMOUS_SCOPE = "anonymous"


@dataclass(frozen=True, slots=True)
class LimitedCall:
    """What the limiter needs of one request: a generation of `model` (with its parsed
    `body`), or one call to an `endpoint` with its own RPM."""

    scope: str
    caller: Caller
    model: str = ""
    body: Mapping[str, Any] | None = None
    endpoint: Endpoint | None = None
    tenant: str = ""
    """The caller's tenant ("" without gateway keys): its sub-quotas are checked too."""
    priority: Priority = "interactive"
    """Its lane (`admission.priority_of`): `batch` uses only what lies above the reserve."""

    @property
    def max_wait(self) -> float | None:
        """The client's `x-gateway-max-wait` (InvalidRequest when malformed), or None."""
        return requested_max_wait(self.caller.headers)


def limited_call(
    method: str,
    path_qs: str,
    headers: Headers,
    facts: RequestFacts | None,
    credential: Credential | None,
    *,
    tenant: str = "",
    priority: Priority = "interactive",
) -> LimitedCall | None:
    """The limiter's view of a request, or None when no limit looks at it: generations
    (`/v1/messages`, `/v1/complete`) with a model, `POST /v1/messages/count_tokens` and every
    `/v1/messages/batches*` call; everything else passes through. `credential` is the one
    sent upstream: its organisation's buckets are the ones charged."""
    scope = credential.scope if credential else ANONYMOUS_SCOPE
    caller = Caller(headers, path_qs, credential)
    endpoint = _endpoint_of(method, caller.path)
    if endpoint is not None:
        return LimitedCall(scope, caller, endpoint=endpoint, tenant=tenant, priority=priority)
    if facts is None or not facts.is_generation or facts.body is None or not facts.model:
        return None  # a generation without a model: the API answers it (400) itself
    return LimitedCall(scope, caller, facts.model, facts.body, tenant=tenant, priority=priority)


def _endpoint_of(method: str, path: str) -> Endpoint | None:
    """The endpoint with its own upstream RPM that this request calls, if any."""
    if path == COUNT_TOKENS_PATH:
        return "count_tokens" if method == "POST" else None
    if path == BATCHES_PATH or path.startswith(BATCHES_PATH + "/"):
        return "batches"
    return None
