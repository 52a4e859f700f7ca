"""Token estimates for a Messages request before it is sent, and its real `usage` after.

Before: `estimate_input_tokens(body)` is a fast pure-Python heuristic, calibrated on the
public examples in `tests/data/token_corpus.json` (see `docs/token-accounting.md`): about
four characters a token, a few tokens of framing per request and per message, the tool-use
system prompt when tools are given, images by the API's formula (width * height / 750, at
most ~1,600 once the API has resized them; the bound when the size is unknown), PDFs by a
per-page bound. Thinking blocks of earlier assistant turns are not counted (the API strips
them). The limiter scales the estimate by a learned per-group ratio (`limits/learning.py`).

After: `UsageTap` is the relay's tap. It reads the usage out of a JSON body or an SSE stream
(message_start usage, then each cumulative message_delta replaces it: the last one wins),
never raises and never changes the bytes it is shown.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.limits import Cost
from gateway.sse import SseParser

CHARS_PER_TOKEN = 4.0
REQUEST_OVERHEAD_TOKENS = 3  # fitted: "You are a scientist" / "Hello, Claude" counts 14
MESSAGE_OVERHEAD_TOKENS = 3
TOOL_SYSTEM_TOKENS = 330  # fitted: the get_weather example counts 403 (tool prompt ~313-346)
IMAGE_TOKENS_BOUND = 1600  # the API resizes images above ~1.15 megapixels: <= ~1,600 tokens
IMAGE_PIXELS_PER_TOKEN = 750
DOCUMENT_PAGE_TOKENS = 3000  # PDFs: text plus one page image, per page (documented bound)
MAX_JSON_BODY = 8 * 1024 * 1024
_SKIPPED_KEYS = frozenset(
    {"type", "id", "tool_use_id", "media_type", "cache_control", "role", "signature"}
)
_THINKING = frozenset({"thinking", "redacted_thinking"})


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """An estimate of the input tokens a Messages (or legacy Complete) body will count."""
    chars, tokens = _content_size(body.get("system"))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        tokens += TOOL_SYSTEM_TOKENS
        chars += len(json.dumps(tools, separators=(",", ":")))
    messages = body.get("messages")
    if isinstance(messages, list):
        tokens += MESSAGE_OVERHEAD_TOKENS * len(messages)
        for index, message in enumerate(messages):
            last = index == len(messages) - 1
            extra_chars, extra_tokens = _content_size(message, keep_thinking=last)
            chars, tokens = chars + extra_chars, tokens + extra_tokens
    prompt = body.get("prompt")  # legacy /v1/complete
    if isinstance(prompt, str):
        chars += len(prompt)
    return REQUEST_OVERHEAD_TOKENS + tokens + math.ceil(chars / CHARS_PER_TOKEN)


def max_output_tokens(body: Mapping[str, Any]) -> int:
    """The request's `max_tokens` (or legacy `max_tokens_to_sample`), 0 when absent."""
    value = body.get("max_tokens", body.get("max_tokens_to_sample", 0))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def estimate_cost(body: Mapping[str, Any]) -> Cost:
    """One request, the input estimate, and `max_tokens` reserved for output."""
    return Cost(1, estimate_input_tokens(body), max_output_tokens(body))


