"""Byte-accurate Anthropic API bodies and SSE frames, as pure functions for the fake upstream.

Shapes follow /work/shared/reference/anthropic-api.md (section 3 for errors, section 5 for the
stream) and the `anthropic` SDK's types, so the real SDK parses everything built here.
Compact JSON everywhere except where the real API spaces it (`ping`, the mid-stream `error`).
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

DEFAULT_MODEL = "claude-sonnet-4-6"

CHARS_PER_TOKEN = 4
"""Characters of reply text per output token in sized replies (about right for English)."""

SHORT_ANSWER_TOKENS = 8
"""A reply text within this many tokens of its output is sent as is: the reference's 6-token
answer is the 9 characters of "Hi there!"."""

TOKENS_PER_DELTA = 64
"""The most output tokens one delta of a sized reply carries; longer answers get more deltas."""

SseEvent = tuple[str, str]
"""One server-sent event: its name and its `data:` line, exactly as sent."""

ERROR_TYPES: Mapping[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found"),
    409: ("conflict_error", "Conflict"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}

MODELS: Sequence[tuple[str, str, str]] = (
    ("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16T00:00:00Z"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
)
"""(id, display name, created_at) of the models `GET /v1/models` lists, newest first."""

_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def new_id(prefix: str) -> str:
    """A fresh id in the API's style, e.g. `req_018EeWyXxfu5pfWkrYcMdjWG`."""
    return prefix + "_01" + "".join(secrets.choice(_ALPHABET) for _ in range(22))


def compact(obj: object) -> str:
    """JSON on one line without spaces, as the API sends most bodies and events."""
    return json.dumps(obj, separators=(",", ":"))


def rfc3339(moment: datetime) -> str:
    """`2025-02-24T22:25:30Z`: whole seconds, UTC, as in `-reset` headers and bodies."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> datetime:
    """The wall clock, for RFC 3339 timestamps in bodies and headers only."""
    return datetime.now(UTC)


def error_type_for(status: int) -> tuple[str, str]:
    """The `error.type` and a realistic default message for an HTTP status."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return ERROR_TYPES[500] if status >= 500 else ERROR_TYPES[400]


def error_envelope(
    status: int, request_id: str, *, error_type: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """The error body: `{"type":"error","error":{...},"request_id":...}`."""
    default_type, default_message = error_type_for(status)
    error = {"type": error_type or default_type, "message": message or default_message}
    return {"type": "error", "error": error, "request_id": request_id}


def full_usage(usage: Mapping[str, int]) -> dict[str, int]:
    """Usage in the API's key order: input, cache creation, cache read, output."""
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return {**{key: usage.get(key, 0) for key in keys}, "output_tokens": usage["output_tokens"]}


def delta_usage(usage: Mapping[str, int]) -> dict[str, int]:
    """Cumulative `message_delta` usage: input and output, cache counts only when non-zero."""
    cache = ("cache_creation_input_tokens", "cache_read_input_tokens")
    extra = {key: usage[key] for key in cache if usage.get(key)}
    return {"input_tokens": usage["input_tokens"], **extra, "output_tokens": usage["output_tokens"]}


def message_body(model: str, text: str, usage: Mapping[str, int], msg_id: str) -> dict[str, Any]:
    """A complete non-streaming Messages response."""
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": full_usage(usage),
    }


def text_pieces(text: str) -> list[str]:
    """Split text into word-sized deltas: "Hi there!" -> ["Hi", " there!"]."""
    return re.findall(r"\s*\S+\s*$|\s*\S+", text) if text.strip() else ([text] if text else [])


def token_shares(total: int, parts: int) -> list[int]:
    """`total` split over `parts`: equal whole shares, the remainder on the last."""
    if parts <= 0:
        return []
    base = total // parts
    return [base] * (parts - 1) + [total - base * (parts - 1)]


