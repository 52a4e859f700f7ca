"""The fake Anthropic API itself, checked byte for byte and through the real SDK (no gateway)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import MessageParam

from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import (
    Charge,
    Delay,
    DropMidStream,
    ErrorMidStream,
    FakeUpstream,
    Hang,
    OutputCharging,
    Reply,
    StallMidStream,
    Stream,
    Totals,
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


def credentials(key: str, *, bearer: bool = False) -> dict[str, str]:
    """Headers authenticating with `key`, as `x-api-key` or as `authorization: Bearer`."""
    auth = {"authorization": f"Bearer {key}"} if bearer else {"x-api-key": key}
    return {**auth, "anthropic-version": "2023-06-01"}


async def post_as(
    http: aiohttp.ClientSession,
    url: str,
    key: str,
    *,
    bearer: bool = False,
    extra: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str], Any]:
    """POST the reference body to `url` with `key`: status, headers and the parsed JSON body."""
    headers = {**credentials(key, bearer=bearer), **(extra or {})}
    async with http.post(url, json=REFERENCE_BODY, headers=headers) as resp:
        return resp.status, resp.headers, await resp.json()


def stream_data(raw: bytes) -> list[dict[str, Any]]:
    """The parsed `data:` objects of an SSE body, in order."""
    lines = raw.decode().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: ")]


async def test_keys_of_one_organization_share_its_rpm(http: aiohttp.ClientSession) -> None:
    """Two keys of one organisation (x-api-key and Bearer) draw on one RPM bucket."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        org = fake.add_organization(["sk-a", "sk-b"], organization_id="org-ab", rpm=2)
        url = fake.url + "/v1/messages"
        replies = [
            await post_as(http, url, "sk-a"),
            await post_as(http, url, "sk-b", bearer=True),
            await post_as(http, url, "sk-a"),
        ]
    outcomes = [(s, h["anthropic-ratelimit-requests-remaining"]) for s, h, _ in replies]
    refusal = replies[2][2]["error"]["message"]
    rejected = (fake.rejected_429, org.rejected_429, fake.default_organization.rejected_429)
    expected = ([(200, "1"), (200, "0"), (429, "0")], True, (1, 1, 0))
    assert expected == (
        outcomes,
        "organization (org-ab) of 2 requests per minute" in refusal,
        rejected,
    )


async def test_keys_of_different_organizations_do_not_share(http: aiohttp.ClientSession) -> None:
    """Two organisations and the default one (unknown keys) each have their own 1 RPM."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        one = fake.add_organization(["sk-one"], rpm=1)
        two = fake.add_organization(["sk-two"], rpm=1)
        fake.enforce_limits(rpm=1)
        url = fake.url + "/v1/messages"
        keys = ("sk-one", "sk-two", "sk-other", "sk-one", "sk-two", "sk-other")
        statuses = [(await post_as(http, url, key))[0] for key in keys]
    rejected = [org.rejected_429 for org in (one, two, fake.default_organization)]
    expected = ([200, 200, 200, 429, 429, 429], [1, 1, 1], 3)
    assert expected == (statuses, rejected, fake.rejected_429)


async def test_every_response_names_the_organization_of_its_key(
    http: aiohttp.ClientSession,
) -> None:
    """Successes, errors, 429s, count_tokens, models and 404s name the key's organisation."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        fake.add_organization(["sk-a"], organization_id="org-a", rpm=2)
        fake.add_organization(["sk-b"], organization_id="org-b")
        fake.script(Reply(500))
        calls = [
            ("POST", "/v1/messages", "sk-a", False),  # the scripted 500
            ("POST", "/v1/messages", "sk-a", True),
            ("POST", "/v1/messages", "sk-a", False),  # org-a's 2 RPM are spent
            ("POST", "/v1/messages/count_tokens", "sk-b", True),
            ("GET", "/v1/models", "sk-b", False),
            ("POST", "/v1/nothing-here", "sk-b", False),
            ("POST", "/v1/messages", "sk-unknown", True),
        ]
        seen = []
        for method, path, key, bearer in calls:
            body = REFERENCE_BODY if method == "POST" else None
            headers = credentials(key, bearer=bearer)
            async with http.request(method, fake.url + path, json=body, headers=headers) as resp:
                await resp.read()
            seen.append((resp.status, resp.headers["anthropic-organization-id"]))
    expected = [
        *((500, "org-a"), (200, "org-a"), (429, "org-a")),
        *((200, "org-b"), (200, "org-b"), (404, "org-b")),
        (200, fake.organization_id),
    ]
    assert expected == seen


