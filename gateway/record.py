"""`RequestRecord`: what one request did, written by its steps, read once when it ends.

The middleware creates the record and, when the request is over, derives its outcome once
(`finish`) and hands it to the access line and the metrics, the way mitmproxy's add-ons read
a finished flow. Steps write facts (the model, the limiter's decision, each upstream attempt,
how the body ended, the usage); none of them writes the outcome.

Outcomes (the `outcome` label of `gateway_requests_total` and the access line's field)::

    ok, queued_ok          a 2xx/3xx relayed in full (queued_ok: after a queue wait)
    upstream_error         the API's own error answer (>= 400), relayed
    upstream_dropped       the API broke the body off; the client saw a broken stream
    client_disconnect      the client went away before the response was complete
    rejected, never_fits, invalid_request, upstream_unavailable, upstream_timeout,
    gateway_error          the gateway answered itself (the error's own label)
    client_timeout         the client stalled: its headers or its body did not arrive in time
    over_capacity          the connection cap was reached (`GATEWAY_MAX_CONNECTIONS`)
    internal_error         a bug: a 500 with the traceback in the log only
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

from aiohttp import ClientResponse, web

from gateway.relay import RelayResult
from gateway.trace import NO_TRACE, Trace
from gateway.usage import Usage


@dataclass(slots=True)
class RequestRecord:
    """Everything one request did; `outcome` is empty until `finish()`."""

    request_id: str
    started_at: float
    method: str
    path: str
    route: str = ""
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    tenant: str | None = None
    """The caller's tenant, when it came with a gateway key (`identity.py`)."""
    trace: Trace = NO_TRACE
    """The request's trace (`trace.py`): `NO_TRACE` unless tracing is on."""
    # The limiter ----------------------------------------------------------------------
    group: str = "none"
    decision: str | None = None
    """now, queued, rejected, never_fits, unknown_model, unavailable, unlimited; in shadow
    mode `shadow_` and the decision that was not enforced; None when the request was not
    one the limiter looks at."""
    queue_wait: float = 0.0
    fail_open: bool = False
    estimate: tuple[str, str] | None = None
    """How the input was estimated: (method, reason), e.g. ("heuristic", "configured")."""
    # Upstream -------------------------------------------------------------------------
    upstream_sent_at: float | None = None
    attempts: list[str] = field(default_factory=list)
    """Each attempt's HTTP status, or connect_error / timeout / cancelled."""
    retries: list[str] = field(default_factory=list)
    """Each retry's cause (a status, connect_error, timeout)."""
    budget_ran_out: bool = False
    """A retry was skipped because the instance's retry budget was spent."""
    upstream_429s: int = 0
    upstream_request_id: str | None = None
    streamed: bool = False
    """The answer is an SSE stream (`text/event-stream`)."""
    # The response ---------------------------------------------------------------------
    status: int = 0
    ending: str | None = None
    """How a relayed body ended: complete, client_disconnect, upstream_dropped."""
    bytes_out: int = 0
    first_byte_at: float | None = None
    # Settlement -----------------------------------------------------------------------
    usage: Usage | None = None
    usage_missing: bool = False
    reserved_input: int = 0
    api_remaining: dict[str, int] = field(default_factory=dict)
    """The API's `anthropic-ratelimit-<axis>-remaining` by axis, for its gauge."""
    # The end --------------------------------------------------------------------------
    error_outcome: str | None = None
    """The label of the error the gateway answered with, if it answered one."""
    error_kind: str | None = None
    """What the connection level refused (`malformed_headers`, `header_timeout`, ...): a
    fixed word, never anything the client sent."""
    cancelled: bool = False
    ended_at: float = 0.0
    outcome: str = ""

    # What upstream.py reports about each attempt (it takes the record as its observer);
    # the record passes each report on to the request's trace.

    def upstream_attempt_started(self, headers: MutableMapping[str, str]) -> None:
        self.trace.attempt_started(headers)

    def upstream_attempt(self, status: str) -> None:
        self.attempts.append(status)
        self.trace.attempt_ended(status)

    def upstream_retry(self, cause: str, delay: float) -> None:
        self.retries.append(cause)
        self.trace.retrying(cause, delay)

    def retry_budget_exhausted(self) -> None:
        self.budget_ran_out = True

    def upstream_rate_limited(self) -> None:
        self.upstream_429s += 1

    def answered(self, response: ClientResponse) -> None:
        """Upstream's kept answer: its status and `request-id`, and whether it streams."""
        self.status = response.status
        self.upstream_request_id = response.headers.get("request-id")
        self.streamed = response.content_type == "text/event-stream"

    def relayed(self, result: RelayResult) -> None:
        """What the relay did, however it ended."""
        self.bytes_out, self.first_byte_at = result.bytes_out, result.first_byte_at
        self.ending = None if result.ending is None else result.ending.value

    @property
    def overhead(self) -> float | None:
        """Seconds the gateway spent before sending upstream, queue wait excluded."""
        if self.upstream_sent_at is None:
            return None
        return self.upstream_sent_at - self.started_at - self.queue_wait

    @property
    def ttfb(self) -> float | None:
        """Seconds from the request's arrival to the first body byte relayed."""
        return None if self.first_byte_at is None else self.first_byte_at - self.started_at

    def finish(self) -> str:
        """Derive the outcome from what happened (once; later calls return it unchanged)."""
        if not self.outcome:
            self.outcome = self._derive()
        return self.outcome

    def _derive(self) -> str:
        if self.error_outcome is not None:
            return self.error_outcome
        if self.ending in ("client_disconnect", "upstream_dropped"):
            return self.ending
        if self.cancelled and self.ending != "complete":
            return "client_disconnect"
        if self.status >= 400:
            return "upstream_error"
        return "queued_ok" if self.queue_wait > 0 else "ok"


RECORD = web.RequestKey("record", RequestRecord)


def record_of(request: web.Request) -> RequestRecord:
    """The request's record, created by the middleware."""
    return request[RECORD]
