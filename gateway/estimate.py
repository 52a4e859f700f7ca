"""Input-token estimates for a Messages request, before it is sent.

`estimate_input_tokens(body)` is a fast pure-Python heuristic, calibrated on the public
examples in `tests/data/token_corpus.json` (see `docs/token-accounting.md`): about four
characters a token, a few tokens of framing per request and per message, the tool-use system
prompt when tools are given, images by the API's formula (width * height / 750, at most
~1,600 once the API has resized them; the bound when the size is unknown), PDFs by a
per-page bound. Thinking blocks of earlier assistant turns are not counted (the API strips
them). The limiter scales the estimate by a learned per-group ratio (`limits/learning.py`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Iterator, Mapping
from typing import Any

CHARS_PER_TOKEN = 4.0
REQUEST_OVERHEAD_TOKENS = 3  # fitted: "You are a scientist" / "Hello, Claude" counts 14
MESSAGE_OVERHEAD_TOKENS = 3
TOOL_SYSTEM_TOKENS = 330  # fitted: the get_weather example counts 403 (tool prompt ~313-346)
IMAGE_TOKENS_BOUND = 1600  # the API resizes images above ~1.15 megapixels: <= ~1,600 tokens
IMAGE_PIXELS_PER_TOKEN = 750
DOCUMENT_PAGE_TOKENS = 3000  # PDFs: text plus one page image, per page (documented bound)
_SKIPPED_KEYS = frozenset(
    {"type", "id", "tool_use_id", "media_type", "cache_control", "role", "signature"}
)
_THINKING = frozenset({"thinking", "redacted_thinking"})


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """An estimate of the input tokens a Messages (or legacy Complete) body will count.

    A body nested deeper than the estimate can walk (legal JSON, hundreds of levels) is
    estimated from its size instead: a limit is never worked around by nesting."""
    try:
        return _estimate(body)
    except RecursionError:
        return _size_estimate(body)


def _estimate(body: Mapping[str, Any]) -> int:
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


def uncached_input_tokens(body: Mapping[str, Any]) -> int | None:
    """An estimate of the input after the request's last cache breakpoint (`cache_control`
    on a tool, system block or message block), which a cache hit still charges in full;
    None when the request sets no breakpoint.

    The prompt is read in the API's order: tools, system, messages. With automatic caching
    (a top-level `cache_control`) the breakpoint is taken to sit before the last message.
    """
    try:
        return _uncached(body)
    except RecursionError:
        return None  # too deep to walk: reserve it as uncached (the whole estimate)


def _uncached(body: Mapping[str, Any]) -> int | None:
    parts = list(_prompt_parts(body))
    marked = [index for index, (_, cached) in enumerate(parts) if cached]
    if marked:
        after = marked[-1] + 1
    elif "cache_control" in body and parts:
        after = _last_message_start(body, len(parts))
    else:
        return None
    chars = tokens = 0
    for part, _ in parts[after:]:
        part_chars, part_tokens = _content_size(part)
        chars, tokens = chars + part_chars, tokens + part_tokens
    return REQUEST_OVERHEAD_TOKENS + tokens + math.ceil(chars / CHARS_PER_TOKEN)


def _prompt_parts(body: Mapping[str, Any]) -> Iterator[tuple[Any, bool]]:
    """Each tool, system block and message block in prompt order, and whether it carries
    a cache breakpoint."""
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        yield tool, isinstance(tool, dict) and "cache_control" in tool
    system = body.get("system")
    for block in system if isinstance(system, list) else [system] if system else ():
        yield block, isinstance(block, dict) and "cache_control" in block
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else [content]:
            yield block, isinstance(block, dict) and "cache_control" in block


def _last_message_start(body: Mapping[str, Any], total: int) -> int:
    """The index in `_prompt_parts` where the last message's blocks begin."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return total
    last = messages[-1]
    content = last.get("content") if isinstance(last, dict) else None
    return total - (len(content) if isinstance(content, list) else 1)


def _size_estimate(body: Mapping[str, Any]) -> int:
    """Characters of the body's text, walked without recursion, at CHARS_PER_TOKEN a token."""
    chars, stack = 0, [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        else:
            chars += 4  # a number, true, false or null and its framing
    return REQUEST_OVERHEAD_TOKENS + math.ceil(chars / CHARS_PER_TOKEN)


def max_output_tokens(body: Mapping[str, Any]) -> int:
    """The request's `max_tokens` (or legacy `max_tokens_to_sample`), 0 when absent."""
    value = body.get("max_tokens", body.get("max_tokens_to_sample", 0))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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
