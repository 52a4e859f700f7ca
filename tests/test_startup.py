"""`prepare()`: what `serve` would refuse, refused first; what it would run, described."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.startup import prepare

BAD_REDIS_URLS = [
    ("http://localhost:6379", "must start with redis://, rediss:// or unix://"),
    ("redis://localhost:abc/0", "Port could not be cast to integer value as 'abc'"),
    ("redis://localhost:6379/x", "the database must be a number, not 'x'"),
    ("unix:///run/redis.sock?db=two", "the database must be a number, not 'two'"),
    ("rediss://localhost:99999", "Port out of range 0-65535"),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No GATEWAY_* or OTEL_* variable of the outer environment leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith(("GATEWAY_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("url", "reason"), BAD_REDIS_URLS)
def test_a_redis_url_the_client_cannot_use_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    """A Redis URL the client would choke on is one ConfigError naming the setting."""
    monkeypatch.setenv("GATEWAY_REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        prepare(env_file=None)
    assert f"GATEWAY_REDIS_URL: {reason} (got {url!r})" == str(caught.value)


def test_a_unix_socket_is_no_cluster_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_REDIS_CLUSTER with a unix:// URL is refused before the cluster client sees it."""
    monkeypatch.setenv("GATEWAY_REDIS_URL", "unix:///run/redis.sock")
    monkeypatch.setenv("GATEWAY_REDIS_CLUSTER", "true")
    with pytest.raises(ConfigError, match="a Redis Cluster is reached with redis:// or rediss://"):
        prepare(env_file=None)


def test_a_bad_redis_url_never_shows_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refused URL is echoed with its password masked."""
    monkeypatch.setenv("GATEWAY_REDIS_URL", "http://app:hunter2@redis:6379")
    with pytest.raises(ConfigError) as caught:
        prepare(env_file=None)
    assert "(got 'http://app:***@redis:6379')" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_typo_in_a_setting_name_warns_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Unknown GATEWAY_* names, from the environment or .env, warn; near ones get a hint."""
    monkeypatch.setenv("GATEWAY_REDIS_ULR", "redis://localhost")
    env_file = tmp_path / ".env"
    env_file.write_text("GATEWAY_LOG_LEVL=debug\nGATEWAY_SOMETHING_ELSE=1\n")
    assert (
        "GATEWAY_LOG_LEVL is not a setting: did you mean GATEWAY_LOG_LEVEL?",
        "GATEWAY_REDIS_ULR is not a setting: did you mean GATEWAY_REDIS_URL?",
        "GATEWAY_SOMETHING_ELSE is not a setting (ignored)",
    ) == prepare(env_file=env_file).warnings


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "headroom: 0.05\n"])
def test_a_limits_file_that_limits_nothing_means_pass_through(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str
) -> None:
    """An empty limits file (or one with no group and no endpoint limit) is no limiter."""
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    monkeypatch.setenv("GATEWAY_LIMITS_FILE", str(path))
    startup = prepare(env_file=None)
    assert (None, f"{path} sets no limits") == (startup.limits, startup.pass_through_reason)


def test_an_endpoint_limit_alone_runs_a_limiter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A file with only count_tokens' own RPM still limits: a limiter runs."""
    path = tmp_path / "limits.yaml"
    path.write_text("count_tokens_requests_per_minute: 100\n")
    monkeypatch.setenv("GATEWAY_LIMITS_FILE", str(path))
    startup = prepare(env_file=None)
    assert startup.limits is not None
    assert (100, None) == (
        startup.limits.count_tokens_requests_per_minute,
        startup.pass_through_reason,
    )


def test_a_limit_of_zero_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A limit that can admit nothing is valid but gets a warning saying what it does."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "groups:\n  - name: opus\n    models: ['claude-opus-*']\n    output_tokens_per_minute: 0\n"
        "batch_requests_per_minute: 0\n"
    )
    monkeypatch.setenv("GATEWAY_LIMITS_FILE", str(path))
    assert (
        "groups[0] (opus): output_tokens_per_minute is 0: every request for claude-opus-* "
        "is refused (413)",
        "batch_requests_per_minute is 0: every batches call is refused (413)",
    ) == prepare(env_file=None).warnings


