"""`limited_call`: which requests meet the limiter, on which buckets, in whose scope."""

from __future__ import annotations

import pytest

from gateway.headers import Credential
from gateway.limited_call import ANONYMOUS_SCOPE, limited_call
from gateway.messages import RequestFacts

KEY = Credential("x-api-key", "sk-ant-api03-limited-call")
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}


@pytest.mark.parametrize(
    ("method", "path", "facts", "expected"),
    [
        ("POST", "/v1/messages", RequestFacts("/v1/messages", "m", body=BODY), ("m", None)),
        ("POST", "/v1/complete", RequestFacts("/v1/complete", "m", body=BODY), ("m", None)),
        ("POST", "/v1/messages/count_tokens", None, ("", "count_tokens")),
        ("GET", "/v1/messages/batches/msgbatch_1?limit=2", None, ("", "batches")),
        ("POST", "/v1/messages/batches", None, ("", "batches")),
    ],
)
def test_generations_and_endpoints_with_their_own_rpm_meet_the_limiter(
    method: str, path: str, facts: RequestFacts | None, expected: tuple[str, str | None]
) -> None:
    """A generation is limited by its model; count_tokens and batches by their endpoint."""
    call = limited_call(method, path, {}, facts, KEY)
    assert call is not None
    assert (expected, KEY.scope) == ((call.model, call.endpoint), call.scope)


@pytest.mark.parametrize(
    ("method", "path", "facts"),
    [
        ("GET", "/v1/models", None),
        ("GET", "/v1/messages/count_tokens", None),
        ("POST", "/v1/messages", RequestFacts("/v1/messages", None, body={"messages": []})),
        ("POST", "/v1/files", None),
    ],
)
def test_everything_else_passes_through(method: str, path: str, facts: RequestFacts | None) -> None:
    """Models, files, a GET of count_tokens and a generation without a model meet no limit
    (the API answers a missing model itself)."""
    assert None is limited_call(method, path, {}, facts, KEY)


def test_a_request_without_a_key_is_scoped_anonymous() -> None:
    """No credential: the anonymous scope (the organisation scope then assumes one)."""
    call = limited_call("POST", "/v1/messages/count_tokens", {}, None, None)
    assert call is not None
    assert ANONYMOUS_SCOPE == call.scope
