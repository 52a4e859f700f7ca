"""The middleware: errors in Anthropic's envelope with the gateway's request id, one access line."""

from __future__ import annotations

import json

import anthropic
import pytest
from anthropic.types import MessageParam

from gateway import handler as handler_module
from tests.conftest import TEST_KEY, RunningGateway
from tests.support.fake_upstream import FakeUpstream, Stream
from tests.support.gateway_client import call, envelope_of

MODEL = "claude-sonnet-4-6"
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]


async def test_unknown_path_outside_v1_is_not_found(gateway: RunningGateway) -> None:
    """A path outside /v1 and the ops endpoints gets 404 not_found_error."""
    status, body, headers = await call(gateway.url, "/v2/messages")
    assert (404, ("not_found_error", "Not found: POST /v2/messages")) == (
        status,
        envelope_of(body),
    )
    assert body["request_id"] == headers["x-gateway-request-id"]


async def test_internal_bug_is_500_without_details(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception gives a bare 500 api_error; the traceback goes to the log only."""

    def broken(path: str, body: bytes) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(handler_module, "parse_facts", broken)
    status, body, _ = await call(gateway.url)
    assert (500, ("api_error", "Internal gateway error.")) == (status, envelope_of(body))
    assert "secret internal detail" not in json.dumps(body)
    assert "secret internal detail" in gateway.logs.getvalue()


async def test_wrong_method_on_ops_endpoint(gateway: RunningGateway) -> None:
    """POST /healthz gets a 405 in the envelope, not aiohttp's HTML."""
    status, body, _ = await call(gateway.url, "/healthz")
    assert (405, "invalid_request_error") == (status, envelope_of(body)[0])


async def test_one_access_line_per_request_with_its_facts(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """A streamed request yields exactly one access line with model, status and upstream id."""
    fake_upstream.script(Stream(split_every=5))
    async with (
        anthropic.AsyncAnthropic(base_url=gateway.url, api_key=TEST_KEY) as client,
        client.messages.stream(model=MODEL, max_tokens=8, messages=HELLO) as stream,
    ):
        await stream.get_final_message()
    (line,) = gateway.access_lines()
    assert (MODEL, True, 200, "ok", "/v1/messages") == (
        line["model"],
        line["stream"],
        line["status"],
        line["outcome"],
        line["path"],
    )
    assert line["upstream_request_id"].startswith("req_")
    assert line["bytes_out"] > 0
    assert line["request_id"].startswith("gw_")
