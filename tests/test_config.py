"""Settings: environment parsing, readable errors, masking."""

from __future__ import annotations

import pytest

from gateway.config import (
    ConfigError,
    TracingSwitch,
    load_settings,
    mask_url,
    masked,
    tracing_switch,
)


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no GATEWAY_* variables the gateway listens on 8080 in front of the real API."""
    for name in ("GATEWAY_PORT", "GATEWAY_UPSTREAM_URL", "GATEWAY_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(env_file=None)
    assert (8080, "https://api.anthropic.com", None) == (
        settings.port,
        settings.upstream_base,
        settings.redis_url,
    )


def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value raises one readable line naming the variable and the value."""
    monkeypatch.setenv("GATEWAY_PORT", "70000")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert "GATEWAY_PORT: Input should be less than or equal to 65535 (got '70000')" == str(
        caught.value
    )


def test_bad_log_format_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only json and console are log formats."""
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="GATEWAY_LOG_FORMAT"):
        load_settings(env_file=None)


def test_one_worker_and_no_division_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_WORKERS is 1 and GATEWAY_WORKER_LIMITS unset (an empty value too)."""
    monkeypatch.delenv("GATEWAY_WORKERS", raising=False)
    monkeypatch.setenv("GATEWAY_WORKER_LIMITS", "")
    settings = load_settings(env_file=None)
    assert (1, None) == (settings.workers, settings.worker_limits)


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("GATEWAY_WORKERS", "0", "GATEWAY_WORKERS: Input should be greater than or equal to 1"),
        ("GATEWAY_WORKER_LIMITS", "share", "GATEWAY_WORKER_LIMITS: Input should be 'divide'"),
    ],
)
def test_worker_settings_are_validated(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, error: str
) -> None:
    """At least one worker; `divide` is the one way to divide limits."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert f"{error} (got '{value}')" == str(caught.value)


def test_redis_password_never_printed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid Redis URL is reported without echoing it (it may carry a password)."""
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://:hunter2@localhost")
    monkeypatch.setenv("GATEWAY_PORT", "-1")
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    assert "hunter2" not in str(caught.value)


def test_env_file_is_read(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values in a .env file apply when the environment has none."""
    monkeypatch.delenv("GATEWAY_PORT", raising=False)
    env_file = tmp_path / ".env"  # type: ignore[operator]
    env_file.write_text("GATEWAY_PORT=9191\n")
    assert 9191 == load_settings(env_file=env_file).port


def test_masked_hides_redis_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """check-config output shows the Redis user and host but not the password."""
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://app:s3cret@redis:6379/0")
    shown = masked(load_settings(env_file=None))
    assert "redis://app:***@redis:6379/0" == shown["GATEWAY_REDIS_URL"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:1", "redis://:***@h:1"),
        ("rediss://u:pw@h:1/2", "rediss://u:***@h:1/2"),
        ("https://gw:pa55@proxy.example/anthropic", "https://gw:***@proxy.example/anthropic"),
        ("https://ghp_token@proxy.example", "https://***@proxy.example"),
        ("redis://u:pa/ss@h:1", "redis://u:***@h:1"),
        ("https://api.anthropic.com", "https://api.anthropic.com"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    """Passwords (and lone user names, which may be tokens) in URLs are replaced by ***."""
    assert expected == mask_url(url)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, TracingSwitch(None, "no OTEL_EXPORTER_OTLP_ENDPOINT"), id="default-off"),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318/"},
            TracingSwitch("http://otel:4318/v1/traces", "OTLP/HTTP to http://otel:4318/v1/traces"),
            id="base-endpoint",
        ),
        pytest.param(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://api.honeycomb.io/v1/traces",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            },
            TracingSwitch(
                "https://api.honeycomb.io/v1/traces",
                "OTLP/HTTP to https://api.honeycomb.io/v1/traces",
                "parentbased_traceidratio=0.1",
            ),
            id="traces-endpoint-wins",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_SDK_DISABLED": "TRUE"},
            TracingSwitch(None, "OTEL_SDK_DISABLED=true"),
            id="sdk-disabled",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_TRACES_EXPORTER": "none"},
            TracingSwitch(None, "OTEL_TRACES_EXPORTER=none"),
            id="exporter-none",
        ),
        pytest.param(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:secret@otel:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            TracingSwitch(
                "http://u:secret@otel:4318/v1/traces",
                "OTLP/HTTP to http://u:***@otel:4318/v1/traces",
            ),
            id="masked",
        ),
    ],
)
def test_tracing_is_on_only_with_an_endpoint_and_not_disabled(
    env: dict[str, str], expected: TracingSwitch
) -> None:
    """The rule: an OTLP endpoint switches traces on; OTEL_SDK_DISABLED=true or
    OTEL_TRACES_EXPORTER=none switch them off; the traces endpoint beats the base one."""
    assert expected == tracing_switch(env)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
            "OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is supported (got 'grpc'); "
            "use the collector's OTLP/HTTP port (4318)",
            id="grpc",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT: must be an http:// or https:// URL (got 'otel:4318')",
            id="no-scheme",
        ),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "zipkin"},
            "OTEL_TRACES_EXPORTER: only otlp or none is supported (got 'zipkin')",
            id="zipkin",
        ),
    ],
)
def test_a_tracing_setup_the_gateway_cannot_honour_is_a_config_error(
    env: dict[str, str], message: str
) -> None:
    """Another protocol, exporter or a URL without a scheme is one ConfigError line, not
    spans silently lost."""
    with pytest.raises(ConfigError) as caught:
        tracing_switch(env)
    assert message == str(caught.value)