def sized_pieces(text: str, output_tokens: int, per_delta: int = TOKENS_PER_DELTA) -> list[str]:
    """The text deltas of an answer of `output_tokens`, about CHARS_PER_TOKEN characters a token.

    `text_pieces(text)` when `text` is within SHORT_ANSWER_TOKENS of the output, or longer.
    Otherwise `text` is repeated to exactly `output_tokens * CHARS_PER_TOKEN` characters, cut
    into as many deltas as `text_pieces(text)` gives (more when a delta would carry over
    `per_delta` tokens, TOKENS_PER_DELTA by default): delta i holds CHARS_PER_TOKEN x
    `token_shares(...)[i]` characters, so a client counting delta characters / 4 counts the
    output exactly.
    """
    pieces = text_pieces(text)
    if not _grows(text, output_tokens):
        return pieces
    count = min(output_tokens, max(len(pieces), math.ceil(output_tokens / per_delta)))
    unit = text if text.strip() else "Hi there!"
    unit = unit if unit[-1].isspace() else unit + " "
    size = output_tokens * CHARS_PER_TOKEN
    grown = (unit * (size // len(unit) + 1))[:size]
    sized: list[str] = []
    start = 0
    for share in token_shares(output_tokens, count):
        sized.append(grown[start : start + share * CHARS_PER_TOKEN])
        start += share * CHARS_PER_TOKEN
    return sized


def sized_text(text: str, output_tokens: int) -> str:
    """The whole text of an answer of `output_tokens`: the deltas of `sized_pieces`, joined."""
    return "".join(sized_pieces(text, output_tokens)) if _grows(text, output_tokens) else text


def _grows(text: str, output_tokens: int) -> bool:
    """Whether `output_tokens` is over SHORT_ANSWER_TOKENS more than `text` holds."""
    return output_tokens > math.ceil(len(text) / CHARS_PER_TOKEN) + SHORT_ANSWER_TOKENS


def message_events(
    model: str,
    text: str,
    usage: Mapping[str, int],
    msg_id: str,
    *,
    pieces: Sequence[str] | None = None,
) -> list[SseEvent]:
    """The reference stream: start, block start, ping, text deltas, block stop, delta, stop.

    The text deltas are `pieces`, by default `text_pieces(text)`.
    """
    start: dict[str, Any] = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**full_usage(usage), "output_tokens": min(2, usage["output_tokens"])},
    }
    events: list[SseEvent] = [
        ("message_start", compact({"type": "message_start", "message": start})),
        (
            "content_block_start",
            compact(
                {"type": "content_block_start", "index": 0, "content_block": _empty_text_block()}
            ),
        ),
        ping_event(),
    ]
    for piece in text_pieces(text) if pieces is None else pieces:
        delta = {"type": "text_delta", "text": piece}
        events.append(
            (
                "content_block_delta",
                compact({"type": "content_block_delta", "index": 0, "delta": delta}),
            )
        )
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    events += [
        ("content_block_stop", compact({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            compact({"type": "message_delta", "delta": stop, "usage": delta_usage(usage)}),
        ),
        ("message_stop", compact({"type": "message_stop"})),
    ]
    return events


def _empty_text_block() -> dict[str, str]:
    return {"type": "text", "text": ""}


def ping_event() -> SseEvent:
    """`ping`, spaced as the real API sends it: `{"type": "ping"}`."""
    return ("ping", json.dumps({"type": "ping"}))


def error_event(error_type: str = "overloaded_error", message: str | None = None) -> SseEvent:
    """The documented mid-stream error event (spaced JSON, no request_id)."""
    text = message or next(
        (msg for kind, msg in ERROR_TYPES.values() if kind == error_type), "Error"
    )
    return ("error", json.dumps({"type": "error", "error": {"type": error_type, "message": text}}))


def completion_body(model: str, text: str, completion_id: str) -> dict[str, Any]:
    """A legacy Text Completions response."""
    return {
        "type": "completion",
        "id": completion_id,
        "completion": " " + text,
        "stop_reason": "stop_sequence",
        "stop": "\n\nHuman:",
        "model": model,
        "log_id": completion_id,
    }


def completion_events(model: str, text: str, completion_id: str) -> list[SseEvent]:
    """A legacy Text Completions stream: `completion` events, one `ping`, a final stop."""
    events: list[SseEvent] = []
    for piece in text_pieces(" " + text):
        data = {"type": "completion", "id": completion_id, "completion": piece}
        events.append(("completion", compact({**data, "stop_reason": None, "model": model})))
    events.insert(min(1, len(events)), ping_event())
    final = {"type": "completion", "id": completion_id, "completion": "", "model": model}
    events.append(("completion", compact({**final, "stop_reason": "stop_sequence"})))
    return events


def encode_event(name: str, data: str) -> bytes:
    """One SSE frame: `event: <name>\\ndata: <data>\\n\\n`."""
    return f"event: {name}\ndata: {data}\n\n".encode()


def encode_events(events: Iterable[SseEvent]) -> bytes:
    """Several SSE frames, concatenated."""
    return b"".join(encode_event(name, data) for name, data in events)


def model_info(model_id: str, display_name: str, created_at: str) -> dict[str, Any]:
    """A `GET /v1/models/{id}` object."""
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name,
        "created_at": created_at,
        "lifecycle": "active",
        "deprecated_at": None,
        "retires_at": None,
        "max_input_tokens": 200000,
        "max_tokens": 64000,
    }


def page(items: Sequence[Mapping[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """A list page with `limit`/`after_id`/`before_id`, as models, batches and files use."""
    limit = int(query.get("limit", "20"))
    ids = [str(item["id"]) for item in items]
    start, stop = 0, len(items)
    if "after_id" in query and query["after_id"] in ids:
        start = ids.index(query["after_id"]) + 1
    if "before_id" in query and query["before_id"] in ids:
        stop = ids.index(query["before_id"])
        start = max(start, stop - limit)
    chosen = list(items[start:stop][:limit])
    return {
        "data": chosen,
        "has_more": start + len(chosen) < stop,
        "first_id": chosen[0]["id"] if chosen else None,
        "last_id": chosen[-1]["id"] if chosen else None,
    }


def default_rate_limit_headers(now: datetime) -> dict[str, str]:
    """Realistic `anthropic-ratelimit-*` headers (2025 values), resets at full refill."""
    headers: dict[str, str] = {}
    for axis, limit, remaining in (
        ("requests", 1000, 999),
        ("input-tokens", 80000, 78000),
        ("output-tokens", 16000, 12000),
        ("tokens", 96000, 90000),
    ):
        headers.update(axis_headers(axis, limit, remaining, now))
    return headers


def axis_headers(axis: str, limit: int, remaining: int, now: datetime) -> dict[str, str]:
    """The `-limit`, `-remaining` and `-reset` headers of one axis; reset marks full refill."""
    refill = timedelta(seconds=60 * (limit - remaining) / limit) if limit else timedelta()
    return {
        f"anthropic-ratelimit-{axis}-limit": str(limit),
        f"anthropic-ratelimit-{axis}-remaining": str(remaining),
        f"anthropic-ratelimit-{axis}-reset": rfc3339(now + refill),
    }


def batch_object(
    batch_id: str,
    *,
    status: str,
    counts: Mapping[str, int],
    created_at: datetime,
    results_url: str | None,
    ended_at: datetime | None = None,
    cancel_initiated_at: datetime | None = None,
) -> dict[str, Any]:
    """A Message Batch object."""

    def stamp(moment: datetime | None) -> str | None:
        return rfc3339(moment) if moment else None

    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            key: counts.get(key, 0)
            for key in ("processing", "succeeded", "errored", "canceled", "expired")
        },
        "ended_at": stamp(ended_at),
        "created_at": rfc3339(created_at),
        "expires_at": rfc3339(created_at + timedelta(hours=24)),
        "archived_at": None,
        "cancel_initiated_at": stamp(cancel_initiated_at),
        "results_url": results_url,
    }


def file_metadata(
    file_id: str, filename: str, mime_type: str, size: int, created_at: datetime
) -> dict[str, Any]:
    """A Files API metadata object."""
    return {
        "id": file_id,
        "type": "file",
        "filename": filename,
        "mime_type": mime_type,
        "size_bytes": size,
        "created_at": rfc3339(created_at),
        "downloadable": True,
    }
