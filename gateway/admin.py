"""The operator's endpoints: `GET /gateway/v1/status` (the live view) and
`POST /gateway/v1/reload`, both behind `GATEWAY_ADMIN_TOKEN`; and `reload()`, which SIGHUP
runs too (`server.py`).

The status is this instance's view: the limits in force, each bucket's level as the shared
backend holds it now (every instance reads the same Redis), this instance's queue and its
decisions of the last minute. A reload reads the limits file again and validates it exactly
as `check-config` does (`startup.startup_for`); a file that would not start the gateway is
refused with the same line, and the old one stays in force. A good one applies from the next
request on; reservations in flight settle on the buckets they were charged on.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.admissions import LimitedAdmissions, NoLimits
from gateway.config import ConfigError, Settings
from gateway.errors import AuthenticationFailed, InvalidRequest
from gateway.limits import GroupLimits, LimitsConfig
from gateway.limits.tenants import MICRO
from gateway.logs import get_logger
from gateway.record import record_of
from gateway.services import ADMISSIONS, CLOCK, IDENTITIES, METRICS
from gateway.startup import startup_for

log = get_logger("gateway.admin")
STATUS_PATH = "/gateway/v1/status"
RELOAD_PATH = "/gateway/v1/reload"


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """What the admin endpoints need: the token that opens them, and the settings a reload
    reads the limits file from."""

    settings: Settings

    def check(self, request: web.Request) -> None:
        """Raise 401 unless `request` carries `Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`
        (compared in constant time; with no token configured, nobody is let in)."""
        token = self.settings.admin_token
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        expected = b"" if token is None else token.get_secret_value().encode()
        given = presented.strip().encode()
        if token is None or scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
            raise AuthenticationFailed(
                "this endpoint needs Authorization: Bearer <GATEWAY_ADMIN_TOKEN>"
                + ("" if token is not None else " (the gateway has none configured)")
            )


ADMIN = web.AppKey("admin", AdminAccess)


def reload(app: web.Application) -> dict[str, Any]:
    """Read and validate the limits file again, then put it in force; `ConfigError` (the
    old file stays in force) when it would not start the gateway."""
    startup = startup_for(app[ADMIN].settings)
    admissions = app[ADMISSIONS]
    if isinstance(admissions, NoLimits) and startup.limits is not None:
        raise ConfigError(
            "the gateway started without limits: restart it to put a limiter in front"
        )
    app[IDENTITIES].adopt(startup.identities)
    config = startup.limits or LimitsConfig()
    if isinstance(admissions, LimitedAdmissions):
        admissions.limiter.reconfigure(config)
        app[METRICS].limits_configured(config.configured_limits())
    summary = {
        "groups": [group.name for group in config.groups],
        "tenants": [tenant.name for tenant in config.tenants],
        "identity": startup.identities.describe(),
        "enforce": config.enforce,
    }
    log.info("limits.reloaded", **summary)
    return summary


async def reload_endpoint(request: web.Request) -> web.Response:
    """`POST /gateway/v1/reload`: 200 with what is now in force, or 400 with the problem."""
    record_of(request).route = "admin"
    request.app[ADMIN].check(request)
    try:
        summary = reload(request.app)
    except ConfigError as exc:
        log.warning("limits.reload_refused", error=str(exc))
        raise InvalidRequest(f"reload refused, the previous limits stay in force: {exc}") from None
    return web.json_response({"reloaded": True, **summary})


async def status_endpoint(request: web.Request) -> web.Response:
    """`GET /gateway/v1/status`: the live view as JSON."""
    record_of(request).route = "admin"
    request.app[ADMIN].check(request)
    return web.json_response(await status(request.app))


async def status(app: web.Application) -> dict[str, Any]:
    """Per group: its limits and enforcement, each bucket's level (per scope and tenant),
    and the last minute's decisions per tenant; each tenant's spend against its budgets
    (this instance's view of the fleet's ledger); and this instance's queue."""
    admissions = app[ADMISSIONS]
    recent = app[METRICS].recent.per_minute(app[CLOCK].now())
    if not isinstance(admissions, LimitedAdmissions):
        return {"limits": False, "identity": app[IDENTITIES].describe(), "groups": []}
    limiter = admissions.limiter
    config = limiter.config
    buckets: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bucket, level in await limiter.levels():
        buckets[bucket.group].append({
            "scope": bucket.scope,
            "tenant": bucket.tenant or None,
            "dimension": bucket.dimension.value,
            "limit": bucket.limit,
            "capacity": round(bucket.capacity, 3),
            "level": round(level, 3),
            "used_ratio": round(1 - level / bucket.capacity, 4) if bucket.capacity else None,
        })  # fmt: skip
    groups = []
    for group in config.groups:
        tenants = {
            tenant or None: decisions
            for (name, tenant), decisions in recent.items()
            if name == group.name
        }
        groups.append({
            "name": group.name,
            "models": list(group.models),
            "enforce": config.enforces(group.name),
            "limits": {d.per_period_name: n for d, n in group.limits().items()},
            "tenant_limits": _tenant_limits(config, group),
            "buckets": buckets.get(group.name, []),
            "decisions_last_minute": [
                {"tenant": tenant, **decisions} for tenant, decisions in tenants.items()
            ],
        })  # fmt: skip
    budgets = [
        {
            "tenant": state.tenant,
            "budget": state.name,
            "unit": state.unit,
            "limit": state.limit / MICRO if state.unit == "usd" else state.limit,
            "spent": state.spent / MICRO if state.unit == "usd" else state.spent,
            "resets_at": datetime.fromtimestamp(state.resets_at, UTC).isoformat(),
        }
        for tenant in config.tenants
        for state in limiter.ledger.states(tenant.name)
    ]
    return {
        "limits": True,
        "budgets": budgets,
        "identity": app[IDENTITIES].describe(),
        "enforce": config.enforce,
        "priority_reserve": config.priority_reserve,
        "fair_share": config.fair_share,
        "queue_depth": limiter.waiting,
        "degraded": limiter.degraded,
        "groups": groups,
    }


def _tenant_limits(config: LimitsConfig, group: GroupLimits) -> dict[str, dict[str, int]]:
    """Each tenant's sub-quota on `group`, by the limits file's names."""
    shown = {}
    for tenant in config.tenants:
        limits = config.tenant_limits(group, tenant.name)
        if limits:
            shown[tenant.name] = {dim.per_period_name: limit for dim, limit in limits.items()}
    return shown


def add_admin_routes(app: web.Application, settings: Settings) -> None:
    """Register the admin endpoints and what they need."""
    app[ADMIN] = AdminAccess(settings)
    app.router.add_get(STATUS_PATH, status_endpoint)
    app.router.add_post(RELOAD_PATH, reload_endpoint)
