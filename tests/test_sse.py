"""The sans-I/O SSE parser: framing, line ends, chunk boundaries, and never raising."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import SseEvent, SseParser

STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"usage":{"input_tokens":19}}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b": a comment\n"
    b"event: message_delta\n"
    b'data: {"type":"message_delta","usage":{"output_tokens":6}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)
EVENTS = [
    SseEvent("message_start", '{"type":"message_start","message":{"usage":{"input_tokens":19}}}'),
    SseEvent("ping", '{"type": "ping"}'),
    SseEvent("message_delta", '{"type":"message_delta","usage":{"output_tokens":6}}'),
    SseEvent("message_stop", '{"type":"message_stop"}'),
]


def parse(chunks: list[bytes]) -> list[SseEvent]:
    """Feed every chunk to one parser and collect the events."""
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_whole_stream_in_one_chunk_gives_every_event() -> None:
    """A stream fed at once yields its events in order, comments skipped."""
    assert EVENTS == parse([STREAM])


def test_byte_by_byte_gives_the_same_events() -> None:
    """Splitting at every byte changes nothing."""
    assert EVENTS == parse([STREAM[i : i + 1] for i in range(len(STREAM))])


def test_crlf_and_lone_cr_line_ends_are_lines() -> None:
    """CRLF and CR end lines like LF, even with the CRLF split across chunks."""
    crlf = STREAM.replace(b"\n", b"\r\n")
    cr = STREAM.replace(b"\n", b"\r")
    cut = crlf.index(b"\r\n") + 1
    assert (EVENTS, EVENTS, EVENTS) == (
        parse([crlf]),
        parse([cr]),
        parse([crlf[:cut], crlf[cut:]]),
    )


def test_multiline_data_and_unnamed_events() -> None:
    """data lines join with LF; an event without a name is a `message`; no data, no event."""
    stream = b"data: a\ndata:b\n\nevent: empty\n\nid: 3\ndata\n\n"
    assert [SseEvent("message", "a\nb"), SseEvent("message", "")] == parse([stream])


def test_stream_cut_mid_event_keeps_the_tail_pending() -> None:
    """An event without its blank line is not dispatched yet."""
    parser = SseParser()
    first = parser.feed(STREAM[:-1])
    assert (EVENTS[:3], [EVENTS[3]]) == (first, parser.feed(b"\n"))


def test_overlong_line_is_dropped_and_parsing_recovers() -> None:
    """A line past max_line is dropped without growing memory; later events still parse."""
    parser = SseParser(max_line=90)
    events = parser.feed(b"data: " + b"x" * 100)
    events += parser.feed(b"x" * 100 + b"\n\n" + STREAM)
    assert EVENTS == events


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    """Cutting a valid stream anywhere, any number of times, gives the same events."""
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert EVENTS == parse(chunks)


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    """Arbitrary bytes are parsed without an exception, into well-formed events."""
    events = parse(chunks)
    assert True is all(isinstance(e.name, str) and isinstance(e.data, str) for e in events)
