"""Redis clients for the limiter: the pipelined `RedisWire` and redis-py, behind `RedisClient`.

A subpackage with no imports from the rest of the gateway (a test checks it), so the client
can be read, tested and benchmarked on its own. `RedisBackend` (`limits/redis_backend.py`)
runs the limiter's scripts on whichever client `open_client` picks. redis-py
(`redis_py.py`) is imported only when a client of it is opened.
"""

from __future__ import annotations

from gateway.limits.redis.clients import (
    CLIENT_ERRORS,
    ClientKind,
    RedisClient,
    RedisPyError,
    Subscription,
    SubscriptionOpener,
    adapted,
    check_url,
    listen,
    open_client,
    subscriptions,
)
from gateway.limits.redis.wire import RedisWire, Script, WireSubscription

__all__ = [
    "CLIENT_ERRORS",
    "ClientKind",
    "RedisClient",
    "RedisPyError",
    "RedisWire",
    "Script",
    "Subscription",
    "SubscriptionOpener",
    "WireSubscription",
    "adapted",
    "check_url",
    "listen",
    "open_client",
    "subscriptions",
]