async def test_cache_reads_are_free_on_itpm_but_cache_writes_count(
    http: aiohttp.ClientSession,
) -> None:
    """Each call costs input + cache writes (40 of 100 ITPM), never its 5,000 cache reads."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        fake.usage.update(
            input_tokens=10, cache_creation_input_tokens=30, cache_read_input_tokens=5000
        )
        fake.enforce_limits(itpm=100)
        url = fake.url + "/v1/messages"
        replies = [await post_as(http, url, "sk-test") for _ in range(3)]
    outcomes = [
        (status, headers["anthropic-ratelimit-input-tokens-remaining"], headers.get("retry-after"))
        for status, headers, _ in replies
    ]
    expected = (
        [(200, "60", None), (200, "20", None), (429, "20", "12")],
        Totals(requests=2, input=80, output=12),
        [(0.0, 40, 6), (0.0, 40, 6)],
    )
    assert expected == (outcomes, fake.default_organization.charged_in(), fake.admitted)


async def test_a_stream_charges_its_output_delta_by_delta(http: aiohttp.ClientSession) -> None:
    """240 output tokens stream as 4 deltas of 60 tokens (240 characters each), each charged
    as it is sent: the headers, sent first, still show the whole OTPM."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        fake.enforce_limits(otpm=1000)
        headers = {**HEADERS, "x-fake-output-tokens": "240"}
        body = {**REFERENCE_BODY, "stream": True}
        async with http.post(fake.url + "/v1/messages", json=body, headers=headers) as resp:
            events = stream_data(await resp.read())
        remaining = resp.headers["anthropic-ratelimit-output-tokens-remaining"]
        level = fake.default_organization.level("output")
    deltas = [len(e["delta"]["text"]) for e in events if e["type"] == "content_block_delta"]
    usage = [e["usage"]["output_tokens"] for e in events if e["type"] == "message_delta"]
    charged = [charge.output for charge in fake.charged[fake.organization_id]]
    expected = ("1000", [240, 240, 240, 240], [240], [0, 60, 60, 60, 60], 760)
    assert expected == (remaining, deltas, usage, charged, level)


@pytest.mark.parametrize(
    ("after_events", "expected"),
    [(4, (60, 200)), (5, (0, 429))],
    ids=["one-delta-sent", "two-deltas-sent"],
)
async def test_a_request_during_a_slow_stream_sees_the_output_generated_so_far(
    http: aiohttp.ClientSession, after_events: int, expected: tuple[int, int]
) -> None:
    """Under 120 OTPM, a 240-token stream stuck after one 60-token delta leaves another key
    of the organisation 60 tokens of room (admitted); stuck after two, none (429)."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        org = fake.add_organization(["sk-a", "sk-b"], otpm=120)
        fake.script(StallMidStream(after_events=after_events))
        url = fake.url + "/v1/messages"
        headers = {**credentials("sk-a"), "x-fake-output-tokens": "240"}
        stream = await http.post(url, json={**REFERENCE_BODY, "stream": True}, headers=headers)
        for _ in range(after_events):
            await stream.content.readuntil(b"\n\n")
        level = org.level("output")
        status, _, _ = await post_as(http, url, "sk-b", extra={"x-fake-output-tokens": "1"})
        stream.close()
    assert expected == (level, status)


async def test_a_dropped_stream_is_charged_only_the_deltas_it_sent(
    http: aiohttp.ClientSession,
) -> None:
    """A connection cut after the first of 4 deltas charges 60 of the 240 output tokens."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        fake.script(DropMidStream(after_events=4))
        headers = {**HEADERS, "x-fake-output-tokens": "240"}
        body = {**REFERENCE_BODY, "stream": True}
        async with http.post(fake.url + "/v1/messages", json=body, headers=headers) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    expected = Totals(requests=1, input=19, output=60)
    assert expected == fake.default_organization.charged_in()


