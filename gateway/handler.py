"""`/v1/*`: one request's story: body -> facts -> admit -> upstream -> relay -> settle.

Each step lives in its own module so this one stays a readable list of steps. Generating
calls (`/v1/messages`, `/v1/complete`) with a model are admitted on their model group's
buckets; `POST /v1/messages/count_tokens` and every `/v1/messages/batches*` request on their
endpoint's own RPM bucket (when the limits file sets one); everything else passes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.admission import decision_labels, refusal, requested_max_wait
from gateway.errors import Overloaded, RequestTooLarge
from gateway.exact_count import Caller, ExactCounter
from gateway.exchange import Exchange, exchange_of
from gateway.headers import REQUEST_ID, Credential, credential_of, upstream_request_headers
from gateway.limits import Admission, Admitted, Limiter, Unlimited
from gateway.limits.policy import Endpoint
from gateway.messages import COUNT_TOKENS_PATH, PARSED_PATHS, RequestFacts, parse_facts, route_of
from gateway.relay import Ending, relay
from gateway.retry import MAX_RETRIES_HEADER, requested_retries
from gateway.services import SERVICES, BodyLimits, Services
from gateway.settlement import Outcome, settle
from gateway.tokens import UsageTap, estimate_input_tokens, max_output_tokens
from gateway.upstream import Opened

BATCHES_PATH = "/v1/messages/batches"
STREAM_CHUNK = 64 * 1024
QUEUE_WAIT_HEADER = "x-gateway-queue-wait-ms"
ANONYMOUS_SCOPE = "anonymous"


async def handle_v1(request: web.Request) -> web.StreamResponse:
    """Forward any `/v1/*` request upstream and relay the answer byte for byte."""
    services = request.app[SERVICES]
    exchange = exchange_of(request)
    upstream = services.upstream
    if upstream is None or not upstream.is_open:
        raise Overloaded("The gateway is starting or shutting down.")
    exchange.route = route_of(request.path)
    body = await request_body(request, services.body_limits)
    facts = parse_facts(request.path, body) if isinstance(body, bytes) else None
    if facts is not None:
        exchange.model, exchange.stream = facts.model, facts.stream
    headers = upstream_request_headers(request.headers)
    if body is not None and not isinstance(body, bytes) and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    credential = credential_of(request.headers)
    services.credentials.apply(headers, credential)
    max_retries = requested_retries(request.headers.get(MAX_RETRIES_HEADER), upstream.policy)
    decision = await admit(request, services, exchange, facts, credential)
    exchange.upstream_sent_at = services.clock.now()
    try:  # one admission covers every attempt; upstream.py retries, counts attempts and 429s
        opened = await upstream.open(
            request.method,
            request.raw_path,
            headers,
            body,
            max_retries=max_retries,
            group=exchange.model_group,
        )
    except BaseException:
        if isinstance(decision, Admitted) and services.limiter is not None:
            services.limiter.refund(decision)
        raise
    # Settlement charges `opened.charged_requests` RPM: each attempt the API answered.
    upstream_response = opened.response
    exchange.status = upstream_response.status
    exchange.upstream_request_id = upstream_response.headers.get("request-id")
    is_stream = upstream_response.content_type == "text/event-stream"
    if is_stream:
        services.metrics.stream_opened()
    return await _relay_and_settle(
        request, services, exchange, decision, opened=opened, is_stream=is_stream
    )


async def _relay_and_settle(
    request: web.Request,
    services: Services,
    exchange: Exchange,
    decision: Admission | None,
    *,
    opened: Opened,
    is_stream: bool,
) -> web.StreamResponse:
    """Relay the response with a usage tap, then settle the admission, whatever happened."""
    upstream_response = opened.response
    extra_headers = {REQUEST_ID: exchange.request_id, **opened.client_headers()}
    if isinstance(decision, Admitted) and decision.waited_seconds > 0:
        extra_headers[QUEUE_WAIT_HEADER] = str(round(decision.waited_seconds * 1000))
    encoding = upstream_response.headers.get("content-encoding")
    # Only model-group admissions settle usage; an endpoint bucket's one request stays charged.
    settles = isinstance(decision, Admitted) and exchange.input_estimate is not None
    tap = UsageTap(stream=is_stream, encoding=encoding) if settles else None
    outcome = Outcome(
        upstream_response.status,
        upstream_response.headers,
        services.clock.now(),
        requests=opened.charged_requests,
        client_left=True,  # until relay() returns
    )
    try:
        response, result = await relay(
            request, upstream_response, extra_headers, services.clock.now, tap
        )
        outcome.client_left = result.ending is Ending.CLIENT_DISCONNECT
        outcome.dropped = result.ending is Ending.UPSTREAM_DROPPED
    finally:
        if is_stream:
            services.metrics.stream_closed()
        if tap is not None:  # every byte has reached the client
            pull_down = settle(
                services.limiter,
                services.metrics,
                decision,
                input_estimate=exchange.input_estimate,
                tap=tap,
                outcome=outcome,
            )
            if pull_down is not None:  # shielded, so a disconnect cannot skip it
                await asyncio.shield(pull_down)
    exchange.bytes_out = result.bytes_out
    exchange.first_byte_at = result.first_byte_at
    if result.ending is not Ending.COMPLETE:
        exchange.outcome = result.ending.value
    return response


async def admit(
    request: web.Request,
    services: Services,
    exchange: Exchange,
    facts: RequestFacts | None,
    credential: Credential | None,
) -> Admission | None:
    """Ask the limiter whether a limited call may go now, after a wait, or not at all."""
    limiter = services.limiter
    if limiter is None:
        return None
    endpoint = _endpoint_of(request.method, request.path)
    if endpoint is not None and not limiter.limits_endpoint(endpoint):
        return None
    if endpoint is None and (facts is None or not facts.is_generation or facts.body is None):
        return None
    if endpoint is None and facts is not None and not facts.model:
        return None  # the API answers this one itself (400: model is required)
    scope = credential.scope if credential else ANONYMOUS_SCOPE
    max_wait = requested_max_wait(request.headers)
    metrics, counter = services.metrics, services.exact_counter
    caller = Caller(request.headers, request.raw_path, credential)
    metrics.queue_entered()
    try:
        decision = await _decide(
            limiter,
            endpoint,
            facts,
            scope,
            max_wait,
            exchange=exchange,
            exact=counter,
            caller=caller,
        )
    finally:
        metrics.queue_left()
    group, label = decision_labels(decision)
    exchange.model_group = group
    waited = decision.waited_seconds if isinstance(decision, Admitted) else None
    if isinstance(decision, Admitted):
        exchange.queue_wait = decision.waited_seconds
        if decision.fallback:
            metrics.fail_open_used()
    metrics.admission(group=group, decision=label, waited=waited)
    error = refusal(decision)
    if error is not None:
        exchange.outcome = error.outcome
        raise error
    return decision


async def _decide(
    limiter: Limiter,
    endpoint: Endpoint | None,
    facts: RequestFacts | None,
    scope: str,
    max_wait: float | None,
    *,
    exchange: Exchange,
    exact: ExactCounter | None = None,
    caller: Caller | None = None,
) -> Admission:
    """One limiter call: the endpoint's own bucket, or the model group's buckets (on the
    API's exact input count first, for groups with `estimate: count_tokens`)."""
    if endpoint is not None:
        return await limiter.admit_endpoint(scope=scope, endpoint=endpoint, max_wait=max_wait)
    if facts is None or facts.body is None or not facts.model:
        return Unlimited()  # admit() sends no such request here
    body = facts.body
    exchange.input_estimate = estimate_input_tokens(body)
    cost = limiter.cost_for(facts.model, exchange.input_estimate, max_output_tokens(body))
    if exact is not None and caller is not None:  # input_estimate stays the raw heuristic
        cost = await exact.input_cost(limiter, facts.model, body, cost, scope=scope, caller=caller)
    return await limiter.admit(scope=scope, model=facts.model, cost=cost, max_wait=max_wait)


def _endpoint_of(method: str, path: str) -> Endpoint | None:
    """The endpoint with its own upstream RPM that this request calls, if any."""
    if path == COUNT_TOKENS_PATH:
        return "count_tokens" if method == "POST" else None
    if path == BATCHES_PATH or path.startswith(BATCHES_PATH + "/"):
        return "batches"
    return None


async def request_body(
    request: web.Request, limits: BodyLimits
) -> bytes | AsyncIterator[bytes] | None:
    """The body: buffered (replayable, parsable) when small or parsed, else streamed through."""
    if not request.body_exists:
        return None
    length = request.content_length
    if request.path in PARSED_PATHS or (length is not None and length <= limits.buffered):
        return await _read_capped(request, limits.buffered)
    if length is not None and length > limits.streamed:
        raise RequestTooLarge(_too_large(limits.streamed))
    return _stream_capped(request, limits.streamed)


async def _read_capped(request: web.Request, cap: int) -> bytes:
    length = request.content_length
    if length is not None and length > cap:
        raise RequestTooLarge(_too_large(cap))
    if length is not None:
        return await request.read()  # one buffer, already bounded by Content-Length
    body = bytearray()
    async for chunk in request.content.iter_chunked(STREAM_CHUNK):
        body += chunk
        if len(body) > cap:
            raise RequestTooLarge(_too_large(cap))
    return bytes(body)


async def _stream_capped(request: web.Request, cap: int) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in request.content.iter_chunked(STREAM_CHUNK):
        sent += len(chunk)
        if sent > cap:
            raise RequestTooLarge(_too_large(cap))
        yield chunk


def _too_large(cap: int) -> str:
    return f"Request body exceeds the gateway's limit of {cap} bytes."
