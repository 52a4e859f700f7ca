"""A scriptable fake Anthropic API: a real aiohttp app on 127.0.0.1, port 0.

It speaks the real JSON and SSE formats (`anthropic_payloads`), records every request, and
answers `/v1/messages` and `/v1/complete` from a FIFO script of actions, falling back to a
realistic success; other endpoints live in `fake_resources`. Standalone:
`python -m tests.support.fake_upstream --port N [--rpm R --itpm I --otpm O --org ID=K1,K2]`
(see `main`).

    async with FakeUpstream() as fake:
        fake.script(Reply(529), Stream(split_every=7))
        ...  # point a client or the gateway at fake.url

Rate limits work as the API's do (shared/reference/anthropic-api.md section 1): each
organisation has continuous token buckets shared by all of its API keys; every response names
the key's organisation in `anthropic-organization-id`; output is charged as it is generated.

    org = fake.add_organization(["sk-a", "sk-b"], rpm=60, otpm=8_000)
    fake.enforce_limits(rpm=10)  # the default organisation: every key not named elsewhere
    ...
    org.charged_in(start, end)  # requests, input and output charged in that window
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, NamedTuple, get_args
from uuid import uuid4

from aiohttp import web
from multidict import CIMultiDict

from gateway.clock import Clock, SystemClock
from tests.support import anthropic_payloads as p
from tests.support.fake_resources import REQUEST_ID, FakeResources, error_reply, json_reply

Event = bytes | tuple[str, str | Mapping[str, Any]]
"""A stream event: (name, data text or object), or raw bytes sent verbatim."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OutputCharging = Literal["as_generated", "at_admission"]
"""When output tokens are charged to OTPM.

`as_generated` (the newest API): admission only needs output room (at least 1 token, so the
`-remaining` header is above 0); a JSON reply's output is charged when it is sent, a stream's
with each text delta, and may take the bucket below 0. `at_admission` (older accounts): the
usage's output is reserved and charged at admission, which needs that much room.
"""

Frame = tuple[bytes, int]
"""Stream bytes and the output tokens generated with them (charged as they are written)."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One API request the fake received: decoded path, query string as sent, body bytes."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer with `status`; a None body is the default: success JSON or the error envelope.

    429 and 529 get `x-should-retry: true`; add `retry-after` through `headers` if wanted.
    """

    status: int
    body: Mapping[str, Any] | bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stream:
    """A 200 SSE stream, even for a non-streaming request; default events match the reference.

    `split_every` cuts the whole byte stream into chunks of that many bytes (events straddle
    chunk boundaries); otherwise each event is one chunk. `chunk_delay` sleeps between chunks.
    `ping_every` inserts a `ping` after every that many events.
    """

    events: Sequence[Event] | None = None
    chunk_delay: float = 0.0
    split_every: int | None = None
    ping_every: int | None = None


@dataclass(frozen=True, slots=True)
class ErrorMidStream:
    """A 200 stream: `after_events` default events, then an `error` event, then a clean end."""

    after_events: int
    error_type: str = "overloaded_error"


@dataclass(frozen=True, slots=True)
class DropMidStream:
    """A 200 stream: `after_events` default events, then the TCP connection is aborted."""

    after_events: int


@dataclass(frozen=True, slots=True)
class StallMidStream:
    """A 200 stream: `after_events` default events, then silence (generation stuck) until the
    client leaves or the fake closes; the output of the deltas sent is charged."""

    after_events: int


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait `seconds` before sending headers, then perform the next scripted action (or default).

    The next action is dequeued together with the Delay, so concurrent requests cannot take it.
    """

    seconds: float


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the request and never answer, until the client leaves or the fake closes."""


Action = Reply | Stream | ErrorMidStream | DropMidStream | StallMidStream | Delay | Hang

_ACTION_TYPES: Mapping[str, Callable[..., Action]] = {
    "reply": Reply,
    "stream": Stream,
    "error_mid_stream": ErrorMidStream,
    "drop_mid_stream": DropMidStream,
    "stall_mid_stream": StallMidStream,
    "delay": Delay,
    "hang": Hang,
}


