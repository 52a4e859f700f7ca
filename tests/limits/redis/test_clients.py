"""`open_client` picks the pipelined client or redis-py; `check_url` refuses what neither takes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.limits.redis import ClientKind, check_url, open_client

PACKAGE = Path(__file__).resolve().parents[3] / "gateway" / "limits" / "redis"


@pytest.mark.parametrize(
    ("url", "cluster", "kind", "expected"),
    [
        ("redis://127.0.0.1:6379/0", False, "pipelined", "RedisWire"),
        ("unix:///tmp/redis.sock", False, "pipelined", "RedisWire"),
        ("rediss://127.0.0.1:6379/0", False, "pipelined", "RedisPyClient"),
        ("redis://127.0.0.1:6379", True, "pipelined", "RedisPyClient"),
        ("redis://127.0.0.1:6379/0", False, "redis-py", "RedisPyClient"),
        ("unix:///tmp/redis.sock", False, "redis-py", "RedisPyClient"),
    ],
)
async def test_the_pipelined_client_serves_standalone_urls_unless_redis_py_is_asked_for(
    url: str, cluster: bool, kind: ClientKind, expected: str
) -> None:
    """`redis://` and `unix://` get RedisWire; Cluster, `rediss://` and `redis-py` get
    redis-py (nothing connects until the first command)."""
    client = open_client(url, cluster=cluster, kind=kind)
    try:
        assert expected == type(client).__name__
    finally:
        await client.aclose()


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
