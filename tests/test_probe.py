"""`check-config --probe`: Redis and the upstream reached for real, latency or one clear line."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.ports import free_port
from gateway.app import upstream_settings
from gateway.clock import SystemClock
from gateway.config import Settings
from gateway.limits.redis_backend import SCRIPTS
from gateway.probe import probe_all
from gateway.startup import startup_for
from tests.support.fake_upstream import FakeUpstream
from tests.support.processes import run_cli
from tests.support.redis_server import RedisServer

KEY = "sk-ant-api03-PROBE-do-not-print-0123456789"
MS = r"\d+\.\d ms"


def settings_for(**fields: Any) -> Settings:
    """Settings with `fields` and nothing from the environment."""
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


async def probe(settings: Settings, api_key: str | None = None) -> list[tuple[str, bool, str]]:
    """Run every probe `settings` call for; (target, ok, detail) each."""
    results = await probe_all(settings, upstream_settings(settings), SystemClock(), api_key)
    return [(r.target, r.ok, r.detail) for r in results]


@pytest.fixture
async def refusing_api() -> AsyncIterator[str]:
    """An upstream that answers every call with the API's 401 envelope."""

    async def refuse(_request: web.Request) -> web.Response:
        error = {"type": "authentication_error", "message": "invalid x-api-key"}
        return web.json_response({"type": "error", "error": error}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.mark.redis
async def test_redis_probe_pings_and_loads_every_script(
    redis_server: RedisServer, redis_admin: Any, fake_upstream: FakeUpstream
) -> None:
    """A reachable Redis takes a write probe and holds the limiter's scripts afterwards."""
    settings = settings_for(redis_url=redis_server.url, upstream_url=fake_upstream.url)
    await redis_admin.script_flush()
    (redis, _) = await probe(settings)
    loaded = await redis_admin.script_exists(*(script.sha.decode() for script in SCRIPTS))
    assert (f"redis {redis_server.url}", True) == redis[:2]
    scripts = len(SCRIPTS)
    assert re.fullmatch(f"write probe {MS}, {scripts} scripts loaded in {MS}", redis[2]), redis[2]
    assert [True] * scripts == loaded


async def test_redis_probe_names_what_failed(fake_upstream: FakeUpstream) -> None:
    """Nothing listening on the Redis port is one failed line; the password stays hidden."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    settings = settings_for(redis_url=url, upstream_url=fake_upstream.url)
    (redis, upstream) = await probe(settings)
    assert (f"redis redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}", False) == redis[:2]
    assert redis[2].startswith("redis probe failed:"), redis[2]
    assert "hunter2" not in repr(redis)
    assert upstream[1]


async def test_upstream_probe_connects_then_lists_models_with_a_key(
    fake_upstream: FakeUpstream,
) -> None:
    """Without a key the upstream is only connected to; with one, GET /v1/models answers 200."""
    settings = settings_for(upstream_url=fake_upstream.url)
    without = await probe(settings)
    with_key = await probe(settings, api_key=KEY)
    assert [("upstream " + fake_upstream.url, True)] == [r[:2] for r in without]
    assert re.fullmatch(f"TCP connection in {MS}", without[0][2])
    assert ("upstream GET /v1/models", True) == with_key[1][:2]
    assert re.fullmatch(f"HTTP 200 in {MS}", with_key[1][2])
    assert [("GET", "/v1/models", KEY)] == [
        (r.method, r.path, r.headers["x-api-key"]) for r in fake_upstream.requests
    ]


async def test_upstream_probe_reports_the_apis_refusal(refusing_api: str) -> None:
    """A 401 from the API is one failed line with its error type and message."""
    (_, models) = await probe(settings_for(upstream_url=refusing_api), api_key=KEY)
    assert ("upstream GET /v1/models", False) == models[:2]
    assert re.fullmatch(f"HTTP 401 in {MS}: authentication_error: invalid x-api-key", models[2])


async def test_upstream_probe_reports_a_refused_connection() -> None:
    """Nothing listening upstream fails the connect probe, and no models probe follows."""
    port = free_port()
    results = await probe(settings_for(upstream_url=f"http://127.0.0.1:{port}"), api_key=KEY)
    assert [(f"upstream http://127.0.0.1:{port}", False)] == [r[:2] for r in results]
    assert results[0][2].startswith(f"cannot connect to 127.0.0.1:{port}:")


def test_check_config_probe_exit_code_follows_the_probes(tmp_path: Any) -> None:
    """`check-config --probe` prints one line per probe and exits 1 when one failed."""
    dead = free_port()
    result = run_cli(
        "check-config", "--probe", cwd=tmp_path, upstream_url=f"http://127.0.0.1:{dead}"
    )
    probes = [line for line in result.stdout.splitlines() if line.startswith("probe ")]
    failed = f"probe upstream http://127.0.0.1:{dead}: FAILED: cannot connect to 127.0.0.1:{dead}:"
    assert (1, 1, True) == (result.returncode, len(probes), probes[0].startswith(failed))
    assert "Traceback" not in result.stdout + result.stderr


def test_startup_for_keeps_settings(fake_upstream: FakeUpstream) -> None:
    """The probe gets the same settings `serve` would use (startup_for passes them through)."""
    settings = settings_for(upstream_url=fake_upstream.url)
    assert settings is startup_for(settings).settings
