"""The access line: the chain's line, byte for byte but the timestamp, without the chain."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import access_line
from gateway.access_line import _ms, log_access, log_access_generic
from gateway.logs import REDACTED, JsonLines, configure_logging
from gateway.record import RequestRecord

STAMP = re.compile(r'"timestamp": "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?Z)"')
SECRETS = [
    "sk-ant-api03-abcDEF_123",
    "cgw_0123456789ab_Zx-9_aBcDeF",
    "Bearer abc.def",
    "x-api-key: k3y",
    "Authorization=tok",
    "https://user:pa55@proxy.example",
]


def messages_call(**changes: object) -> RequestRecord:
    """A finished streamed Messages call, as the middleware hands it over."""
    record = RequestRecord("gw_0123456789abcdef01234567", 1000.0, "POST", "/v1/messages")
    record.route, record.model, record.group = "/v1/messages", "claude-sonnet-4-6", "sonnet"
    record.stream, record.status, record.outcome, record.bytes_out = True, 200, "ok", 2048
    record.upstream_request_id = "req_011CSHbDBfjQ7bZeXqQwRrT2"
    record.first_byte_at, record.ended_at = 1000.25, 1001.5
    for name, value in changes.items():
        setattr(record, name, value)
    return record


@pytest.fixture
def out() -> io.StringIO:
    """JSON logs at info, as the server writes them, into a string."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    return stream


@pytest.fixture
def chain_calls(monkeypatch: pytest.MonkeyPatch) -> list[RequestRecord]:
    """The records `log_access` leaves to the chain (which still writes their lines)."""
    calls: list[RequestRecord] = []

    def spy(record: RequestRecord) -> None:
        calls.append(record)
        log_access_generic(record)

    monkeypatch.setattr(access_line, "log_access_generic", spy)
    return calls


def written_then_chain(record: RequestRecord, out: io.StringIO) -> tuple[str, str]:
    """The line `log_access` writes for `record`, then the chain's, timestamps checked for
    TimeStamper's format and blanked."""
    log_access(record)
    log_access_generic(record)
    lines = out.getvalue().splitlines(keepends=True)[-2:]
    assert all(STAMP.search(line) for line in lines), lines
    written, chain = (STAMP.sub('"timestamp": "T"', line) for line in lines)
    return written, chain


@pytest.mark.parametrize(
    ("changes", "context"),
    [
        ({}, {"request_id": "gw_0123456789abcdef01234567"}),
        (
            {"model": None, "first_byte_at": None, "upstream_request_id": None, "queue_wait": 0.5},
            {"request_id": "gw_0123456789abcdef01234567"},
        ),
        (
            {"route": "bad_request", "status": 408, "outcome": "client_timeout"}
            | {"error_kind": "header_timeout", "tenant": "search", "method": "-", "path": "-"},
            {},
        ),
        ({"path": '/v1/messages?beta=tr\u00fce\n"x"'}, {"trace_id": "a" * 32, "span_id": "b" * 16}),
    ],
    ids=["plain", "nones-and-queue", "error-and-tenant", "escapes-and-trace"],
)
def test_the_line_is_the_chains_without_the_chain(
    out: io.StringIO,
    chain_calls: list[RequestRecord],
    changes: dict[str, object],
    context: dict[str, str],
) -> None:
    """Optional fields present or not, the log context bound or not, the line written is the
    chain's line for the same record, same bytes but the timestamp, and the chain ran not."""
    with structlog.contextvars.bound_contextvars(**context):
        written, chain = written_then_chain(messages_call(**changes), out)
    assert chain == written
    assert json.loads(chain) == json.loads(written)
    assert [] == chain_calls


def test_a_workers_number_goes_on_the_line_as_the_chain_puts_it(
    chain_calls: list[RequestRecord],
) -> None:
    """configure_logging's `fields` (a worker's number) follow the context, as in the chain."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, fields={"worker": 2})
    with structlog.contextvars.bound_contextvars(request_id="gw_1"):
        written, chain = written_then_chain(messages_call(), stream)
    assert (chain, 2, []) == (written, json.loads(written)["worker"], chain_calls)


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    ("field", "key"),
    [
        ("path", "path"),
        ("model", "model"),
        ("method", "method"),
        ("upstream_request_id", "upstream_request_id"),
        ("group", "model_group"),
        ("tenant", "tenant"),
    ],
)
def test_a_secret_in_a_value_from_outside_is_masked_by_the_chain(
    out: io.StringIO, chain_calls: list[RequestRecord], field: str, key: str, secret: str
) -> None:
    """A credential in the client's path, model or method, the API's request id or a limits
    file's name sends the line through the chain, which masks it."""
    record = messages_call(**{field: f"/v1/{secret}/x"})
    written, chain = written_then_chain(record, out)
    assert (chain, [record]) == (written, chain_calls)
    assert REDACTED in json.loads(written)[key]
    assert secret not in written


@pytest.mark.parametrize(
    "context",
    [
        {"request_id": "gw_1", "path": "/bound"},  # a key the line has: the line's value wins
        {"request_id": "gw_1", "token": "s3cret"},  # a secret-named key: masked whole
        {"request_id": "gw_1", "attempt": 3},  # not a str
        {"request_id": "sk-ant-api03-leaked"},  # a secret in a value
        {"level": "x"},  # a key the chain sets
    ],
)
def test_an_unusual_log_context_is_left_to_the_chain(
    out: io.StringIO, chain_calls: list[RequestRecord], context: dict[str, object]
) -> None:
    """Key precedence, masking and rendering of anything but a plain string in the context
    are the chain's: such a line is the chain's."""
    record = messages_call()
    with structlog.contextvars.bound_contextvars(**context):
        written, chain = written_then_chain(record, out)
    assert (chain, [record]) == (written, chain_calls)
    assert "sk-ant-api03-leaked" not in written
    assert "s3cret" not in written


