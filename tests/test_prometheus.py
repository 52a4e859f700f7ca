"""A real Prometheus scrapes a gateway and answers PromQL; promtool checks and tests the rules."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bench.ports import free_port
from tests.conftest import TEST_KEY, GatewayFactory
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.test_dashboards import RULES, concrete, dashboard, panel_queries, require

PROMETHEUS_DIR = RULES.parent
Vector = dict[tuple[tuple[str, str], ...], float]


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    """Run promtool with `args` in deploy/prometheus."""
    return subprocess.run(
        [require("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_promtool_checks_the_rule_files() -> None:
    """`promtool check rules` accepts the alert and recording rules."""
    result = promtool("check", "rules", "rules/gateway-alerts.yml", "rules/gateway-recording.yml")
    assert 0 == result.returncode, result.stdout + result.stderr


def test_promtool_checks_the_scrape_config() -> None:
    """`promtool check config` accepts prometheus.yml and finds both rule files beside it."""
    result = promtool("check", "config", "prometheus.yml")
    assert (0, True) == (result.returncode, "SUCCESS: 2 rule files found" in result.stdout), (
        result.stdout + result.stderr
    )


def test_promtool_unit_tests_pass() -> None:
    """Every alert and recording rule unit test in deploy/prometheus/tests passes."""
    tests = sorted(
        str(path.relative_to(PROMETHEUS_DIR)) for path in PROMETHEUS_DIR.glob("tests/*.yml")
    )
    result = promtool("test", "rules", *tests)
    assert (0, 2) == (result.returncode, result.stdout.count("SUCCESS")), (
        result.stdout + result.stderr
    )


async def until(
    check: Callable[[], Awaitable[Any]],
    done: Callable[[Any], bool] = bool,
    seconds: float = 30.0,
) -> Any:
    """Await `check()` every 200 ms until `done(result)`, or fail at the deadline (wall clock)."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {seconds}s; last answer: {result!r}")
        await asyncio.sleep(0.2)


@asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """A real Prometheus scraping `target` every second with the repo's rules; yields its URL."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "gateway-recording.yml"), str(RULES / "gateway-alerts.yml")],
        "scrape_configs": [
            {"job_name": "claude-gateway", "static_configs": [{"targets": [target]}]}
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waits are bounded polls  # noqa: ASYNC220 - returns at once; waits are bounded polls
            [
                require("prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        async def ready() -> bool:
            assert process.poll() is None, log_path.read_text(errors="replace")[-2000:]
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(url + "/-/ready") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def query(url: str, expr: str) -> dict[str, Any]:
    """The JSON answer of Prometheus's instant query API (errors included)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/api/v1/query", params={"query": expr}) as response,
    ):
        answer: dict[str, Any] = await response.json()
        return answer


async def vector(url: str, expr: str) -> Vector:
    """An instant vector as {sorted label pairs: value}."""
    answer = await query(url, expr)
    assert "success" == answer["status"], answer
    return {
        tuple(sorted(item["metric"].items())): float(item["value"][1])
        for item in answer["data"]["result"]
    }


async def send(url: str, count: int) -> list[int]:
    """POST `count` small Messages requests one after another; their statuses."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []}
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(url + "/v1/messages", json=body, headers=headers) as response:
                await response.read()
                statuses.append(response.status)
    return statuses


@pytest.mark.slow
async def test_prometheus_scrapes_the_gateway_and_answers_promql(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Prometheus sees exact request counts, records the rules and runs every dashboard query."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        "headroom: 0\ngroups:\n  - name: sonnet\n    models: ['claude-sonnet-*']\n"
        "    requests_per_minute: 1000\n"
    )
    gateway = await make_gateway(limits_file=str(limits), retry_max_attempts=1)
    target = gateway.url.removeprefix("http://")
    async with prometheus(tmp_path, target) as url:
        fake_upstream.script(Reply(200), Reply(200), Reply(200), Reply(529), Reply(200))
        statuses = await send(gateway.url, 5)
        counts = 'sum by (outcome) (gateway_requests_total{route="/v1/messages"})'
        expected = {(("outcome", "ok"),): 4.0, (("outcome", "upstream_error"),): 1.0}
        await until(lambda: vector(url, counts), lambda found: expected == found)
        recorded = "instance_group_outcome_status:gateway_requests:rate5m"
        outcomes = await until(
            lambda: vector(url, f'sum by (outcome, status) ({recorded}{{model_group="sonnet"}})')
        )
        answers = {
            where: await query(url, concrete(expr)) for where, expr in panel_queries(dashboard())
        }
        up = await vector(url, 'max by (instance, job) (up{job="claude-gateway"})')
    assert [200, 200, 200, 529, 200] == statuses
    assert {(("instance", target), ("job", "claude-gateway")): 1.0} == up
    assert {
        (("outcome", "ok"), ("status", "200")),
        (("outcome", "upstream_error"), ("status", "529")),
    } == set(outcomes)
    assert {} == {
        where: answer for where, answer in answers.items() if answer["status"] != "success"
    }
