"""Raw HTTP/1.1 over a socket, for requests an HTTP client would normalise or refuse to send
(dot-segments, absolute-form targets, smuggling headers, heads that never end)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP response as it came off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_answer(raw: bytes) -> Answer:
    """The first response in `raw` (headers lower-cased; the body is everything after the head,
    cut at Content-Length when there is one)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:])
    }
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Answer(int(lines[0].split()[1]), headers, body)


@asynccontextmanager
async def connection(
    port: int | None,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to the server on `port` (a started server's), closed (quietly,
    even if reset) on exit."""
    assert port is not None, "the server is not listening"
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def exchange(port: int | None, data: bytes, *, seconds: float = 5.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it (fails after
    `seconds`)."""
    async with connection(port) as (reader, writer):
        writer.write(data)
        return await asyncio.wait_for(reader.read(), seconds)


async def read_answer(reader: asyncio.StreamReader, *, seconds: float = 5.0) -> Answer:
    """Read exactly one response with a Content-Length body (the connection stays usable)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
    answer = parse_answer(head)
    length = int(answer.headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), seconds)
    return Answer(answer.status, answer.headers, body)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took; fails after
    `seconds`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = await asyncio.wait_for(reader.read(), seconds)
    return data, loop.time() - started


async def until(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `predicate` every 10 ms until it holds or `seconds` pass; its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if predicate() or loop.time() >= deadline:
            return predicate()
        await asyncio.sleep(0.01)


def request(
    method: str = "GET", target: str = "/v1/models", *, headers: str = "", body: bytes = b""
) -> bytes:
    """A well-formed request's bytes (`headers`: extra `Name: value\\r\\n` lines)."""
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    head = f"{method} {target} HTTP/1.1\r\nHost: gateway\r\n{headers}{length}\r\n"
    return head.encode("latin-1") + body
