"""Shared fixtures: a scripted fake upstream and a real gateway in front of it."""

from __future__ import annotations

import gc
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest

from gateway.admissions import LimitedAdmissions
from gateway.app import create_app
from gateway.clock import Clock
from gateway.config import Settings
from gateway.headers import Credential
from gateway.limits import Limiter
from gateway.logs import configure_logging
from gateway.services import ADMISSIONS
from tests.support.fake_upstream import FakeUpstream
from tests.support.redis_server import RedisServer

if TYPE_CHECKING:  # OpenTelemetry is imported by the tracing tests only
    from gateway.tracing import Tracing

TEST_KEY = "sk-ant-api03-TESTKEY-do-not-log-0123456789"
TEST_SCOPE = Credential("x-api-key", TEST_KEY).scope
"""The limiter scope (key hash) of TEST_KEY, as it appears in Redis key names."""


@dataclass
class RunningGateway:
    """A gateway served on 127.0.0.1 by the test's event loop."""

    url: str
    app: web.Application
    registry: CollectorRegistry
    logs: io.StringIO
    server: TestServer

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        return [json.loads(line) for line in self.logs.getvalue().splitlines() if line.strip()]

    def access_lines(self) -> list[dict[str, Any]]:
        """The access-log lines (one per request)."""
        return [line for line in self.log_lines() if line.get("component") == "gateway.access"]

    @property
    def limiter(self) -> Limiter:
        """The gateway's limiter (the test configured limits)."""
        admissions = self.app[ADMISSIONS]
        assert isinstance(admissions, LimitedAdmissions), "this gateway has no limits"
        return admissions.limiter


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Set what imports and collection built aside from the collector (`gc.freeze`): the
    collection after each test then looks only at what tests allocate."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Run the cyclic garbage collector as each test ends, after its event loop closed.

    A socket or transport that a test leaves unclosed inside a reference cycle is otherwise
    finalised whenever the collector next runs, often in some later, unrelated test, which
    then fails with `ResourceWarning: unclosed ...` (`filterwarnings = error`). Collected
    here, the warning fails the teardown of the test that leaked it (PYTHONTRACEMALLOC=20
    adds where the object was allocated).
    """
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _restore_logging_after_each_test() -> Iterator[None]:
    """Give structlog and the root logger back as each test found them.

    `configure_logging` is process-wide: a gateway a test builds at `warning` would otherwise
    leave every later test's `capture_logs()` blind to `info` lines (structlog filters by
    level before the capture sees the event), so whether a test passes would depend on
    which ran before it.
    """
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session (tests flush what they use)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_admin(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A client of the session's real Redis, flushed first so a test sees only its own keys."""
    import redis.asyncio

    admin = redis.asyncio.Redis.from_url(redis_server.url)
    await admin.flushall()
    yield admin
    await admin.aclose()


@pytest.fixture
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """A fresh scripted fake Anthropic API on a free port."""
    async with FakeUpstream() as fake:
        yield fake


SECRETS_EMITTED = re.compile(r"sk-ant-[A-Za-z0-9]|cgw_[0-9a-f]{12}_[A-Za-z0-9_-]")
"""An Anthropic key or a gateway key, unmasked."""


def secrets_emitted(logs: str, registry: CollectorRegistry) -> list[str]:
    """Every unmasked key in what a gateway emitted: its log lines and its metrics."""
    emitted = logs + generate_latest(registry).decode()
    return sorted({match.group(0) for match in SECRETS_EMITTED.finditer(emitted)})


@pytest.fixture
async def make_gateway(
    fake_upstream: FakeUpstream, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> AsyncIterator[GatewayFactory]:
    """Build and serve a gateway in front of the fake upstream, with settings overrides
    (`tracing`: trace its requests with that tracer, tests/test_tracing.py).

    When the test is over, everything each gateway emitted (every log line, the metrics)
    is grepped for an unmasked Anthropic or gateway key: a test whose gateway leaked one
    fails, whatever it was testing."""
    built: list[RunningGateway] = []

    async def build(
        *, clock: Clock | None = None, tracing: Tracing | None = None, **overrides: Any
    ) -> RunningGateway:
        fields: dict[str, Any] = {"upstream_url": fake_upstream.url, "log_level": "debug"}
        fields.update(overrides)
        settings = Settings(_env_file=None, **fields)  # type: ignore[call-arg]
        logs = io.StringIO()
        configure_logging(settings.log_level, "json", stream=logs)
        registry = CollectorRegistry()
        app = create_app(settings, registry=registry, clock=clock, tracing=tracing)
        server = await aiohttp_server(app)  # TestServer enables handler_cancellation
        gateway = RunningGateway(str(server.make_url("")).rstrip("/"), app, registry, logs, server)
        built.append(gateway)
        return gateway

    yield build
    leaked = {g.url: secrets_emitted(g.logs.getvalue(), g.registry) for g in built}
    assert not any(leaked.values()), f"a gateway emitted unmasked keys: {leaked}"


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> RunningGateway:
    """A gateway with default settings in front of the fake upstream."""
    return await make_gateway()
