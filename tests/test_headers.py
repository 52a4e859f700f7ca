"""Which headers cross the gateway, and how the credential scope is derived."""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.headers import (
    credential_of,
    downstream_response_headers,
    upstream_request_headers,
)


def test_request_headers_drop_hop_by_hop_and_gateway_controls() -> None:
    """Hop-by-hop headers, host, content-length and x-gateway-* stay at the gateway."""
    incoming = CIMultiDict(
        {
            "Host": "gw:8080",
            "Connection": "keep-alive, X-Custom-Hop",
            "X-Custom-Hop": "1",
            "Keep-Alive": "timeout=5",
            "Content-Length": "10",
            "Transfer-Encoding": "chunked",
            "x-gateway-max-wait": "0",
            "x-api-key": "sk-ant-abc",
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "files-api-2025-04-14",
            "x-stainless-retry-count": "0",
            "Accept-Encoding": "gzip",
        }
    )
    forwarded = upstream_request_headers(incoming)
    assert [
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
        "x-stainless-retry-count",
        "Accept-Encoding",
    ] == list(forwarded.keys())


def test_response_headers_pass_through_untouched() -> None:
    """request-id, rate-limit, retry headers and content-encoding come back unchanged."""
    upstream = CIMultiDict(
        {
            "request-id": "req_1",
            "anthropic-ratelimit-requests-remaining": "999",
            "retry-after": "3",
            "x-should-retry": "true",
            "Content-Encoding": "gzip",
            "Transfer-Encoding": "chunked",
            "Connection": "keep-alive",
            "Set-Cookie": "a=b",
        }
    )
    relayed = downstream_response_headers(upstream)
    assert {
        "request-id": "req_1",
        "anthropic-ratelimit-requests-remaining": "999",
        "retry-after": "3",
        "x-should-retry": "true",
        "Content-Encoding": "gzip",
        "Set-Cookie": "a=b",
    } == dict(relayed)


def test_credential_from_x_api_key_or_bearer_gives_one_scope() -> None:
    """The same key sent as x-api-key or Authorization: Bearer maps to one limiter scope."""
    by_header = credential_of(CIMultiDict({"x-api-key": "sk-ant-123"}))
    by_bearer = credential_of(CIMultiDict({"Authorization": "Bearer sk-ant-123"}))
    assert by_header is not None
    assert by_bearer is not None
    assert by_header.scope == by_bearer.scope
    assert "sk-ant" not in by_header.scope


def test_no_credential_is_none() -> None:
    """A request without credentials has no scope (the API will answer 401)."""
    assert credential_of(CIMultiDict({"anthropic-version": "2023-06-01"})) is None
