"""Admissions: the one ticket per request a gateway hands out (`ticket.py`).

`NoLimits` when no limiter runs: every ticket is free. `LimitedAdmissions` with one: a
request the limiter looks at (`limited_call.py`) gets a `LimitedTicket`, any other a free one.
"""

from __future__ import annotations

from typing import Protocol

from gateway.limited_call import LimitedCall
from gateway.limits import Limiter
from gateway.record import RequestRecord
from gateway.ticket import FREE, LimitedTicket, Ticket, TicketServices


class Admissions(Protocol):
    """Protocol: makes the ticket for one request (`None`: a request no limit looks at)."""

    def admit(self, call: LimitedCall | None, record: RequestRecord) -> Ticket: ...


class NoLimits:
    """The admissions of a gateway without limits: every ticket is free."""

    def admit(self, call: LimitedCall | None, record: RequestRecord) -> Ticket:
        return FREE


class LimitedAdmissions:
    """The admissions of a gateway with a limiter."""

    def __init__(self, services: TicketServices) -> None:
        self.services = services

    @property
    def limiter(self) -> Limiter:
        """The limiter every ticket talks to."""
        return self.services.limiter

    def admit(self, call: LimitedCall | None, record: RequestRecord) -> Ticket:
        if call is None:
            return FREE
        if call.endpoint is not None and not self.limiter.limits_endpoint(call.endpoint):
            return FREE
        return LimitedTicket(self.services, call, record)
