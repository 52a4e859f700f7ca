"""The `/v1/*` story: what reaches upstream, and what the handler refuses itself."""

from __future__ import annotations

import pytest

from gateway.upstream import Upstream
from tests.conftest import RunningGateway
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
