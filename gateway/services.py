"""The shared objects one request needs, under one typed `AppKey`.

`app.create_app()` builds a `Services` and stores it; handlers, middlewares and ops
endpoints read it with `request.app[SERVICES]`. Nothing here opens or closes anything:
that is `app.py`'s cleanup context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from gateway.clock import Clock
from gateway.exact_count import ExactCounter
from gateway.headers import CredentialPolicy
from gateway.limits import Limiter
from gateway.metrics import GatewayMetrics
from gateway.upstream import Upstream


@dataclass(slots=True)
class Lifecycle:
    """Whether the process is still taking traffic (False from SIGTERM on)."""

    accepting: bool = True


@dataclass(slots=True)
class BodyLimits:
    """Largest request bodies the gateway buffers (Messages) and streams (uploads)."""

    buffered: int
    streamed: int


@dataclass(slots=True)
class Services:
    """Everything a request handler may use; built once per app."""

    clock: Clock
    metrics: GatewayMetrics
    body_limits: BodyLimits
    credentials: CredentialPolicy = field(default_factory=CredentialPolicy)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    upstream: Upstream | None = None
    exact_counter: ExactCounter | None = None
    limiter: Limiter | None = None


SERVICES = web.AppKey("services", Services)
