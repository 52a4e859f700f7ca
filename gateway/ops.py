"""Operational endpoints outside `/v1`: `/healthz`, `/readyz`, `/metrics`.

`/healthz` says the process answers (liveness). `/readyz` says it should receive traffic:
not shutting down, upstream session open, and every registered readiness check passing
(the Redis ping when a Redis backend is configured).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.services import LIFECYCLE, METRICS, UPSTREAM

ReadinessCheck = Callable[[], Awaitable[bool]]
READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])


def _json(status: int, document: dict[str, object]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(document).encode(), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return _json(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: accepting, upstream session open, every dependency check passing."""
    app = request.app
    upstream = app.get(UPSTREAM)
    checks: dict[str, bool] = {
        "accepting": app[LIFECYCLE].accepting,
        "upstream": upstream is not None and upstream.is_open,
    }
    for name, check in request.app[READINESS_CHECKS].items():
        try:
            checks[name] = await check()
        except Exception:
            checks[name] = False
    ready = all(checks.values())
    return _json(200 if ready else 503, {"status": "ready" if ready else "not_ready", **checks})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the app's registry."""
    body = request.app[METRICS].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_ops_routes(app: web.Application) -> None:
    """Register the three endpoints (GET only)."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