async def test_an_empty_output_bucket_refuses_until_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    """89 output tokens take 60 OTPM to -29: later calls get 429s with retry-after until 1
    token of room is back (30 s); refusals charge nothing and leave the script alone."""
    clock = FakeClock(start=0.0)
    async with FakeUpstream(clock=clock) as fake:
        fake.enforce_limits(otpm=60)
        url = fake.url + "/v1/messages"
        first, _, _ = await post_as(http, url, "sk-test", extra={"x-fake-output-tokens": "89"})
        fake.script(Reply(529))
        outcomes, messages = [], []
        for advance in (0, 29, 1):
            clock.advance(advance)
            status, headers, body = await post_as(http, url, "sk-test")
            remaining = headers["anthropic-ratelimit-output-tokens-remaining"]
            retry = (headers.get("retry-after"), headers.get("x-should-retry"))
            outcomes.append((status, body["error"]["type"], *retry, remaining))
            messages.append(body["error"]["message"])
    named = f"organization ({fake.organization_id}) of 60 output tokens per minute"
    expected = (
        200,
        [
            (429, "rate_limit_error", "30", "true", "0"),
            (429, "rate_limit_error", "1", "true", "0"),
            (529, "overloaded_error", None, "true", "1"),
        ],
        True,
        (2, Totals(requests=2, input=38, output=89)),
    )
    actual = (
        first,
        outcomes,
        named in messages[0],
        (fake.rejected_429, fake.default_organization.charged_in()),
    )
    assert expected == actual


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("as_generated", ("100", [0, 30, 30, 0, 60], (200, None))),
        ("at_admission", ("40", [60], (429, "12"))),
    ],
)
async def test_at_admission_mode_reserves_the_output_up_front(
    http: aiohttp.ClientSession,
    mode: OutputCharging,
    expected: tuple[str, list[int], tuple[int, str | None]],
) -> None:
    """At admission a stream's 60 output tokens are charged before its headers and the next
    60-token call does not fit 100 OTPM; as generated they come with the deltas and it does."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        fake.enforce_limits(otpm=100, output_charged=mode)
        url = fake.url + "/v1/messages"
        headers = {**HEADERS, "x-fake-output-tokens": "60"}
        async with http.post(url, json={**REFERENCE_BODY, "stream": True}, headers=headers) as r:
            await r.read()
        status, second, _ = await post_as(
            http, url, "sk-test", extra={"x-fake-output-tokens": "60"}
        )
    charged = [charge.output for charge in fake.charged[fake.organization_id]]
    actual = (
        r.headers["anthropic-ratelimit-output-tokens-remaining"],
        charged,
        (status, second.get("retry-after")),
    )
    assert expected == actual


async def test_charges_carry_their_time_and_sum_over_a_window(
    http: aiohttp.ClientSession,
) -> None:
    """Each charge is stamped with the fake's clock; `charged_in` sums a [start, end) window."""
    clock = FakeClock(start=0.0)
    async with FakeUpstream(clock=clock) as fake:
        org = fake.add_organization(["sk-a"])
        for _ in range(3):
            await post_as(http, fake.url + "/v1/messages", "sk-a")
            clock.advance(10)
    expected = (
        [
            *(Charge(0.0, requests=1, input=19), Charge(0.0, output=6)),
            *(Charge(10.0, requests=1, input=19), Charge(10.0, output=6)),
            *(Charge(20.0, requests=1, input=19), Charge(20.0, output=6)),
        ],
        Totals(requests=1, input=19, output=6),
        Totals(requests=2, input=38, output=12),
    )
    assert expected == (org.charged, org.charged_in(10, 20), org.charged_in(10))


