"""A scriptable fake Anthropic API: a real aiohttp app on 127.0.0.1, port 0.

It speaks the real JSON and SSE formats (`anthropic_payloads`), records every request, and
answers `/v1/messages` and `/v1/complete` from a FIFO script of actions, falling back to a
realistic success; other endpoints live in `fake_resources`. Standalone:
`python -m tests.support.fake_upstream --port N` (see `main`).

    async with FakeUpstream() as fake:
        fake.script(Reply(529), Stream(split_every=7))
        ...  # point a client or the gateway at fake.url
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from uuid import uuid4

from aiohttp import web
from multidict import CIMultiDict

from gateway.clock import Clock, SystemClock
from tests.support import anthropic_payloads as p
from tests.support.fake_resources import REQUEST_ID, FakeResources, error_reply, json_reply

Event = bytes | tuple[str, str | Mapping[str, Any]]
"""A stream event: (name, data text or object), or raw bytes sent verbatim."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
class Delay:
    """Wait `seconds` before sending headers, then perform the next scripted action (or default).

    The next action is dequeued together with the Delay, so concurrent requests cannot take it.
    """

    seconds: float


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the request and never answer, until the client leaves or the fake closes."""


Action = Reply | Stream | ErrorMidStream | DropMidStream | Delay | Hang

_ACTION_TYPES: Mapping[str, Callable[..., Action]] = {
    "reply": Reply,
    "stream": Stream,
    "error_mid_stream": ErrorMidStream,
    "drop_mid_stream": DropMidStream,
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
    """A continuous token bucket: capacity `limit`, refilled at limit/60 per second."""

    def __init__(self, limit: int, now: float) -> None:
        self.limit, self.level, self._at = limit, float(limit), now

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self._at) * self.limit / 60)
        self._at = now

    def wait_for(self, amount: int) -> float:
        """Seconds until `amount` fits (0 if it fits now)."""
        return max(0.0, (amount - self.level) * 60 / self.limit)


_AXES = {"requests": "requests", "input": "input tokens", "output": "output tokens"}
_HEADER_AXES = {"requests": "requests", "input": "input-tokens", "output": "output-tokens"}


class _Closing(Exception):
    """The fake is closing while a request waits."""


class FakeUpstream:
    """The fake API server; its state lives on this object, its handlers are its methods.

    Read: `url`, `requests`, `disconnects` (clients gone before the fake finished answering),
    `rejected_429`, `admitted` ((clock time, input charged, output) per admitted call),
    `count_tokens_calls` (requests to `/v1/messages/count_tokens`).
    Set: `reply_text`, `usage` (reported per reply; requests may override input and output
    with `x-fake-input-tokens` / `x-fake-output-tokens`), `input_tokens_from_body` (input =
    len(body) // 4), `rate_limit_headers` (added to every API reply unless already set),
    `count_tokens_input` (the count every default count_tokens answer gives; None = the
    `usage` input as above). `script_count_tokens` scripts count_tokens answers.
    """

    def __init__(self, *, clock: Clock | None = None, host: str = "127.0.0.1", port: int = 0):
        self.clock: Clock = clock or SystemClock()
        self.host, self.port, self.url = host, port, ""
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.rejected_429 = 0
        self.admitted: list[tuple[float, int, int]] = []
        self.reply_text = "Hi there!"
        self.usage: dict[str, int] = {
            "input_tokens": 19,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 6,
        }
        self.input_tokens_from_body = False
        self.count_tokens_input: int | None = None
        self.count_tokens_calls = 0
        self.organization_id = str(uuid4())
        self.rate_limit_headers: dict[str, str] = p.default_rate_limit_headers(p.utc_now())
        self.resources = FakeResources(
            lambda: self.url, lambda: self.reply_text, lambda: self.usage
        )
        self._script: deque[Action] = deque()
        self._count_script: deque[Action] = deque()
        self._buckets: dict[str, _Bucket] = {}
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

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

    def enforce_limits(
        self, *, rpm: int | None = None, itpm: int | None = None, otpm: int | None = None
    ) -> None:
        """Refuse inference calls past these per-minute limits with a real 429 (buckets start full).

        An admitted call is charged, at admission, 1 request, its input tokens plus cache writes
        (cache reads are free, as on current models) and its output tokens. Refused calls are
        charged nothing and do not consume the script. The enforced axes' rate-limit headers then
        report exact live bucket levels.
        """
        now = self.clock.now()
        limits = {"requests": rpm, "input": itpm, "output": otpm}
        self._buckets = {axis: _Bucket(lim, now) for axis, lim in limits.items() if lim}

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
        """Add `request-id`, the organisation and the rate-limit headers to every API reply."""
        if REQUEST_ID not in request:
            return
        response.headers.setdefault("request-id", request[REQUEST_ID])
        response.headers.setdefault("anthropic-organization-id", self.organization_id)
        for name, value in {**self.rate_limit_headers, **self._live_limit_headers()}.items():
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
        refusal = self._admit(usage)
        if refusal is not None:
            return self._limit_refusal(request, *refusal)
        delay, action = self._next_action(self._script)
        model = str(body.get("model") or p.DEFAULT_MODEL)
        try:
            await self._pause(delay)
            if action is None:
                action = Stream() if body.get("stream") else Reply(200)
            return await self._perform(request, action, model, usage, legacy)
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
        legacy: bool,
    ) -> web.StreamResponse:
        if isinstance(action, Reply):
            return self._reply(request, action, self._success(model, usage, legacy))
        events = self._default_events(model, usage, legacy)
        if isinstance(action, Stream):
            frames = [p.encode_event(*e) for e in events]
            if action.events is not None:
                frames = [_frame(e) for e in action.events]
            if action.ping_every:
                frames = _with_pings(frames, action.ping_every)
            return await self._stream(request, frames, action.split_every, action.chunk_delay)
        if isinstance(action, ErrorMidStream):
            sent = [*events[: action.after_events], p.error_event(action.error_type)]
            return await self._stream(request, [p.encode_event(*e) for e in sent])
        if isinstance(action, DropMidStream):
            frames = [p.encode_event(*e) for e in events[: action.after_events]]
            return await self._stream(request, frames, drop=True)
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
        frames: Sequence[bytes],
        split_every: int | None = None,
        chunk_delay: float = 0.0,
        *,
        drop: bool = False,
    ) -> web.StreamResponse:
        """Send `frames` as chunks of a chunked 200; a failed write counts as a disconnect."""
        if split_every:
            data = b"".join(frames)
            frames = [data[i : i + split_every] for i in range(0, len(data), split_every)]
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
            }
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for index, frame in enumerate(frames):
                if index and chunk_delay:
                    await self._pause(chunk_delay)
                await response.write(frame)
        except ConnectionError:
            self._count_disconnect()
            return response
        if drop:
            await _abort_after_flush(request)
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

    def _admit(self, usage: Mapping[str, int]) -> tuple[str, float] | None:
        """None if admitted (and charged); else the tightest axis and its wait in seconds."""
        now = self.clock.now()
        charged_input = usage["input_tokens"] + usage.get("cache_creation_input_tokens", 0)
        cost = {"requests": 1, "input": charged_input, "output": usage["output_tokens"]}
        waits = {}
        for axis, bucket in self._buckets.items():
            bucket.refill(now)
            waits[axis] = bucket.wait_for(cost[axis])
        axis, wait = max(waits.items(), key=lambda item: item[1], default=("requests", 0.0))
        self._notify()
        if wait > 0:
            self.rejected_429 += 1
            return axis, wait
        for axis, bucket in self._buckets.items():
            bucket.level -= cost[axis]
        self.admitted.append((now, charged_input, usage["output_tokens"]))
        return None

    def _limit_refusal(self, request: web.Request, axis: str, wait: float) -> web.Response:
        message = (
            f"This request would exceed the rate limit for your organization "
            f"({self.organization_id}) of {self._buckets[axis].limit:,} {_AXES[axis]} per "
            f"minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can "
            f"see the response headers for current usage. Please reduce the prompt length or the "
            f"maximum tokens requested, or try again later."
        )
        retry_after = {"retry-after": str(max(1, math.ceil(wait)))}
        return error_reply(request, 429, message=message, headers=retry_after)

    def _live_limit_headers(self) -> dict[str, str]:
        """Exact bucket levels of the enforced axes (the real API rounds tokens to 1,000)."""
        now, wall = self.clock.now(), p.utc_now()
        headers: dict[str, str] = {}
        for axis, bucket in self._buckets.items():
            bucket.refill(now)
            level = math.floor(bucket.level)
            headers.update(p.axis_headers(_HEADER_AXES[axis], bucket.limit, level, wall))
        return headers

    def _default_events(
        self, model: str, usage: Mapping[str, int], legacy: bool
    ) -> list[p.SseEvent]:
        if legacy:
            return p.completion_events(model, self.reply_text, p.new_id("compl"))
        return p.message_events(model, self.reply_text, usage, p.new_id("msg"))

    def _success(self, model: str, usage: Mapping[str, int], legacy: bool) -> bytes:
        if legacy:
            body = p.completion_body(model, self.reply_text, p.new_id("compl"))
        else:
            body = p.message_body(model, self.reply_text, usage, p.new_id("msg"))
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


def _with_pings(frames: Sequence[bytes], every: int) -> list[bytes]:
    ping = p.encode_event(*p.ping_event())
    out: list[bytes] = []
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
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--itpm", type=int)
    parser.add_argument("--otpm", type=int)
    parser.add_argument("--stats-path", help="write the stats JSON here on exit")
    parser.add_argument("--input-tokens-from-body", action="store_true")
    parser.add_argument("--output-tokens", type=int)
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeUpstream(host=args.host, port=args.port)
    fake.enforce_limits(rpm=args.rpm, itpm=args.itpm, otpm=args.otpm)
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
