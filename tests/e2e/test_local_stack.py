"""deploy/local-stack.sh runs the compose topology as local processes (two replicas behind
nginx, one Redis, Prometheus) in front of the fake upstream, and they share one budget."""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.ports import free_port
from tests.support.processes import BIN, ROOT, gateway_env

Doc = dict[str, Any]


STACK_RPM = 20
STACK_LIMITS = f"""
queue:
  max_wait_seconds: 0
groups:
  - name: haiku
    models: ["claude-haiku-*"]
    requests_per_minute: {STACK_RPM}
unmatched_models: reject
redis_failure: fail_closed
"""
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 16,
           "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
HEADERS = {"x-api-key": "sk-ant-local-stack-test", "anthropic-version": "2023-06-01",
           "content-type": "application/json"}  # fmt: skip


def get_json(url: str) -> Any:
    """GET `url` and parse the JSON body."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post_message(url: str, body: dict[str, Any]) -> tuple[int, bytes, str]:
    """POST a Messages request; (status, body, content-type), 4xx/5xx included."""
    request = urllib.request.Request(
        url + "/v1/messages", data=json.dumps(body).encode(), headers=HEADERS, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return int(response.status), response.read(), response.headers["content-type"]
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers["content-type"]


@contextmanager
def background(command: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in its own process group; SIGTERM it on exit, SIGKILL the group if stuck."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(path: Path, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until `path` exists, failing early with the log if `process` exits."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never appeared:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def wait_listening(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Wait until `url` answers, failing early with the log if `process` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@contextmanager
def logs_on_failure(*places: Path) -> Iterator[None]:
    """On any failure, print the tail of every log under `places` (pytest shows it beside
    the failure), so a failed run says why: the stack's own output, each process's log."""
    try:
        yield
    except BaseException:
        for place in places:
            for log in sorted(place.glob("*.log")) if place.is_dir() else [place]:
                if log.is_file():
                    print(f"===== {log} (last 60 lines) =====")
                    print("\n".join(log.read_text(errors="replace").splitlines()[-60:]))
        raise


def requests_served(metrics_url: str) -> float:
    """The sum of `gateway_requests_total` on one replica's /metrics, probes excluded."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{") and 'route="ops"' not in line
    )