def test_learning_without_a_file_runs_a_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_LEARN_LIMITS without a file learns per model: a limiter with no groups."""
    monkeypatch.setenv("GATEWAY_LEARN_LIMITS", "true")
    startup = prepare(env_file=None)
    assert startup.limits is not None
    assert ((), None) == (startup.limits.groups, startup.pass_through_reason)


def test_an_endpoint_without_the_otel_extra_is_one_warning_and_tracing_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set but OpenTelemetry not installed: the gateway starts,
    untraced, with one warning saying how to install it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")
    monkeypatch.setattr("gateway.startup.otel_installed", lambda: False)
    startup = prepare(env_file=None)
    assert (
        (None, "the otel extra is not installed"),
        (
            "an OTLP endpoint is set (http://otel:4318/v1/traces) but the otel extra is not "
            "installed (pip install 'claude-gateway[otel]'): traces are off",
        ),
    ) == ((startup.tracing.endpoint, startup.tracing.reason), startup.warnings)


def test_an_endpoint_with_the_extra_switches_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the extra installed (as in the dev environment), the endpoint is the one used."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://otel:4318/v1/traces")
    startup = prepare(env_file=None)
    assert ("http://otel:4318/v1/traces", ()) == (startup.tracing.endpoint, startup.warnings)


LIMITED = (
    "groups:\n  - name: sonnet\n    models: ['claude-sonnet-*']\n    requests_per_minute: 30\n"
)


def limits_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point GATEWAY_LIMITS_FILE at a file that limits Sonnet to 30 RPM."""
    path = tmp_path / "limits.yaml"
    path.write_text(LIMITED)
    monkeypatch.setenv("GATEWAY_LIMITS_FILE", str(path))


@pytest.mark.parametrize("learning", [False, True])
def test_several_workers_refuse_undivided_in_process_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, learning: bool
) -> None:
    """Each worker would enforce every limit in process: one line naming both ways out.
    Learned limits count as limits."""
    if learning:
        monkeypatch.setenv("GATEWAY_LEARN_LIMITS", "true")
    else:
        limits_file(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_WORKERS", "3")
    with pytest.raises(ConfigError) as caught:
        prepare(env_file=None)
    assert (
        "GATEWAY_WORKERS=3 with in-process limits: each worker would enforce every limit on "
        "its own (3x in total); set GATEWAY_REDIS_URL to share one budget, or "
        "GATEWAY_WORKER_LIMITS=divide to give each worker 1/3 of every limit"
    ) == str(caught.value)


def test_divided_limits_give_each_worker_its_share(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """GATEWAY_WORKER_LIMITS=divide: each of 4 workers enforces a quarter of each limit."""
    limits_file(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_WORKERS", "4")
    monkeypatch.setenv("GATEWAY_WORKER_LIMITS", "divide")
    startup = prepare(env_file=None)
    assert (0.25, ()) == (startup.limit_share, startup.warnings)


def test_workers_on_redis_share_its_limits_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With Redis every worker draws on the same buckets: nothing to divide, and a
    GATEWAY_WORKER_LIMITS=divide left set is a warning, not a division."""
    limits_file(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_WORKERS", "2")
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("GATEWAY_WORKER_LIMITS", "divide")
    startup = prepare(env_file=None)
    assert (
        1.0,
        (
            "GATEWAY_WORKER_LIMITS=divide is ignored: the workers share the limits in "
            "GATEWAY_REDIS_URL",
        ),
    ) == (startup.limit_share, startup.warnings)


def test_workers_without_limits_need_no_division(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a limits file nothing is limited, so several in-process workers are fine."""
    monkeypatch.setenv("GATEWAY_WORKERS", "2")
    startup = prepare(env_file=None)
    assert (None, 1.0) == (startup.limits, startup.limit_share)


def test_one_worker_ignores_the_division(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A single process enforces every limit whole, whatever GATEWAY_WORKER_LIMITS says."""
    limits_file(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_WORKER_LIMITS", "divide")
    assert 1.0 == prepare(env_file=None).limit_share


def test_the_workers_flag_overrides_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--workers` (prepare's `workers`) wins over GATEWAY_WORKERS, and is checked alike."""
    limits_file(monkeypatch, tmp_path)
    monkeypatch.setenv("GATEWAY_WORKERS", "1")
    with pytest.raises(ConfigError, match=r"^GATEWAY_WORKERS=2 with in-process limits"):
        prepare(env_file=None, workers=2)


def test_several_workers_cannot_share_port_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Port 0 would give each worker its own free port: refused."""
    monkeypatch.setenv("GATEWAY_WORKERS", "2")
    monkeypatch.setenv("GATEWAY_PORT", "0")
    with pytest.raises(ConfigError) as caught:
        prepare(env_file=None)
    assert (
        "GATEWAY_PORT: 0 (any free port) cannot be shared by GATEWAY_WORKERS=2 workers: "
        "choose a port"
    ) == str(caught.value)
