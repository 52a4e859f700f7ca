"""The `/v1/*` story: what reaches upstream, and what the handler refuses itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.upstream import Upstream
from tests.conftest import GatewayFactory, RunningGateway
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway_client import call, envelope_of


async def test_malformed_json_is_refused_before_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """Malformed JSON on /v1/messages is a 400 invalid_request_error, never sent upstream."""
    status, body, _ = await call(gateway.url, data=b'{"model": ')
    assert (400, "invalid_request_error") == (status, envelope_of(body)[0])
    assert [] == fake_upstream.requests


async def test_closed_upstream_session_is_overloaded_not_sent(
    gateway: RunningGateway, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the upstream session is closed (starting or shutting down) a request gets 503
    overloaded_error and nothing goes upstream."""
    monkeypatch.setattr(Upstream, "is_open", property(lambda self: False))
    status, body, _ = await call(gateway.url)
    expected = ("overloaded_error", "The gateway is starting or shutting down.")
    assert (503, expected) == (status, envelope_of(body))
    assert [] == fake_upstream.requests


HOSTILE = {
    "deep": b'{"model": "claude-sonnet-4-6", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "long-number": b'{"model": "claude-sonnet-4-6", "max_tokens": ' + b"9" * 5_000 + b"}",
    "deep-but-legal": b'{"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": '
    + b"[" * 500
    + b'"hi"'
    + b"]" * 500
    + b"}",
}


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("limited", [False, True], ids=["no-limits", "limits"])
@pytest.mark.parametrize("kind", ["deep", "long-number"])
async def test_legal_but_hostile_json_is_a_400_never_a_500(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    *,
    path: str,
    limited: bool,
    kind: str,
) -> None:
    """JSON nested 100,000 deep or with a 5,000-digit number: a 400 in the envelope, with or
    without limits, nothing sent upstream, no traceback logged."""
    settings = {"limits_file": str(hostile_limits(tmp_path))} if limited else {}
    gateway = await make_gateway(**settings)
    status, body, _ = await call(gateway.url, path, data=HOSTILE[kind])
    assert (400, "invalid_request_error") == (status, envelope_of(body)[0])
    assert [] == fake_upstream.requests
    assert "unhandled_error" not in gateway.logs.getvalue()


async def test_json_nested_deep_but_within_the_decoder_is_estimated_and_sent(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Legal JSON nested 500 deep parses, is estimated, admitted and forwarded: the API
    judges it."""
    gateway = await make_gateway(limits_file=str(hostile_limits(tmp_path)))
    status, _, _ = await call(gateway.url, data=HOSTILE["deep-but-legal"])
    sent = [r.path for r in fake_upstream.requests]
    assert (200, ["/v1/messages/count_tokens", "/v1/messages"]) == (status, sent)


def hostile_limits(tmp_path: Path) -> Path:
    """A limits file limiting every model, count_tokens included."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "count_tokens_requests_per_minute: 100\n"
        "groups:\n  - {name: all, models: ['*'], requests_per_minute: 100,"
        " input_tokens_per_minute: 1000000, estimate: count_tokens}\n"
    )
    return path
