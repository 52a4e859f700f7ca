"""The fake Anthropic API itself, checked byte for byte and through the real SDK (no gateway)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageParam

from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import (
    Delay,
    DropMidStream,
    ErrorMidStream,
    FakeUpstream,
    Hang,
    Reply,
    Stream,
    action_from_json,
)

ROOT = Path(__file__).resolve().parent.parent
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
MODEL = "claude-sonnet-4-6"
USER: list[MessageParam] = [{"role": "user", "content": "Hello"}]
REFERENCE_BODY = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 64, "messages": USER}
REFERENCE_ID = "msg_01XgVYxVqyQjXq9Lh3zF7bKz"

# /work/shared/reference/anthropic-api.md section 5, verbatim.
REFERENCE_STREAM = """\
event: message_start
data: {"type":"message_start","message":{"id":"msg_01XgVYxVqyQjXq9Lh3zF7bKz","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":19,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there!"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":19,"output_tokens":6}}

event: message_stop
data: {"type":"message_stop"}

"""  # noqa: E501

REFERENCE_JSON = (
    '{"id":"msg_01XgVYxVqyQjXq9Lh3zF7bKz","type":"message","role":"assistant",'
    '"model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi there!"}],'
    '"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":19,'
    '"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":6}}'
)


@pytest.fixture
async def sdk(fake_upstream: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The real async SDK pointed straight at the fake, without retries."""
    client = anthropic.AsyncAnthropic(
        base_url=fake_upstream.url, api_key="sk-ant-test", max_retries=0
    )
    yield client
    await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client for byte-level checks."""
    async with aiohttp.ClientSession() as session:
        yield session


def with_reference_id(text: str) -> str:
    """Replace the fake's random message id with the reference example's."""
    return re.sub(r"msg_01[0-9A-Za-z]{22}", REFERENCE_ID, text)


async def collect_event_types(sdk: anthropic.AsyncAnthropic, into: list[str]) -> None:
    """Stream a message through the SDK helper, appending each event's type as it arrives."""
    async with sdk.messages.stream(model=MODEL, max_tokens=64, messages=USER) as stream:
        async for event in stream:
            into.append(event.type)


async def read_http_chunks(response: aiohttp.ClientResponse) -> list[bytes]:
    """The body split at HTTP chunk boundaries (not TCP reads)."""
    chunks: list[bytes] = []
    current = b""
    while True:
        data, end_of_chunk = await response.content.readchunk()
        if not data and not end_of_chunk:
            return chunks
        current += data
        if end_of_chunk:
            chunks.append(current)
            current = b""


