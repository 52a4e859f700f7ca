"""The access line: one JSON line per finished request, written straight from its record.

Every request writes one at the default `info`, so with JSON logs it skips structlog's
generic chain (context merge, level, timestamp, the redaction check, `json.dumps`: 18 µs a
line) for one f-string of the known keys and value types (4.5 µs; `python -m
bench.access_line`, docs/performance.md). What it writes is the line the chain writes, byte
for byte but the timestamp (tests/test_access_line.py renders records both ways). The chain
still writes the line whenever it alone can tell: a value that may hold a credential (it
masks it), an unusual log context (`JsonLines.write`), the console format, or a structlog
configured by something other than `configure_logging` (a test's `capture_logs()`).
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _json  # json.dumps's (C) string encoder
from logging import INFO

from gateway.logs import JsonLines, get_logger, json_lines
from gateway.record import RequestRecord

COMPONENT = "gateway.access"
access_log = get_logger(COMPONENT)
KEYS = frozenset(
    {
        "component", "method", "path", "route", "model", "stream", "status", "outcome",
        "duration_ms", "ttfb_ms", "model_group", "queue_wait_ms", "upstream_request_id",
        "bytes_out", "error", "tenant", "event",
    }
)  # fmt: skip
"""Every key the line may have, the optional `error` and `tenant` included."""


class _Output:
    """Where access lines go, found as structlog's lazy loggers find their chain: on every
    line, or once when `configure_logging(cache=True)` (the server)."""

    def __init__(self) -> None:
        self.kept: JsonLines | None = None

    def find(self) -> JsonLines | None:
        """The JSON chain's end, or None: the chain writes every line (`json_lines()`)."""
        lines = json_lines()
        if lines is not None and lines.cache:
            self.kept = lines
        return lines


_output = _Output()


def log_access(record: RequestRecord) -> None:
    """Write the request's access line; a successful ops call has none. `error` names why
    the connection level refused one it could not read (`connections.py`).

    The line is rendered here, as the chain would render it, unless only the chain can tell
    what to write (`JsonLines.write`). Every value that does not come from the gateway's code
    is checked for secrets: the client's method, path and model, the API's request id, the
    limits file's group and tenant names, the log context. `route` is a label of a fixed set
    (`route_of`), `outcome` and `error` fixed words.
    """
    r = record
    if r.route == "ops" and r.status < 400:
        return
    lines = _output.kept or _output.find()
    if lines is None:
        log_access_generic(r)
        return
    if lines.level > INFO:
        return
    model, upstream, error, tenant = r.model, r.upstream_request_id, r.error_kind, r.tenant
    first, queue_wait = r.first_byte_at, r.queue_wait
    extra = "" if error is None else f', "error": {_json(error)}'
    if tenant is not None:
        extra += f', "tenant": {_json(tenant)}'
    head = (
        f'{{"component": "{COMPONENT}", "method": {_json(r.method)}, "path": {_json(r.path)}, '
        f'"route": {_json(r.route)}, "model": {"null" if model is None else _json(model)}, '
        f'"stream": {"true" if r.stream else "false"}, "status": {r.status}, '
        f'"outcome": {_json(r.outcome)}, "duration_ms": {_ms(r.ended_at - r.started_at)}, '
        f'"ttfb_ms": {"null" if first is None else _ms(first - r.started_at)}, '
        f'"model_group": {_json(r.group)}, '
        f'"queue_wait_ms": {_ms(queue_wait) if queue_wait else "0.0"}, '  # no wait: +0.0
        f'"upstream_request_id": {"null" if upstream is None else _json(upstream)}, '
        f'"bytes_out": {r.bytes_out}{extra}, "event": "request"'
    )
    texts = f"{r.method}\n{r.path}\n{model}\n{r.group}\n{upstream}\n{tenant}"
    if not lines.write(head, "info", KEYS, texts):
        log_access_generic(r)


def log_access_generic(record: RequestRecord) -> None:
    """The line through structlog's whole chain: the reference the fast path matches."""
    ttfb = record.ttfb
    extra = {} if record.error_kind is None else {"error": record.error_kind}
    if record.tenant is not None:
        extra["tenant"] = record.tenant
    access_log.info(
        "request",
        method=record.method,
        path=record.path,
        route=record.route,
        model=record.model,
        stream=record.stream,
        status=record.status,
        outcome=record.outcome,
        duration_ms=round((record.ended_at - record.started_at) * 1000, 3),
        ttfb_ms=None if ttfb is None else round(ttfb * 1000, 3),
        model_group=record.group,
        queue_wait_ms=round(record.queue_wait * 1000, 3),
        upstream_request_id=record.upstream_request_id,
        bytes_out=record.bytes_out,
        **extra,
    )


def _ms(seconds: float) -> str:
    """`repr(round(seconds * 1000, 3))`, the chain's figure, at half the cost: the same
    correctly rounded digits, trailing zeros dropped (repr would switch to an exponent only
    past 1e16 ms)."""
    text = f"{seconds * 1000:.3f}".rstrip("0")
    return f"{text}0" if text[-1] == "." else text
