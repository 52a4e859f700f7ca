"""`create_app()`: the backend it picks, what its cleanup contexts publish, and close."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from bench.ports import free_port
from gateway.admissions import LimitedAdmissions, NoLimits
from gateway.app import open_backend, upstream_settings
from gateway.config import Settings
from gateway.limits import MemoryBackend
from gateway.limits.redis_backend import RedisBackend
from gateway.metrics import GatewayMetrics
from gateway.ops import READINESS_CHECKS
from gateway.services import ADMISSIONS, UPSTREAM
from tests.conftest import GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock

LIMITS = "groups:\n  - name: sonnet\n    models: ['claude-sonnet-*']\n    requests_per_minute: 60\n"


def settings(**fields: Any) -> Settings:
    """Settings from `fields` alone (no environment file)."""
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({}, MemoryBackend), ({"redis_url": "redis://127.0.0.1:1/0"}, RedisBackend)],
)
async def test_open_backend_is_redis_only_with_a_redis_url(
    fields: dict[str, str], expected: type[object]
) -> None:
    """Without `GATEWAY_REDIS_URL` the limiter's backend is in process; with one, Redis
    (opened lazily: nothing listens on the URL here)."""
    backend = open_backend(settings(**fields), FakeClock(), GatewayMetrics(CollectorRegistry()))
    try:
        assert isinstance(backend, expected)
    finally:
        await backend.aclose()


def test_upstream_settings_carry_the_retry_section() -> None:
    """The upstream section takes the URL, timeouts and retry policy from the settings."""
    upstream = upstream_settings(
        settings(
            upstream_url="http://127.0.0.1:9/base/",
            read_timeout_seconds=7,
            retry_max_attempts=5,
            retry_seed=3,
        )
    )
    assert ("http://127.0.0.1:9/base", 7, 5, 3) == (
        upstream.base_url.rstrip("/"),
        upstream.read_timeout,
        upstream.retry.max_attempts,
        upstream.jitter_seed,
    )


async def test_without_limits_admissions_are_no_limits(gateway: RunningGateway) -> None:
    """With no limits file nothing is limited: the app publishes `NoLimits`, checks no Redis."""
    assert (True, {}) == (
        isinstance(gateway.app[ADMISSIONS], NoLimits),
        gateway.app[READINESS_CHECKS],
    )


@pytest.mark.parametrize("redis", [False, True])
async def test_limits_publish_a_limiter_and_redis_adds_its_readiness_check(
    make_gateway: GatewayFactory, tmp_path: Path, redis: bool
) -> None:
    """With limits the app publishes a limiter's admissions; a Redis backend also registers
    its ping as a readiness check."""
    path = tmp_path / "limits.yaml"
    path.write_text(LIMITS)
    extra = {"redis_url": f"redis://127.0.0.1:{free_port()}/0"} if redis else {}
    gateway = await make_gateway(limits_file=str(path), **extra)
    checks = gateway.app[READINESS_CHECKS]
    assert (True, ["redis"] if redis else []) == (
        isinstance(gateway.app[ADMISSIONS], LimitedAdmissions),
        list(checks),
    )


async def test_closing_the_app_closes_the_upstream_session(gateway: RunningGateway) -> None:
    """The upstream cleanup context closes the pooled session when the app shuts down."""
    upstream = gateway.app[UPSTREAM]
    opened = upstream.is_open
    await gateway.server.close()
    assert (True, False) == (opened, upstream.is_open)
