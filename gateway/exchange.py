"""`Exchange`: what one request did, filled in as it goes, read by the access log and metrics.

The middleware creates it, the handler fills it; so the access line has the model, the
upstream `request-id` and how the body ended without the two passing values around.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from aiohttp import web

_ids = random.Random()  # seeded from os.urandom once; ids need uniqueness, not secrecy


def new_request_id() -> str:
    """The gateway's own request id: plainly not an upstream `req_...` id.

    96 random bits from a per-process generator seeded by the OS: as unique as
    `secrets.token_hex(12)` without a `getrandom` system call on every request.
    """
    return f"gw_{_ids.getrandbits(96):024x}"


@dataclass(slots=True)
class Exchange:
    """The access-log record of one request."""

    request_id: str
    started_at: float
    route: str = ""
    model_group: str = "none"
    model: str | None = None
    stream: bool = False
    status: int = 0
    outcome: str = "ok"
    upstream_request_id: str | None = None
    bytes_out: int = 0
    first_byte_at: float | None = None
    queue_wait: float = 0.0
    upstream_sent_at: float | None = None
    input_estimate: int | None = None
    """The raw input-token estimate of a model-group admission, kept to calibrate against."""

    @property
    def overhead(self) -> float | None:
        """Seconds the gateway spent before sending upstream, queue wait excluded."""
        if self.upstream_sent_at is None:
            return None
        return self.upstream_sent_at - self.started_at - self.queue_wait


EXCHANGE_KEY = web.RequestKey("exchange", Exchange)


def exchange_of(request: web.Request) -> Exchange:
    """The request's `Exchange`, created by the middleware."""
    return request[EXCHANGE_KEY]
