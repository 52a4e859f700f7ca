"""A minimal, fast mock of the Anthropic Messages API for benchmarks.

`python -m bench.mock_upstream --port N [--stream-chunk-delay S] [--error-rate F] [--seed K]`

- `POST /v1/messages`: a fixed realistic message as JSON, or with `"stream": true` an SSE
  stream framed exactly as the real API (message_start ... message_stop), with
  `request-id`, `anthropic-organization-id` and `anthropic-ratelimit-*` headers.
- `--stream-chunk-delay S` sleeps S seconds between SSE events (slow / long-open streams).
- `--error-rate F` answers that fraction (seeded) with a 529 `overloaded_error` and
  `x-should-retry: true`, as the real API does.
- `GET /_stats`: `{"requests": n, "errors": n, "streams": n, "open_streams": n}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bench.serving import raise_nofile_limit, run_main, serve

MODEL = "claude-sonnet-4-5-20250929"
MESSAGE_ID = "msg_01XgVYxVqyQjXq9Lh3zF7bKz"
ORG_ID = "8c2b3f1e-5d4a-4b7e-9f0a-1c2d3e4f5a6b"
TEXT = (
    "A token bucket holds up to its capacity in tokens and refills at a steady rate. Each "
    "request takes tokens; when the bucket is empty the request waits for the refill or is "
    "refused with a retry-after that says how long the wait would be. Debiting every bucket "
    "a request touches in one atomic step keeps concurrent gateways from overspending a "
    "shared limit, and refunding the unused estimate once the real usage is known keeps the "
    "output-token bucket honest."
)
INPUT_TOKENS = 312
OUTPUT_TOKENS = 96
# Far above any bench load (and above bench's never-hit limits file): a gateway that pulls its
# buckets down to the API's advertised `remaining` must never be throttled by the mock.
LIMITS = {
    "requests": 1_000_000_000,
    "input-tokens": 1_000_000_000_000,
    "output-tokens": 1_000_000_000_000,
}
COST = {"requests": 1, "input-tokens": INPUT_TOKENS, "output-tokens": OUTPUT_TOKENS}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def message_body() -> bytes:
    """The non-streaming response: the same message the stream builds."""
    usage = {
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": OUTPUT_TOKENS,
    }
    return _compact(
        {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    )


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def sse_events(deltas: int) -> list[bytes]:
    """The SSE stream as one bytes item per event, `deltas` text deltas in the middle."""
    start_usage = {
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 2,
    }
    message: dict[str, object] = {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events = [
        _event("message_start", _compact({"type": "message_start", "message": message})),
        _event(
            "content_block_start",
            _compact(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
        ),
        _event("ping", b'{"type": "ping"}'),  # the real API spaces this one: never re-serialise
    ]
    step = -(-len(TEXT) // max(deltas, 1))
    for i in range(0, len(TEXT), step):
        delta = {"type": "text_delta", "text": TEXT[i : i + step]}
        payload = {"type": "content_block_delta", "index": 0, "delta": delta}
        events.append(_event("content_block_delta", _compact(payload)))
    end_delta = {"stop_reason": "end_turn", "stop_sequence": None}
    end_usage = {"input_tokens": INPUT_TOKENS, "output_tokens": OUTPUT_TOKENS}
    events += [
        _event("content_block_stop", _compact({"type": "content_block_stop", "index": 0})),
        _event(
            "message_delta",
            _compact({"type": "message_delta", "delta": end_delta, "usage": end_usage}),
        ),
        _event("message_stop", _compact({"type": "message_stop"})),
    ]
    return events


class RateLimits:
    """The API's per-minute buckets, refilled continuously, as `anthropic-ratelimit-*`."""

    def __init__(self) -> None:
        self._levels = {dim: float(limit) for dim, limit in LIMITS.items()}
        self._last = time.monotonic()
        self._reset_key = -1
        self._reset_text = ""

    def _rfc3339(self, epoch: float) -> str:
        key = int(epoch)
        if key != self._reset_key:
            self._reset_key = key
            self._reset_text = datetime.fromtimestamp(key, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._reset_text

    def debit(self, out: dict[str, str]) -> None:
        """Take one request's cost and add the headers: token `remaining` to the nearest
        1,000, `reset` when the bucket is full again, `tokens` = input + output."""
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        wall = time.time()
        for dim, limit in LIMITS.items():
            level = min(limit, self._levels[dim] + elapsed * limit / 60) - COST[dim]
            self._levels[dim] = level
            remaining = max(0, int(level) if dim == "requests" else round(level, -3))
            out[f"anthropic-ratelimit-{dim}-limit"] = str(limit)
            out[f"anthropic-ratelimit-{dim}-remaining"] = str(int(remaining))
            out[f"anthropic-ratelimit-{dim}-reset"] = self._rfc3339(
                wall + (limit - level) / limit * 60
            )
        tokens = ("input-tokens", "output-tokens")
        out["anthropic-ratelimit-tokens-limit"] = str(sum(LIMITS[d] for d in tokens))
        out["anthropic-ratelimit-tokens-remaining"] = str(
            sum(int(out[f"anthropic-ratelimit-{d}-remaining"]) for d in tokens)
        )
        out["anthropic-ratelimit-tokens-reset"] = out["anthropic-ratelimit-input-tokens-reset"]


@dataclass(slots=True)
class MockState:
    """Mock configuration, counters and pre-encoded bodies."""

    chunk_delay: float
    error_rate: float
    rng: random.Random
    message: bytes
    events: list[bytes]
    limits: RateLimits = field(default_factory=RateLimits)
    requests: int = 0
    errors: int = 0
    streams: int = 0
    open_streams: int = 0

    def next_request_id(self) -> str:
        self.requests += 1
        return f"req_011CBench{self.requests:014d}"

    def headers(self, request_id: str) -> dict[str, str]:
        """`request-id`, organisation and rate-limit headers as the real API sends them."""
        out = {"request-id": request_id, "anthropic-organization-id": ORG_ID}
        self.limits.debit(out)
        return out


STATE = web.AppKey("state", MockState)


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages: JSON, SSE, or (at --error-rate) a 529 overloaded error."""
    state = request.app[STATE]
    body = await request.read()
    request_id = state.next_request_id()
    if state.error_rate > 0 and state.rng.random() < state.error_rate:
        state.errors += 1
        headers = {"request-id": request_id, "x-should-retry": "true"}
        payload = _compact({**OVERLOADED, "request_id": request_id})
        return web.Response(
            status=529, body=payload, headers=headers, content_type="application/json"
        )
    headers = state.headers(request_id)
    if not _wants_stream(body):
        return web.Response(body=state.message, headers=headers, content_type="application/json")
    headers["content-type"] = "text/event-stream; charset=utf-8"
    headers["cache-control"] = "no-cache"
    response = web.StreamResponse(headers=headers)
    state.streams += 1
    state.open_streams += 1
    try:
        await response.prepare(request)
        for i, event in enumerate(state.events):
            if i and state.chunk_delay > 0:
                await asyncio.sleep(state.chunk_delay)
            await response.write(event)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client (or proxy) went away mid-stream
    finally:
        state.open_streams -= 1
    return response


async def stats(request: web.Request) -> web.Response:
    """GET /_stats: counters for attempts-per-request and open-stream checks."""
    state = request.app[STATE]
    counts = {
        "requests": state.requests,
        "errors": state.errors,
        "streams": state.streams,
        "open_streams": state.open_streams,
    }
    return web.json_response(counts)


async def not_found(request: web.Request) -> web.Response:
    """Anything else: the API's 404 envelope."""
    error = {"type": "not_found_error", "message": f"Not found: {request.path}"}
    return web.json_response({"type": "error", "error": error}, status=404)


def create_app(
    *, chunk_delay: float = 0.0, error_rate: float = 0.0, seed: int = 1, deltas: int = 10
) -> web.Application:
    """The mock as an aiohttp application."""
    app = web.Application()
    app[STATE] = MockState(
        chunk_delay=chunk_delay,
        error_rate=error_rate,
        rng=random.Random(seed),
        message=message_body(),
        events=sse_events(deltas),
    )
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/_stats", stats)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mock_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream-chunk-delay", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--stream-deltas", type=int, default=10, metavar="N")
    parser.add_argument("--error-rate", type=float, default=0.0, metavar="FRACTION")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    app = create_app(
        chunk_delay=args.stream_chunk_delay,
        error_rate=args.error_rate,
        seed=args.seed,
        deltas=args.stream_deltas,
    )
    run_main(serve(app, args.host, args.port))


if __name__ == "__main__":
    main()
