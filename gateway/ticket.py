"""The admission ticket: one request's admission, from estimate to settlement, in one object.

    async with admissions.admit(call, record) as ticket:   # estimate, count, admit, queue
        opened = await upstream.open(...)                   # one admission, every attempt
        tap = ticket.answered(opened, stream=...)           # a usage tap when it settles usage
        ...relay, then ticket.relayed(result)
    # on the way out, whatever ended the request: settle, refund or leave charged

Entering either admits the request (after any queue wait) or raises the gateway error its
refusal becomes. Leaving settles, exactly once and whatever happened (success, an upstream
error, the client gone, a cancellation): a request upstream never answered is refunded; a
model-group request is charged what it really used (`settlement.py`); an endpoint request
(count_tokens, batches) keeps its one request charged. Refunds and settlement happen here and
nowhere else. Leaving never waits: a settlement that needs a backend round trip (a pull-down
first) runs in `Background`, outside the request's cancellation.

`admissions.py` makes the tickets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol

from gateway.admission import (
    budget_headers,
    decision_label,
    group_of,
    rate_limited,
    refusal,
    tenant_headers,
)
from gateway.background import Background
from gateway.clock import Clock
from gateway.estimate import estimate_input_tokens, max_output_tokens, uncached_input_tokens
from gateway.exact_count import Counted, ExactCounter, NotCounted
from gateway.limited_call import LimitedCall
from gateway.limits import (
    UNLIMITED,
    Admission,
    Admitted,
    Cost,
    Dimension,
    Limiter,
    Unlimited,
)
from gateway.limits.outcomes import HeldBack
from gateway.limits.prices import Spent
from gateway.live_charge import ChargingTap
from gateway.logs import get_logger
from gateway.metrics import GatewayMetrics
from gateway.record import RequestRecord
from gateway.relay import Ending, RelayResult
from gateway.settlement import (
    AXES,
    UpstreamAnswer,
    actual_cost,
    pull_down_ceilings,
    reported_limits,
    reported_remaining,
)
from gateway.upstream import Opened
from gateway.usage import UsageTap

log = get_logger("gateway.ticket")
Tap = Callable[[bytes], None]
"""What the relay shows every chunk to (`relay.relay`'s `tap`)."""
QUEUE_WAIT_HEADER = "x-gateway-queue-wait-ms"
ORGANIZATION_HEADER = "anthropic-organization-id"
_REFUND = Cost()


class Ticket(Protocol):
    """Protocol: what the handler does with an admission (see the module docstring)."""

    async def __aenter__(self) -> Ticket: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def answered(self, opened: Opened, *, stream: bool) -> Tap | None:
        """Upstream answered; the tap to show the relayed body to, when usage is settled."""
        ...

    def relayed(self, result: RelayResult) -> None:
        """How the relay ended (called even when it raised)."""
        ...

    def headers(self) -> dict[str, str]:
        """Headers the admission adds to the response (`x-gateway-queue-wait-ms`)."""
        ...


class FreeTicket:
    """A request no limit applies to: nothing to reserve, settle or refund."""

    async def __aenter__(self) -> FreeTicket:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def answered(self, opened: Opened, *, stream: bool) -> Tap | None:
        return None

    def relayed(self, result: RelayResult) -> None:
        return None

    def headers(self) -> dict[str, str]:
        return {}


FREE = FreeTicket()


@dataclass(frozen=True, slots=True)
class TicketServices:
    """What every ticket of a limited gateway shares."""

    limiter: Limiter
    counter: ExactCounter
    clock: Clock
    metrics: GatewayMetrics
    background: Background


class LimitedTicket:
    """The ticket of a request the limiter decides on."""

    def __init__(self, shared: TicketServices, call: LimitedCall, record: RequestRecord):
        self._shared = shared
        self._limiter = shared.limiter
        self._call = call
        self._record = record
        self._admission: Admission = UNLIMITED
        self._input_estimate: int | None = None
        self._answer: UpstreamAnswer | None = None
        self._tap: UsageTap | None = None
        self._scope = call.scope
        """The bucket scope: the key's organisation's (or the key's own), set at admission."""
        self._cost = Cost()
        """What the admission reserves (kept for a batch request that asks again)."""
        self._uncached: int | None = None
        """With cache breakpoints: the estimate of what follows the last one (the input is
        reserved and learned on it, apart from requests without)."""

    async def __aenter__(self) -> LimitedTicket:
        try:
            await self._admit()
        except BaseException as exc:
            self._close(exc)
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close(exc)

    def answered(self, opened: Opened, *, stream: bool) -> Tap | None:
        response = opened.response
        self._answer = UpstreamAnswer(
            response.status, response.headers, self._shared.clock.now(), opened.charged_requests
        )
        org_id = response.headers.get(ORGANIZATION_HEADER)
        self._limiter.learn_organization(self._call.scope, org_id)
        admission = self._admission
        if not isinstance(admission, Admitted) or self._call.endpoint is not None:
            return None
        self._tap = UsageTap(stream=stream, encoding=response.headers.get("content-encoding"))
        if stream and self._limiter.charges_live(admission.group):
            return ChargingTap(self._tap, self._limiter, admission)
        return self._tap

    def relayed(self, result: RelayResult) -> None:
        if self._answer is not None:
            self._answer.client_left = result.ending is Ending.CLIENT_DISCONNECT
            self._answer.dropped = result.ending is Ending.UPSTREAM_DROPPED

    def headers(self) -> dict[str, str]:
        wait = self._record.queue_wait
        extra = {QUEUE_WAIT_HEADER: str(round(wait * 1000))} if wait > 0 else {}
        tenant = self._call.tenant
        if tenant and isinstance(self._admission, Admitted):
            extra.update(tenant_headers(self._admission.reservation))
        if tenant:
            extra.update(budget_headers(self._limiter.ledger.states(tenant)))
        return extra

    @property
    def _settles_usage(self) -> bool:
        """Only model-group admissions settle usage; an endpoint's one request stays."""
        return isinstance(self._admission, Admitted) and self._call.endpoint is None

    # Entering -------------------------------------------------------------------------

    async def _admit(self) -> None:
        """Decide, raise the refusal's error, or wait out the queue."""
        metrics, record = self._shared.metrics, self._record
        metrics.queue_entered()
        try:
            with record.trace.span("gateway.admission"):
                admission = self._admission = await self._decide()
            if isinstance(admission, HeldBack):
                with record.trace.span("gateway.queue"):
                    admission = self._admission = await self._ask_again(admission)
            record.decision, record.group = decision_label(admission), group_of(admission)
            if isinstance(admission, Admitted) and record.queue_wait > 0:
                record.decision = "queued"
            enforced = self._limiter.enforces(record.group)
            error = refusal(admission)
            if error is not None:
                if enforced:
                    raise error
                self._shadow(error.message)
                return
            if isinstance(admission, Admitted):
                record.fail_open = admission.fallback
                record.reserved_input = admission.reservation.cost.input_tokens
                if admission.wait > 0 and not enforced:
                    self._shadow(f"would wait {admission.wait:.3f} s for capacity")
                elif admission.wait > 0:
                    with record.trace.span("gateway.queue"):
                        await self._queue(admission)
        finally:
            metrics.queue_left()

    def _shadow(self, would: str) -> None:
        """Shadow mode: count and log what an enforced limit would have done, and go now
        (a refusal took nothing from the buckets; a queued reservation stays charged)."""
        record = self._record
        log.info("limits.shadow", group=record.group, decision=record.decision, would=would)
        record.decision = f"shadow_{record.decision}"

    async def _queue(self, admission: Admitted) -> None:
        """Wait in the queue (re-timed as capacity frees); refused when it cannot go in time."""
        clock, record = self._shared.clock, self._record
        started = clock.now()
        try:
            late = await self._limiter.wait(admission)
        finally:
            record.queue_wait = clock.now() - started
        if late is not None:
            record.decision = decision_label(late)
            raise rate_limited(late)

    async def _ask_again(self, held: HeldBack) -> Admission:
        """A request held to the batch lane and back by the priority reserve: sleep the wait
        it was given and ask again (interactive requests queue in the buckets; batch-lane
        ones never do, so they never stand ahead of them), while its max wait allows."""
        clock, call, limiter = self._shared.clock, self._call, self._limiter
        started = clock.now()
        deadline = started + limiter.queue_limit(call.max_wait)
        admission: Admission = held
        try:
            while isinstance(admission, HeldBack):
                if clock.now() + admission.refused.retry_after > deadline:
                    break
                await clock.sleep(admission.refused.retry_after)
                admission = await limiter.admit(
                    scope=self._scope,
                    model=call.model,
                    cost=self._cost,
                    max_wait=max(0.0, deadline - clock.now()),
                    tenant=call.tenant,
                    priority=call.priority,
                )
        finally:
            self._record.queue_wait = clock.now() - started
        return admission

    async def _decide(self) -> Admission:
        """One limiter call: the endpoint's own bucket, or the model group's buckets (on the
        API's exact input count first, for groups with `estimate: count_tokens`)."""
        call, limiter = self._call, self._limiter
        self._scope = limiter.scope_for(call.scope)
        if call.endpoint is not None:
            return await limiter.admit_endpoint(
                scope=self._scope, endpoint=call.endpoint, max_wait=call.max_wait
            )
        body = call.body or {}
        self._input_estimate = estimate_input_tokens(body)
        uncached = uncached_input_tokens(body)
        self._uncached = uncached
        cost = limiter.cost_for(
            call.model,
            self._input_estimate,
            max_output_tokens(body),
            uncached=uncached,
            tenant=call.tenant,
        )
        cost = self._cost = await self._exact_input(cost, body)
        return await limiter.admit(
            scope=self._scope,
            model=call.model,
            cost=cost,
            max_wait=call.max_wait,
            tenant=call.tenant,
            priority=call.priority,
        )

    async def _exact_input(self, cost: Cost, body: Mapping[str, Any]) -> Cost:
        """`cost` with the API's input count, when the group asks for one and it comes."""
        call, limiter, record = self._call, self._limiter, self._record
        group = limiter.group_for(call.model)
        name = "none" if group is None else group.name
        if group is None or not self._shared.counter.counts(group, call.caller.path):
            record.estimate = ("heuristic", "configured")
            return cost
        result = await self._count(body, group.estimate_timeout_seconds)
        if isinstance(result, NotCounted):
            record.estimate = ("heuristic", result.reason)
            log.info("exact_count_fallback", group=name, reason=result.reason, detail=result.detail)
            return cost
        record.estimate = ("count_tokens", "configured")
        return replace(cost, input_tokens=result.input_tokens)

    async def _count(self, body: Mapping[str, Any], time_limit: float) -> Counted | NotCounted:
        """Take one request from the count_tokens bucket (no wait), then count once; the
        request is given back when the API was never reached, or the client left."""
        call, limiter = self._call, self._limiter
        slot = await limiter.admit_endpoint(scope=self._scope, endpoint="count_tokens", max_wait=0)
        if not isinstance(slot, Admitted | Unlimited):
            return NotCounted("rate_limited", reached=False, detail=type(slot).__name__)
        try:
            result = await self._shared.counter.count_for(body, call.caller, time_limit=time_limit)
        except asyncio.CancelledError:
            limiter.settle(slot, _REFUND)
            raise
        if isinstance(result, NotCounted) and not result.reached:
            limiter.settle(slot, _REFUND)
        return result

    # Leaving --------------------------------------------------------------------------

    def _close(self, exc: BaseException | None) -> None:
        """Settle once: refund what upstream never answered, charge what a model-group
        request used, leave an endpoint's request charged."""
        admission = self._admission
        if not isinstance(admission, Admitted) or admission.settled:
            return
        try:
            if self._answer is None:
                self._limiter.settle(admission, _REFUND)
            elif self._settles_usage and self._tap is not None:
                self._settle(admission, self._answer, self._tap)
        except Exception:  # the client has its answer: a settlement bug must not change it
            log.exception("settlement_failed", group=admission.group)

    def _settle(self, admission: Admitted, answer: UpstreamAnswer, tap: UsageTap) -> None:
        """Learn from the answer's headers and usage, then charge the difference; after a
        pull-down when upstream reported less room than the buckets hold."""
        limiter, group = self._limiter, admission.group
        if (answer.status < 300 or answer.status == 429) and limiter.learns_limits(group):
            limiter.learn_limits(group, reported_limits(answer.headers))
        reported = reported_remaining(answer.headers)
        self._record.api_remaining = {AXES[dim]: value for dim, value in reported.items()}
        actual = actual_cost(admission, tap, answer, limiter.counts_cache_reads(group))
        self._observe(admission, answer, tap)
        if self._call.tenant:
            limiter.charge_budget(self._call.tenant, self._call.model, _spent(tap, actual))
        ceilings = pull_down_ceilings(admission, answer, reported)
        if not ceilings:
            limiter.settle(admission, actual)
            return
        work = _pull_down_then_settle(limiter, admission, ceilings, answer.headers_at, actual)
        self._shared.background.spawn(work, name=f"settle {self._record.request_id}")

    def _observe(self, admission: Admitted, answer: UpstreamAnswer, tap: UsageTap) -> None:
        """Put the usage on the record; a complete answer teaches the group its figures."""
        record, usage = self._record, tap.usage
        if tap.rejected:  # once per response: the counts are the upstream's, not a client's
            log.warning("usage_invalid", group=admission.group, fields=repr(tap.rejected)[:200])
        record.usage = usage
        if usage is None:
            ended_well = answer.status < 400 and not tap.errored
            record.usage_missing = ended_well and not answer.client_left
            return
        if answer.complete and not tap.errored:
            estimated = self._input_estimate
            if self._uncached is not None:  # what the API charged of the uncached part
                cache_reads = self._limiter.counts_cache_reads(admission.group)
                seen = usage.cost(cache_reads_count=cache_reads).input_tokens
                estimated = self._uncached
            else:  # the estimator's error on the whole prompt
                seen = (
                    usage.input_tokens
                    + usage.cache_creation_input_tokens
                    + usage.cache_read_input_tokens
                )
            self._limiter.learning.observe(
                admission.group,
                estimated,
                seen,
                usage.output_tokens,
                cached=self._uncached is not None,
            )


def _spent(tap: UsageTap, actual: Cost) -> Spent:
    """What a budget is charged: the usage the API reported, or (without one) the tokens
    the buckets were settled on."""
    usage = tap.usage
    if usage is None:
        return Spent(actual.input_tokens, actual.output_tokens)
    return Spent(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
    )


async def _pull_down_then_settle(
    limiter: Limiter,
    admission: Admitted,
    ceilings: Mapping[Dimension, float],
    at: float,
    actual: Cost,
) -> None:
    """Lower the buckets to upstream's view first, then settle on top of it."""
    await limiter.pull_down(admission, ceilings, at=at)
    limiter.settle(admission, actual)
