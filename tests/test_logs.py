"""Logs: never a credential; secrets redacted; console and JSON formats."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import aiohttp
import anthropic
import pytest
import structlog
from anthropic.types import MessageParam
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter

from gateway.logs import (
    MAYBE_SECRET,
    REDACTED,
    JsonLines,
    configure_logging,
    get_logger,
    json_lines,
    maybe_secret,
    redact_secrets,
)
from tests.conftest import TEST_KEY, GatewayFactory, secrets_emitted
from tests.support.fake_upstream import FakeUpstream, Reply, Stream

MODEL = "claude-sonnet-4-6"
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]


async def test_api_keys_never_reach_any_log_line(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """After success, errors and streams with both credential headers, no log line has the key."""
    gateway = await make_gateway(log_level="debug")
    fake_upstream.script(Reply(401), Reply(529), Stream())
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        for _ in range(3):
            with contextlib.suppress(anthropic.APIStatusError):
                await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gateway.url + "/v1/messages",
            data=b"{broken",
            headers={"authorization": f"Bearer {TEST_KEY}"},
        ) as response,
    ):
        await response.read()
    get_logger("test").error("oops", detail=f"header dump x-api-key: {TEST_KEY}")
    captured = gateway.logs.getvalue()
    assert 5 <= len(gateway.log_lines())
    assert TEST_KEY not in captured
    assert "TESTKEY" not in captured


def test_redaction_masks_keys_tokens_and_url_credentials() -> None:
    """The redaction processor masks each credential shape, and secret-named fields whole."""
    event = {
        "a": "key sk-ant-api03-abcDEF_123 here",
        "b": "Authorization: Bearer abc.def-ghi",
        "c": "redis://user:pa55@redis:6379/0",
        "d": "upstream https://gw:pr0xy-pa55@proxy.example/anthropic failed",
        "e": "https://ghp_token123@host/x and rediss://:pw@r:1",
        "f": "already masked: https://gw:***@proxy.example",
        "x-api-key": "anything",
    }
    redacted = redact_secrets(None, "info", event)
    assert {
        "a": f"key {REDACTED} here",
        "b": f"Authorization: {REDACTED}",
        "c": f"redis://user:{REDACTED}@redis:6379/0",
        "d": f"upstream https://gw:{REDACTED}@proxy.example/anthropic failed",
        "e": f"https://{REDACTED}@host/x and rediss://:{REDACTED}@r:1",
        "f": "already masked: https://gw:***@proxy.example",
        "x-api-key": REDACTED,
    } == redacted


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"Password": "hunter2", "n": 1}, {"Password": REDACTED, "n": 1}),
        ({"detail": "BEARER abc.def"}, {"detail": f"BEARER {REDACTED}"}),
        ({"path": "/v1/messages", "status": 200}, {"path": "/v1/messages", "status": 200}),
        (
            {"detail": "key cgw_0123456789ab_Zx-9_aBcDeF left"},
            {"detail": f"key {REDACTED} left"},
        ),
    ],
)
def test_redaction_fast_path_still_catches_lone_secrets(
    event: dict[str, object], expected: dict[str, object]
) -> None:
    """The whole-event pre-check lets through only events with no secret-named key and no
    secret marker: a single such key or value anywhere still gets masked."""
    assert expected == redact_secrets(None, "info", dict(event))


_PIECES = [
    *MAYBE_SECRET.pattern.split("|"),
    "://user@",
    "://a b@",
    "\u017fk-ant-",  # a long s, which the regex takes for an s
    "x-api-\u212aey",  # a Kelvin sign, for a k
    "AUTHOR\u0130ZATION",  # a dotted capital I
]


@settings(max_examples=1000)
@given(
    st.lists(
        st.sampled_from(_PIECES).map(lambda piece: piece.swapcase())
        | st.sampled_from(_PIECES)
        | st.text(max_size=3),
        max_size=6,
    ).map("".join)
)
def test_the_quick_secret_check_answers_as_the_regex(text: str) -> None:
    """`maybe_secret` (substring tests on ASCII text) finds what MAYBE_SECRET finds, in any
    case, and only that; beyond ASCII (a Kelvin sign for `k`) the regex answers itself."""
    assert bool(MAYBE_SECRET.search(text)) == maybe_secret(text)


def test_json_lines_is_the_json_chains_end_only() -> None:
    """The JSON chain's end is found while configure_logging's JSON chain runs; not with the
    console format, nor under a test's capture_logs()."""
    configure_logging("info", "json", stream=io.StringIO())
    found = json_lines()
    with structlog.testing.capture_logs():
        captured = json_lines()
    configure_logging("info", "console", stream=io.StringIO())
    assert (True, None, None) == (isinstance(found, JsonLines), captured, json_lines())


def test_console_format_renders_plain_text() -> None:
    """GATEWAY_LOG_FORMAT=console writes human-readable lines instead of JSON."""
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    get_logger("test").info("hello", n=1)
    line = stream.getvalue().strip()
    assert "hello" in line
    assert not line.startswith("{")


def test_json_format_renders_one_object_per_line() -> None:
    """The default JSON format writes one parseable object per event."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    get_logger("test").info("hello", n=1)
    document = json.loads(stream.getvalue())
    assert ("hello", 1, "info", "test") == (
        document["event"],
        document["n"],
        document["level"],
        document["component"],
    )


def test_stdlib_records_are_redacted_too() -> None:
    """A record from aiohttp or asyncio (stdlib logging) passes the same redaction: a key in
    its message or its traceback never reaches the output."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    secret = "sk-ant-api03-STDLIB-secret-0123456789"
    try:
        raise ValueError(f"bad header x-api-key: {secret}")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request %s", secret)
    logging.getLogger("asyncio").warning("Authorization: Bearer %s", secret)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert ["aiohttp.server", "asyncio"] == [line["logger"] for line in lines]
    assert secret not in out.getvalue()
    assert REDACTED in lines[0]["event"]
    assert REDACTED in lines[0]["exception"]


class _Writes(io.StringIO):
    """A stream that records each `write` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_a_workers_lines_carry_its_number_each_in_one_write() -> None:
    """`fields` go on every line (an event's own value wins), and each line, newline included,
    is one write: the lines of workers sharing a stdout cannot interleave."""
    stream = _Writes()
    configure_logging("info", "json", stream=stream, fields={"worker": 1})
    get_logger("test").info("hello")
    get_logger("test").info("listening", worker=7)
    assert [(1, "hello"), (7, "listening")] == [
        (line["worker"], line["event"]) for line in map(json.loads, stream.calls)
    ]
    assert [True, True] == [call.endswith("}\n") for call in stream.calls]


def test_the_suites_secret_grep_finds_unmasked_keys_in_logs_and_metrics() -> None:
    """The check every in-process gateway of the suite passes when its test ends
    (`make_gateway`): it would see a key in a log line or a metric label."""
    registry = CollectorRegistry()
    assert secrets_emitted('{"event": "request", "key": "[REDACTED]"}\n', registry) == []
    leaked = '{"detail": "sk-ant-api03-abc and cgw_0123456789ab_Zz9-x"}\n'
    assert secrets_emitted(leaked, registry) == ["cgw_0123456789ab_Z", "sk-ant-a"]
    Counter("leak", "a metric", ["key"], registry=registry).labels("sk-ant-api03-zz").inc()
    assert secrets_emitted("", registry) == ["sk-ant-a"]
