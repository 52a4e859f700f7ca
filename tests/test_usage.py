"""The usage tap after a response (JSON and SSE), and what usage costs."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.limits import Cost
from gateway.usage import MessageFacts, Usage, UsageTap, json_body_usage


def sse(name: str, data: object) -> bytes:
    """One SSE frame with compact JSON data."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


START = sse(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "usage": {
                "input_tokens": 19,
                "cache_creation_input_tokens": 5,
                "cache_read_input_tokens": 100,
                "output_tokens": 2,
            }
        },
    },
)
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
DELTA_1 = sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 4}})
DELTA_2 = sse(
    "message_delta", {"type": "message_delta", "usage": {"input_tokens": 30, "output_tokens": 6}}
)
STOP = sse("message_stop", {"type": "message_stop"})
FINAL = Usage(30, 6, 5, 100)


def tap_of(
    chunks: list[bytes], *, stream: bool = True, encoding: str | None = None, facts: bool = False
) -> UsageTap:
    """A tap that has seen `chunks`."""
    tap = UsageTap(stream=stream, encoding=encoding, facts=facts)
    for chunk in chunks:
        tap(chunk)
    return tap


def test_stream_usage_last_delta_wins_and_cache_fields_survive() -> None:
    """message_start usage is replaced field by field by each cumulative message_delta."""
    assert FINAL == tap_of([START, PING, DELTA_1, PING, DELTA_2, STOP]).usage


def test_usage_split_across_chunk_boundaries_with_crlf() -> None:
    """Frames cut every 5 bytes, with CRLF line ends, give the same usage."""
    data = b"".join([START, PING, DELTA_1, DELTA_2, STOP]).replace(b"\n", b"\r\n")
    assert FINAL == tap_of([data[i : i + 5] for i in range(0, len(data), 5)]).usage


def test_error_event_is_noticed_and_usage_so_far_kept() -> None:
    """An error event marks the tap; usage reported before it stays."""
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n'
    tap = tap_of([START, DELTA_1, error])
    assert (True, Usage(19, 4, 5, 100)) == (tap.errored, tap.usage)


def test_stream_cut_mid_event_keeps_what_was_reported() -> None:
    """A stream cut inside the second delta reports the first delta's usage."""
    assert Usage(19, 4, 5, 100) == tap_of([START, DELTA_1, DELTA_2[:30]]).usage


def test_json_body_usage_and_garbage() -> None:
    """A JSON body's usage is read once complete; garbage and error bodies give None."""
    body = json.dumps({"type": "message", "usage": {"input_tokens": 7, "output_tokens": 3}})
    cut = len(body) // 2
    good = tap_of([body[:cut].encode(), body[cut:].encode()], stream=False).usage
    assert (Usage(7, 3), None, None) == (
        good,
        tap_of([b"\xff{not json"], stream=False).usage,
        tap_of([b'{"type":"error","error":{}}'], stream=False).usage,
    )


@pytest.mark.parametrize(
    ("cache_reads", "expected"), [(False, Cost(1, 35, 6)), (True, Cost(1, 135, 6))]
)
def test_cache_reads_count_only_where_configured(cache_reads: bool, expected: Cost) -> None:
    """ITPM charge is input plus cache writes, plus cache reads only on dagger models."""
    assert expected == FINAL.cost(cache_reads_count=cache_reads)


def test_gzip_bodies_and_streams_are_read_from_the_copy() -> None:
    """Compressed JSON and SSE (relayed untouched) are inflated on the tap's copy only."""
    body = gzip.compress(json.dumps({"usage": {"input_tokens": 7, "output_tokens": 3}}).encode())
    stream = gzip.compress(b"".join([START, DELTA_1, DELTA_2, STOP]))
    chunks = [stream[i : i + 9] for i in range(0, len(stream), 9)]
    assert (Usage(7, 3), FINAL, None) == (
        tap_of([body[:10], body[10:]], stream=False, encoding="gzip").usage,
        tap_of(chunks, encoding="gzip").usage,
        tap_of([START], encoding="br").usage,
    )


