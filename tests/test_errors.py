"""The `GatewayError` tree and the Anthropic error envelope, as plain data."""

from __future__ import annotations

import json

import pytest

from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    envelope,
)


def test_envelope_is_the_apis_error_body_in_compact_json() -> None:
    """The envelope is Anthropic's error body, without spaces, and no request id unless given."""
    expected = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down."}}'
    assert expected == envelope("rate_limit_error", "Slow down.")


def test_envelope_carries_the_gateways_request_id_when_given() -> None:
    """With a request id the envelope carries it as `request_id`, after the error."""
    document = json.loads(envelope("api_error", "Internal gateway error.", "gw_1"))
    expected = {
        "type": "error",
        "error": {"type": "api_error", "message": "Internal gateway error."},
        "request_id": "gw_1",
    }
    assert expected == document


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (GatewayError, (500, "api_error", "gateway_error")),
        (InvalidRequest, (400, "invalid_request_error", "invalid_request")),
        (NotFound, (404, "not_found_error", "gateway_error")),
        (RequestTooLarge, (413, "request_too_large", "invalid_request")),
        (RateLimited, (429, "rate_limit_error", "rejected")),
        (InternalError, (500, "api_error", "gateway_error")),
        (UpstreamUnavailable, (502, "api_error", "upstream_unavailable")),
        (Overloaded, (503, "overloaded_error", "gateway_error")),
        (UpstreamTimeout, (504, "timeout_error", "upstream_timeout")),
    ],
)
def test_each_error_has_its_status_type_and_outcome(
    error: type[GatewayError], expected: tuple[int, str, str]
) -> None:
    """Each error in the tree renders with its own status and error type, counted under its
    own outcome label."""
    raised = error("message")
    assert expected == (raised.status, raised.error_type, raised.outcome)


def test_a_cost_over_a_limit_is_request_too_large_counted_as_never_fits() -> None:
    """`RequestTooLarge(outcome="never_fits")` keeps its 413 but is counted as never_fits."""
    raised = RequestTooLarge("too big for any bucket", outcome="never_fits")
    assert (413, "request_too_large", "never_fits") == (
        raised.status,
        raised.error_type,
        raised.outcome,
    )


def test_headers_are_copied_and_the_message_kept() -> None:
    """An error keeps its client-safe message and its own copy of the headers it was given."""
    given = {"retry-after": "3"}
    raised = RateLimited("Rate limited.", headers=given)
    given["retry-after"] = "9"
    assert ("Rate limited.", {"retry-after": "3"}) == (raised.message, raised.headers)