async def test_stream_bytes_match_the_reference_example(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A default stream is byte-identical to the reference example, message id aside."""
    body = {**REFERENCE_BODY, "stream": True}
    async with http.post(fake_upstream.url + "/v1/messages", json=body, headers=HEADERS) as resp:
        raw = await resp.read()
    expected = REFERENCE_STREAM
    assert expected == with_reference_id(raw.decode())


async def test_json_body_matches_the_reference_example(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A default non-streaming reply is byte-identical to the reference, message id aside."""
    url = fake_upstream.url + "/v1/messages"
    async with http.post(url, json=REFERENCE_BODY, headers=HEADERS) as resp:
        raw = await resp.read()
    expected = REFERENCE_JSON
    assert expected == with_reference_id(raw.decode())


async def test_stream_headers_are_realistic(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A stream is a chunked text/event-stream with request-id, organisation and limit headers."""
    body = {**REFERENCE_BODY, "stream": True}
    async with http.post(fake_upstream.url + "/v1/messages", json=body, headers=HEADERS) as resp:
        await resp.read()
    expected = {
        "content-type": "text/event-stream; charset=utf-8",
        "transfer-encoding": "chunked",
        "request-id": True,
        "anthropic-organization-id": fake_upstream.organization_id,
        "anthropic-ratelimit-requests-limit": "1000",
        "anthropic-ratelimit-input-tokens-remaining": "78000",
        "reset-is-rfc3339": True,
    }
    actual = {
        "content-type": resp.headers["content-type"],
        "transfer-encoding": resp.headers["transfer-encoding"],
        "request-id": bool(re.fullmatch(r"req_01[0-9A-Za-z]{22}", resp.headers["request-id"])),
        "anthropic-organization-id": resp.headers["anthropic-organization-id"],
        "anthropic-ratelimit-requests-limit": resp.headers["anthropic-ratelimit-requests-limit"],
        "anthropic-ratelimit-input-tokens-remaining": resp.headers[
            "anthropic-ratelimit-input-tokens-remaining"
        ],
        "reset-is-rfc3339": bool(
            re.fullmatch(
                r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                resp.headers["anthropic-ratelimit-tokens-reset"],
            )
        ),
    }
    assert expected == actual


async def test_split_every_cuts_the_stream_into_fixed_size_chunks(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`split_every=7` sends the same bytes as HTTP chunks of exactly 7 bytes (the last shorter)."""
    fake_upstream.script(Stream(split_every=7))
    body = {**REFERENCE_BODY, "stream": True}
    async with http.post(fake_upstream.url + "/v1/messages", json=body, headers=HEADERS) as resp:
        chunks = await read_http_chunks(resp)
    joined = b"".join(chunks)
    expected = [joined[i : i + 7] for i in range(0, len(joined), 7)]
    assert (expected, REFERENCE_STREAM) == (chunks, with_reference_id(joined.decode()))


async def test_sdk_reads_a_stream_split_mid_event(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """The SDK reassembles text and usage from 5-byte chunks with extra pings."""
    fake_upstream.script(Stream(split_every=5, ping_every=2))
    async with sdk.messages.stream(model=MODEL, max_tokens=64, messages=USER) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    expected = ("Hi there!", 19, 6)
    assert expected == (text, final.usage.input_tokens, final.usage.output_tokens)


async def test_ping_every_inserts_pings_between_events(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`ping_every=3` adds a ping after every third event, never after the last."""
    fake_upstream.script(Stream(ping_every=3))
    body = {**REFERENCE_BODY, "stream": True}
    async with http.post(fake_upstream.url + "/v1/messages", json=body, headers=HEADERS) as resp:
        raw = (await resp.read()).decode()
    names = re.findall(r"^event: (\w+)$", raw, flags=re.MULTILINE)
    expected = [
        *("message_start", "content_block_start", "ping", "ping"),
        *("content_block_delta", "content_block_delta", "content_block_stop", "ping"),
        *("message_delta", "message_stop"),
    ]
    assert expected == names


async def test_custom_events_are_sent_as_given(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Scripted events go out verbatim: raw bytes untouched, objects as compact JSON."""
    fake_upstream.script(Stream(events=[b"event: odd\r\ndata: {}\r\n\r\n", ("x", {"a": 1})]))
    url = fake_upstream.url + "/v1/messages"
    async with http.post(url, json=REFERENCE_BODY, headers=HEADERS) as resp:
        raw = await resp.read()
    expected = b'event: odd\r\ndata: {}\r\n\r\nevent: x\ndata: {"a":1}\n\n'
    assert expected == raw


async def test_sdk_stream_true_yields_every_event_type(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """`stream=True` gives the SDK the documented event order (pings are swallowed by it)."""
    events = await sdk.messages.create(model=MODEL, max_tokens=64, messages=USER, stream=True)
    types = [event.type async for event in events]
    expected = [
        *("message_start", "content_block_start", "content_block_delta"),
        *("content_block_delta", "content_block_stop", "message_delta", "message_stop"),
    ]
    assert expected == types


async def test_scripted_statuses_come_out_in_order(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """Scripted replies are consumed FIFO, then the default success resumes."""
    fake_upstream.script(Reply(529), Reply(500), Reply(429, headers={"retry-after": "3"}))
    outcomes: list[tuple[int, str, str | None, str | None]] = []
    for _ in range(4):
        try:
            message = await sdk.messages.create(model=MODEL, max_tokens=64, messages=USER)
        except anthropic.APIStatusError as exc:
            headers = exc.response.headers
            kind = exc.body["error"]["type"]  # type: ignore[index]
            retry = (headers.get("retry-after"), headers.get("x-should-retry"))
            outcomes.append((exc.status_code, kind, *retry))
        else:
            outcomes.append((200, message.content[0].type, None, None))
    expected = [
        (529, "overloaded_error", None, "true"),
        (500, "api_error", None, None),
        (429, "rate_limit_error", "3", "true"),
        (200, "text", None, None),
    ]
    assert expected == outcomes


async def test_error_body_request_id_matches_the_header(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A default error body is the real envelope, its request_id equal to `request-id`."""
    fake_upstream.script(Reply(413))
    url = fake_upstream.url + "/v1/messages"
    async with http.post(url, json=REFERENCE_BODY, headers=HEADERS) as resp:
        body = await resp.json()
    expected = {
        "type": "error",
        "error": {
            "type": "request_too_large",
            "message": "Request exceeds the maximum allowed number of bytes.",
        },
        "request_id": resp.headers["request-id"],
    }
    assert (413, expected) == (resp.status, body)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"anthropic-version": "2023-06-01"}, (401, "authentication_error")),
        ({"authorization": "Bearer sk-ant-test"}, (400, "invalid_request_error")),
        ({**HEADERS}, (404, "not_found_error")),
    ],
    ids=["no-credentials", "no-version", "unknown-path"],
)
async def test_requests_the_real_api_refuses_get_envelopes(
    fake_upstream: FakeUpstream,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    expected: tuple[int, str],
) -> None:
    """Missing credentials, a missing version and unknown paths are refused like the real API."""
    url = fake_upstream.url + "/v1/nothing-here"
    async with http.post(url, json=REFERENCE_BODY, headers=headers) as resp:
        body = await resp.json()
    assert expected == (resp.status, body["error"]["type"])


async def test_enforce_limits_refuses_past_rpm_and_readmits_after_refill(
    http: aiohttp.ClientSession,
) -> None:
    """At 2 RPM the third request gets a 429 with retry-after 30 s; 30 s later it fits."""
    clock = FakeClock(start=0.0)
    async with FakeUpstream(clock=clock) as fake:
        fake.enforce_limits(rpm=2)
        url = fake.url + "/v1/messages"
        statuses, retry_after = [], []
        for advance in (0, 0, 0, 30):
            clock.advance(advance)
            async with http.post(url, json=REFERENCE_BODY, headers=HEADERS) as resp:
                body = await resp.json()
            statuses.append((resp.status, body["type"]))
            retry_after.append(resp.headers.get("retry-after"))
    expected = (
        [(200, "message"), (200, "message"), (429, "error"), (200, "message")],
        [None, None, "30", None],
        1,
        [(0.0, 19, 6), (0.0, 19, 6), (30.0, 19, 6)],
    )
    assert expected == (statuses, retry_after, fake.rejected_429, fake.admitted)


async def test_enforce_limits_charges_input_tokens_named_by_the_request(
    http: aiohttp.ClientSession,
) -> None:
    """`x-fake-input-tokens` sets the charge; the 429 names the axis and the live headers."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        fake.enforce_limits(itpm=100)
        headers = {**HEADERS, "x-fake-input-tokens": "60"}
        responses = []
        for _ in range(2):
            url = fake.url + "/v1/messages"
            async with http.post(url, json=REFERENCE_BODY, headers=headers) as resp:
                body = await resp.json()
            remaining = resp.headers["anthropic-ratelimit-input-tokens-remaining"]
            responses.append((resp.status, resp.headers.get("retry-after"), remaining))
    expected = [(200, None, "40"), (429, "12", "40")]
    assert (expected, True) == (responses, "100 input tokens per minute" in str(body))


async def test_input_tokens_can_derive_from_the_body_size(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """With `input_tokens_from_body`, usage and count_tokens report len(body) // 4."""
    fake_upstream.input_tokens_from_body = True
    message = await sdk.messages.create(model=MODEL, max_tokens=64, messages=USER)
    counted = await sdk.messages.count_tokens(model=MODEL, messages=USER)
    expected = [len(request.body) // 4 for request in fake_upstream.requests]
    assert expected == [message.usage.input_tokens, counted.input_tokens]


async def test_drop_mid_stream_makes_the_sdk_raise(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """A connection killed after three events surfaces as the SDK's connection error."""
    fake_upstream.script(DropMidStream(after_events=3))
    seen: list[str] = []
    with pytest.raises(anthropic.APIConnectionError):
        await collect_event_types(sdk, seen)
    expected = ["message_start", "content_block_start"]
    assert expected == seen


async def test_error_mid_stream_makes_the_sdk_raise_the_error_type(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """An `error` event after a 200 reaches the SDK as the documented error body."""
    fake_upstream.script(ErrorMidStream(after_events=4))
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with sdk.messages.stream(model=MODEL, max_tokens=64, messages=USER) as stream:
            await stream.until_done()
    expected = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert expected == caught.value.body


async def test_client_leaving_mid_stream_counts_one_disconnect(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A client closing after the first event is noticed while the fake is between chunks."""
    fake_upstream.script(Stream(chunk_delay=0.2))
    body = {**REFERENCE_BODY, "stream": True}
    resp = await http.post(fake_upstream.url + "/v1/messages", json=body, headers=HEADERS)
    first = await resp.content.readuntil(b"\n\n")
    resp.close()
    await asyncio.wait_for(fake_upstream.wait_until(lambda f: f.disconnects >= 1), timeout=5)
    expected = (b"event: message_start\n", 1)
    assert expected == (first[:21], fake_upstream.disconnects)


async def test_hang_holds_until_the_client_gives_up(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A hanging request never answers; the client leaving counts as a disconnect."""
    fake_upstream.script(Hang())
    url = fake_upstream.url + "/v1/messages"
    pending = asyncio.create_task(http.post(url, json=REFERENCE_BODY, headers=HEADERS))
    await asyncio.wait_for(fake_upstream.wait_until(lambda f: len(f.requests) == 1), timeout=5)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await asyncio.wait_for(fake_upstream.wait_until(lambda f: f.disconnects == 1), timeout=5)
    expected = 1
    assert expected == fake_upstream.disconnects


async def test_closing_the_fake_cuts_off_a_hanging_request(http: aiohttp.ClientSession) -> None:
    """Closing drops hanging connections promptly and does not count them as disconnects."""
    fake = FakeUpstream()
    await fake.start()
    fake.script(Hang())
    url = fake.url + "/v1/messages"
    pending = asyncio.create_task(http.post(url, json=REFERENCE_BODY, headers=HEADERS))
    await asyncio.wait_for(fake.wait_until(lambda f: len(f.requests) == 1), timeout=5)
    await asyncio.wait_for(fake.close(), timeout=5)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await pending
    expected = 0
    assert expected == fake.disconnects


async def test_delay_takes_the_next_action_with_it(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A Delay is dequeued with the action after it, so a concurrent request gets the default."""
    fake_upstream.script(Delay(0.2), Reply(500))
    url = fake_upstream.url + "/v1/messages"
    delayed = asyncio.create_task(http.post(url, json=REFERENCE_BODY, headers=HEADERS))
    await asyncio.wait_for(fake_upstream.wait_until(lambda f: len(f.requests) == 1), timeout=5)
    async with http.post(url, json=REFERENCE_BODY, headers=HEADERS) as prompt:
        await prompt.read()
    async with await delayed as late:
        await late.read()
    expected = (200, 500)
    assert expected == (prompt.status, late.status)


async def test_sdk_parses_models_and_count_tokens(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """Models list, retrieve and count_tokens parse into the SDK's types."""
    listed = [model.id async for model in sdk.models.list()]
    one = await sdk.models.retrieve("claude-haiku-4-5-20251001")
    counted = await sdk.messages.count_tokens(model=MODEL, messages=USER)
    expected = (
        ["claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5-20251001"],
        "Claude Haiku 4.5",
        19,
    )
    assert expected == (listed, one.display_name, counted.input_tokens)


async def test_sdk_runs_a_batch_through_its_absolute_results_url(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """Create, retrieve, list, results (fetched from results_url), cancel and delete all parse."""
    params: Any = {"model": MODEL, "max_tokens": 64, "messages": USER}
    batch = await sdk.messages.batches.create(requests=[{"custom_id": "a", "params": params}])
    ended = await sdk.messages.batches.retrieve(batch.id)
    listed = [item.id async for item in sdk.messages.batches.list()]
    results = [line async for line in await sdk.messages.batches.results(batch.id)]
    other = await sdk.messages.batches.create(requests=[{"custom_id": "b", "params": params}])
    canceling = await sdk.messages.batches.cancel(other.id)
    deleted = await sdk.messages.batches.delete(batch.id)
    result = results[0].result
    text = result.message.content[0].text if result.type == "succeeded" else ""  # type: ignore[union-attr]
    expected = (
        "in_progress",
        "ended",
        f"{fake_upstream.url}/v1/messages/batches/{batch.id}/results",
        [batch.id],
        ("a", "Hi there!"),
        "canceling",
        "message_batch_deleted",
    )
    actual = (
        batch.processing_status,
        ended.processing_status,
        ended.results_url,
        listed,
        (results[0].custom_id, text),
        canceling.processing_status,
        deleted.type,
    )
    assert expected == actual


async def test_sdk_round_trips_a_file(
    fake_upstream: FakeUpstream, sdk: anthropic.AsyncAnthropic
) -> None:
    """Upload (multipart), list, metadata, download and delete through `beta.files`."""
    upload = ("notes.txt", io.BytesIO(b"hello file"), "text/plain")
    meta = await sdk.beta.files.upload(file=upload)
    listed = [item.id async for item in sdk.beta.files.list()]
    again = await sdk.beta.files.retrieve_metadata(meta.id)
    content = await (await sdk.beta.files.download(meta.id)).read()
    deleted = await sdk.beta.files.delete(meta.id)
    expected = ("notes.txt", "text/plain", 10, [meta.id], meta, b"hello file", "file_deleted")
    actual = (
        meta.filename,
        meta.mime_type,
        meta.size_bytes,
        listed,
        again,
        content,
        deleted.type,
    )
    assert expected == actual


async def test_legacy_complete_streams_completion_events(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`/v1/complete` with stream=true sends completion events with one ping."""
    body = {"model": "claude-2.1", "prompt": "\n\nHuman: hi\n\nAssistant:", "stream": True}
    async with http.post(fake_upstream.url + "/v1/complete", json=body, headers=HEADERS) as resp:
        raw = (await resp.read()).decode()
    completions = [
        json.loads(line[6:])["completion"] for line in raw.splitlines() if '"completion"' in line
    ]
    names = re.findall(r"^event: (\w+)$", raw, flags=re.MULTILINE)
    expected = (["completion", "ping", "completion", "completion"], [" Hi", " there!", ""])
    assert expected == (names, completions)


def test_actions_parse_from_json() -> None:
    """The control endpoint's JSON spells every action."""
    items: list[dict[str, Any]] = [
        {"type": "reply", "status": 529},
        {"type": "reply", "status": 200, "body": "raw", "headers": {"a": "b"}},
        {"type": "stream", "split_every": 3, "events": [["ping", "{}"]]},
        {"type": "error_mid_stream", "after_events": 2},
        {"type": "drop_mid_stream", "after_events": 1},
        {"type": "delay", "seconds": 0.5},
        {"type": "hang"},
    ]
    expected = [
        Reply(529),
        Reply(200, b"raw", {"a": "b"}),
        Stream(events=[("ping", "{}")], split_every=3),
        ErrorMidStream(2),
        DropMidStream(1),
        Delay(0.5),
        Hang(),
    ]
    assert expected == [action_from_json(item) for item in items]


@pytest.mark.slow
async def test_standalone_process_takes_scripts_and_reports_stats(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """`python -m tests.support.fake_upstream` serves, obeys /_fake/script and dumps stats."""
    stats_path = tmp_path / "stats.json"
    command = ["-m", "tests.support.fake_upstream", "--port", "0", "--rpm", "1"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        "--stats-path",
        str(stats_path),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        url = line.decode().split()[-1]
        async with http.post(url + "/_fake/script", json=[{"type": "reply", "status": 529}]):
            pass
        statuses = []
        for _ in range(2):
            async with http.post(url + "/v1/messages", json=REFERENCE_BODY, headers=HEADERS) as r:
                statuses.append(r.status)
        async with http.get(url + "/_fake/stats") as resp:
            live = await resp.json()
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=20)
    dumped = json.loads(stats_path.read_text())
    summary = (live["requests"], live["rejected_429"], len(live["admitted"]))
    assert ([529, 429], (2, 1, 1), live, 0) == (statuses, summary, dumped, code)
