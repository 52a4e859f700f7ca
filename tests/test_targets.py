"""Request targets: only plain paths under /v1 reach the upstream, with the API's methods.

Raw requests over a socket (an HTTP client would normalise the paths), against a gateway whose
upstream base URL has a path prefix, so a target that climbs out of it would show.
"""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError, InvalidRequest, MethodNotAllowed
from gateway.targets import check_target
from tests.conftest import TEST_KEY, GatewayFactory
from tests.support.fake_upstream import FakeUpstream
from tests.support.raw_http import exchange, parse_answer

AUTH = f"x-api-key: {TEST_KEY}\r\nanthropic-version: 2023-06-01\r\nConnection: close\r\n"
CLIMBING = [
    "/v1/../../internal/admin",
    "/v1/./models",
    "/v1/models/..",
    "/v1/%2e%2e/%2e%2e/internal/admin",
    "/v1/%2E%2E/internal",
    "/v1/%2e./internal",
    "/v1/.%2E/internal",
    "/v1/%2e/models",
    "/v1/..%2f..%2finternal/admin",
    "/v1/..%2F..%2Finternal",
    "/v1/..%5c..%5cinternal",
    "/v1/..\\..\\internal",
    "/v1/%252e%252e/%252e%252e/internal",
    "/v1/%25252e%25252e/internal",
    "/v1/models/..?beta=true",
]


@pytest.mark.parametrize("target", CLIMBING)
def test_dot_segments_are_refused_however_encoded(target: str) -> None:
    """A `.` or `..` segment, raw or percent-encoded (twice too, behind %2F or \\), is a 400."""
    with pytest.raises(InvalidRequest, match="must not contain"):
        check_target("GET", target)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/messages",
        "/v1/messages?beta=true",
        "/v1/models/claude-sonnet-4-6",
        "/v1/files/file_011CNha8iCJcU1wXNR6q4V8w/content",
        "/v1/messages/batches/msgbatch_01/results",
        "/v1/files/a..b",
        "/v1/models?after_id=..",
        "/v1/skills/name%20with%20space",
    ],
)
def test_ordinary_targets_pass(target: str) -> None:
    """What the SDKs send passes, dots inside a segment or in the query included."""
    check_target("GET", target)


@pytest.mark.parametrize(
    ("method", "target", "error"),
    [
        ("GET", "http://evil.example/v1/models", InvalidRequest),
        ("GET", "evil.example:443", InvalidRequest),
        ("OPTIONS", "*", InvalidRequest),
        ("CONNECT", "evil.example:443", MethodNotAllowed),
        ("TRACE", "/v1/models", MethodNotAllowed),
    ],
)
def test_non_origin_form_and_tunnel_methods_are_refused(
    method: str, target: str, error: type[GatewayError]
) -> None:
    """Absolute-form, authority-form and asterisk targets are 400s; CONNECT and TRACE 405s."""
    with pytest.raises(error):
        check_target(method, target)


@pytest.mark.parametrize(
    ("line", "status"),
    [
        *((f"GET {target} HTTP/1.1", 400) for target in CLIMBING),
        ("GET http://evil.example/v1/models HTTP/1.1", 400),
        ("GET http://127.0.0.1:1/v1/models HTTP/1.1", 400),
        ("OPTIONS * HTTP/1.1", 400),
        ("CONNECT evil.example:443 HTTP/1.1", 405),
        ("TRACE /v1/models HTTP/1.1", 405),
        ("PROPFIND /v1/models HTTP/1.1", 405),
        ("PUT /v1/messages HTTP/1.1", 405),
        ("PATCH /v1/models HTTP/1.1", 405),
    ],
)
async def test_refused_targets_never_reach_a_path_prefixed_upstream(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, line: str, status: int
) -> None:
    """Each hostile request line gets its 400/405 in the envelope and upstream sees nothing."""
    gateway = await make_gateway(upstream_url=fake_upstream.url + "/anthropic")
    raw = f"{line}\r\nHost: gateway\r\n{AUTH}\r\n".encode()
    answer = parse_answer(await exchange(gateway.server.port, raw))
    assert (status, "invalid_request_error") == (answer.status, answer.json()["error"]["type"])
    assert answer.json()["request_id"] == answer.headers["x-gateway-request-id"]
    assert [] == fake_upstream.requests


async def test_method_refused_on_v1_names_the_allowed_ones(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    """A 405 on /v1 carries `Allow` with the API's methods."""
    gateway = await make_gateway()
    raw = f"PUT /v1/messages HTTP/1.1\r\nHost: gateway\r\n{AUTH}\r\n".encode()
    answer = parse_answer(await exchange(gateway.server.port, raw))
    allowed = {method.strip() for method in answer.headers["allow"].split(",")}
    assert (405, {"GET", "POST", "DELETE", "OPTIONS"}) == (answer.status, allowed)


@pytest.mark.parametrize(
    ("method", "target", "seen"),
    [
        ("GET", "/v1/models?limit=2", "/anthropic/v1/models"),
        ("DELETE", "/v1/files/file_011", "/anthropic/v1/files/file_011"),
        ("OPTIONS", "/v1/messages", "/anthropic/v1/messages"),
    ],
)
async def test_plain_targets_reach_the_upstream_under_its_base_path(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, method: str, target: str, seen: str
) -> None:
    """The API's methods on plain paths are forwarded under the upstream's base path."""
    gateway = await make_gateway(upstream_url=fake_upstream.url + "/anthropic")
    raw = f"{method} {target} HTTP/1.1\r\nHost: gateway\r\n{AUTH}\r\n".encode()
    await exchange(gateway.server.port, raw)
    assert [(method, seen)] == [(r.method, r.path) for r in fake_upstream.requests]
