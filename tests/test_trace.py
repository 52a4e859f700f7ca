"""The tracing seam: `NO_TRACE` does nothing, and a gateway without tracing never imports
OpenTelemetry, not even while it serves a request."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from multidict import CIMultiDict

from gateway import trace
from gateway.record import RequestRecord
from gateway.trace import NO_TRACE, otel_installed

ROOT = Path(__file__).resolve().parents[1]


def test_no_trace_passes_the_tap_through_and_leaves_headers_alone() -> None:
    """`NO_TRACE` hands the relay's tap back as is and never touches the upstream headers."""
    headers = CIMultiDict(
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    record = RequestRecord("gw_1", 0.0, "POST", "/v1/messages")
    record.upstream_attempt_started(headers)
    record.upstream_attempt("529")
    record.upstream_retry("529", 0.5)

    def tap(chunk: bytes) -> None:
        del chunk

    with NO_TRACE.span("gateway.relay"):
        kept = NO_TRACE.answered(tap, None)  # type: ignore[arg-type]  # never looked at
    assert (tap, ["529"], 1) == (kept, record.attempts, len(headers))
    assert record.trace is NO_TRACE


def test_otel_installed_finds_the_extra_without_importing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """True with the extra (the dev environment has it); False when a module or a whole
    package is missing."""
    found = otel_installed()
    monkeypatch.setattr(trace, "OTEL_MODULES", ("opentelemetry.sdk.not_a_module",))
    missing_module = otel_installed()
    monkeypatch.setattr(trace, "OTEL_MODULES", ("no_such_package.trace",))
    assert (True, False, False) == (found, missing_module, otel_installed())


SERVE_ONE_REQUEST = textwrap.dedent(
    """
    import asyncio, sys
    from aiohttp.test_utils import TestClient, TestServer
    from gateway.app import create_app
    from gateway.cli import main  # everything `serve` imports
    from gateway.config import Settings
    from tests.support.fake_upstream import FakeUpstream

    def otel() -> set[str]:
        return {m for m in sys.modules if m.split(".")[0] == "opentelemetry"}

    async def serve_one() -> int:
        async with FakeUpstream() as fake:
            app = create_app(Settings(_env_file=None, upstream_url=fake.url))
            async with TestClient(TestServer(app)) as client:
                body = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []}
                headers = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
                response = await client.post("/v1/messages", json=body, headers=headers)
                return response.status

    imported = otel()
    status = asyncio.run(serve_one())
    tracing = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
    print(
        status,
        sorted(otel() - imported),
        sorted(m for m in otel() if m.startswith(tracing)),
        "gateway.tracing" in sys.modules,
    )
    """
)


def test_a_gateway_without_an_endpoint_never_imports_opentelemetry_tracing() -> None:
    """Off by default: with the extra installed but no OTEL_* endpoint, building the app and
    serving a Messages call loads neither gateway.tracing nor the SDK's tracing or exporter,
    and serving loads no OpenTelemetry module at all. (redis-py itself imports the metrics
    API at start when OpenTelemetry is installed, and leaves it idle unless configured.)"""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_ONE_REQUEST],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "200 [] [] False" == result.stdout.strip().splitlines()[-1], result.stderr