def action_from_json(item: Mapping[str, Any]) -> Action:
    """An action from `{"type": "reply"|"stream"|"error_mid_stream"|..., **fields}`.

    A string `body` is sent as UTF-8 bytes; stream `events` are `[name, data]` pairs.
    """
    fields = {key: value for key, value in item.items() if key != "type"}
    if isinstance(fields.get("body"), str):
        fields["body"] = fields["body"].encode()
    if fields.get("events") is not None:
        fields["events"] = [(str(name), data) for name, data in fields["events"]]
    return _ACTION_TYPES[item["type"]](**fields)


class _Bucket:
    """A continuous token bucket: capacity `limit`, refilled at limit/60 per second.

    Output charged as generated may take the level below 0; it then refills from there.
    """

    def __init__(self, limit: int, now: float) -> None:
        self.limit, self.level, self._at = limit, float(limit), now

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self._at) * self.limit / 60)
        self._at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the level reaches `amount` (0 if it already has)."""
        return max(0.0, (amount - self.level) * 60 / self.limit)


_AXES = {"requests": "requests", "input": "input tokens", "output": "output tokens"}
_HEADER_AXES = {"requests": "requests", "input": "input-tokens", "output": "output-tokens"}


class Charge(NamedTuple):
    """What an organisation was charged at clock time `at` (admission, or output generated)."""

    at: float
    requests: int = 0
    input: int = 0
    output: int = 0


class Totals(NamedTuple):
    """Requests, input tokens and output tokens charged over a window."""

    requests: int
    input: int
    output: int


class Organization:
    """One organisation of the fake API: its keys, its limits, what it was charged and refused.

    Read: `id`, `keys`, `output_charged`, `rejected_429` (its refusals), `charged` (every
    `Charge` in time order: 1 request and the input at admission; the output when generated,
    or at admission under `at_admission`), `limit(axis)`, `level(axis)`, `charged_in(...)`.
    """

    def __init__(
        self,
        organization_id: str,
        keys: Iterable[str],
        now: Callable[[], float],
        on_change: Callable[[], None],
    ) -> None:
        self.id = organization_id
        self.keys = frozenset(keys)
        self.output_charged: OutputCharging = "as_generated"
        self.rejected_429 = 0
        self.charged: list[Charge] = []
        self._buckets: dict[str, _Bucket] = {}
        self._now, self._on_change = now, on_change

    def set_limits(
        self,
        *,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        output_charged: OutputCharging = "as_generated",
    ) -> None:
        """Enforce these per-minute limits (None or 0: not enforced), with full buckets."""
        if output_charged not in get_args(OutputCharging):
            raise ValueError(f"output_charged must be one of {get_args(OutputCharging)}")
        now = self._now()
        limits = {"requests": rpm, "input": itpm, "output": otpm}
        self._buckets = {axis: _Bucket(lim, now) for axis, lim in limits.items() if lim}
        self.output_charged = output_charged

    def limit(self, axis: str) -> int | None:
        """The enforced per-minute limit of `axis` ("requests", "input", "output"), or None."""
        bucket = self._buckets.get(axis)
        return None if bucket is None else bucket.limit

    def level(self, axis: str) -> float | None:
        """The live level of `axis`'s bucket (below 0 after output past it), or None."""
        bucket = self._buckets.get(axis)
        if bucket is None:
            return None
        bucket.refill(self._now())
        return bucket.level

    def charged_in(self, start: float = -math.inf, end: float = math.inf) -> Totals:
        """What was charged at clock times `start <= at < end`."""
        window = [charge for charge in self.charged if start <= charge.at < end]
        return Totals(
            sum(charge.requests for charge in window),
            sum(charge.input for charge in window),
            sum(charge.output for charge in window),
        )

    def admit(self, charged_input: int, output: int) -> tuple[str, float] | None:
        """Charge an admitted call and return None; or, charging nothing, the short axis
        with the longest wait and that wait in seconds.

        Needs 1 request and `charged_input` input tokens; 1 token of output room, or under
        `at_admission` `output` tokens of it (they are then charged here).
        """
        at_admission = self.output_charged == "at_admission"
        reserved = output if at_admission else 0
        need = {"requests": 1, "input": charged_input, "output": reserved if at_admission else 1}
        now = self._now()
        short: dict[str, float] = {}
        for axis, bucket in self._buckets.items():
            bucket.refill(now)
            if bucket.level < need[axis]:
                short[axis] = bucket.wait_for(need[axis])
        if short:
            self.rejected_429 += 1
            self._on_change()
            return max(short.items(), key=lambda item: item[1])
        self.charge(Charge(now, 1, charged_input, reserved))
        return None

    def charge_output(self, tokens: int) -> None:
        """Charge `tokens` of output generated now (nothing if 0)."""
        if tokens:
            self.charge(Charge(self._now(), output=tokens))

    def charge(self, charge: Charge) -> None:
        """Take `charge` from the buckets (refilled to its time first) and record it."""
        amounts = {"requests": charge.requests, "input": charge.input, "output": charge.output}
        for axis, bucket in self._buckets.items():
            bucket.refill(charge.at)
            bucket.level -= amounts[axis]
        self.charged.append(charge)
        self._on_change()

    def live_headers(self, wall: datetime) -> dict[str, str]:
        """`anthropic-ratelimit-*` headers of the enforced axes: exact levels, floored, >= 0
        (the real API rounds tokens to 1,000)."""
        now = self._now()
        headers: dict[str, str] = {}
        for axis, bucket in self._buckets.items():
            bucket.refill(now)
            level = max(0, math.floor(bucket.level))
            headers.update(p.axis_headers(_HEADER_AXES[axis], bucket.limit, level, wall))
        return headers

    def limit_message(self, axis: str) -> str:
        """The 429 message naming this organisation and `axis`, as the API words it."""
        return (
            f"This request would exceed the rate limit for your organization "
            f"({self.id}) of {self._buckets[axis].limit:,} {_AXES[axis]} per "
            f"minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can "
            f"see the response headers for current usage. Please reduce the prompt length or the "
            f"maximum tokens requested, or try again later."
        )


