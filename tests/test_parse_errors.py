"""aiohttp's parser errors map to a fixed kind, status and message by class alone."""

from __future__ import annotations

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from gateway.parse_errors import PARSER_REFUSALS, parser_refusal

SECRET = b"sk-ant-api03-SECRET"
LINE, FIELD = 8190, 65536


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (LineTooLong(SECRET, LINE), "request_line_too_long"),
        (LineTooLong(SECRET, FIELD), "headers_too_large"),
        (BadHttpMessage("Too many headers received"), "headers_too_large"),
        (BadHttpMethod(SECRET.decode()), "malformed_request_line"),
        (BadStatusLine(SECRET.decode()), "malformed_request_line"),
        (InvalidURLError(SECRET.decode()), "malformed_target"),
        (InvalidHeader(SECRET), "malformed_header"),
        (TransferEncodingError(SECRET.decode()), "malformed_body"),
        (BadHttpMessage("Duplicate Content-Length"), "malformed_request"),
        (HttpProcessingError(code=400, message=SECRET.decode()), "malformed_request"),
    ],
)
def test_each_parser_error_has_its_kind(error: HttpProcessingError, kind: str) -> None:
    """The kind comes from the class (and, for LineTooLong, the limit it names)."""
    assert kind == parser_refusal(error, LINE, FIELD)


def test_an_oversized_line_is_a_header_when_the_limits_are_equal() -> None:
    """With equal line and field limits the two cannot be told apart: 431, the safer reading."""
    assert "headers_too_large" == parser_refusal(LineTooLong(SECRET, LINE), LINE, LINE)


def test_statuses_are_400_414_and_431_with_messages_of_our_own() -> None:
    """Oversized lines and headers get 414 and 431; every other refusal 400."""
    statuses = {kind: status for kind, (status, _) in PARSER_REFUSALS.items()}
    assert {"request_line_too_long": 414, "headers_too_large": 431} == {
        kind: status for kind, status in statuses.items() if status != 400
    }
    assert all(message.endswith(".") for _, message in PARSER_REFUSALS.values())
