"""`RequestFacts`: just enough of a request body to route, limit and log it.

Only the Messages-family endpoints are parsed (they carry a model and are limited); every
other body is forwarded without being looked at. A body that is not a JSON object on those
endpoints is refused here, before it costs an upstream round trip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest

MESSAGES_PATH = "/v1/messages"
BATCHES_PATH = "/v1/messages/batches"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
COMPLETE_PATH = "/v1/complete"
PARSED_PATHS = frozenset({MESSAGES_PATH, COUNT_TOKENS_PATH, COMPLETE_PATH})
MAX_TOKENS = 2**31 - 1
"""The largest `max_tokens` the gateway reads (far above any model's; the API judges the rest)."""


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the gateway knows about one request before sending it."""

    route: str
    model: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    body: dict[str, Any] | None = None

    @property
    def is_generation(self) -> bool:
        """True for calls that generate tokens and so draw on the Messages buckets."""
        return self.route in (MESSAGES_PATH, COMPLETE_PATH)


KNOWN_ROUTES = frozenset(
    {
        MESSAGES_PATH,
        COUNT_TOKENS_PATH,
        COMPLETE_PATH,
        "/v1/models",
        "/v1/models/{id}",
        "/v1/messages/batches",
        "/v1/messages/batches/{id}",
        "/v1/messages/batches/{id}/cancel",
        "/v1/messages/batches/{id}/results",
        "/v1/files",
        "/v1/files/{id}",
        "/v1/files/{id}/content",
    }
)
KNOWN_FAMILIES = frozenset(
    {"messages", "models", "files", "organizations", "skills", "agents", "sessions"}
)


def route_of(path: str) -> str:
    """A bounded route label: ids folded (`/v1/models/{id}`), unknown shapes grouped.

    Exact known routes keep their shape; any other path under a known family becomes
    `/v1/<family>/other`, and everything else `/v1/other`, so invented paths cannot grow
    the label set (about 20 values in all).
    """
    if path in PARSED_PATHS:
        return path
    parts = path.split("/")
    folded = "/".join(
        part if index < 3 or not _looks_like_id(part) else "{id}"
        for index, part in enumerate(parts)
    )
    if folded in KNOWN_ROUTES:
        return folded
    family = parts[2] if len(parts) > 2 else ""
    return f"/v1/{family}/other" if family in KNOWN_FAMILIES else "/v1/other"


def _looks_like_id(part: str) -> bool:
    return any(ch.isdigit() for ch in part) or "_" in part or len(part) > 24


def parse_facts(path: str, body: bytes) -> RequestFacts:
    """Read model, stream and max_tokens from a Messages-family body; others are opaque."""
    route = route_of(path)
    if path not in PARSED_PATHS:
        return RequestFacts(route=route)
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {_position(exc)}") from None
    except RecursionError:  # legal JSON, nested deeper than the decoder goes
        raise InvalidRequest("Request body is nested too deeply to read.") from None
    except ValueError:  # legal JSON, an integer longer than Python converts (4,300 digits)
        raise InvalidRequest("Request body holds a number too long to read.") from None
    if not isinstance(document, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model: must be a string.")
    max_tokens = document.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens > MAX_TOKENS
    ):
        raise InvalidRequest(f"max_tokens: must be an integer up to {MAX_TOKENS:,}.")
    return RequestFacts(
        route=route,
        model=model,
        stream=document.get("stream") is True,
        max_tokens=max_tokens,
        body=document,
    )


def batch_models(body: bytes) -> list[str]:
    """The models a Message Batches create body asks for (`requests[].params.model`); a
    body that is no such batch yields none (the API answers it with its own 400)."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return []
    requests = document.get("requests") if isinstance(document, dict) else None
    if not isinstance(requests, list):
        return []
    models = []
    for item in requests:
        params = item.get("params") if isinstance(item, dict) else None
        model = params.get("model") if isinstance(params, dict) else None
        if isinstance(model, str):
            models.append(model)
    return models


def _position(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "not UTF-8"