ORGANIZATION = web.RequestKey("organization", Organization)
"""The organisation of an API request's key."""


def api_key(headers: Mapping[str, str]) -> str | None:
    """The credential of a request: `x-api-key`, else the token of `authorization: Bearer`."""
    if "x-api-key" in headers:
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class _Closing(Exception):
    """The fake is closing while a request waits."""


class FakeUpstream:
    """The fake API server; its state lives on this object, its handlers are its methods.

    Read: `url`, `requests`, `disconnects` (clients gone before the fake finished answering),
    `rejected_429` (all organisations), `admitted` ((clock time, input charged, usage output)
    per admitted call, all organisations), `count_tokens_calls` (requests to
    `/v1/messages/count_tokens`), `organizations` (id -> `Organization`, the default one
    included), `charged` (id -> that organisation's `Charge`s).
    Set: `reply_text` (a streamed or JSON answer is grown to about 4 characters per output
    token, see `anthropic_payloads.sized_pieces`), `usage` (reported per reply; requests may
    override input and output with `x-fake-input-tokens` / `x-fake-output-tokens`),
    `input_tokens_from_body` (input = len(body) // 4), `rate_limit_headers` (added to every API
    reply unless already set; an organisation's enforced axes replace theirs),
    `count_tokens_input` (the count every default count_tokens answer gives; None = the
    `usage` input as above), `organization_id` (the default organisation's id).
    `script_count_tokens` scripts count_tokens answers; `add_organization` and
    `enforce_limits` set up organisations and their limits.
    """

    def __init__(self, *, clock: Clock | None = None, host: str = "127.0.0.1", port: int = 0):
        self.clock: Clock = clock or SystemClock()
        self.host, self.port, self.url = host, port, ""
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.rejected_429 = 0
        self.admitted: list[tuple[float, int, int]] = []
        self.reply_text = "Hi there!"
        self.default_stream = Stream()
        """How a stream no script shaped is sent (e.g. `Stream(chunk_delay=0.01)`: paced)."""
        self.tokens_per_delta = p.TOKENS_PER_DELTA
        """The most output tokens one text delta of a long answer carries (the real API sends
        a few at a time)."""
        self.usage: dict[str, int] = {
            "input_tokens": 19,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 6,
        }
        self.input_tokens_from_body = False
        self.count_tokens_input: int | None = None
        self.count_tokens_calls = 0
        self.rate_limit_headers: dict[str, str] = p.default_rate_limit_headers(p.utc_now())
        self.resources = FakeResources(
            lambda: self.url, lambda: self.reply_text, lambda: self.usage
        )
        self._script: deque[Action] = deque()
        self._count_script: deque[Action] = deque()
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._default = self._new_organization(str(uuid4()), ())
        self.organizations: dict[str, Organization] = {self._default.id: self._default}
        self._by_key: dict[str, Organization] = {}

    @property
    def organization_id(self) -> str:
        """The default organisation's id: the organisation of every key not added elsewhere."""
        return self._default.id

    @organization_id.setter
    def organization_id(self, value: str) -> None:
        if value != self._default.id and value in self.organizations:
            raise ValueError(f"organisation {value!r} exists already")
        del self.organizations[self._default.id]
        self._default.id = value
        self.organizations[value] = self._default

    @property
    def default_organization(self) -> Organization:
        """The organisation of every key no `add_organization` named (and of key-less calls)."""
        return self._default

    @property
    def charged(self) -> dict[str, list[Charge]]:
        """Every organisation's charges in time order, by organisation id."""
        return {org_id: org.charged for org_id, org in self.organizations.items()}

    def _new_organization(self, organization_id: str, keys: Iterable[str]) -> Organization:
        return Organization(organization_id, keys, self.clock.now, self._notify)

    async def start(self) -> None:
        """Serve on `host:port` (port 0 picks a free one) and set `url`."""
        self._runner = web.AppRunner(
            self.build_app(), handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        """Stop serving; hanging and delayed requests are cut off, not counted as disconnects."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def script(self, *actions: Action) -> None:
        """Queue actions for the next `/v1/messages` or `/v1/complete` calls, in order."""
        self._script.extend(actions)

    def script_count_tokens(self, *actions: Reply | Delay | Hang) -> None:
        """Queue actions for the next `/v1/messages/count_tokens` calls, in order.

        `Reply(200)` without a body is the default count; any other `Reply` is sent as is (an
        error status gets the error envelope); `Hang` never answers until the fake closes.
        """
        self._count_script.extend(actions)

    def add_organization(
        self,
        keys: Iterable[str],
        *,
        organization_id: str | None = None,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        output_charged: OutputCharging = "as_generated",
    ) -> Organization:
        """A new organisation owning `keys` (sent as `x-api-key` or `authorization: Bearer`),
        with its own limits (as `enforce_limits`) shared by all of them; a fresh UUID unless
        `organization_id` names it."""
        if isinstance(keys, str):
            raise TypeError("keys must be a list of API keys, not one string")
        org = self._new_organization(organization_id or str(uuid4()), keys)
        if org.id in self.organizations:
            raise ValueError(f"organisation {org.id!r} exists already")
        if taken := sorted(key for key in org.keys if key in self._by_key):
            raise ValueError(f"keys already belong to an organisation: {taken}")
        org.set_limits(rpm=rpm, itpm=itpm, otpm=otpm, output_charged=output_charged)
        self.organizations[org.id] = org
        self._by_key.update(dict.fromkeys(org.keys, org))
        return org

    def organization_for(self, key: str | None) -> Organization:
        """The organisation of an API key: the one `add_organization` gave it, or the default."""
        return self._by_key.get(key or "", self._default)

    def enforce_limits(
        self,
        *,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        output_charged: OutputCharging = "as_generated",
        organization: str | None = None,
    ) -> None:
        """Refuse the default organisation's inference calls (`organization`'s, given its id)
        past these per-minute limits with a real 429; the buckets start full.

        An admitted call is charged 1 request and its input tokens plus cache writes (cache
        reads are free, as on current models) at admission. Its output is charged as generated
        (admission needs output room above 0), or, with `output_charged="at_admission"`,
        reserved in full at admission. A refused call is charged nothing and does not consume
        the script. The enforced axes' rate-limit headers report exact live bucket levels.
        """
        org = self._default if organization is None else self.organizations[organization]
        org.set_limits(rpm=rpm, itpm=itpm, otpm=otpm, output_charged=output_charged)

    async def wait_until(self, predicate: Callable[[FakeUpstream], bool]) -> None:
        """Return once `predicate(self)` holds; re-checked whenever a counter changes.

        Bound it with `asyncio.wait_for`.
        """
        while not predicate(self):
            await self._changed.wait()

    def stats(self) -> dict[str, Any]:
        """Counters for `GET /_fake/stats` and `--stats-path`."""
        return {
            "requests": len(self.requests),
            "rejected_429": self.rejected_429,
            "admitted": [list(row) for row in self.admitted],
            "disconnects": self.disconnects,
            "organizations": {
                org_id: {"rejected_429": org.rejected_429, **org.charged_in()._asdict()}
                for org_id, org in self.organizations.items()
            },
        }

    def build_app(self) -> web.Application:
        """The aiohttp application: API routes, control routes, the front middleware."""
        app = web.Application(middlewares=[self._front], client_max_size=600 * 2**20)
        app.on_response_prepare.append(self._stamp)
        app.add_routes(
            [
                web.post("/v1/messages", self._messages),
                web.post("/v1/complete", self._complete),
                web.post("/v1/messages/count_tokens", self._count_tokens),
                *self.resources.routes(),
                web.get("/_fake/stats", self._control_stats),
                web.post("/_fake/script", self._control_script),
            ]
        )
        return app

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @web.middleware
    async def _front(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record, check credentials and version, and turn router misses into envelopes."""
        if request.path.startswith("/_fake/"):
            return await handler(request)
        request[REQUEST_ID] = p.new_id("req")
        request[ORGANIZATION] = self.organization_for(api_key(request.headers))
        body = await request.read()
        headers = CIMultiDict(request.headers)
        raw_query = request.raw_path.partition("?")[2]
        self.requests.append(
            RecordedRequest(request.method, request.path, raw_query, headers, body)
        )
        self._notify()
        if "x-api-key" not in headers and "authorization" not in headers:
            return error_reply(request, 401, message="x-api-key header is required")
        if "anthropic-version" not in headers:
            return error_reply(request, 400, message="anthropic-version: header is required")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                return error_reply(request, 404, message=f"Not found: {request.path}")
            return error_reply(request, exc.status, error_type="invalid_request_error")

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add `request-id`, the key's organisation and its rate-limit headers to API replies."""
        if REQUEST_ID not in request:
            return
        org = request[ORGANIZATION]
        response.headers.setdefault("request-id", request[REQUEST_ID])
        response.headers.setdefault("anthropic-organization-id", org.id)
        live = org.live_headers(p.utc_now())
        for name, value in {**self.rate_limit_headers, **live}.items():
            response.headers.setdefault(name, value)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, legacy=False)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, legacy=True)

    async def _inference(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return error_reply(request, 400, message="Request body is not valid JSON")
        if not isinstance(body, dict):
            return error_reply(request, 400, message="Request body must be a JSON object")
        usage = self._usage_for(request, raw)
        org = request[ORGANIZATION]
        refusal = self._admit(org, usage)
        if refusal is not None:
            return self._limit_refusal(request, org, *refusal)
        delay, action = self._next_action(self._script)
        model = str(body.get("model") or p.DEFAULT_MODEL)
        try:
            await self._pause(delay)
            if action is None:
                action = self.default_stream if body.get("stream") else Reply(200)
            return await self._perform(request, action, model, usage, legacy=legacy, org=org)
        except asyncio.CancelledError:
            self._count_disconnect()
            raise
        except _Closing:
            return _aborted(request)

    def _next_action(self, script: deque[Action]) -> tuple[float, Action | None]:
        delay = 0.0
        while script and isinstance(head := script[0], Delay):
            delay += head.seconds
            script.popleft()
        return delay, (script.popleft() if script else None)

    async def _perform(
        self,
        request: web.Request,
        action: Action,
        model: str,
        usage: Mapping[str, int],
        *,
        legacy: bool,
        org: Organization,
    ) -> web.StreamResponse:
        """Answer with `action`, charging `org` the output as generated if it is so charged."""
        output = usage["output_tokens"] if org.output_charged == "as_generated" else 0
        if isinstance(action, Reply):
            if action.status < 400:
                org.charge_output(output)  # generated in full before a JSON reply is sent
            return self._reply(request, action, self._success(model, usage, legacy))
        events: Sequence[Event] = self._default_events(model, usage, legacy)
        if isinstance(action, Stream):
            events = events if action.events is None else action.events
            frames = _frames(events, output)
            if action.ping_every:
                frames = _with_pings(frames, action.ping_every)
            return await self._stream(
                request, frames, action.split_every, action.chunk_delay, org=org
            )
        frames = _frames(events, output)
        if isinstance(action, ErrorMidStream):
            error = (p.encode_event(*p.error_event(action.error_type)), 0)
            return await self._stream(request, [*frames[: action.after_events], error], org=org)
        if isinstance(action, DropMidStream):
            return await self._stream(request, frames[: action.after_events], drop=True, org=org)
        if isinstance(action, StallMidStream):
            return await self._stream(request, frames[: action.after_events], stall=True, org=org)
        await self._pause(math.inf)  # Hang; a Delay was merged by _next_action
        raise _Closing

    def _reply(self, request: web.Request, reply: Reply, success: bytes) -> web.Response:
        if reply.body is None and reply.status >= 400:
            return error_reply(request, reply.status, headers=reply.headers)
        payload = success if reply.body is None else reply.body
        if not isinstance(payload, bytes):
            payload = p.compact(payload).encode()
        headers = {"content-type": "application/json"}
        if reply.status in (429, 529):
            headers["x-should-retry"] = "true"
        return web.Response(status=reply.status, body=payload, headers={**headers, **reply.headers})

    async def _stream(
        self,
        request: web.Request,
        frames: Sequence[Frame],
        split_every: int | None = None,
        chunk_delay: float = 0.0,
        *,
        drop: bool = False,
        stall: bool = False,
        org: Organization | None = None,
    ) -> web.StreamResponse:
        """Send `frames` as chunks of a chunked 200; a failed write counts as a disconnect.

        Then `drop` aborts the connection; `stall` waits for the client to leave (a
        disconnect) or the fake to close (the connection is cut).

        A frame's output tokens are charged to `org` just before the chunk holding its last
        byte is written, so a client that has read a delta finds its output counted.
        """
        chunks = [frame for frame, _ in frames]
        if split_every:
            data = b"".join(chunks)
            chunks = [data[i : i + split_every] for i in range(0, len(data), split_every)]
        marks: deque[tuple[int, int]] = deque()  # (end offset of a frame, its output tokens)
        end = 0
        for frame, tokens in frames:
            end += len(frame)
            if tokens:
                marks.append((end, tokens))
        written = 0
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for index, chunk in enumerate(chunks):
                if index and chunk_delay:
                    await self._pause(chunk_delay)
                written += len(chunk)
                generated = 0
                while marks and marks[0][0] <= written:
                    generated += marks.popleft()[1]
                if org is not None:
                    org.charge_output(generated)
                await response.write(chunk)
        except ConnectionError:
            self._count_disconnect()
            return response
        if drop:
            await _abort_after_flush(request)
        if stall:
            with contextlib.suppress(_Closing):
                await self._pause(math.inf)
            if request.transport is not None:
                request.transport.abort()
        return response

    def _count_disconnect(self) -> None:
        if not self._closing.is_set():
            self.disconnects += 1
            self._notify()

    def _usage_for(self, request: web.Request, raw: bytes) -> dict[str, int]:
        """`usage`, with input from `x-fake-input-tokens` or the body size when asked."""
        usage = dict(self.usage)
        if "x-fake-input-tokens" in request.headers:
            usage["input_tokens"] = int(request.headers["x-fake-input-tokens"])
        elif self.input_tokens_from_body:
            usage["input_tokens"] = max(1, len(raw) // 4)
        if "x-fake-output-tokens" in request.headers:
            usage["output_tokens"] = int(request.headers["x-fake-output-tokens"])
        return usage

    def _admit(self, org: Organization, usage: Mapping[str, int]) -> tuple[str, float] | None:
        """None if admitted (and charged); else the tightest axis and its wait in seconds."""
        now = self.clock.now()
        charged_input = usage["input_tokens"] + usage.get("cache_creation_input_tokens", 0)
        refusal = org.admit(charged_input, usage["output_tokens"])
        if refusal is None:
            self.admitted.append((now, charged_input, usage["output_tokens"]))
        else:
            self.rejected_429 += 1
        self._notify()
        return refusal

    def _limit_refusal(
        self, request: web.Request, org: Organization, axis: str, wait: float
    ) -> web.Response:
        """The API's 429: names the organisation and axis; retry-after in whole seconds >= 1."""
        seconds = max(1, math.ceil(round(wait, 6)))  # float noise must not add a second
        headers = {"retry-after": str(seconds)}
        return error_reply(request, 429, message=org.limit_message(axis), headers=headers)

    def _default_events(
        self, model: str, usage: Mapping[str, int], legacy: bool
    ) -> list[p.SseEvent]:
        if legacy:
            return p.completion_events(model, self.reply_text, p.new_id("compl"))
        pieces = p.sized_pieces(self.reply_text, usage["output_tokens"], self.tokens_per_delta)
        return p.message_events(model, self.reply_text, usage, p.new_id("msg"), pieces=pieces)

    def _success(self, model: str, usage: Mapping[str, int], legacy: bool) -> bytes:
        if legacy:
            body = p.completion_body(model, self.reply_text, p.new_id("compl"))
        else:
            text = p.sized_text(self.reply_text, usage["output_tokens"])
            body = p.message_body(model, text, usage, p.new_id("msg"))
        return p.compact(body).encode()

    async def _pause(self, seconds: float) -> None:
        """Sleep on the real loop; raise _Closing at once if the fake closes meanwhile."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), None if math.isinf(seconds) else seconds)
        if self._closing.is_set():
            raise _Closing

    async def _count_tokens(self, request: web.Request) -> web.Response:
        self.count_tokens_calls += 1
        self._notify()
        raw = await request.read()
        delay, action = self._next_action(self._count_script)
        try:
            await self._pause(delay)
            if isinstance(action, Hang):
                await self._pause(math.inf)
        except asyncio.CancelledError:
            self._count_disconnect()
            raise
        except _Closing:
            return _aborted(request)
        if isinstance(action, Reply) and (action.status != 200 or action.body is not None):
            return self._reply(request, action, b"")
        tokens = self.count_tokens_input
        if tokens is None:
            tokens = self._usage_for(request, raw)["input_tokens"]
        return json_reply({"input_tokens": tokens})

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _control_script(self, request: web.Request) -> web.Response:
        self.script(*(action_from_json(item) for item in await request.json()))
        return web.json_response({"queued": len(self._script)})


def _frame(event: Event) -> bytes:
    if isinstance(event, bytes):
        return event
    name, data = event
    return p.encode_event(name, data if isinstance(data, str) else p.compact(data))


def _frames(events: Sequence[Event], output: int) -> list[Frame]:
    """Each event's bytes with the output generated with it: `output` split over the text
    deltas (the remainder on the last), or all with the last event if there is none."""
    deltas = [index for index, event in enumerate(events) if _is_delta(event)]
    if not deltas and events:
        deltas = [len(events) - 1]
    shares = dict(zip(deltas, p.token_shares(output, len(deltas)), strict=True))
    return [(_frame(event), shares.get(index, 0)) for index, event in enumerate(events)]


def _is_delta(event: Event) -> bool:
    """A `content_block_delta`, or a legacy `completion` event that is not the final one."""
    if isinstance(event, bytes):
        return False
    name, data = event
    if name == "content_block_delta":
        return True
    if name != "completion":
        return False
    try:
        parsed = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return False
    return isinstance(parsed, Mapping) and parsed.get("stop_reason") is None


def _with_pings(frames: Sequence[Frame], every: int) -> list[Frame]:
    ping = (p.encode_event(*p.ping_event()), 0)
    out: list[Frame] = []
    for index, frame in enumerate(frames, start=1):
        out.append(frame)
        if index % every == 0 and index < len(frames):
            out.append(ping)
    return out


async def _abort_after_flush(request: web.Request) -> None:
    """Kill the connection without the terminating chunk, once the sent bytes have left."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(1000):
        if transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.001)
    transport.abort()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--rpm", type=int, help="requests per minute, per organisation")
    parser.add_argument("--itpm", type=int, help="input tokens per minute, per organisation")
    parser.add_argument("--otpm", type=int, help="output tokens per minute, per organisation")
    parser.add_argument(
        "--output-charged", choices=get_args(OutputCharging), default="as_generated"
    )
    parser.add_argument(
        "--org",
        action="append",
        default=[],
        type=_org_spec,
        metavar="ORGID=KEY1,KEY2",
        help="an organisation owning these keys, with the same limits (repeatable); other keys "
        "belong to the default organisation",
    )
    parser.add_argument("--stats-path", help="write the stats JSON here on exit")
    parser.add_argument("--input-tokens-from-body", action="store_true")
    parser.add_argument("--output-tokens", type=int)
    return parser.parse_args(argv)


def _org_spec(text: str) -> tuple[str, list[str]]:
    """`ORGID=key1,key2` -> ("ORGID", ["key1", "key2"])."""
    org_id, sep, keys = text.partition("=")
    names = [key.strip() for key in keys.split(",") if key.strip()]
    if not sep or not org_id.strip() or not names:
        raise argparse.ArgumentTypeError(f"expected ORGID=KEY1,KEY2, got {text!r}")
    return org_id.strip(), names


async def _serve(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeUpstream(host=args.host, port=args.port)
    limits = {"rpm": args.rpm, "itpm": args.itpm, "otpm": args.otpm}
    fake.enforce_limits(**limits, output_charged=args.output_charged)
    for org_id, keys in args.org:
        fake.add_organization(
            keys, organization_id=org_id, **limits, output_charged=args.output_charged
        )
    fake.input_tokens_from_body = args.input_tokens_from_body
    if args.output_tokens is not None:
        fake.usage["output_tokens"] = args.output_tokens
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(f"fake upstream listening on {fake.url}", flush=True)
        await stop.wait()
    return fake.stats()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, printing the URL once listening; dump stats on exit."""
    args = _parse_args(argv)
    stats = asyncio.run(_serve(args))
    if args.stats_path:
        with open(args.stats_path, "w", encoding="utf-8") as out:
            json.dump(stats, out)


if __name__ == "__main__":
    main(sys.argv[1:])


def _aborted(request: web.Request) -> web.Response:
    """Drop the client's connection (the fake is shutting down); the answer is never sent."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)
