"""structlog setup: JSON (or console) lines on stdout, request context, secret redaction.

Every line passes `redact_secrets`, so an API key that slips into an event (a header dump,
an exception message) is masked before it is rendered. Request-scoped fields (request id,
method, path) are bound with contextvars by the middleware.

The JSON chain ends in `JsonLines`, which also lets a caller on the hot path (the access
line, `access_line.py`) render a line of known shape itself and write it where the chain
would: `write()` adds what the chain adds after the event's own keys (context, `fields`,
level, timestamp), or declines when only the chain can say (a value that may hold a secret).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii  # json.dumps's own (C) string encoder
from typing import Any, TextIO

import structlog

from gateway.clock import wall_time_ns

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


def maybe_secret(text: str) -> bool:
    """Whether MAYBE_SECRET finds something in `text`: the same answer, at a fraction of the
    cost for ASCII text without `://` (a case-insensitive alternation is searched character by
    character; a lower-cased copy and `in` skip ahead). Beyond ASCII case folding is wider
    (a Kelvin sign matches `k`), so the regex answers."""
    if not text.isascii() or "://" in text:
        return MAYBE_SECRET.search(text) is not None
    text = text.lower()  # then MAYBE_SECRET's plain alternatives, spelt out: any() costs more
    return (
        "sk-ant-" in text
        or "cgw_" in text
        or "bearer" in text
        or "x-api-key" in text
        or "authorization" in text
    )


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
    if SECRET_KEYS.isdisjoint(names) and not maybe_secret("\n".join(texts)):
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
        JsonLines(out, numeric, fields or {}, cache=cache)
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


def _fields_json(fields: Mapping[str, object]) -> str | None:
    """`fields` as the chain renders them after an event's keys; None (the chain renders
    them) unless every value is a plain str, int, float or bool that `redact_secrets` would
    leave alone."""
    texts = "\n".join(value for value in fields.values() if isinstance(value, str))
    if (
        any(type(value) not in (str, int, float, bool) for value in fields.values())
        or maybe_secret(texts)
        or not SECRET_KEYS.isdisjoint(key.lower() for key in fields)
    ):
        return None
    return "".join(
        f", {encode_basestring_ascii(key)}: {json.dumps(value)}" for key, value in fields.items()
    )


CONTEXT_PREFIX = "structlog_"
"""How structlog names the ContextVars behind `bind_contextvars` (as merge_contextvars reads)."""


class JsonLines:
    """The end of the JSON chain: renders each event as structlog's JSONRenderer does, and
    knows where the lines go, so that the access line can skip the chain (`json_lines()`)."""

    def __init__(
        self, out: TextIO, level: int, fields: Mapping[str, object], *, cache: bool = False
    ) -> None:
        self.level = level
        """Lines below this level are not written."""
        self.cache = cache
        """configure_logging's `cache`: a caller may keep this object, as loggers keep theirs."""
        self.write_text, self.flush = out.write, out.flush
        self._render = structlog.processors.JSONRenderer()
        self._reserved = frozenset({"level", "timestamp", *fields})
        self._fields = _fields_json(fields)
        self._prefixes: dict[contextvars.ContextVar[Any], tuple[str, str]] = {}
        """Each structlog ContextVar seen: its key, and `, "key": ` ("" if the chain's)."""
        self._tail: tuple[int, str, str] = (-1, "", "")
        """The second and level last written, and the line's end up to the fraction."""

    def __call__(self, logger: object, method: str, event: MutableMapping[str, Any]) -> str | bytes:
        return self._render(logger, method, event)

    def write(self, head: str, level: str, keys: frozenset[str], texts: str) -> bool:
        """Write an event whose own keys (bound context first, the message last) the caller
        rendered as `head`, completed as the chain completes it: `, <contextvars>, <fields>,
        "level": ..., "timestamp": ...}`, newline included, in one write, then a flush.

        False, with nothing written, when only the chain can tell what to write: `texts` (the
        event's string values, joined by newlines) or a context value may hold a secret, a
        context value is not a str, or a context key is secret-named or one that `keys`, the
        fields or the chain set (`redact_secrets` and the precedence of keys are the chain's).
        """
        if self._fields is None or not self._reserved.isdisjoint(keys):
            return False
        context = ""
        prefixes = self._prefixes
        for var, value in contextvars.copy_context().items():  # as merge_contextvars, in order
            key_prefix = prefixes.get(var)
            if key_prefix is None:
                if not var.name.startswith(CONTEXT_PREFIX):
                    continue
                key_prefix = prefixes[var] = self._key_prefix(var.name[len(CONTEXT_PREFIX) :])
            if value is Ellipsis:  # unbound
                continue
            key, prefix = key_prefix
            if not prefix or key in keys or type(value) is not str:
                return False
            context += f"{prefix}{encode_basestring_ascii(value)}"
            texts += f"\n{value}"
        if maybe_secret(texts):
            return False
        # TimeStamper(fmt="iso", utc=True): datetime.isoformat(), whose fraction is left out
        # when it is zero; all up to the fraction is formatted once a second.
        second, micros = divmod(wall_time_ns() // 1000, 1_000_000)
        tail = self._tail
        if tail[0] != second or tail[1] != level:
            date_time = datetime.fromtimestamp(second, UTC).isoformat()[:19]
            tail = (second, level, f'{self._fields}, "level": "{level}", "timestamp": "{date_time}')
            self._tail = tail  # one tuple: a thread sees a second's text whole or not at all
        if micros:
            self.write_text(f'{head}{context}{tail[2]}.{micros:06d}Z"}}\n')
        else:
            self.write_text(f'{head}{context}{tail[2]}Z"}}\n')
        self.flush()
        return True

    def _key_prefix(self, key: str) -> tuple[str, str]:
        """A context key and its JSON text up to the value; "" when only the chain may write
        it: a secret-named key, or one the fields or the chain set."""
        if key.lower() in SECRET_KEYS or key in self._reserved:
            return key, ""
        return key, f", {encode_basestring_ascii(key)}: "


def json_lines() -> JsonLines | None:
    """The JSON chain's end when structlog runs the chain `configure_logging` set up (JSON
    format); None for the console format or any other configuration (`capture_logs()`)."""
    processors = structlog.get_config()["processors"]
    try:
        last = processors[-1]
    except (IndexError, TypeError):  # none, or an iterable that is not a sequence
        return None
    return last if isinstance(last, JsonLines) else None


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
