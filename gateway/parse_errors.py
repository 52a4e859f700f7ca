"""What aiohttp's HTTP parser refused, in words fixed here: a kind, a status and a message.

The parser's own messages quote the offending bytes (a header line holding an API key, the
request line with its query string), so they never reach a client or a log line: each error
maps to a kind by its class alone, and the kind to a status and a message that say what was
wrong without repeating any of it. 431 and 414 mark oversized headers and request lines, which
aiohttp reports with one exception class, `LineTooLong`, told apart by the limit it names.
"""

from __future__ import annotations

from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

PARSER_REFUSALS = {
    "request_line_too_long": (414, "The request line is too long."),
    "headers_too_large": (431, "The request headers are too large."),
    "malformed_request_line": (400, "Malformed HTTP request line."),
    "malformed_target": (400, "Malformed request target."),
    "malformed_header": (400, "Malformed HTTP header."),
    "malformed_body": (400, "Malformed request body framing."),
    "malformed_request": (400, "Malformed HTTP request."),
}
"""Kind -> (status, message)."""
TOO_MANY_HEADERS = "Too many headers received"
"""aiohttp's fixed message for more than `max_headers` headers (both parsers)."""


def parser_refusal(exc: HttpProcessingError, max_line_size: int, max_field_size: int) -> str:
    """The `PARSER_REFUSALS` kind of an aiohttp parser error (its own text is never used)."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size and limit != max_field_size:
            return "request_line_too_long"
        return "headers_too_large"
    if isinstance(exc, BadStatusLine):
        return "malformed_request_line"
    if isinstance(exc, InvalidURLError):
        return "malformed_target"
    if isinstance(exc, InvalidHeader):
        return "malformed_header"
    if isinstance(exc, PayloadEncodingError):
        return "malformed_body"
    if isinstance(exc, BadHttpMessage) and exc.message == TOO_MANY_HEADERS:
        return "headers_too_large"
    return "malformed_request"