@pytest.mark.parametrize("level", ["warning", "error"])
def test_above_info_no_line_and_no_chain(chain_calls: list[RequestRecord], level: str) -> None:
    """At warning (and above) the line is skipped before anything is rendered."""
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    log_access(messages_call())
    assert ("", []) == (stream.getvalue(), chain_calls)


def test_the_console_format_is_the_chains(chain_calls: list[RequestRecord]) -> None:
    """GATEWAY_LOG_FORMAT=console keeps the chain, rendered for a terminal."""
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    record = messages_call()
    log_access(record)
    assert "request" in stream.getvalue()
    assert not stream.getvalue().startswith("{")
    assert [record] == chain_calls


def test_a_test_capturing_logs_sees_the_access_line(out: io.StringIO) -> None:
    """structlog configured by anyone but configure_logging (capture_logs) gets the event."""
    with structlog.testing.capture_logs() as captured:
        log_access(messages_call())
    assert [("request", "/v1/messages")] == [(e["event"], e["path"]) for e in captured]
    assert "" == out.getvalue()


def test_a_successful_ops_call_has_no_line(out: io.StringIO) -> None:
    """/healthz, /readyz and /metrics answered below 400 write nothing; a failed one does."""
    log_access(messages_call(route="ops", status=200, path="/healthz"))
    log_access(messages_call(route="ops", status=503, path="/readyz"))
    assert ["/readyz"] == [json.loads(line)["path"] for line in out.getvalue().splitlines()]


def test_a_cached_configuration_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `cache=True` (the server) the output is kept, as structlog's loggers keep their
    chain; without it every line looks again."""
    monkeypatch.setattr(access_line._output, "kept", None)
    first, second, third = io.StringIO(), io.StringIO(), io.StringIO()
    structlog.configure(processors=[JsonLines(first, logging.INFO, {})])
    log_access(messages_call())
    structlog.configure(processors=[JsonLines(second, logging.INFO, {}, cache=True)])
    log_access(messages_call())
    structlog.configure(processors=[JsonLines(third, logging.INFO, {})])
    log_access(messages_call())
    assert [1, 2, 0] == [len(s.getvalue().splitlines()) for s in (first, second, third)]


@pytest.mark.parametrize(
    "ns",
    [
        1_764_900_000_123_456_789,  # a fraction
        1_764_900_000_000_000_999,  # a whole second: isoformat() leaves the fraction out
        1_764_900_000_000_001_000,  # one microsecond
        1_767_225_599_999_999_999,  # the last microsecond of a year
    ],
)
def test_the_timestamp_is_timestampers(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    """TimeStamper(fmt="iso", utc=True)'s text for the same instant, the date and time kept
    per second only while the second lasts."""
    stream = io.StringIO()
    lines = JsonLines(stream, logging.INFO, {})
    instants = [ns - 1_000_000_000, ns, ns]  # a second before, then twice in this one
    for instant in instants:
        monkeypatch.setattr("gateway.logs.wall_time_ns", lambda instant=instant: instant)
        assert lines.write('{"event": "x"', "info", frozenset({"event"}), "")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    expected = [
        (epoch + timedelta(microseconds=instant // 1000)).isoformat().replace("+00:00", "Z")
        for instant in instants
    ]
    assert expected == [json.loads(line)["timestamp"] for line in stream.getvalue().splitlines()]


@settings(max_examples=2000)
@given(seconds=st.floats(0, 1e7) | st.integers(0, 10**9).map(lambda n: n / 10**6))
def test_milliseconds_are_the_chains_figure(seconds: float) -> None:
    """Durations in ms read as the chain's `round(seconds * 1000, 3)` renders them (halfway
    cases included), for anything up to 115 days."""
    assert repr(round(seconds * 1000, 3)) == _ms(seconds)


def _text() -> st.SearchStrategy[str]:
    """Any short text, now and then (1 in 8) with a credential inside."""
    secret = st.sampled_from([""] * 7 * len(SECRETS) + SECRETS)
    return st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), secret, st.text(max_size=8))


@st.composite
def _records(draw: st.DrawFn) -> RequestRecord:
    started = draw(st.floats(0, 1e6))
    record = RequestRecord("gw_x", started, draw(_text()), draw(_text()))
    record.route = draw(st.sampled_from(["/v1/messages", "/v1/other", "unmatched", "admin"]))
    record.outcome = draw(st.sampled_from(["ok", "queued_ok", "rejected", "client_timeout"]))
    record.error_kind = draw(st.sampled_from([None, "header_timeout", "malformed_headers"]))
    record.model, record.upstream_request_id, record.tenant = (
        draw(st.none() | _text()) for _ in range(3)
    )
    record.group, record.stream = draw(_text()), draw(st.booleans())
    record.status, record.bytes_out = draw(st.integers(100, 599)), draw(st.integers(0, 2**40))
    record.ended_at = started + draw(st.floats(0, 1e5))
    record.first_byte_at = draw(st.none() | st.floats(started, record.ended_at))
    record.queue_wait = draw(st.just(0.0) | st.floats(0, 1e4))
    return record


@settings(max_examples=300, deadline=None)
@given(record=_records(), request_id=_text())
def test_any_record_gets_the_chains_line(record: RequestRecord, request_id: str) -> None:
    """Whatever the client, the API and the limits file put in a record, and whatever the
    request id, what is written is what the chain writes: the same line, secrets masked."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        written, chain = written_then_chain(record, stream)
    assert chain == written
