"""`CircuitBreaker`: stop calling a failing limits backend for a while.

A dead Redis would otherwise cost every request a connect or command timeout; with the
breaker open, the limiter goes straight to its `redis_failure` policy.
"""

from __future__ import annotations

from gateway.clock import Clock


class CircuitBreaker:
    """Skip a backend after `threshold` consecutive errors; after `cooldown` seconds let one
    call try it, closing on success and waiting another cooldown on failure."""

    def __init__(self, clock: Clock, *, threshold: int, cooldown: float) -> None:
        self._clock = clock
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None

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
        self._failures = 0
        self._opened_at = None

    def failed(self) -> None:
        """Record an error: open (or re-open) after `threshold` in a row."""
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at = self._clock.now()
