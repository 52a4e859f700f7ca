"""Settings from `GATEWAY_*` environment variables (and an optional `.env`), validated at start.

This is the only module that reads the environment. `Settings` is frozen; the rest of the
gateway receives the section it needs as an argument. A bad value becomes one
`ConfigError` line naming the setting, which the CLI prints before exiting with code 2.
Tracing is switched by the standard `OTEL_*` variables instead (`tracing_switch`), read from
the process environment as the OpenTelemetry SDK reads the rest of them.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GATEWAY_"
MIB = 1024 * 1024


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it and is safe to print."""


class Settings(BaseSettings):
    """Everything the gateway reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    upstream_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://api.anthropic.com"), description="Base URL of the Anthropic API."
    )
    redis_url: SecretStr | None = Field(
        None, description="Redis URL for shared limits; unset = in-process backend."
    )
    redis_cluster: bool = Field(
        False, description="Treat GATEWAY_REDIS_URL as a seed node of a Redis Cluster."
    )
    redis_client: Literal["pipelined", "redis-py"] = Field(
        "pipelined",
        description="pipelined: the gateway's own pipelined client for redis:// and unix:// "
        "(redis-py for Cluster and rediss://); redis-py: redis-py for every URL.",
    )
    redis_timeout_seconds: float = Field(
        0.5, gt=0, description="Bound on connecting to Redis and on every Redis call."
    )
    limits_file: Path | None = Field(None, description="YAML limits file; unset = no limits.")
    upstream_api_key: SecretStr | None = Field(
        None,
        description="The Anthropic key the gateway sends upstream; set, clients authenticate "
        "with gateway keys of the limits file's tenants and never see it.",
    )
    upstream_api_key_file: Path | None = Field(
        None, description="A file holding GATEWAY_UPSTREAM_API_KEY (a mounted secret)."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of /gateway/v1/status and /gateway/v1/reload; unset = "
        "those endpoints refuse every caller.",
    )
    learn_limits: bool = Field(
        False,
        description="Learn RPM/ITPM/OTPM from the API's -limit headers (every group; per model "
        "when there is no limits file).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    log_format: Literal["json", "console"] = Field("json")
    connect_timeout_seconds: float = Field(
        10.0, gt=0, description="Upper bound for opening a TCP+TLS connection upstream."
    )
    read_timeout_seconds: float = Field(
        600.0, gt=0, description="Longest silence allowed between upstream bytes."
    )
    max_body_bytes: int = Field(
        32 * MIB, gt=0, description="Largest buffered request body (Messages, count_tokens)."
    )
    max_upload_bytes: int = Field(
        512 * MIB, gt=0, description="Largest streamed request body (Files, Batches)."
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="How long in-flight requests may finish after SIGTERM."
    )
    shutdown_drain_seconds: float = Field(
        0.0, ge=0, description="After SIGTERM, keep accepting while /readyz fails, this long."
    )
    upstream_connection_limit: int = Field(
        0, ge=0, description="Max concurrent upstream connections (0 = unlimited)."
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto", description="auto = uvloop when installed."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Processes serving the port (SO_REUSEPORT), each with its own event loop; "
        "above 1, a supervisor process starts them and forwards SIGTERM/SIGINT.",
    )
    worker_limits: Literal["divide"] | None = Field(
        None,
        description="With several workers and in-process limits: divide = each worker enforces "
        "1/GATEWAY_WORKERS of every limit; unset = refuse to start (use GATEWAY_REDIS_URL).",
    )
    # Client connections (gateway/connections.py) ---------------------------------------
    client_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A request's line and headers must arrive within this (from the connection "
        "for the first request, from its first byte for later ones), else 408 and close.",
    )
    client_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest wait for the next bytes of a request body the gateway is reading, "
        "else 408 and close.",
    )
    keepalive_timeout_seconds: float = Field(
        75.0,
        gt=0,
        description="An idle keep-alive client connection closes after this; keep it above the "
        "load balancer's idle timeout (ALB 60 s; Google Cloud LB needs more than 600 s).",
    )
    max_connections: int = Field(
        10_000,
        ge=1,
        description="Open client connections at most; past it a new one gets 503 overloaded_error "
        "and is closed. Lowered at start to what the file-descriptor limit allows.",
    )
    # Upstream retries (docs/retries.md) ------------------------------------------------
    retry_max_attempts: int = Field(
        6, ge=1, le=10, description="Upstream attempts per request, the first included (1 = off)."
    )
    retry_client_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Attempts an SDK client makes on its own (max_retries + 1): the gateway "
        "keeps the client's retries until it has made that many, and they cost no budget.",
    )
    retry_base_seconds: float = Field(
        0.5, gt=0, description="Backoff before the first retry is uniform in [0, this]."
    )
    retry_cap_seconds: float = Field(
        8.0, gt=0, description="Upper bound of one jittered backoff delay."
    )
    retry_budget_seconds: float = Field(
        30.0, ge=0, description="Per request: no retry may start later than this after the first."
    )
    retry_budget_ratio: float = Field(
        0.2, ge=0, le=1, description="Retries may add at most this share of first attempts."
    )
    retry_budget_min_per_second: float = Field(
        2.0, ge=0, description="Retries per second allowed whatever the traffic (a floor)."
    )
    retry_budget_burst: float = Field(
        10.0, ge=1, description="Most retries the budget can save up."
    )
    retry_charge_rpm: bool = Field(
        True, description="Charge one RPM request per extra attempt the API answered."
    )
    retry_seed: int | None = Field(
        None, description="Seed for the backoff jitter (tests); unset = random."
    )

    @field_validator(
        "redis_url",
        "upstream_api_key",
        "admin_token",
        "limits_file",
        "upstream_api_key_file",
        "worker_limits",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`GATEWAY_X=` (empty) means the same as leaving GATEWAY_X unset."""
        return None if value == "" else value

    @property
    def upstream_base(self) -> str:
        """The upstream URL without a trailing slash, ready to prefix a path."""
        return str(self.upstream_url).rstrip("/")

    @property
    def upstream_shown(self) -> str:
        """`upstream_base` fit for a log line or a terminal: credentials masked."""
        return mask_url(self.upstream_base)


