"""`LearningSync`: share what each instance learns with the fleet, off the request path.

Every `SYNC_SECONDS`: one `LimitBackend.share_organizations` call pushes the keys'
organisations this instance learned and adopts the fleet's mapping; then, for each group
with samples since its last sync, one `LimitBackend.learn` call pushes them and adopts the
fleet's merged figures: at most one call per group per interval per instance, never one per
request. The app runs `run()` as a
background task beside the limiter (`app.limiter_ctx`) and cancels it on shutdown.

A backend failure keeps the samples for the next pass (local learning goes on meanwhile),
ends the pass (Redis is down: the other groups can wait too), and is logged at most once a
`LOG_EVERY` seconds as `limits.learning_sync_failed`; `limits.learning_sync_recovered`
follows the next good pass. It does not touch the limiter's circuit breaker: the breaker
keeps a dead Redis from costing requests latency, and no request waits for a sync.
"""

from __future__ import annotations

import structlog

from gateway.clock import Clock
from gateway.limits.backend import (
    BackendObserver,
    LimitBackend,
    LimitBackendError,
    ignore_backend_call,
)
from gateway.limits.learning import Learning
from gateway.limits.ledger import Ledger
from gateway.limits.organizations import Organizations

log = structlog.get_logger(__name__)

SYNC_SECONDS = 5.0
"""How often an instance syncs a group it has new samples of (see docs/token-accounting.md)."""
LOG_EVERY = 60.0
"""Least seconds between two `limits.learning_sync_failed` lines."""


class LearningSync:
    """Push a `Learning`'s new samples to a backend and adopt the fleet's figures."""

    def __init__(
        self,
        learning: Learning,
        backend: LimitBackend,
        clock: Clock,
        *,
        every: float = SYNC_SECONDS,
        on_backend_call: BackendObserver | None = None,
        organizations: Organizations | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._learning = learning
        self._organizations = organizations
        self._ledger = ledger
        self._backend = backend
        self._clock = clock
        self._every = every
        self._observe = on_backend_call or ignore_backend_call
        self._failures = 0
        """Failed passes since the last good one."""
        self._logged_at: float | None = None

    async def run(self) -> None:
        """Sync every `every` seconds until cancelled; a bug is logged, not the task's end.

        Tests drive it with a clock whose `sleep` blocks until told (`TickClock` in
        tests/limits/test_learning_sync.py): a `FakeClock`'s returns at once, so it would spin.
        """
        while True:
            await self._clock.sleep(self._every)
            try:
                await self.sync()
            except Exception:
                log.exception("limits.learning_sync_error")

    async def sync(self) -> bool:
        """One pass: the keys' organisations, then the groups with new samples; False when
        the backend failed."""
        if not await self._sync_organizations() or not await self._sync_ledger():
            return False
        lessons = list(self._learning.lessons().items())
        for index, (group, lesson) in enumerate(lessons):
            started = self._clock.now()
            try:
                figures = await self._backend.learn(group, lesson)
            except LimitBackendError as exc:
                self._observe("learn", self._clock.now() - started, False)
                for later, unsent in lessons[index:]:
                    self._learning.restore(later, unsent)
                self._failed(group, exc)
                return False
            self._observe("learn", self._clock.now() - started, True)
            self._learning.adopt(group, figures)
        if self._failures and lessons:
            log.info("limits.learning_sync_recovered", failed_passes=self._failures)
            self._failures, self._logged_at = 0, None
        return True

    async def _sync_organizations(self) -> bool:
        """Push the key -> organisation mappings learned since the last pass and adopt the
        fleet's (every pass: other instances learn too)."""
        if self._organizations is None:
            return True
        unsent = self._organizations.unsent()
        started = self._clock.now()
        try:
            primary, mapping = await self._backend.share_organizations(unsent)
        except LimitBackendError as exc:
            self._observe("organizations", self._clock.now() - started, False)
            self._organizations.restore(unsent)
            self._failed("(organizations)", exc)
            return False
        self._observe("organizations", self._clock.now() - started, True)
        self._organizations.adopt(primary, mapping)
        return True

    async def _sync_ledger(self) -> bool:
        """Push the spend charged here since the last pass and adopt the fleet's totals
        (every pass, whether or not this instance charged anything: others do)."""
        if self._ledger is None:
            return True
        unsent = self._ledger.unsent()
        started = self._clock.now()
        try:
            totals = await self._backend.share_spend(unsent, self._ledger.current_periods())
        except LimitBackendError as exc:
            self._observe("spend", self._clock.now() - started, False)
            self._ledger.restore(unsent)
            self._failed("(spend)", exc)
            return False
        self._observe("spend", self._clock.now() - started, True)
        self._ledger.adopt(totals)
        return True

    def _failed(self, group: str, exc: LimitBackendError) -> None:
        """Count a failed pass; log it unless one was logged less than LOG_EVERY ago."""
        self._failures += 1
        now = self._clock.now()
        if self._logged_at is not None and now - self._logged_at < LOG_EVERY:
            return
        self._logged_at = now
        log.warning(
            "limits.learning_sync_failed", group=group, error=str(exc), failed_passes=self._failures
        )
