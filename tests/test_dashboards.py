"""The Grafana dashboard and Prometheus rules: PromQL that parses and names real metrics only."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_KEY, GatewayFactory

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "claude-gateway.json"
GENERATOR = ROOT / "deploy" / "grafana" / "generate_dashboard.py"
RULES = ROOT / "deploy" / "prometheus" / "rules"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What Grafana substitutes before a query reaches Prometheus, with values valid for a test.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$model_group": ".*",
}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
}


def require(binary: str) -> str:
    """The binary's path, or fail naming the Debian package that provides it."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} not found on PATH: install the Debian package `prometheus` "
            "(apt-get install -y prometheus), which provides both prometheus and promtool."
        )
    return path


def generator() -> ModuleType:
    """deploy/grafana/generate_dashboard.py, imported from its path."""
    spec = importlib.util.spec_from_file_location("generate_dashboard", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    """The committed dashboard JSON."""
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def panel_queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(`panel title/refId`, expr) for every target of every panel."""
    return [
        (f"{panel['title']}/{target['refId']}", target["expr"])
        for panel in document["panels"]
        for target in panel.get("targets", [])
    ]


def variable_queries(document: dict[str, Any]) -> list[str]:
    """The metric selectors inside the query variables' `label_values(...)`."""
    found = []
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), \w+\)", variable["definition"])
            assert match is not None, variable["definition"]
            found.append(match.group(1))
    return found


def concrete(expr: str) -> str:
    """`expr` with Grafana's variables replaced as Grafana would, for Prometheus to run."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if match.group(2) is None and match.group(1).lower() not in PROMQL_WORDS:
            names.add(match.group(1))
    return names


def rules(name: str) -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/rules/<name>."""
    document = yaml.safe_load((RULES / name).read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    """The series names the recording rules produce."""
    return {rule["record"] for rule in rules("gateway-recording.yml")}


def exposed_names(text: str) -> set[str]:
    """Every series name a `/metrics` text can carry, `_bucket`/`_total`/... included."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def check_parses(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `promtool check rules` on the expressions as recording rules: it parses each one."""
    document = {
        "groups": [
            {
                "name": "parse",
                "rules": [{"record": f"parse:expr_{n}", "expr": e} for n, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "parse.yml"
    path.write_text(yaml.safe_dump(document))
    return subprocess.run(
        [require("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside `node`, depth first."""
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk(child)


@pytest.fixture
async def gateway_metric_names(make_gateway: GatewayFactory, tmp_path: Path) -> set[str]:
    """Series names on a limited gateway's `/metrics` after a few requests, plus `up`."""
    limits = tmp_path / "limits.yaml"
    limits.write_text(
        "headroom: 0\ngroups:\n  - name: sonnet\n    models: ['claude-sonnet-*']\n"
        "    requests_per_minute: 100\n"
    )
    gateway = await make_gateway(limits_file=str(limits))
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []}
    headers = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as session:
        for stream in (False, True):
            async with session.post(
                gateway.url + "/v1/messages", json={**body, "stream": stream}, headers=headers
            ) as response:
                await response.read()
        async with session.get(gateway.url + "/metrics") as response:
            text = await response.text()
    return exposed_names(text) | {"up"}


def test_committed_dashboard_is_what_the_generator_writes() -> None:
    """claude-gateway.json equals generate_dashboard.py's output (regenerate after edits)."""
    assert generator().render() == DASHBOARD.read_text()


def test_every_datasource_is_the_variable() -> None:
    """Every panel, target and query variable reads its datasource from `${datasource}`."""
    document = dashboard()
    datasources = [node["datasource"] for node in walk(document) if "datasource" in node]
    variable = document["templating"]["list"][0]
    assert ("datasource", "prometheus") == (variable["name"], variable["query"])
    assert [DATASOURCE] * len(datasources) == datasources
    assert len(datasources) > len(document["panels"])


def test_every_query_filters_by_the_instance_variable_and_hard_codes_none() -> None:
    """Each panel query selects `instance=~"$instance"`; no host or port appears in the JSON."""
    document = dashboard()
    queries = panel_queries(document)
    unfiltered = [where for where, expr in queries if 'instance=~"$instance"' not in expr]
    hard_coded = re.findall(r'instance=~?"(?!\$instance")[^"]*"|:\d{4}\b', json.dumps(document))
    assert ([], []) == (unfiltered, hard_coded)
    assert {"datasource", "instance", "model_group"} == {
        variable["name"] for variable in document["templating"]["list"]
    }


def test_every_panel_query_parses(tmp_path: Path) -> None:
    """promtool parses every panel expression once Grafana's variables are substituted."""
    exprs = [concrete(expr) for _, expr in panel_queries(dashboard())]
    result = check_parses(exprs, tmp_path)
    assert ([], 0) == ([e for e in exprs if "$" in e], result.returncode), result.stdout
    assert 20 <= len(exprs)


def test_parse_check_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The promtool parse check fails on an unbalanced expression, so a pass means something."""
    result = check_parses(["sum(rate(gateway_requests_total[5m])"], tmp_path)
    assert 1 == result.returncode


def test_metric_name_extraction_ignores_functions_labels_and_numbers() -> None:
    """Only selected metric names come out of an expression."""
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{x="y"}[5m]))) '
        "/ on (route) group_left b:rec:rate5m * 1e6 > bool 2"
    )
    assert {"a_bucket", "b:rec:rate5m"} == metric_names(expr)


async def test_dashboard_names_only_metrics_that_exist(gateway_metric_names: set[str]) -> None:
    """Every metric a panel or variable reads is exposed by the gateway or recorded by a rule."""
    document = dashboard()
    known = gateway_metric_names | recorded_names()
    exprs = [expr for _, expr in panel_queries(document)] + variable_queries(document)
    used = set().union(*(metric_names(concrete(expr)) for expr in exprs))
    assert set() == used - known
    assert {"gateway_requests_total", "gateway_build_info"} <= used


async def test_rules_name_only_metrics_that_exist(gateway_metric_names: set[str]) -> None:
    """Every metric the alert and recording rules read is exposed, recorded or `up`."""
    known = gateway_metric_names | recorded_names()
    exprs = [rule["expr"] for name in ("gateway-recording.yml", "gateway-alerts.yml")
             for rule in rules(name)]  # fmt: skip
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert set() == used - known
