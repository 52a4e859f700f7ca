"""Admissions: a free ticket for what no limit looks at, a limited one for the rest."""

from __future__ import annotations

import aiohttp

from gateway.admissions import LimitedAdmissions, NoLimits
from gateway.background import Background
from gateway.exact_count import Caller, ExactCounter
from gateway.headers import CredentialPolicy
from gateway.limited_call import LimitedCall
from gateway.limits import Limiter, LimitsConfig, MemoryBackend
from gateway.metrics import GatewayMetrics
from gateway.record import RequestRecord
from gateway.ticket import FREE, LimitedTicket, TicketServices
from tests.support.fake_clock import FakeClock

CALLER = Caller({}, "/v1/messages", None)
RECORD = RequestRecord("gw_1", 0.0, "POST", "/v1/messages")


def test_without_limits_every_ticket_is_free() -> None:
    """NoLimits hands out the free ticket, whatever the request."""
    assert FREE is NoLimits().admit(LimitedCall("s", CALLER, "m", {}), RECORD)


async def test_a_limited_gateway_frees_what_no_limit_looks_at() -> None:
    """No call, or an endpoint the file gives no RPM: free; a generation: a limited ticket."""
    clock = FakeClock()
    config = {"groups": [{"name": "g", "models": ["m"], "requests_per_minute": 5}]}
    limiter = Limiter(MemoryBackend(clock), LimitsConfig.model_validate(config), clock)
    async with aiohttp.ClientSession() as session:
        counter = ExactCounter(session, "http://127.0.0.1:1", credentials=CredentialPolicy())
        services = TicketServices(limiter, counter, clock, GatewayMetrics(), Background())
        limited = LimitedAdmissions(services)
        endpoint = LimitedCall("s", CALLER, endpoint="batches")
        generation = LimitedCall("s", CALLER, "m", {})
        assert (FREE, FREE, LimitedTicket) == (
            limited.admit(None, RECORD),
            limited.admit(endpoint, RECORD),
            type(limited.admit(generation, RECORD)),
        )
