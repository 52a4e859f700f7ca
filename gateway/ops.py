"""Operational endpoints outside `/v1`: `/healthz`, `/readyz`, `/metrics`.

`/healthz` says the process answers (liveness). `/readyz` says "send me traffic": 200 while
accepting, the upstream session open and every *required* dependency passing. A dependency
this instance can serve without (Redis under `redis_failure: fail_open`, where requests are
admitted on local buckets) never makes it unready: a load balancer or Kubernetes would
otherwise drop every replica during a Redis outage and turn a degraded limiter into a full
outage. Its failure shows as `"status": "degraded"` (still 200), under its name in the body,
in `gateway_limiter_degraded` and in the `limits.degraded` log line. Under `fail_closed` the
instance can only answer 503 without Redis, so Redis is required: every replica sharing the
failed Redis leaves the Service together and clients get connection errors, which the SDKs
retry like the 503s they would have got.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.services import LIFECYCLE, METRICS, UPSTREAM

CHECK_TIMEOUT_SECONDS = 1.0
"""A check that has not answered by then fails: probes (2 s in the shipped manifests) must
get an answer, and a hung Redis is a failed one."""


@dataclass(frozen=True, slots=True)
class Dependency:
    """A readiness check: `check` says whether the dependency works; `required` whether the
    instance is unready without it (else only degraded)."""

    check: Callable[[], Awaitable[bool]]
    required: bool = True
    degraded_means: str = ""
    """What a failing optional dependency means for requests, said in the /readyz body."""


READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, Dependency])


def _json(status: int, document: dict[str, object]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(document).encode(), content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return _json(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: accepting, upstream session open, every required dependency passing; an
    optional one failing leaves it ready but `degraded`."""
    app = request.app
    upstream = app.get(UPSTREAM)
    checks: dict[str, bool] = {
        "accepting": app[LIFECYCLE].accepting,
        "upstream": upstream is not None and upstream.is_open,
    }
    degraded: dict[str, str] = {}
    for name, dependency in app[READINESS_CHECKS].items():
        passing = await _passes(dependency)
        if dependency.required or passing:
            checks[name] = passing
        else:
            degraded[name] = dependency.degraded_means
    ready = all(checks.values())
    status = "not_ready" if not ready else "degraded" if degraded else "ready"
    document: dict[str, object] = {"status": status, **checks}
    document.update(dict.fromkeys(degraded, False))
    if degraded:
        document["degraded"] = degraded
    return _json(200 if ready else 503, document)


async def _passes(dependency: Dependency) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return await dependency.check()
    except Exception:
        return False


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
