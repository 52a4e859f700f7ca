"""Token estimates before a request and the usage tap after it (JSON and SSE)."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.limits import Cost
from gateway.tokens import (
    IMAGE_TOKENS_BOUND,
    Usage,
    UsageTap,
    estimate_cost,
    estimate_input_tokens,
    image_tokens,
    json_body_usage,
)
from tests.support.token_eval import corpus, corpus_errors, png_source, simulate


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


def tap_of(chunks: list[bytes], *, stream: bool = True, encoding: str | None = None) -> UsageTap:
    """A tap that has seen `chunks`."""
    tap = UsageTap(stream=stream, encoding=encoding)
    for chunk in chunks:
        tap(chunk)
    return tap


@pytest.mark.parametrize(("name", "estimate", "count"), corpus())
def test_heuristic_is_within_two_percent_on_the_documented_corpus(
    name: str, estimate: object, count: int
) -> None:
    """Every documented example is estimated within 2% (and never below by more than 1 token)."""
    assert callable(estimate)
    got = estimate(1.0)
    assert (name, True) == (name, abs(got - count) <= max(1, 0.02 * count))


def test_calibration_stays_close_on_the_corpus() -> None:
    """Learning from a noisy replay of the corpus keeps the worst error within 3%."""
    _, after, _ = corpus_errors()
    assert True is (after.worst <= 0.03)


def test_calibration_removes_a_workload_bias() -> None:
    """A workload 25% denser than the heuristic is learned: median error falls below 8%."""
    before, after, ratio = simulate(7, 1.25)
    assert (True, True, True) == (before.median > 0.15, after.median < 0.08, 1.15 < ratio < 1.3)


def test_image_uses_the_formula_when_the_size_is_known() -> None:
    """A 400x300 PNG costs 400*300/750 = 160 tokens; an unknown image costs the bound."""
    unknown = {"type": "url", "url": "https://example.com/cat.jpg"}
    assert (160, IMAGE_TOKENS_BOUND) == (image_tokens(png_source(400, 300)), image_tokens(unknown))


def test_earlier_thinking_blocks_are_not_counted() -> None:
    """Thinking in an earlier assistant turn is stripped by the API, so not estimated."""
    thinking = {"type": "thinking", "thinking": "x" * 4000, "signature": "s" * 400}
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": []}]}
    plain["messages"].append({"role": "user", "content": "Go on"})
    with_thinking = json.loads(json.dumps(plain))
    with_thinking["messages"][1]["content"] = [thinking]
    assert estimate_input_tokens(plain) == estimate_input_tokens(with_thinking)


def test_estimate_cost_reserves_max_tokens_for_output() -> None:
    """The plain estimate is one request, the input estimate and max_tokens."""
    body = {"max_tokens": 300, "system": "You are a scientist", "messages": [
        {"role": "user", "content": "Hello, Claude"}]}  # fmt: skip
    assert Cost(1, 14, 300) == estimate_cost(body)


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
    """On any valid JSON body, the tail read gives exactly the full parse's `usage`: with
    usage last, elsewhere, nested, absent, not an object, or named inside strings."""
    if usage is not None:
        document["usage"] = usage  # last unless it was already a key
    body = json.dumps(document, indent=indent, ensure_ascii=ascii_only).encode()
    expected = document.get("usage")
    assert (expected if isinstance(expected, dict) else None) == json_body_usage(body)


def test_json_body_usage_from_the_tail_of_a_body_broken_before_it() -> None:
    """A body malformed before a well-formed last `usage` still yields it; one broken in
    the tail, or not an object at the top, yields none."""
    good = b'{"content": [{"text": "\xff\xfe broken}, "usage": {"output_tokens": 96}}'
    assert ({"output_tokens": 96}, None, None) == (
        json_body_usage(good),
        json_body_usage(b'{"usage": {"output_tokens": 96}'),
        json_body_usage(b'[{"usage": {"output_tokens": 96}}]'),
    )
