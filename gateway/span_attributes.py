"""Which facts of a finished request become which span attributes, and which mean an error.

Pure mapping, no OpenTelemetry import: `tracing.py` sets what these functions return. Names
follow the OpenTelemetry semantic conventions where one applies (GenAI: `gen_ai.*`; HTTP:
`http.*`, `url.path`, `server.*`, `error.type`); the gateway's own facts go under `gateway.`.

Only counts, ids, names and labels are ever returned: never a prompt, a completion, a header
value, a query string or a credential (the record holds none of those).

GenAI's `gen_ai.usage.input_tokens` is every input token, cached ones included (the current
convention); the API's own `input_tokens` counts only what follows the last cache breakpoint,
so the attribute is the sum of the three counts it reports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.messages import COMPLETE_PATH, MESSAGES_PATH
from gateway.record import RequestRecord
from gateway.usage import MessageFacts, Usage

AttributeValue = str | bool | int | float | Sequence[str]
Attributes = dict[str, AttributeValue]

PROVIDER = "anthropic"
OPERATIONS: Mapping[str, str] = {MESSAGES_PATH: "chat", COMPLETE_PATH: "text_completion"}
"""The GenAI operation of each generation route; other routes carry no `gen_ai.*`."""
ERROR_OUTCOMES = frozenset(
    {
        "upstream_dropped",
        "upstream_unavailable",
        "upstream_timeout",
        "gateway_error",
        "internal_error",
    }
)
"""Outcomes that are the gateway's (or the API's) failure whatever the status said."""


def server_start_attributes(method: str, path: str, route: str) -> Attributes:
    """The server span's attributes known at arrival (the sampler sees these)."""
    return {"http.request.method": method, "url.path": path, "http.route": route}


def request_attributes(
    record: RequestRecord, usage: Usage | None, message: MessageFacts
) -> Attributes:
    """The server span's attributes, from the finished record and the relayed body."""
    attributes: Attributes = {
        "gateway.request_id": record.request_id,
        "gateway.outcome": record.outcome,
        "gateway.model_group": record.group,
        "gateway.queue_wait_ms": round(record.queue_wait * 1000, 3),
        "gateway.upstream.attempts": len(record.attempts),
        "gateway.stream": record.stream,
    }
    if record.status:
        attributes["http.response.status_code"] = record.status
    if record.decision is not None:
        attributes["gateway.admission"] = record.decision
    if record.upstream_request_id is not None:
        attributes["gateway.upstream.request_id"] = record.upstream_request_id
    if record.fail_open:
        attributes["gateway.fail_open"] = True
    if record.ttfb is not None:
        attributes["gateway.ttfb_ms"] = round(record.ttfb * 1000, 3)
    operation = OPERATIONS.get(record.route)
    if operation is not None:
        attributes.update(generation_attributes(operation, record, usage, message))
    error = error_type(record)
    if error is not None:
        attributes["error.type"] = error
    return attributes


def generation_attributes(
    operation: str, record: RequestRecord, usage: Usage | None, message: MessageFacts
) -> Attributes:
    """The GenAI convention's attributes of a Messages (or Text Completions) call."""
    attributes: Attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.system": PROVIDER,  # the name before gen_ai.provider.name; backends read both
    }
    if record.model is not None:
        attributes["gen_ai.request.model"] = record.model
    if record.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = record.max_tokens
    if message.id is not None:
        attributes["gen_ai.response.id"] = message.id
    if message.model is not None:
        attributes["gen_ai.response.model"] = message.model
    if message.stop_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = (message.stop_reason,)
    if usage is not None:
        cached = usage.cache_read_input_tokens + usage.cache_creation_input_tokens
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens + cached
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_input_tokens
        attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_creation_input_tokens
    return attributes


def error_type(record: RequestRecord) -> str | None:
    """`error.type` of a failed request (its span's status is then ERROR), or None.

    A 5xx is an error whoever answered it, named by its status when the API's and by the
    outcome when the gateway's; so is a failure the status cannot show (an upstream that
    broke the stream off after its 200). A 4xx is the client's: no error on a server span.
    """
    if record.outcome in ERROR_OUTCOMES:
        return record.outcome
    if record.status >= 500:
        return str(record.status) if record.outcome == "upstream_error" else record.outcome
    return None


def step_attributes(name: str, record: RequestRecord) -> Attributes:
    """A step span's attributes (`gateway.admission`, `gateway.queue`, `gateway.relay`)."""
    if name == "gateway.admission":
        attributes: Attributes = {"gateway.model_group": record.group}
        if record.decision is not None:
            attributes["gateway.admission"] = record.decision
        if record.estimate is not None:
            attributes["gateway.estimate"] = record.estimate[0]
        if record.fail_open:
            attributes["gateway.fail_open"] = True
        return attributes
    if name == "gateway.queue":
        waited: Attributes = {"gateway.queue_wait_ms": round(record.queue_wait * 1000, 3)}
        if record.decision is not None:
            waited["gateway.admission"] = record.decision
        return waited
    if name == "gateway.relay":
        relayed: Attributes = {"gateway.relay.bytes": record.bytes_out}
        if record.ending is not None:
            relayed["gateway.relay.ending"] = record.ending
        return relayed
    return {}


def step_failed(name: str, record: RequestRecord) -> bool:
    """A step span whose status is ERROR: a relay the API broke off."""
    return name == "gateway.relay" and record.ending == "upstream_dropped"


@dataclass(frozen=True, slots=True)
class Peer:
    """The upstream as an attempt's span names it: `server.address`, `server.port`, and the
    base URL's path, which prefixes the request's in `url.path`."""

    host: str | None
    port: int | None
    prefix: str = ""


def attempt_attributes(number: int, method: str, path: str, peer: Peer) -> Attributes:
    """An upstream attempt's attributes at its start (HTTP client conventions); `path` is
    the request's path without its query string."""
    attributes: Attributes = {
        "http.request.method": method,
        "url.path": peer.prefix + path,
        "gateway.upstream.attempt": number,
    }
    if peer.host:
        attributes["server.address"] = peer.host
    if peer.port is not None:
        attributes["server.port"] = peer.port
    return attributes


def attempt_result(status: str) -> tuple[Attributes, bool]:
    """An attempt's result attributes, and whether its span is an error: an HTTP status
    (>= 400 is an error on a client span), or the failure's label (connect_error, timeout,
    cancelled: the client left, no error of the attempt's)."""
    if status.isdigit():
        code = int(status)
        if code >= 400:
            return {"http.response.status_code": code, "error.type": status}, True
        return {"http.response.status_code": code}, False
    return {"error.type": status}, status != "cancelled"


def retry_attributes(cause: str, delay: float) -> Attributes:
    """What a retried attempt's span says about the next one."""
    return {"gateway.retry.cause": cause, "gateway.retry.delay_ms": round(delay * 1000, 3)}
