"""structlog setup: JSON (or console) lines on stdout, request context, secret redaction.

Every line passes `redact_secrets`, so an API key that slips into an event (a header dump,
an exception message) is masked before it is rendered. Request-scoped fields (request id,
method, path) are bound with contextvars by the middleware.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

SECRET_PATTERNS = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]+"),
    re.compile(r"cgw_[0-9a-f]{12}_[A-Za-z0-9_\-]+"),  # a gateway key (identity.py)
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]+=*"),
    re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^'\",\s]+"),
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\",]+"),
    # user:password@ and a lone user@ (it may be a token), unless already masked as ***
    re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)(?!\*\*\*@)[^@\s]+(@)", re.IGNORECASE),
    re.compile(r"([a-z][a-z0-9+.-]*://)(?!\*\*\*@)[^:/@\s]+(@)", re.IGNORECASE),
)
MAYBE_SECRET = re.compile(r"sk-ant-|cgw_|bearer|x-api-key|authorization|://[^/\s]*@", re.IGNORECASE)
"""Every SECRET_PATTERNS match contains one of these: one search clears most values at once."""
SECRET_KEYS = frozenset({"x-api-key", "authorization", "api_key", "password", "token"})
REDACTED = "[REDACTED]"


def scrub(text: str) -> str:
    """`text` with every credential SECRET_PATTERNS finds masked."""
    for pattern in SECRET_PATTERNS:
        if pattern.groups == 2:
            text = pattern.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


def redact_secrets(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask credentials in every string value (tracebacks included).

    Runs on every access line, so it first asks two cheap questions of the whole event (a
    secret-named key? a secret marker anywhere in the text?) and walks it value by value
    only when one says yes.
    """
    names = [key.lower() for key in event]
    texts = [value for value in event.values() if isinstance(value, str)]
    if SECRET_KEYS.isdisjoint(names) and not MAYBE_SECRET.search("\n".join(texts)):
        return event
    for key, name in zip(list(event), names, strict=True):
        value = event[key]
        if name in SECRET_KEYS:
            event[key] = REDACTED
        elif isinstance(value, str) and MAYBE_SECRET.search(value):
            event[key] = scrub(value)
    return event


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    *,
    cache: bool = False,
    fields: Mapping[str, object] | None = None,
) -> None:
    """Route structlog (and stdlib logging from aiohttp/redis) to one line per event.

    `cache=True` (the server) binds each module logger once instead of on every call, which
    matters on the hot path; tests leave it off so they can reconfigure between cases.
    `fields` go on every structlog line (a worker's `worker` number: several processes share
    one stdout).
    """
    out = stream or sys.stdout
    process_fields: list[structlog.typing.Processor] = [add_fields(fields)] if fields else []
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *process_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line, newline included (print() makes two when PYTHONUNBUFFERED is
        # set, as in the image): the lines of workers sharing one stdout never interleave.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(_StdlibToStructlog())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING) if level != "debug" else logging.DEBUG)
    # aiohttp's own access log is replaced by ours.
    logging.getLogger("aiohttp.access").disabled = True


def add_fields(fields: Mapping[str, object]) -> structlog.typing.Processor:
    """structlog processor: `fields` on every event (an event's own value wins)."""
    fixed = dict(fields)

    def add(
        _logger: object, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in fixed.items():
            event.setdefault(key, value)
        return event

    return add


class _StdlibToStructlog(logging.Formatter):
    """Render stdlib records (aiohttp, asyncio) through the same redaction as a JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "logger": record.name,
            "level": record.levelname.lower(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        redact_secrets(None, "", event)
        return json.dumps(event)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger whose lines carry `component=<name>`."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