async def test_stream_text_tracks_the_output_tokens(
    fake_upstream: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """500 output tokens are 2,000 characters in 8 deltas (64 tokens at most each); the
    final usage is exact and a JSON reply carries the same text."""
    fake_upstream.usage["output_tokens"] = 500
    url = fake_upstream.url + "/v1/messages"
    async with http.post(url, json={**REFERENCE_BODY, "stream": True}, headers=HEADERS) as resp:
        events = stream_data(await resp.read())
    _, _, message = await post_as(http, url, "sk-test")
    deltas = [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"]
    usage = [e["usage"]["output_tokens"] for e in events if e["type"] == "message_delta"]
    expected = ([248] * 7 + [264], [500], "".join(deltas))
    assert expected == ([len(d) for d in deltas], usage, message["content"][0]["text"])


async def test_default_organization_keeps_the_single_tenant_behaviour(
    http: aiohttp.ClientSession,
) -> None:
    """Without `add_organization` every key, x-api-key or Bearer, shares the default
    organisation's limits; its id is `organization_id`, which a test may rename."""
    async with FakeUpstream(clock=FakeClock(start=0.0)) as fake:
        fake.enforce_limits(rpm=1)
        url = fake.url + "/v1/messages"
        old = fake.organization_id
        first = await post_as(http, url, "sk-one")
        second = await post_as(http, url, "sk-two", bearer=True)
        fake.organization_id = "org-renamed"
        third = await post_as(http, url, "sk-three")
    outcomes = [(s, h["anthropic-organization-id"]) for s, h, _ in (first, second, third)]
    expected = (
        [(200, old), (429, old), (429, "org-renamed")],
        True,
        ["org-renamed"],
        (2, [(0.0, 19, 6)]),
    )
    actual = (
        outcomes,
        f"organization ({old}) of 1 requests per minute" in second[2]["error"]["message"],
        list(fake.organizations),
        (fake.rejected_429, fake.admitted),
    )
    assert expected == actual


async def test_a_key_belongs_to_one_organization() -> None:
    """Giving a key to a second organisation, or an id twice, is refused."""
    fake = FakeUpstream()
    fake.add_organization(["sk-a"], organization_id="org-a")
    with pytest.raises(ValueError, match="sk-a"):
        fake.add_organization(["sk-b", "sk-a"])
    with pytest.raises(ValueError, match="org-a"):
        fake.add_organization(["sk-c"], organization_id="org-a")
    expected = ["org-a"]
    assert expected == [org_id for org_id in fake.organizations if org_id != fake.organization_id]


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
        {"type": "stall_mid_stream", "after_events": 4},
        {"type": "delay", "seconds": 0.5},
        {"type": "hang"},
    ]
    expected = [
        Reply(529),
        Reply(200, b"raw", {"a": "b"}),
        Stream(events=[("ping", "{}")], split_every=3),
        ErrorMidStream(2),
        DropMidStream(1),
        StallMidStream(4),
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


@pytest.mark.slow
async def test_standalone_process_maps_keys_to_organizations(http: aiohttp.ClientSession) -> None:
    """`--org ORGID=KEY1,KEY2` gives those keys one organisation with the `--rpm` limit of
    their own; other keys stay in the default organisation."""
    command = ["-m", "tests.support.fake_upstream", "--port", "0", "--rpm", "1"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        *("--org", "org-cli=sk-cli,sk-cli-2"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        url = line.decode().split()[-1]
        seen = []
        for key in ("sk-cli", "sk-cli-2", "sk-other"):
            status, headers, _ = await post_as(http, url + "/v1/messages", key, bearer=True)
            seen.append((status, headers["anthropic-organization-id"]))
        async with http.get(url + "/_fake/stats") as resp:
            stats = await resp.json()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=20)
    default = seen[2][1]
    expected = (
        [(200, "org-cli"), (429, "org-cli"), (200, default)],
        {"rejected_429": 1, "requests": 1, "input": 19, "output": 6},
    )
    assert expected == (seen, stats["organizations"]["org-cli"])
