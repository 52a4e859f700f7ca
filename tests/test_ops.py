"""The operational endpoints: /healthz, /readyz (and /metrics, in test_metrics.py)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.ops import READINESS_CHECKS, Dependency
from gateway.services import LIFECYCLE
from tests.conftest import RunningGateway


async def test_health_and_readiness(gateway: RunningGateway) -> None:
    """/healthz is alive and /readyz ready once the upstream session is open."""
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/healthz") as health:
            health_body = await health.json()
        async with session.get(gateway.url + "/readyz") as ready:
            ready_body = await ready.json()
    assert ((200, "ok"), (200, "ready")) == (
        (health.status, health_body["status"]),
        (ready.status, ready_body["status"]),
    )


async def readiness(gateway: RunningGateway) -> tuple[int, dict[str, object]]:
    """GET /readyz: status and JSON body."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.url + "/readyz") as ready,
    ):
        return ready.status, await ready.json()


async def test_not_ready_once_the_gateway_stops_accepting(gateway: RunningGateway) -> None:
    """From SIGTERM on (`Lifecycle.accepting` false) /readyz is 503 and says why."""
    gateway.app[LIFECYCLE].accepting = False
    status, body = await readiness(gateway)
    assert (503, "not_ready", False, True) == (
        status,
        body["status"],
        body["accepting"],
        body["upstream"],
    )


async def test_a_readiness_check_that_raises_counts_as_failing(gateway: RunningGateway) -> None:
    """A required dependency check that raises makes /readyz 503 under its own name."""

    async def broken() -> bool:
        raise ConnectionError("no route")

    gateway.app[READINESS_CHECKS]["redis"] = Dependency(broken)
    status, body = await readiness(gateway)
    assert (503, "not_ready", False) == (status, body["status"], body["redis"])


async def test_an_optional_dependency_failing_leaves_the_gateway_ready_but_degraded(
    gateway: RunningGateway,
) -> None:
    """Redis under fail_open: its failure is said (status, name, what it means) but the
    answer stays 200, so no load balancer drops a replica that can serve."""

    async def failing() -> bool:
        return False

    gateway.app[READINESS_CHECKS]["redis"] = Dependency(
        failing, required=False, degraded_means="admitting locally"
    )
    status, body = await readiness(gateway)
    assert (200, "degraded", False, {"redis": "admitting locally"}) == (
        status,
        body["status"],
        body["redis"],
        body["degraded"],
    )


async def test_a_hung_check_fails_within_the_check_timeout(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dependency that never answers (a blackholed Redis) fails the check in bounded time,
    so the probe gets an answer before its own timeout."""
    monkeypatch.setattr("gateway.ops.CHECK_TIMEOUT_SECONDS", 0.05)
    never = asyncio.Event()

    async def hung() -> bool:
        await never.wait()
        return True

    gateway.app[READINESS_CHECKS]["redis"] = Dependency(hung)
    status, body = await readiness(gateway)
    assert (503, False) == (status, body["redis"])
