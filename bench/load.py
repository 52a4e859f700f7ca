"""The load generator: closed-loop aiohttp clients, stream TTFB, held-open streams, the SDK.

Everything here is bounded by a request count and/or a deadline and stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp

MODEL = "claude-sonnet-4-5-20250929"
SYSTEM = "You are a concise assistant for an engineering team. Answer in plain prose."
PROMPT = (
    "We run several services that share one Anthropic organisation and keep hitting 429s at "
    "peak hours. Explain, in about two short paragraphs, how a token bucket works, why a "
    "shared limiter needs an atomic debit across requests, input tokens and output tokens, "
    "and why refunding the unused part of max_tokens after a response matters for the "
    "output-token budget. Mention what the retry-after header should contain when a request "
    "is refused, and how a client should back off when it sees a 529 overloaded error. Keep "
    "it practical: we want to decide between an in-process limiter per instance and a shared "
    "Redis-backed one for a fleet of three gateway instances behind a load balancer."
)
HEADERS = {
    "x-api-key": "sk-ant-bench",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


def request_body(*, stream: bool) -> bytes:
    """A realistic ~1 KB Messages request body."""
    body: dict[str, object] = {
        "model": MODEL,
        "max_tokens": 1024,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.2,
        "metadata": {"user_id": "bench-user-0001"},
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


BODY = request_body(stream=False)
STREAM_BODY = request_body(stream=True)
PATH = "/v1/messages"


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (`pct` in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[min(int(rank), len(ordered)) - 1]


def ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, None passing through."""
    return None if seconds is None else seconds * 1000


def client_session(*, timeout: float = 60.0) -> aiohttp.ClientSession:
    """A client with an unbounded connection pool (limit=0) and a total timeout."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
    )


@dataclass(slots=True)
class LoopResult:
    """Completed requests, failures by kind, wall time and per-request latencies (s)."""

    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0


async def closed_loop(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
) -> LoopResult:
    """`concurrency` workers POST /v1/messages back to back until `duration` or `max_requests`.

    Requests go round-robin over `urls` (one per server instance).
    """
    result = LoopResult()
    issued = itertools.count()
    targets = itertools.cycle([url + PATH for url in urls])
    start = time.perf_counter()
    deadline = start + duration

    async def worker() -> None:
        while time.perf_counter() < deadline and next(issued) < max_requests:
            url = next(targets)
            sent = time.perf_counter()
            try:
                async with session.post(url, data=BODY, headers=HEADERS) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                result.failures[type(exc).__name__] += 1
                continue
            if status != 200:
                result.failures[f"HTTP {status}"] += 1
                continue
            result.requests += 1
            result.latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - start
    return result


async def stream_ttfb(
    session: aiohttp.ClientSession, url: str, count: int, *, duration: float = 120.0
) -> LoopResult:
    """Sequential streamed requests until `count` or `duration`; `latencies` holds TTFB."""
    result = LoopResult()
    start = time.perf_counter()
    deadline = start + duration
    for _ in range(count):
        if time.perf_counter() >= deadline:
            break
        sent = time.perf_counter()
        try:
            async with session.post(url + PATH, data=STREAM_BODY, headers=HEADERS) as response:
                first = await response.content.readany()
                ttfb = time.perf_counter() - sent
                rest = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            result.failures[type(exc).__name__] += 1
            continue
        if status != 200 or b"event: message_stop" not in first + rest:
            result.failures[f"HTTP {status}" if status != 200 else "truncated"] += 1
            continue
        result.requests += 1
        result.latencies.append(ttfb)
    result.elapsed = time.perf_counter() - start
    return result


class StreamHolder:
    """Hold `count` streamed requests open at once; connects at most `ramp` at a time.

    `opened` counts streams whose first byte arrived, `open_now` those still open.
    Leaving the `async with` cancels whatever is still running.
    """

    def __init__(
        self, session: aiohttp.ClientSession, url: str, count: int, *, ramp: int = 64
    ) -> None:
        self._session = session
        self._url = url + PATH
        self.count = count
        self.opened = 0
        self.open_now = 0
        self.completed = 0
        self.failures: Counter[str] = Counter()
        self._resolved = 0
        self._ramp = asyncio.Semaphore(ramp)
        self._all_opened = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> StreamHolder:
        self._tasks = [asyncio.create_task(self._one()) for _ in range(self.count)]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_opened(self, within: float) -> bool:
        """Wait until every stream has sent its first byte; False on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_opened.wait(), within)
        return self._all_opened.is_set()

    async def wait_done(self, within: float) -> None:
        """Wait (bounded) for every stream to end."""
        await asyncio.wait(self._tasks, timeout=within)

    def _resolve(self, *, opened: bool) -> None:
        """Called once per stream: its first byte arrived, or it failed before that."""
        if opened:
            self.opened += 1
            self.open_now += 1
        self._resolved += 1
        if self._resolved >= self.count:
            self._all_opened.set()

    async def _one(self) -> None:
        is_open = ramping = False
        try:
            await self._ramp.acquire()
            ramping = True
            async with self._session.post(self._url, data=STREAM_BODY, headers=HEADERS) as response:
                first = b""
                if response.status == 200:
                    first = await response.content.readany()
                    is_open = True
                    self._resolve(opened=True)
                self._ramp.release()
                ramping = False
                body = first + await response.read()
            if response.status != 200 or b"event: message_stop" not in body:
                self.failures[f"HTTP {response.status}"] += 1
            else:
                self.completed += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.failures[type(exc).__name__] += 1
        finally:
            if ramping:
                self._ramp.release()
            if is_open:
                self.open_now -= 1
            else:
                self._resolve(opened=False)


async def sdk_messages(base_url: str, count: int, concurrency: int) -> LoopResult:
    """`count` `messages.create` calls through the real anthropic SDK (max_retries=2).

    `latencies` holds the client-visible time of successful calls, retries included.
    """
    import anthropic

    result = LoopResult()
    remaining = itertools.count()
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-bench", max_retries=2)
    start = time.perf_counter()

    async def worker() -> None:
        while next(remaining) < count:
            sent = time.perf_counter()
            try:
                await client.messages.create(
                    model=MODEL,
                    max_tokens=1024,
                    system=SYSTEM,
                    messages=[{"role": "user", "content": PROMPT}],
                )
            except anthropic.APIStatusError as exc:
                result.failures[f"HTTP {exc.status_code}"] += 1
                continue
            except anthropic.APIError as exc:
                result.failures[type(exc).__name__] += 1
                continue
            result.requests += 1
            result.latencies.append(time.perf_counter() - sent)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    result.elapsed = time.perf_counter() - start
    return result