def _content_size(value: Any, *, keep_thinking: bool = True) -> tuple[int, int]:
    """(characters of text, tokens of media) inside a message or content block tree."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        chars = tokens = 0
        for item in value:
            item_chars, item_tokens = _content_size(item, keep_thinking=keep_thinking)
            chars, tokens = chars + item_chars, tokens + item_tokens
        return chars, tokens
    if not isinstance(value, dict):
        return 0, 0
    kind = value.get("type")
    if kind == "image":
        return 0, image_tokens(value.get("source"))
    if kind in _THINKING and not keep_thinking:
        return 0, 0
    if kind == "document" and isinstance(value.get("source"), dict):
        source = value["source"]
        if source.get("type") in ("text", "content"):
            return _content_size(source.get("data") or source.get("content"))
        return 0, DOCUMENT_PAGE_TOKENS * _pdf_pages_bound(source)
    chars = tokens = 0
    for key, item in value.items():
        if key in _SKIPPED_KEYS or (kind == "redacted_thinking" and key == "data"):
            continue
        item_chars, item_tokens = _content_size(item, keep_thinking=keep_thinking)
        chars, tokens = chars + item_chars, tokens + item_tokens
    return chars, tokens


def image_tokens(source: Any) -> int:
    """width * height / 750 for a base64 PNG, GIF or JPEG, capped; else the bound."""
    size = _image_size(source) if isinstance(source, dict) else None
    if size is None:
        return IMAGE_TOKENS_BOUND
    width, height = size
    return max(1, min(IMAGE_TOKENS_BOUND, math.ceil(width * height / IMAGE_PIXELS_PER_TOKEN)))


def _image_size(source: Mapping[str, Any]) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a base64 image, or None when unknown."""
    data = source.get("data")
    if source.get("type") != "base64" or not isinstance(data, str):
        return None
    try:
        head = base64.b64decode(data[:65536], validate=False)
    except (binascii.Error, ValueError):
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return width, height
    return _jpeg_size(head) if head.startswith(b"\xff\xd8") else None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """Walk JPEG segments to the first start-of-frame marker."""
    at = 2
    while at + 9 < len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        length = int.from_bytes(head[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _pdf_pages_bound(source: Mapping[str, Any]) -> int:
    """Pages in a base64 PDF, from its size at a typical ~50 KB a page; else one page."""
    data = source.get("data")
    if isinstance(data, str):
        return max(1, math.ceil(len(data) * 3 / 4 / 50_000))
    return 1


@dataclass(frozen=True, slots=True)
class Usage:
    """A response's `usage` as the API reports it; a missing or null field is 0."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def updated(self, reported: Any) -> Usage:
        """This usage with every integer field `reported` carries replaced (never added).

        Spelled out field by field: it runs once or twice per settled response, and a
        `dataclasses.replace` over `fields()` took 3.9 µs against 2.1 (timeit).
        """
        if not isinstance(reported, dict):
            return self
        return Usage(
            _count(reported, "input_tokens", self.input_tokens),
            _count(reported, "output_tokens", self.output_tokens),
            _count(reported, "cache_creation_input_tokens", self.cache_creation_input_tokens),
            _count(reported, "cache_read_input_tokens", self.cache_read_input_tokens),
        )

    def cost(self, *, cache_reads_count: bool = False, requests: int = 1) -> Cost:
        """What the API charges: `requests` requests (every attempt it answered), and this
        usage: ITPM counts uncached input and cache writes (and cache reads only on models
        where they count); OTPM counts output."""
        charged = self.input_tokens + self.cache_creation_input_tokens
        if cache_reads_count:
            charged += self.cache_read_input_tokens
        return Cost(requests, charged, self.output_tokens)

    def by_kind(self) -> dict[str, int]:
        """Counts under the metric's `kind` labels."""
        return {
            "input": self.input_tokens,
            "output": self.output_tokens,
            "cache_read": self.cache_read_input_tokens,
            "cache_creation": self.cache_creation_input_tokens,
        }


_NO_USAGE = Usage()
"""What a response used before its first report (the start of every `updated` chain)."""


class UsageTap:
    """The relay's tap: sees every chunk, remembers the latest usage; never raises.

    A gzip or deflate `encoding` (the gateway relays compressed bodies untouched) is
    decompressed on this copy only; other encodings yield no usage.
    """

    def __init__(
        self, *, stream: bool, encoding: str | None = None, max_json: int = MAX_JSON_BODY
    ) -> None:
        self._parser = SseParser() if stream else None
        self._body = bytearray()
        self._max_json = max_json
        self._usage: Usage | None = None
        name = (encoding or "identity").strip().lower()
        self._readable = name in ("identity", "gzip", "x-gzip", "deflate")
        self._inflate = None if name == "identity" else zlib.decompressobj(wbits=47)
        """gzip or zlib-wrapped deflate, detected from the header (wbits 32 + 15)."""
        self.errored = False
        """An `error` event arrived mid-stream."""

    def __call__(self, chunk: bytes) -> None:
        if not self._readable:
            return
        if self._inflate is not None:
            chunk = self._decompress(self._inflate, chunk)
        if self._parser is None:
            if len(self._body) + len(chunk) <= self._max_json:
                self._body += chunk
            return
        for event in self._parser.feed(chunk):
            if event.name in ("message_start", "message_delta", "error"):
                self._event(event.name, event.data)

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far (the body's, once a JSON body is complete), or None."""
        if self._parser is None and self._usage is None and self._body:
            reported = json_body_usage(bytes(self._body))
            if reported is not None:
                self._usage = _NO_USAGE.updated(reported)
            self._body.clear()
        return self._usage

    def _decompress(self, inflate: zlib._Decompress, chunk: bytes) -> bytes:
        try:
            return inflate.decompress(chunk, self._max_json)
        except zlib.error:
            self._readable = False
            return b""

    def _event(self, name: str, data: str) -> None:
        document = _loads(data)
        if not isinstance(document, dict):
            return
        if name == "error":
            self.errored = True
            return
        message = document.get("message")
        reported = message.get("usage") if isinstance(message, dict) else document.get("usage")
        if isinstance(reported, dict):
            self._usage = (self._usage or _NO_USAGE).updated(reported)


def json_body_usage(body: bytes) -> dict[str, Any] | None:
    """The top-level `usage` object of a JSON response body, or None.

    The API writes `usage` as the message's last member, so it is read from the tail: the
    last `"usage"` key, its object, and nothing after it but the top-level `}`. A long answer
    then costs one byte search (`rfind`), where parsing it whole grows with it (5.3 µs for
    the bench's 757 bytes, 19.9 µs for 20 KB). Any other shape is parsed whole. On valid JSON both
    ways agree (a property test pins it); a body malformed before a well-formed tail still
    yields its usage.
    """
    usage = _tail_usage(body)
    if usage is not None:
        return usage
    document = _loads(body)
    reported = document.get("usage") if isinstance(document, dict) else None
    return reported if isinstance(reported, dict) else None


_DECODER = json.JSONDecoder()
_KEY = b'"usage"'
_SPACE = b" \t\n\r\x0b\x0c"  # what bytes.strip() strips


def _tail_usage(body: bytes) -> dict[str, Any] | None:
    """`usage` when it is the last member of a top-level object, else None (undecided)."""
    key = body.rfind(_KEY)
    if key < 0 or not body.lstrip().startswith(b"{"):
        return None
    before = key - 1
    while before >= 0 and body[before] in _SPACE:  # no copy of the body, unlike rstrip()
        before -= 1
    if before < 0 or body[before] not in b"{,":  # a key follows `{` or `,`
        return None
    try:
        tail = body[key + len(_KEY) :].decode()
    except UnicodeDecodeError:
        return None
    rest = tail.lstrip()
    if not rest.startswith(":"):
        return None
    start = len(tail) - len(rest[1:].lstrip())
    try:
        value, end = _DECODER.raw_decode(tail, start)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or tail[end:].strip() != "}":
        return None
    return value


def _count(reported: dict[str, Any], name: str, current: int) -> int:
    """`reported[name]` when it is an integer (a bool is not), else `current`."""
    value = reported.get(name)
    return value if type(value) is int else current


def _loads(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None