def prometheus_targets(url: str, expected: int, timeout: float = 15) -> list[Doc]:
    """Prometheus's active targets, once it has discovered `expected` of them (or timed out)."""
    deadline = time.monotonic() + timeout
    while True:
        targets: list[Doc] = get_json(url + "/api/v1/targets")["data"]["activeTargets"]
        if len(targets) >= expected or time.monotonic() > deadline:
            return targets
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """Whether a process with this id still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.redis
def test_local_stack_shares_limits_across_replicas_behind_nginx(tmp_path: Path) -> None:
    """Through nginx, both replicas serve and share one Redis budget: at most the RPM reaches
    the fake upstream, which refuses nothing; the rest are the gateway's own 429s."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(STACK_LIMITS)
    stack_dir = tmp_path / "stack"
    fake_port = free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    fake_cmd = [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(fake_port),
                "--rpm", str(STACK_RPM)]  # fmt: skip
    stack_env = gateway_env(
        upstream_url=fake_url,
        limits_file=str(limits),
        shutdown_drain_seconds="0",
        # fail_closed answers 503 to a Redis reply slower than this; the default 0.5 s is
        # too tight on a loaded 2-core runner for a test of sharing, not of Redis latency
        redis_timeout_seconds="5",
    ) | {
        "STACK_DIR": str(stack_dir),
        "STACK_LB_PORT": "0",  # picked by the stack with its other ports: all distinct
        "STACK_TIMEOUT": "600",
        "STACK_STARTUP_SECONDS": "60",
        "STACK_PYTHON": sys.executable,
        "CLAUDE_GATEWAY": str(BIN / "claude-gateway"),
    }
    stack_log, fake_log = tmp_path / "local-stack.log", tmp_path / "fake.log"
    stack_cmd = [str(ROOT / "deploy" / "local-stack.sh")]
    with logs_on_failure(stack_log, fake_log, stack_dir), ExitStack() as running:
        fake_process = running.enter_context(
            background(fake_cmd, fake_log, cwd=ROOT, env=gateway_env())
        )
        # listening before the stack picks its ports (so none can be the fake's) and
        # before the first request needs it
        wait_listening(fake_url + "/_fake/stats", fake_process, fake_log, timeout=60)
        stack = running.enter_context(background(stack_cmd, stack_log, env=stack_env))
        # the stack itself gives up, with the log, once a process dies or stays silent for
        # STACK_STARTUP_SECONDS; this only bounds the whole start-up
        wait_for(stack_dir / "ready", stack, stack_log, timeout=300)
        urls = dict(line.split("=", 1) for line in (stack_dir / "stack.env").read_text().split())
        started = time.monotonic()
        stream = post_message(urls["LB_URL"], MESSAGE | {"stream": True})
        with ThreadPoolExecutor(max_workers=4) as pool:
            replies = list(pool.map(lambda _: post_message(urls["LB_URL"], MESSAGE), range(40)))
        burst = time.monotonic() - started
        statuses = collections.Counter(status for status, _, _ in [stream, *replies])
        refusals = {json.loads(body)["error"]["type"] for status, body, _ in replies
                    if status == 429}  # fmt: skip
        fake = get_json(fake_url + "/_fake/stats")
        served = {n: requests_served(urls[f"GATEWAY_{n}_URL"] + "/metrics") for n in (1, 2)}
        access = (stack_dir / "nginx-access.log").read_text().splitlines()
        upstreams = {json.loads(line)["upstream"] for line in access}
        targets = prometheus_targets(urls["PROMETHEUS_URL"], expected=2)
        groups = get_json(urls["PROMETHEUS_URL"] + "/api/v1/rules")["data"]["groups"]
        pids = [int(line.split()[1]) for line in (stack_dir / "pids").read_text().splitlines()]
        stack.send_signal(signal.SIGTERM)
        stack_exit = stack.wait(timeout=50)
        running.close()  # the fake too, before its log is read on a failure below
        rule_groups = {
            group["name"]
            for path in sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
            for group in yaml.safe_load(path.read_text())["groups"]
        }
        # One shared budget holds STACK_RPM (less headroom) and regains as much a minute: a
        # burst that a loaded machine stretches over seconds may rightly be admitted more.
        budget = math.floor(STACK_RPM * (1 + burst / 60))
        actual = {
            "stream": (stream[0], stream[2].split(";")[0], b"event: message_stop" in stream[1]),
            "200 + 429": statuses[200] + statuses[429],
            "burst within 30 s": burst < 30,  # else the refill blurs one budget and two
            "admitted within the shared budget": 0 < statuses[200] <= budget,
            "refusals": refusals,
            "reached upstream": fake["requests"],
            "upstream 429s": fake["rejected_429"],
            "both replicas served": all(count > 0 for count in served.values()),
            "served in total": sum(served.values()),
            "nginx upstreams": upstreams,
            "scraped": {target["scrapeUrl"] for target in targets},
            "rule groups": {group["name"] for group in groups},
            "stack exit": stack_exit,
            "left running": [pid for pid in pids if alive(pid)],
        }
        expected = {
            "stream": (200, "text/event-stream", True),
            "200 + 429": 41,
            "burst within 30 s": True,
            "admitted within the shared budget": True,
            "refusals": {"rate_limit_error"},
            "reached upstream": statuses[200],
            "upstream 429s": 0,
            "both replicas served": True,
            "served in total": 41.0,
            "nginx upstreams": {urls["GATEWAY_1_URL"][7:], urls["GATEWAY_2_URL"][7:]},
            "scraped": {urls["GATEWAY_1_URL"] + "/metrics", urls["GATEWAY_2_URL"] + "/metrics"},
            "rule groups": rule_groups,
            "stack exit": 128 + signal.SIGTERM,
            "left running": [],
        }
        assert expected == actual, f"{statuses[200]} admitted in a {burst:.1f} s burst"
