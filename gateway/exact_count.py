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

It counts against `count_tokens_requests_per_minute` when the limits file sets one: the
admission ticket (`gateway/ticket.py`) takes one request there without waiting. No room means
the heuristic (`rate_limited`), never a 429. The request is given back when the API was never
reached, or when the client left during the count (a disconnected request keeps nothing
reserved); otherwise it stays charged, like the client's own count_tokens calls.

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
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.headers import Credential, CredentialPolicy, Headers
from gateway.limits import GroupLimits
from gateway.messages import COUNT_TOKENS_PATH, MESSAGES_PATH

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

    @property
    def path(self) -> str:
        """The request's path, without its query string."""
        return self.path_qs.partition("?")[0]


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
    """Asks the API to count a request's input; shares the app's upstream session."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, *, credentials: CredentialPolicy
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._credentials = credentials

    def counts(self, group: GroupLimits | None, path: str) -> bool:
        """Whether a request to `path` of `group` is counted by the API: groups with
        `estimate: count_tokens`, Messages only (a legacy Complete has nothing to count)."""
        return group is not None and group.estimate == "count_tokens" and path == MESSAGES_PATH

    async def count_for(
        self, body: Mapping[str, Any], caller: Caller, *, time_limit: float
    ) -> Counted | NotCounted:
        """Count `body` as `caller` would, within `time_limit` seconds."""
        headers = count_headers(caller.headers, caller.credential, self._credentials)
        query = caller.path_qs.partition("?")[2]
        return await self.count(body, headers, query, time_limit=time_limit)

    async def count(
        self, body: Mapping[str, Any], headers: CIMultiDict[str], query: str, *, time_limit: float
    ) -> Counted | NotCounted:
        """POST count_tokens once with `headers` and the body's COUNTED_FIELDS, within
        `time_limit` seconds; any failure is a `NotCounted`."""
        path_qs = f"{COUNT_TOKENS_PATH}?{query}" if query else COUNT_TOKENS_PATH
        url = URL(self._base + path_qs, encoded=True)
        try:
            data = counted_body(body)
        except (RecursionError, ValueError):  # nested deeper than json.dumps goes
            return NotCounted("error", reached=False, detail="body too deep to send")
        try:
            async with (
                asyncio.timeout(time_limit),
                self._session.post(
                    url, data=data, headers=headers, allow_redirects=False
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
