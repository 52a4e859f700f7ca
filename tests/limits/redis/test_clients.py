"""`open_client` and `subscriptions` pick the pipelined client or redis-py; `check_url` refuses
what neither takes; redis-py is imported only when it is picked."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio

from gateway.limits.redis import ClientKind, check_url, clients, listen, open_client, subscriptions
from tests.support.redis_server import RedisServer

PACKAGE = Path(__file__).resolve().parents[3] / "gateway" / "limits" / "redis"


@pytest.mark.parametrize(
    ("url", "cluster", "kind", "pipelined"),
    [
        ("redis://127.0.0.1:6379/0", False, "pipelined", True),
        ("unix:///tmp/redis.sock", False, "pipelined", True),
        ("rediss://127.0.0.1:6379/0", False, "pipelined", False),
        ("redis://127.0.0.1:6379", True, "pipelined", False),
        ("redis://127.0.0.1:6379/0", False, "redis-py", False),
        ("unix:///tmp/redis.sock", False, "redis-py", False),
    ],
)
async def test_the_pipelined_client_serves_standalone_urls_unless_redis_py_is_asked_for(
    url: str, cluster: bool, kind: ClientKind, pipelined: bool
) -> None:
    """`redis://` and `unix://` get RedisWire; Cluster, `rediss://` and `redis-py` get
    redis-py (nothing connects until the first command). The queue's wake-ups subscribe
    through the same client as the scripts' calls."""
    client = open_client(url, cluster=cluster, kind=kind)
    subscription = subscriptions(url, cluster=cluster, kind=kind)()
    try:
        picked = (type(client).__name__, type(subscription).__name__)
    finally:
        await subscription.aclose()
        await client.aclose()
    expected = (
        ("RedisWire", "WireSubscription") if pipelined else ("RedisPyClient", "RedisPySubscription")
    )
    assert expected == picked


@pytest.mark.parametrize("kind", ["pipelined", "redis-py"])
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://localhost:6379", "must start with redis://, rediss:// or unix://"),
        ("redis://localhost:abc/0", "Port could not be cast to integer value as 'abc'"),
    ],
)
def test_either_client_refuses_a_url_it_cannot_use(
    url: str, problem: str, kind: ClientKind
) -> None:
    """A bad scheme or port is one readable ValueError, whichever client would run."""
    with pytest.raises(ValueError, match=problem):
        check_url(url, kind=kind)


def test_the_subpackage_imports_nothing_else_of_the_gateway() -> None:
    """`gateway.limits.redis` stands alone: its modules import only each other and libraries."""
    foreign = sorted(
        f"{path.name}: {node.module}"
        for path in PACKAGE.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and node.module is not None
        and node.module.startswith("gateway")
        and not node.module.startswith("gateway.limits.redis")
    )
    assert [] == foreign


IMPORTS_AFTER_SERVING = """
import asyncio, json, sys
from gateway.limits.redis_backend import RedisBackend

async def main():
    backend = RedisBackend.from_url(sys.argv[1], kind=sys.argv[2], timeout=0.2)
    try:
        await backend.ping()
    except Exception:
        pass  # nothing listens there: only what was imported matters
    await backend.aclose()
    print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"redis", "opentelemetry"})))

asyncio.run(main())
"""


@pytest.mark.parametrize(("kind", "redis_py"), [("pipelined", False), ("redis-py", True)])
def test_redis_py_is_imported_only_when_it_is_picked(kind: str, redis_py: bool) -> None:
    """A backend on the pipelined client runs without redis-py (and the OpenTelemetry SDK,
    which redis-py loads when it is installed): about 9 MB of memory (#18)."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_AFTER_SERVING, "redis://127.0.0.1:9/0", kind],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    loaded = json.loads(done.stdout)
    assert redis_py == ("redis" in loaded)
    assert redis_py or [] == loaded


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["pipelined", "redis-py"])
async def test_listen_subscribes_again_after_redis_restarts(
    kind: ClientKind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription lost with its server is made again once the server is back, and the
    messages published then arrive; `on_subscribed` hears of each subscription."""
    monkeypatch.setattr(clients, "RESUBSCRIBE_SECONDS", 0.05)
    heard: asyncio.Queue[bytes] = asyncio.Queue()
    subscribed = asyncio.Event()
    with RedisServer() as server:
        opener = subscriptions(server.url, kind=kind, timeout=1.0)
        task = asyncio.ensure_future(listen(opener, "news", heard.put_nowait, subscribed.set))
        publisher = redis.asyncio.Redis.from_url(server.url)
        try:
            await asyncio.wait_for(subscribed.wait(), 5)
            await publisher.publish("news", b"before")
            before = await asyncio.wait_for(heard.get(), 5)
            subscribed.clear()
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)
            await asyncio.wait_for(subscribed.wait(), 10)
            await publisher.publish("news", b"after")
            after = await asyncio.wait_for(heard.get(), 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await publisher.aclose()
    assert (b"before", b"after") == (before, after)
