"""`/v1/*`: one request's story: body -> facts -> admission -> upstream -> relay.

Each step lives in its own module so this one stays a readable list of steps; the admission
ticket (`ticket.py`) settles, refunds or leaves charged whatever ends the request, and the
request's record (`record.py`) becomes the access line, the metrics and (when tracing is on)
the trace's attributes when it is over. The record's trace spans the steps as they run.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admission import priority_of
from gateway.body import StreamedBody, request_body
from gateway.errors import GatewayError, Overloaded, PermissionDenied
from gateway.headers import REQUEST_ID, credential_of, upstream_request_headers
from gateway.identity import Identity
from gateway.limited_call import limited_call
from gateway.messages import BATCHES_PATH, batch_models, parse_facts, route_of
from gateway.record import record_of
from gateway.relay import RelayResult, relay
from gateway.retry import MAX_RETRIES_HEADER, requested_retries
from gateway.services import (
    ADMISSIONS,
    BODY_LIMITS,
    CLOCK,
    CREDENTIALS,
    IDENTITIES,
    METRICS,
    UPSTREAM,
)


def check_batch(identity: Identity, body: bytes | StreamedBody | None) -> None:
    """A batch of a tenant limited to some models: every request's model is checked; one
    too large to read before it goes is refused rather than let through unchecked."""
    if body is None:
        return
    if not isinstance(body, bytes):
        raise PermissionDenied(
            "This key may use only some models, and a batch this large cannot be checked "
            "before it is sent: split it into smaller batches."
        )
    for model in batch_models(body):
        identity.check_model(model)


async def handle_v1(request: web.Request) -> web.StreamResponse:
    """Forward any `/v1/*` request upstream and relay the answer byte for byte."""
    app, record = request.app, record_of(request)
    upstream, clock = app[UPSTREAM], app[CLOCK]
    if not upstream.is_open:
        raise Overloaded("The gateway is starting or shutting down.")
    record.route = route_of(request.path)
    identity = app[IDENTITIES].identify(credential_of(request.headers))  # 401 before the body
    record.tenant = identity.tenant.name if identity.tenant else None
    body = await request_body(request, app[BODY_LIMITS])
    facts = parse_facts(request.path, body) if isinstance(body, bytes) else None
    if facts is not None:
        record.model, record.stream, record.max_tokens = facts.model, facts.stream, facts.max_tokens
        identity.check_model(facts.model)
    if identity.restricts_models and request.method == "POST" and request.path == BATCHES_PATH:
        check_batch(identity, body)
    streamed_length = None if isinstance(body, bytes | None) else request.content_length
    headers = upstream_request_headers(request.headers, streamed_length=streamed_length)
    credential = identity.upstream
    app[CREDENTIALS].apply(headers, credential)
    retries = requested_retries(request.headers.get(MAX_RETRIES_HEADER), upstream.policy)
    call = limited_call(
        request.method, request.raw_path, request.headers, facts, credential,
        tenant=record.tenant or "", priority=priority_of(request.headers, identity.tenant),
    )  # fmt: skip
    async with app[ADMISSIONS].admit(call, record) as ticket:
        record.upstream_sent_at = clock.now()
        try:
            opened = await upstream.open(  # one admission covers every attempt
                request.method, request.raw_path, headers, body, retries=retries, observer=record
            )
        except GatewayError:
            if isinstance(body, StreamedBody) and body.failure is not None:
                raise body.failure from None  # the client broke its upload off, not upstream
            raise
        record.answered(opened.response)
        tap = ticket.answered(opened, stream=record.streamed)
        tap = record.trace.answered(tap, opened.response)
        extra = {REQUEST_ID: record.request_id, **opened.client_headers(), **ticket.headers()}
        result = RelayResult()
        try:
            with app[METRICS].streaming(record.streamed), record.trace.span("gateway.relay"):
                return await relay(request, opened.response, extra, clock.now, tap, result=result)
        finally:
            record.relayed(result)
            ticket.relayed(result)
