"""Rate limiting: token buckets with reservations, on a shared (Redis) or local backend.

The handler's whole conversation with this package::

    admission = await limiter.admit(scope=key_hash, model=model, cost=estimate, max_wait=None)
    ...  # Admitted: forward; Rejected / NeverFitsRejection / UnknownModel / BackendUnavailable
    limiter.settle(admission, actual_usage)            # in a finally; refund() if nothing ran

`RedisBackend` lives in `gateway.limits.redis_backend`, imported only by the composition
root, so importing this package does not import redis.
"""

from __future__ import annotations

from gateway.limits.backend import LimitBackend, LimitBackendError
from gateway.limits.learning_sync import LearningSync
from gateway.limits.limiter import Limiter
from gateway.limits.memory_backend import MemoryBackend
from gateway.limits.model import BucketSpec, Cost, Dimension, NeverFits, Refused, Reservation
from gateway.limits.outcomes import (
    Admission,
    Admitted,
    BackendUnavailable,
    NeverFitsRejection,
    Rejected,
    UnknownModel,
    Unlimited,
)
from gateway.limits.policy import GroupLimits, LimitsConfig, LimitsFileError, load_limits

__all__ = [
    "Admission",
    "Admitted",
    "BackendUnavailable",
    "BucketSpec",
    "Cost",
    "Dimension",
    "GroupLimits",
    "LearningSync",
    "LimitBackend",
    "LimitBackendError",
    "Limiter",
    "LimitsConfig",
    "LimitsFileError",
    "MemoryBackend",
    "NeverFits",
    "NeverFitsRejection",
    "Refused",
    "Rejected",
    "Reservation",
    "UnknownModel",
    "Unlimited",
    "load_limits",
]
