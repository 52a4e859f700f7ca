"""Input estimates for admission: the API's own count for groups with `estimate: count_tokens`.

Why a module of its own: this is the one call the gateway makes upstream on its own behalf,
and it must not behave like a relayed request. It bypasses `upstream.py`'s retry loop on
purpose: one attempt, no retries, bounded by the group's `estimate_timeout_seconds`, because
a slow exact count costs the client more than the heuristic's error does. Every failure is a
value (`NotCounted`), never an error for the client: the request is then admitted on the
heuristic estimate, scaled by the group's learned ratio as usual. A count is reserved as
is, unscaled; the handler still makes the raw heuristic estimate, and settlement keeps
calibrating that one (see docs/token-accounting.md, "Exact mode"). Legacy `/v1/complete`
requests have no `messages` to count and always use the heuristic.

The call::

    POST /v1/messages/count_tokens[?<the client's query string, e.g. beta=true>]
    headers  the client's credential (`x-api-key` or `authorization`, through the app's
             CredentialPolicy, as for the request itself), `anthropic-version`,
             `anthropic-beta`, `anthropic-workspace-id`; `content-type: application/json`
    body     only COUNTED_FIELDS of the Messages body (no max_tokens, stream, sampling,
             metadata, stop_sequences, service_tier, ...)

It counts against `count_tokens_requests_per_minute` when the limits file sets one: one
request admitted there without waiting. No room means the heuristic (`rate_limited`), never a
429. The request is given back when the API was never reached, or when the client left during
the count (a disconnected request keeps nothing reserved); otherwise it stays charged, like
the client's own count_tokens calls.

Fallback reasons (the `reason` label of `gateway_input_estimates_total`): `timeout` (over
`estimate_timeout_seconds`), `error` (connection failure, a status other than 200, a body
without a positive integer `input_tokens`), `rate_limited` (the count_tokens bucket had no
room, or the limiter was unavailable). Log lines name the group, the reason, and the status
or exception class: never a header, never the body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.headers import Credential, CredentialPolicy, Headers
from gateway.limits import Admitted, Cost, Limiter, Unlimited
from gateway.logs import get_logger
from gateway.messages import COUNT_TOKENS_PATH, MESSAGES_PATH

log = get_logger("gateway.exact_count")

COUNTED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "mcp_servers",
        "context_management",
        "output_config",
        "output_format",
        "speed",
        "cache_control",
        "compaction",
        "billing_policy",
    }
)
"""The Messages fields `count_tokens` accepts (API reference, Python SDK 2.14.0 with betas)."""
FORWARDED_HEADERS = frozenset(
    {"x-api-key", "authorization", "anthropic-version", "anthropic-beta", "anthropic-workspace-id"}
)
"""Client headers the count call carries: who is asking, which API version, which betas."""

Reason = Literal["timeout", "error", "rate_limited"]


@dataclass(frozen=True, slots=True)
class Counted:
    """The API's count of the request's input tokens."""

    input_tokens: int


@dataclass(frozen=True, slots=True)
class NotCounted:
    """No usable count, and why; `reached` is False when the API cannot have seen the call."""

    reason: Reason
    reached: bool = True
    detail: str = ""
    """For the log: the status or exception class; never a header or the body."""


@dataclass(frozen=True, slots=True)
class Caller:
    """What the count call takes from the client's request."""

    headers: Headers
    path_qs: str
    credential: Credential | None


class EstimateObserver(Protocol):
    """Protocol: told how each admission's input was estimated; `GatewayMetrics` satisfies it."""

    def input_estimate(self, group: str, method: str, reason: str) -> None: ...


def counted_body(body: Mapping[str, Any]) -> bytes:
    """The count_tokens body: the Messages body's COUNTED_FIELDS, compact JSON."""
    kept = {name: value for name, value in body.items() if name in COUNTED_FIELDS}
    return json.dumps(kept, separators=(",", ":"), ensure_ascii=False).encode()