_SECRET_FIELDS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
_URL_FIELDS = frozenset({"redis_url"})
"""Secret settings shown with only their credentials masked (the rest are hidden whole)."""


def load_settings(env_file: Path | None = Path(".env")) -> Settings:
    """Read and validate the settings, raising `ConfigError` with one readable line."""
    try:
        return Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def probe_api_key() -> str | None:
    """`ANTHROPIC_API_KEY`, the key `check-config --probe` lists models with (the SDKs' own
    variable, so no key has to be typed on a command line)."""
    return os.environ.get("ANTHROPIC_API_KEY") or None


def environment_secret(variable: str) -> str | None:
    """A secret the limits file names by its environment variable (a named upstream key),
    stripped; None when unset or empty."""
    return os.environ.get(variable, "").strip() or None


def unknown_settings(env_file: Path | None = Path(".env")) -> list[str]:
    """A warning for each `GATEWAY_*` name in the environment or `env_file` that is no
    setting, naming the closest setting when one is near (a typo would otherwise be silently
    ignored, and the default used)."""
    names: Iterable[str] = os.environ
    if env_file is not None and env_file.is_file():
        names = [*names, *dotenv_values(env_file)]
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    warnings = []
    for name in sorted({name.upper() for name in names}):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f": did you mean {close[0]}?" if close else " (ignored)"
        warnings.append(f"{name} is not a setting{hint}")
    return warnings


def describe_validation_error(exc: ValidationError) -> str:
    """`GATEWAY_PORT: Input should be less than or equal to 65535 (got '70000')`, one per line.

    A value is echoed only with its credentials masked, and never for a secret setting."""
    lines = []
    for error in exc.errors(include_url=False):
        name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
        given = error.get("input")
        shown = ""
        field = str(error["loc"][0]) if error["loc"] else ""
        if isinstance(given, str) and field not in _SECRET_FIELDS:
            shown = f" (got {mask_url(given)!r})"
        lines.append(f"{name}: {error['msg']}{shown}")
    return "; ".join(lines)


def masked(settings: Settings) -> dict[str, str]:
    """The effective settings as strings with credentials hidden, for `check-config`."""
    shown: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr) and name not in _URL_FIELDS:
            text = "(set, hidden)"
        elif isinstance(value, SecretStr):
            text = mask_url(value.get_secret_value())
        elif value is None:
            text = "(unset)"
        else:
            text = mask_url(str(value))
        shown[ENV_PREFIX + name.upper()] = text
    return shown


def mask_url(url: str) -> str:
    """Hide the credentials of a URL: `redis://user:pw@host` -> `redis://user:***@host`.

    A lone user name (`https://token@host`) may be a token and is hidden whole. Everything
    up to the last `@` counts as credentials, so a password holding `/` or `@` is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    shown = f"{user}:***" if colon and "/" not in user else "***"
    return f"{scheme}://{shown}@{host}"


@dataclass(frozen=True, slots=True)
class TracingSwitch:
    """Whether the gateway exports traces, as the standard OpenTelemetry variables say."""

    endpoint: str | None
    """The OTLP/HTTP URL spans are posted to; None: tracing is off."""
    reason: str
    """Why tracing is off (or, when on, where spans go), for `check-config`."""
    sampler: str = "parentbased_always_on"
    """`OTEL_TRACES_SAMPLER[=OTEL_TRACES_SAMPLER_ARG]`, as the SDK will apply it."""


def tracing_switch(environ: Mapping[str, str] | None = None) -> TracingSwitch:
    """The rule: traces are on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true` or
    `OTEL_TRACES_EXPORTER=none`. Only OTLP over HTTP/protobuf is spoken: another exporter or
    protocol is a `ConfigError`, not traces silently lost."""
    env = os.environ if environ is None else environ
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip() or "parentbased_always_on"
    if arg := env.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
        sampler = f"{sampler}={arg}"
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingSwitch(None, "OTEL_SDK_DISABLED=true", sampler)
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if exporter == "none":
        return TracingSwitch(None, "OTEL_TRACES_EXPORTER=none", sampler)
    if exporter != "otlp":
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: only otlp or none is supported (got {exporter!r})"
        )
    endpoint = _traces_endpoint(env)
    if endpoint is None:
        return TracingSwitch(None, "no OTEL_EXPORTER_OTLP_ENDPOINT", sampler)
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise ConfigError(
                    f"{name}: only http/protobuf is supported (got {protocol!r}); "
                    "use the collector's OTLP/HTTP port (4318)"
                )
            break
    return TracingSwitch(endpoint, f"OTLP/HTTP to {mask_url(endpoint)}", sampler)


def _traces_endpoint(env: Mapping[str, str]) -> str | None:
    """The traces URL the SDK's exporter would use: the traces variable as is, or the base
    endpoint plus `/v1/traces`; a URL that is not http(s)://host is a `ConfigError`."""
    for name, path in (
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "/v1/traces"),
    ):
        url = env.get(name, "").strip()
        if not url:
            continue
        scheme, sep, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not rest.split("/")[0]:
            raise ConfigError(f"{name}: must be an http:// or https:// URL (got {mask_url(url)!r})")
        return url.removesuffix("/") + path if path else url
    return None