def test_usage_update_takes_only_integer_fields() -> None:
    """A reported field replaces the known one only when it is an integer: null, a string,
    a float or a bool (an `int` subclass in Python) leaves the known count as it was."""
    known = Usage(10, 20, 30, 40)
    reported = {
        "input_tokens": 11,
        "output_tokens": None,
        "cache_creation_input_tokens": True,
        "cache_read_input_tokens": "41",
    }
    assert (Usage(11, 20, 30, 40), known, Usage(10, 20, 30, 40)) == (
        known.updated(reported),
        known.updated(["not", "a", "dict"]),
        known.updated({"output_tokens": 2.5}),
    )


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.text(alphabet='usage"\\{}:, é')
KEYS = st.sampled_from(["usage", "id", "content", 'x"usage"', "usag", "usage "])
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=400)
@given(
    document=st.dictionaries(KEYS, JSON_VALUES, max_size=4),
    usage=st.none() | st.dictionaries(st.sampled_from(["input_tokens", "usage"]), JSON_VALUES),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_json_body_usage_reads_what_a_full_parse_reads(
    document: dict[str, object], usage: dict[str, object] | None, indent: int | None,
    ascii_only: bool,
) -> None:  # fmt: skip
    """On any valid JSON body, the top-level `usage` object, and nothing else: with usage
    last, elsewhere, nested, absent, not an object, or named inside strings."""
    if usage is not None:
        document["usage"] = usage  # last unless it was already a key
    body = json.dumps(document, indent=indent, ensure_ascii=ascii_only).encode()
    expected = document.get("usage")
    assert (expected if isinstance(expected, dict) else None) == json_body_usage(body)


def test_a_malformed_json_body_yields_no_usage() -> None:
    """A body that is not one well-formed JSON object yields no usage, whatever its end."""
    broken = b'{"content": [{"text": "\xff\xfe broken}, "usage": {"output_tokens": 96}}'
    assert (None, None, None) == (
        json_body_usage(broken),
        json_body_usage(b'{"usage": {"output_tokens": 96}'),
        json_body_usage(b'[{"usage": {"output_tokens": 96}}]'),
    )


def test_a_stream_counts_its_output_as_it_is_generated() -> None:
    """Content deltas count about a token per four characters before any usage arrives; the
    final usage's exact count wins once it is larger."""
    delta = sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "x" * 400}},
    )  # fmt: skip
    tap = tap_of([START, delta, delta])
    mid = tap.generated
    tap(sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 260}}))
    assert (200, 260) == (mid, tap.generated)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.binary(max_size=300)
        | st.sampled_from([START, DELTA_1, DELTA_2, STOP, PING, b"data: {\n\n", b"\r\n"]),
        max_size=12,
    ),
    stream=st.booleans(),
    encoding=st.sampled_from([None, "gzip", "deflate", "br"]),
)
def test_the_tap_never_raises_on_any_bytes(
    chunks: list[bytes], stream: bool, encoding: str | None
) -> None:
    """Any bytes in any chunking, stream or not, any encoding: usage or None, never an error."""
    tap = tap_of(chunks, stream=stream, encoding=encoding)
    usage = tap.usage
    assert usage is None or all(count >= 0 for count in usage.by_kind().values())
    assert tap.generated >= 0


@pytest.mark.parametrize("bad", [-5, 10**12, 3.5, "12", True])
def test_a_count_that_is_no_sane_count_is_ignored_and_noted(bad: object) -> None:
    """A negative, absurd, fractional, text or boolean count is ignored (the last sane one
    stands) and noted once for the log."""
    start = sse("message_start", {"type": "message_start",
                "message": {"usage": {"input_tokens": 19, "output_tokens": 2}}})  # fmt: skip
    delta = sse("message_delta", {"type": "message_delta",
                "usage": {"input_tokens": bad, "output_tokens": 6}})  # fmt: skip
    tap = tap_of([start, delta])
    assert (Usage(19, 6), {"input_tokens": bad}) == (tap.usage, tap.rejected)


def test_message_facts_from_a_stream_and_from_a_json_body() -> None:
    """With `facts`, the id and model of message_start (or the body) and the last stop
    reason are noted; a value that is no short string is ignored. Without, nothing is."""
    start = sse(
        "message_start",
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {}}},
    )
    stop = sse(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {}},
    )
    body = {"id": "msg_2", "model": 7, "stop_reason": "x" * 300, "usage": {"output_tokens": 1}}
    streamed = tap_of([start, PING, stop], facts=True).message
    plain = tap_of([json.dumps(body).encode()], stream=False, facts=True).message
    unasked = tap_of([start, PING, stop]).message
    assert (
        MessageFacts("msg_1", "claude-x", "max_tokens"),
        MessageFacts("msg_2"),
        MessageFacts(),
    ) == (streamed, plain, unasked)
