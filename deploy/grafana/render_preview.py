"""Render docs/dashboard.png: six dashboard panels' queries, plotted with matplotlib.

Grafana is not packaged in Debian, so this draws the dashboard's own PromQL (read from
dashboards/claude-gateway.json) as Prometheus answers it after a real run: a fake Anthropic
API, a gateway process with a limits file, and a real Prometheus with the repo's recording
rules, scraping every second while a load generator sends mixed traffic for `--seconds`.

    .venv/bin/python -m deploy.grafana.render_preview --seconds 150

Needs `prometheus` on PATH (Debian package `prometheus`) and matplotlib (a dev dependency).
"""

# ruff: noqa: TID251 - this script orchestrates processes in wall-clock time

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import matplotlib as mpl
import yaml

from bench.ports import free_port
from tests.support.fake_upstream import Delay, FakeUpstream, Reply, Stream
from tests.support.processes import running_gateway

mpl.use("Agg")
import matplotlib.pyplot as plt  # after choosing the Agg backend

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "claude-gateway.json"
RULES = ROOT / "deploy" / "prometheus" / "rules"
OUTPUT = ROOT / "docs" / "dashboard.png"
PANELS = (
    "Requests by outcome",
    "Limit utilisation",
    "Queue wait percentiles",
    "Limiter decisions",
    "Upstream attempts by status",
    "Time to first byte",
)
LIMITS = """\
queue:
  max_wait_seconds: 4
headroom: 0.02
groups:
  - name: sonnet
    models: ['claude-sonnet-*']
    requests_per_minute: 120
    output_tokens_per_minute: 12000
  - name: haiku
    models: ['claude-haiku-*']
    requests_per_minute: 300
"""


def concrete(expr: str) -> str:
    """The panel query as Grafana would send it with every variable at `All`."""
    for name, value in (
        ("$__rate_interval", "1m"),
        ("$__range", "5m"),
        ("$instance", ".*"),
        ("$model_group", ".*"),
    ):
        expr = expr.replace(name, value)
    return expr


def legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's `{{label}}` legend format, filled in."""
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


async def load(gateway: str, fake: FakeUpstream, seconds: float) -> None:
    """Mixed traffic: sonnet and haiku, some unwilling to wait, an occasional 529."""
    rng = random.Random(7)
    headers = {"x-api-key": "sk-ant-preview", "anthropic-version": "2023-06-01"}
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            model = "claude-sonnet-4-6" if rng.random() < 0.7 else "claude-haiku-4-5"
            extra = {"x-gateway-max-wait": "0"} if rng.random() < 0.3 else {}
            roll = rng.random()
            if roll < 0.04:
                fake.script(Reply(529))
            else:
                fake.script(Delay(rng.uniform(0.2, 0.9)), Stream() if roll < 0.5 else Reply(200))
            body = {
                "model": model,
                "max_tokens": rng.choice((50, 100, 200)),
                "stream": roll < 0.5,
                "messages": [{"role": "user", "content": "Hello " * rng.randint(5, 200)}],
            }
            async with session.post(
                gateway + "/v1/messages", json=body, headers={**headers, **extra}
            ) as response:
                await response.read()

        tasks: set[asyncio.Task[None]] = set()
        while time.monotonic() < end:
            progress = 1 - (end - time.monotonic()) / seconds
            rate = 2 + 6 * min(1.0, 2 * progress)  # ramp from 2 to 8 requests per second
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks, return_exceptions=True)


def start_prometheus(workdir: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    """A Prometheus scraping `target` every second with the repo's rule files."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "gateway-recording.yml"), str(RULES / "gateway-alerts.yml")],
        "scrape_configs": [
            {"job_name": "claude-gateway", "static_configs": [{"targets": [target]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus not found: apt-get install -y prometheus")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, f"http://127.0.0.1:{port}"


async def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    """Prometheus's range query answer (matrix), 2 s resolution."""
    params = {"query": expr, "start": str(start), "end": str(end), "step": "2"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/api/v1/query_range", params=params) as response,
    ):
        answer = await response.json()
    if answer["status"] != "success":
        raise RuntimeError(f"{expr}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


async def plot(url: str, start: float, end: float) -> None:
    """Draw the chosen panels from their dashboard queries into docs/dashboard.png."""
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    figure, axes = plt.subplots(3, 2, figsize=(14, 11), constrained_layout=True)
    for axis, title in zip(axes.flat, PANELS, strict=True):
        panel = panels[title]
        for target in panel["targets"]:
            for series in await query_range(url, concrete(target["expr"]), start, end):
                points = [(float(t) - start, float(v)) for t, v in series["values"]]
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, label=legend(target["legendFormat"], series["metric"]))
        unit = panel["fieldConfig"]["defaults"]["unit"]
        axis.set_title(title)
        axis.set_xlabel("seconds into the run")
        axis.set_ylabel({"reqps": "req/s", "s": "seconds", "percentunit": "ratio"}.get(unit, ""))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", loc="upper left")
    figure.suptitle(
        "claude-gateway dashboard queries (matplotlib rendering of real Prometheus data, "
        "not Grafana)"
    )
    figure.savefig(OUTPUT, dpi=80)


async def main(seconds: float) -> None:
    """Run fake API, gateway and Prometheus; load; plot."""
    with tempfile.TemporaryDirectory(prefix="cgw-preview-") as tmp:
        workdir = Path(tmp)
        (workdir / "limits.yaml").write_text(LIMITS)
        async with FakeUpstream() as fake:
            with running_gateway(
                workdir, upstream_url=fake.url, limits_file=str(workdir / "limits.yaml")
            ) as gateway:
                process, url = start_prometheus(workdir, gateway.url.removeprefix("http://"))
                try:
                    await asyncio.sleep(3)
                    start = time.time()
                    await load(gateway.url, fake, seconds)
                    await asyncio.sleep(3)
                    await plot(url, start, time.time())
                finally:
                    process.terminate()
                    process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0)
    asyncio.run(main(parser.parse_args().seconds))
