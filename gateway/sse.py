"""Incremental server-sent-events parser, sans-I/O: `feed(bytes) -> events`.

It reads a copy of a relayed stream and never touches the bytes the client gets. Framing
follows the WHATWG event-stream rules: lines end in LF, CRLF or a lone CR (a CRLF split
across two chunks is one line end); `event:` names the event, `data:` lines join with LF;
one space after the colon is dropped; comments (`:`) and unknown fields are ignored; an
empty line dispatches an event when it has data. Any bytes are accepted and nothing raises:
invalid UTF-8 is replaced, and a line longer than `max_line` is dropped (memory stays bounded).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its name (`message` when unnamed) and its data text."""

    name: str
    data: str


class SseParser:
    """Feed chunks in order; get the events they complete."""

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._skipping = False  # inside an over-long line: drop bytes until its end
        self._after_cr = False  # the last chunk ended with CR: a leading LF is its pair
        self._name = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse `chunk`; return the events completed by it, in order."""
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        text = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SseEvent] = []
        *lines, rest = text.split(b"\n")
        for line in lines:
            whole = self._take(line)
            if whole is not None:
                self._line(whole, events)
        self._keep(rest)
        return events

    def _take(self, tail: bytes) -> bytes | None:
        """The complete line ending with `tail`, or None when it was too long to keep."""
        if self._skipping:
            self._skipping = False
            return None
        line = bytes(self._buffer) + tail
        self._buffer.clear()
        return line if len(line) <= self._max_line else None

    def _keep(self, rest: bytes) -> None:
        """Hold an unfinished line until its end arrives."""
        if self._skipping:
            return
        self._buffer += rest
        if len(self._buffer) > self._max_line:
            self._buffer.clear()
            self._skipping = True

    def _line(self, raw: bytes, events: list[SseEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SseEvent(self._name or "message", "\n".join(self._data)))
            self._name, self._data = "", []
            return
        line = raw.decode("utf-8", errors="replace")
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
