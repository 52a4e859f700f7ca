"""`CircuitBreaker`: stop calling a failing limits backend for a while, and say when the
limiter is degraded.

A dead Redis would otherwise cost every request a connect or command timeout; with the
breaker open, the limiter goes straight to its `redis_failure` policy. Every failed call
(a connection error, a timeout, or an error reply such as OOM or READONLY) makes the limiter
degraded until the next good one; both moments are logged once, so an outage is two log
lines however many requests it touched.
"""

from __future__ import annotations

import structlog

from gateway.clock import Clock

log = structlog.get_logger(__name__)


class CircuitBreaker:
    """Skip a backend after `threshold` consecutive errors; after `cooldown` seconds let one
    call try it, closing on success and waiting another cooldown on failure."""

    def __init__(self, clock: Clock, *, threshold: int, cooldown: float) -> None:
        self._clock = clock
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None
        self._failing_since: float | None = None

    @property
    def healthy(self) -> bool:
        """Whether the last call of the backend succeeded (or none has failed yet)."""
        return self._failing_since is None

    @property
    def is_open(self) -> bool:
        """Whether calls are being skipped (between trials) right now."""
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether to call the backend now; an allowed trial restarts the cooldown."""
        if self._opened_at is None:
            return True
        if self._clock.now() - self._opened_at < self._cooldown:
            return False
        self._opened_at = self._clock.now()
        return True

    def succeeded(self) -> None:
        """Record a good call: close the breaker."""
        if self._failing_since is not None:
            down = self._clock.now() - self._failing_since
            log.info("limits.recovered", degraded_seconds=round(down, 3))
        self._failures = 0
        self._opened_at = None
        self._failing_since = None

    def failed(self, error: str = "") -> None:
        """Record an error: open (or re-open) after `threshold` in a row."""
        if self._failing_since is None:
            self._failing_since = self._clock.now()
            log.warning("limits.degraded", error=error)
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at = self._clock.now()