def count_headers(
    incoming: Headers, credential: Credential | None, policy: CredentialPolicy
) -> CIMultiDict[str]:
    """The client's FORWARDED_HEADERS, a JSON content type, and the upstream credential."""
    outgoing = CIMultiDict(
        [(name, value) for name, value in incoming.items() if name.lower() in FORWARDED_HEADERS]
    )
    outgoing["content-type"] = "application/json"
    policy.apply(outgoing, credential)
    return outgoing


class ExactCounter:
    """Makes the input estimate a model group asks for; shares the app's upstream session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        credentials: CredentialPolicy,
        observer: EstimateObserver,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._credentials = credentials
        self._observer = observer

    async def input_cost(
        self,
        limiter: Limiter,
        model: str,
        body: Mapping[str, Any],
        heuristic: Cost,
        *,
        scope: str,
        caller: Caller,
    ) -> Cost:
        """`heuristic` with its input replaced by the API's count when the model's group asks
        for one and it comes in time; `heuristic` itself otherwise, and always for the legacy
        `/v1/complete` (no `messages` to count)."""
        group = limiter.group_for(model)
        path = caller.path_qs.partition("?")[0]
        if group is None or group.estimate == "heuristic" or path != MESSAGES_PATH:
            name = "none" if group is None else group.name
            self._observer.input_estimate(name, "heuristic", "configured")
            return heuristic
        result = await self._count_on_bucket(
            limiter, body, caller, scope=scope, time_limit=group.estimate_timeout_seconds
        )
        if isinstance(result, NotCounted):
            self._observer.input_estimate(group.name, "heuristic", result.reason)
            log.info(
                "exact_count_fallback", group=group.name, reason=result.reason, detail=result.detail
            )
            return heuristic
        self._observer.input_estimate(group.name, "count_tokens", "configured")
        return replace(heuristic, input_tokens=result.input_tokens)

    async def _count_on_bucket(
        self,
        limiter: Limiter,
        body: Mapping[str, Any],
        caller: Caller,
        *,
        scope: str,
        time_limit: float,
    ) -> Counted | NotCounted:
        """Take one request from the count_tokens bucket (no wait), then count once."""
        slot = await limiter.admit_endpoint(scope=scope, endpoint="count_tokens", max_wait=0)
        if not isinstance(slot, Admitted | Unlimited):
            return NotCounted("rate_limited", reached=False, detail=type(slot).__name__)
        headers = count_headers(caller.headers, caller.credential, self._credentials)
        query = caller.path_qs.partition("?")[2]
        try:
            result = await self.count(body, headers, query, time_limit=time_limit)
        except asyncio.CancelledError:  # the client left: keep nothing reserved
            limiter.refund(slot)
            raise
        if isinstance(result, NotCounted) and not result.reached:
            limiter.refund(slot)
        return result

    async def count(
        self, body: Mapping[str, Any], headers: CIMultiDict[str], query: str, *, time_limit: float
    ) -> Counted | NotCounted:
        """POST count_tokens once with `headers` and the body's COUNTED_FIELDS, within
        `time_limit` seconds; any failure is a `NotCounted`."""
        path_qs = f"{COUNT_TOKENS_PATH}?{query}" if query else COUNT_TOKENS_PATH
        url = URL(self._base + path_qs, encoded=True)
        try:
            async with (
                asyncio.timeout(time_limit),
                self._session.post(
                    url, data=counted_body(body), headers=headers, allow_redirects=False
                ) as response,
            ):
                status, raw = response.status, await response.read()
        except TimeoutError:
            return NotCounted("timeout", detail=f"over {time_limit} s")
        except aiohttp.ClientError as exc:
            reached = not isinstance(exc, aiohttp.ClientConnectorError)
            return NotCounted("error", reached=reached, detail=type(exc).__name__)
        if status != 200:
            return NotCounted("error", detail=f"status {status}")
        tokens = _input_tokens(raw)
        if tokens is None:
            return NotCounted("error", detail="no input_tokens in the answer")
        return Counted(tokens)


def _input_tokens(raw: bytes) -> int | None:
    """`input_tokens` of a count_tokens answer, if it is a positive integer."""
    try:
        answer = json.loads(raw)
    except ValueError:
        return None
    tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0:
        return tokens
    return None
