"""The `litellm` target: LiteLLM's proxy server in front of the same mock, for a side-by-side.

What it is given (README "What runs where"): the bench's model name routed to the mock as
an Anthropic deployment, never-hit rpm/tpm limits on that deployment, and its router's
usage-based-routing-v2 counting them in the bench's redis-server, as gateway+redis counts
its never-hit limits there; LiteLLM's production logging advice (`LITELLM_LOG=ERROR`, JSON
logs); one uvicorn worker; the bench's key as its master key; no database, no callbacks.
The config, environment and command line are pure functions, so that a test can read them
without an install; `Launcher.litellm` (targets.py) starts the server and `check_forwarding`
makes sure that what is measured is a proxied call: a 200 for which the mock counted one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from bench.litellm_env import LitellmUnavailableError, pinned_version
from bench.load import BODY, HEADERS, MODEL, PATH
from bench.procs import NotReadyError

NEVER_HIT_RPM = 100_000_000  # as NEVER_HIT_LIMITS (targets.py): far above any bench load
NEVER_HIT_TPM = 100_000_000_000
UPSTREAM_KEY = "sk-ant-bench"  # the mock checks no key; LiteLLM insists on having one
MASTER_KEY = HEADERS["x-api-key"]
"""LiteLLM refuses to start without a master key (anything but its docs' example key), so
the key every bench request carries in `x-api-key` is it: each request is authenticated
against it, no database behind it."""
HEALTH_PATH = "/health/liveliness"  # answers 200 once the app is up, with no upstream call
START_TIMEOUT = 120.0  # seconds: LiteLLM imports for 10-30 s on this VM before it listens
PRODUCTION_LOGS = {"LITELLM_LOG": "ERROR", "JSON_LOGS": "True"}
"""LiteLLM's "Best Practices for Production": `LITELLM_LOG=ERROR` turns off the info logs
(uvicorn's access line included: its level follows LITELLM_LOG), JSON log lines."""
OFFLINE = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the packaged cost map, not a fetch at start
    "LITELLM_MODE": "PRODUCTION",  # no .env loading from the working directory
    "LITELLM_TELEMETRY_DISABLED": "True",  # its telemetry's veto
    "NO_DOCS": "True",
    "NO_REDOC": "True",
}


def config_yaml(upstream_url: str, redis_port: int | None, *, model: str = MODEL) -> str:
    """LiteLLM's config: `model` goes to the mock (`anthropic/<model>` at `upstream_url`)
    with never-hit rpm/tpm, enforced by usage-based-routing-v2 through the redis-server on
    `redis_port` (None: no Redis, the router's in-memory counters). JSON is YAML, and
    needs no YAML writer in the project's venv."""
    deployment = {
        "model_name": model,
        "litellm_params": {
            "model": f"anthropic/{model}",
            "api_base": upstream_url,
            "api_key": UPSTREAM_KEY,
            "rpm": NEVER_HIT_RPM,
            "tpm": NEVER_HIT_TPM,
        },
    }
    router: dict[str, object] = {
        "routing_strategy": "usage-based-routing-v2",
        "enable_pre_call_checks": True,
        "num_retries": 0,  # as the gateway: a failure is the client's to retry
    }
    if redis_port is not None:
        router |= {"redis_host": "127.0.0.1", "redis_port": redis_port}
    config = {
        "model_list": [deployment],
        "router_settings": router,
        "litellm_settings": {
            "set_verbose": False,
            "json_logs": True,
            "request_timeout": 600,
        },
        "general_settings": {
            "master_key": MASTER_KEY,
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }
    return _to_yaml(config)


def _to_yaml(value: object, indent: int = 0) -> str:
    """A small block-style YAML writer for dicts, lists and scalars (the config above)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list):
                lines.append(f"{pad}{key}:")
                lines.append(_to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            block = _to_yaml(item, indent + 1).lstrip()
            lines.append(f"{pad}- {block}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return "\n".join(lines)


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """LiteLLM's environment: `base` without anything that would put the project's venv,
    a PYTHONPATH or the caller's LiteLLM settings in front of it, plus production logging
    and the offline switches."""
    dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "REDIS_", "LITELLM_", "DATABASE_URL")
    env = {k: v for k, v in base.items() if not k.startswith(dropped)}
    return env | OFFLINE | PRODUCTION_LOGS


def server_argv(cli: Path, config: Path, port: int) -> list[str]:
    """`litellm --config ... --host 127.0.0.1 --port N --num_workers 1` (uvicorn)."""
    return [
        str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip


def describe() -> str:
    """How the `litellm` row's server is configured, for the report's notes."""
    logs = ", ".join(f"{key}={value}" for key, value in PRODUCTION_LOGS.items())
    return (
        f"- litellm: {row_label()} from its own venv (bench/litellm-requirements.txt), "
        "`litellm --num_workers 1` (uvicorn) pinned like the gateways; the bench's model "
        f"routed to the mock as anthropic/{MODEL} with never-hit rpm {NEVER_HIT_RPM:,} and tpm "
        f"{NEVER_HIT_TPM:,}, counted by usage-based-routing-v2 (pre-call checks on, no "
        f"retries) in gateway+redis's redis-server; {logs} (LiteLLM's production advice: no "
        "access line); the bench's x-api-key as master key; no database, no callbacks"
    )


def label(version: str) -> str:
    return f"LiteLLM proxy (PyPI {version})"


def environ() -> dict[str, str]:
    return server_env(os.environ)


def row_label() -> str:
    """The row's name in the report: the version the bench installs (it is pinned)."""
    try:
        return label(pinned_version())
    except LitellmUnavailableError:
        return "LiteLLM proxy"


async def check_forwarding(server_url: str, upstream_url: str) -> None:
    """One bench request through LiteLLM: NotReadyError unless it answers 200 and the mock
    counted exactly one more request (a proxy answering from elsewhere measures nothing)."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            before = await _mock_requests(session, upstream_url)
            async with session.post(server_url + PATH, data=BODY, headers=HEADERS) as response:
                status, text = response.status, await response.text()
            after = await _mock_requests(session, upstream_url)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise NotReadyError(f"litellm: probe request failed ({type(exc).__name__})") from exc
    if status != 200:
        raise NotReadyError(f"litellm: POST {PATH} answered {status}: {text[:200]}")
    if after - before != 1:
        raise NotReadyError(f"litellm: the mock counted {after - before} requests for one call")


async def _mock_requests(session: aiohttp.ClientSession, upstream_url: str) -> int:
    async with session.get(upstream_url + "/_stats") as response:
        stats = await response.json()
    return int(stats["requests"])
