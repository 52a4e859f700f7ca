"""Redis clients for the limiter: the pipelined `RedisWire` and redis-py, behind `RedisClient`.

A subpackage with no imports from the rest of the gateway (a test checks it), so the client
can be read, tested and benchmarked on its own. `RedisBackend` (`limits/redis_backend.py`)
runs the limiter's scripts on whichever client `open_client` picks.
"""

from __future__ import annotations

from gateway.limits.redis.clients import (
    CLIENT_ERRORS,
    ClientKind,
    PubSubOpener,
    RedisClient,
    RedisPyClient,
    check_url,
    listen,
    open_client,
    pubsub_opener,
)
from gateway.limits.redis.wire import RedisWire, Script

__all__ = [
    "CLIENT_ERRORS",
    "ClientKind",
    "PubSubOpener",
    "RedisClient",
    "RedisPyClient",
    "RedisWire",
    "Script",
    "check_url",
    "listen",
    "open_client",
    "pubsub_opener",
]
