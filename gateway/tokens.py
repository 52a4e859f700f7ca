"""Token estimates for a Messages request, made before it is sent.

The limiter debits an estimate at admission (as the API itself does for ITPM) and settles
against the real `usage` afterwards. This first estimator is deliberately simple and
conservative: about four characters of text per token (the common rule of thumb for
English with Claude's tokenizer), a fixed overhead per message, and the API's published
image formula (width * height / 750) as a bound; block sizes are unknown here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from gateway.limits import Cost

CHARS_PER_TOKEN = 4.0
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 8
IMAGE_TOKENS_BOUND = 1600  # the API resizes images above ~1.15 megapixels: <= ~1,600 tokens
DOCUMENT_PAGE_TOKENS = 3000  # PDFs: text plus one page image, per page (documented bound)
_SKIPPED_KEYS = frozenset({"type", "id", "tool_use_id", "media_type", "cache_control", "role"})


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """An estimate of the input tokens a Messages body will count."""
    chars = 0
    tokens = REQUEST_OVERHEAD_TOKENS
    system = body.get("system")
    if system is not None:
        chars += _content_size(system)[0]
    for key in ("tools", "tool_choice"):
        if key in body:
            chars += len(json.dumps(body[key], separators=(",", ":")))
    messages = body.get("messages")
    if isinstance(messages, list):
        tokens += MESSAGE_OVERHEAD_TOKENS * len(messages)
        for message in messages:
            extra_chars, extra_tokens = _content_size(message)
            chars += extra_chars
            tokens += extra_tokens
    prompt = body.get("prompt")  # legacy /v1/complete
    if isinstance(prompt, str):
        chars += len(prompt)
    return tokens + math.ceil(chars / CHARS_PER_TOKEN)


def estimate_cost(body: Mapping[str, Any]) -> Cost:
    """One request, the input estimate, and `max_tokens` reserved for output."""
    max_tokens = body.get("max_tokens", body.get("max_tokens_to_sample", 0))
    output = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 0
    return Cost(requests=1, input_tokens=estimate_input_tokens(body), output_tokens=output)


def _content_size(value: Any) -> tuple[int, int]:
    """(characters of text, tokens of media) inside a message or content block tree."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        chars = tokens = 0
        for item in value:
            item_chars, item_tokens = _content_size(item)
            chars, tokens = chars + item_chars, tokens + item_tokens
        return chars, tokens
    if not isinstance(value, dict):
        return 0, 0
    kind = value.get("type")
    if kind == "image":
        return 0, IMAGE_TOKENS_BOUND
    if kind == "document" and isinstance(value.get("source"), dict):
        source = value["source"]
        if source.get("type") in ("text", "content"):
            return _content_size(source.get("data") or source.get("content"))
        return 0, DOCUMENT_PAGE_TOKENS * _pdf_pages_bound(source)
    chars = tokens = 0
    for key, item in value.items():
        if key in _SKIPPED_KEYS:
            continue
        item_chars, item_tokens = _content_size(item)
        chars, tokens = chars + item_chars, tokens + item_tokens
    return chars, tokens


def _pdf_pages_bound(source: Mapping[str, Any]) -> int:
    """Pages in a base64 PDF, from its size at a typical ~50 KB a page; else one page."""
    data = source.get("data")
    if isinstance(data, str):
        return max(1, math.ceil(len(data) * 3 / 4 / 50_000))
    return 1
