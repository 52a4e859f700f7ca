"""Rate limiting: token buckets with reservations, on a shared (Redis) or local backend.

A request's whole conversation with this package, held by its admission ticket
(`gateway/ticket.py`)::

    admission = await limiter.admit(scope=scope, model=model, cost=estimate, max_wait=None)
    ...  # Admitted: wait `admission.wait`, then forward; Unlimited: forward;
    ...  # Refused / NeverFits / UnknownModel / BackendUnavailable: answer with an error
    limiter.settle(admission, actual_usage)   # on the way out, whatever happened (Cost() refunds)

`RedisBackend` lives in `gateway.limits.redis_backend`, imported only by the composition
root, so importing this package does not import redis.
"""

from __future__ import annotations

from gateway.limits.backend import LimitBackend, LimitBackendError
from gateway.limits.learning_sync import LearningSync
from gateway.limits.limiter import Limiter
from gateway.limits.limits_file import load_limits
from gateway.limits.memory_backend import MemoryBackend
from gateway.limits.model import BucketSpec, Cost, Dimension, NeverFits, Refused, Reservation
from gateway.limits.outcomes import (
    UNLIMITED,
    Admission,
    Admitted,
    BackendUnavailable,
    UnknownModel,
    Unlimited,
)
from gateway.limits.policy import GroupLimits, LimitsConfig, LimitsFileError

__all__ = [
    "UNLIMITED",
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
    "Refused",
    "Reservation",
    "UnknownModel",
    "Unlimited",
    "load_limits",
]
