"""The app's shared resources, one typed `web.AppKey` each.

`app.create_app()` sets the ones that need no I/O; each resource that opens something (the
upstream session, the limiter's backend) is set by its own cleanup context in `app.py`,
which also closes it. Handlers read `request.app[UPSTREAM]` and friends; there is no
optional field to check: a gateway without limits has `NoLimits` admissions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.admissions import Admissions
from gateway.background import Background
from gateway.clock import Clock
from gateway.headers import CredentialPolicy
from gateway.identity import Identities
from gateway.metrics import GatewayMetrics
from gateway.upstream import Upstream

if TYPE_CHECKING:  # OpenTelemetry is optional: tracing.py is imported only when tracing is on
    from gateway.tracing import Tracing


@dataclass(slots=True)
class Lifecycle:
    """Whether the process is still taking traffic (False from SIGTERM on)."""

    accepting: bool = True


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Largest request bodies the gateway buffers (Messages) and streams (uploads), and the
    longest wait for a body's next bytes."""

    buffered: int
    streamed: int
    stall_seconds: float = 30.0


CLOCK = web.AppKey("clock", Clock)
METRICS = web.AppKey("metrics", GatewayMetrics)
BODY_LIMITS = web.AppKey("body_limits", BodyLimits)
CREDENTIALS = web.AppKey("credentials", CredentialPolicy)
IDENTITIES = web.AppKey("identities", Identities)
"""Who may call: gateway keys and tenants, or pass-through (`identity.py`)."""
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
BACKGROUND = web.AppKey("background", Background)
"""Settlements that outlive their request's task (`ticket.py`); drained at shutdown."""
UPSTREAM = web.AppKey("upstream", Upstream)
"""Set by the upstream cleanup context (the pooled session's lifetime)."""
ADMISSIONS = web.AppKey("admissions", Admissions)
"""Set by the limiter cleanup context: `LimitedAdmissions`, or `NoLimits`."""
TRACING: web.AppKey[Tracing] = web.AppKey("tracing")
"""Set by the tracing cleanup context, only when traces are exported (`tracing.py`)."""
