"""The real `anthropic` Python SDK, sync and async, works through the gateway unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import anthropic
import pytest
from anthropic.types import MessageParam

from tests.conftest import TEST_KEY, RunningGateway
from tests.support.fake_upstream import DropMidStream, FakeUpstream, Reply

T = TypeVar("T")
MODEL = "claude-sonnet-4-6"
HELLO: list[MessageParam] = [{"role": "user", "content": "Hello"}]


def async_client(gateway: RunningGateway, **kwargs: Any) -> anthropic.AsyncAnthropic:
    """An async SDK client pointed at the gateway; use it with `async with`."""
    return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=TEST_KEY, **kwargs)


def sync_client(gateway: RunningGateway, **kwargs: Any) -> anthropic.Anthropic:
    """A sync SDK client pointed at the gateway, like a user would configure it."""
    return anthropic.Anthropic(base_url=gateway.url, api_key=TEST_KEY, **kwargs)


async def in_thread(call: Callable[[], T]) -> T:
    """Run a blocking SDK call off the loop that serves the gateway."""
    return await asyncio.to_thread(call)


async def test_messages_create_sync(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    """messages.create returns the upstream message, and the upstream saw the SDK's request."""
    client = sync_client(gateway)
    message = await in_thread(
        lambda: client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    )
    assert ("Hi there!", 19, 6) == (
        message.content[0].text,  # type: ignore[union-attr]
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    seen = fake_upstream.requests[-1]
    assert ("POST", "/v1/messages", MODEL) == (seen.method, seen.path, seen.json()["model"])


async def test_messages_stream_helper_async(gateway: RunningGateway) -> None:
    """messages.stream gives text_stream chunks and a final message with usage."""
    async with (
        async_client(gateway) as client,
        client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream,
    ):
        text = "".join([chunk async for chunk in stream.text_stream])
        final = await stream.get_final_message()
    assert ("Hi there!", 6) == (text, final.usage.output_tokens)


async def test_stream_true_sync(gateway: RunningGateway) -> None:
    """stream=True yields the raw event sequence in order."""
    client = sync_client(gateway)

    def run() -> list[str]:
        events = client.messages.create(model=MODEL, max_tokens=64, messages=HELLO, stream=True)
        return [event.type for event in events]

    types = await in_thread(run)
    assert "message_start" == types[0]
    assert "message_stop" == types[-1]
    assert "content_block_delta" in types


async def test_base_url_from_environment(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ANTHROPIC_BASE_URL alone points the SDK at the gateway."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", gateway.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", TEST_KEY)
    async with anthropic.AsyncAnthropic() as client:
        message = await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert "msg_" == message.id[:4]


async def test_count_tokens_and_models(gateway: RunningGateway) -> None:
    """count_tokens, models.list and models.retrieve pass through."""
    async with async_client(gateway) as client:
        counted = await client.messages.count_tokens(model=MODEL, messages=HELLO)
        models = [model.id async for model in client.models.list()]
        one = await client.models.retrieve(models[0])
    assert counted.input_tokens > 0
    assert models[0] == one.id


async def test_batches_lifecycle(gateway: RunningGateway, fake_upstream: FakeUpstream) -> None:
    """batches create, retrieve, list, cancel and results work through the gateway."""
    async with async_client(gateway) as client:
        batch = await client.messages.batches.create(
            requests=[
                {"custom_id": "a", "params": {"model": MODEL, "max_tokens": 8, "messages": HELLO}}
            ]
        )
        fetched = await client.messages.batches.retrieve(batch.id)
        listed = [b.id async for b in client.messages.batches.list()]
        results = [r.custom_id async for r in await client.messages.batches.results(batch.id)]
        cancelled = await client.messages.batches.cancel(batch.id)
    assert (batch.id, [batch.id], ["a"]) == (fetched.id, listed, results)
    assert cancelled.processing_status in ("canceling", "ended")
    paths = [r.path for r in fake_upstream.requests]
    assert f"/v1/messages/batches/{batch.id}/cancel" in paths


async def test_files_lifecycle(gateway: RunningGateway) -> None:
    """beta files upload, list, metadata, download and delete round-trip the bytes."""
    async with async_client(gateway) as client:
        content = bytes(range(256)) * 64
        uploaded = await client.beta.files.upload(file=("data.bin", content, "application/pdf"))
        listed = [f.id async for f in client.beta.files.list()]
        meta = await client.beta.files.retrieve_metadata(uploaded.id)
        downloaded = await (await client.beta.files.download(uploaded.id)).read()
        deleted = await client.beta.files.delete(uploaded.id)
    assert ([uploaded.id], len(content), content, uploaded.id) == (
        listed,
        meta.size_bytes,
        downloaded,
        deleted.id,
    )


async def test_beta_headers_reach_upstream(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """beta.messages sends anthropic-beta, forwarded unchanged."""
    async with async_client(gateway) as client:
        await client.beta.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "Hello"}],
            betas=["context-1m-2025-08-07"],
        )
        seen = fake_upstream.requests[-1]
    assert "context-1m-2025-08-07" == seen.headers["anthropic-beta"]


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (404, anthropic.NotFoundError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.OverloadedError),
    ],
)
async def test_upstream_errors_map_to_sdk_exceptions(
    gateway: RunningGateway,
    fake_upstream: FakeUpstream,
    status: int,
    exception: type[anthropic.APIStatusError],
) -> None:
    """An upstream error reaches the SDK as the right exception with the upstream request id."""
    fake_upstream.script(Reply(status, headers={"request-id": "req_upstream_42"}))
    no_retries = {"x-gateway-max-retries": "0"}  # the gateway's own retries would hide it
    async with async_client(gateway, max_retries=0, default_headers=no_retries) as client:
        with pytest.raises(exception) as caught:
            await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    assert ("req_upstream_42", status) == (caught.value.request_id, caught.value.status_code)


async def _consume_stream(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream:
        async for _ in stream.text_stream:
            pass
        await stream.get_final_message()


async def test_upstream_drop_mid_stream_raises_in_sdk(
    gateway: RunningGateway, fake_upstream: FakeUpstream
) -> None:
    """An upstream that dies mid-stream makes the SDK raise, never end quietly."""
    fake_upstream.script(DropMidStream(after_events=3))
    async with async_client(gateway, max_retries=0) as client:
        with pytest.raises(anthropic.APIConnectionError):
            await _consume_stream(client)
    assert "upstream_dropped" == gateway.access_lines()[-1]["outcome"]
