"""`Limiter`: decide whether a request may go, now or after a wait, and settle what it used.

Over-limit is a value: `admit` returns one of the `Admission` outcomes (`outcomes.py`) and
never sleeps: an `Admitted` says how long to wait, and its caller (the request's admission
ticket, `gateway/ticket.py`) waits, and settles or refunds it with `settle` whatever happens.
When the backend fails, the limits file's `redis_failure` policy decides: `fail_open` admits
on a local `MemoryBackend` holding `fail_open_share` of each limit, `fail_closed` returns
`BackendUnavailable`. A circuit breaker (`breaker.py`) skips a failing backend for a
cooldown, so a dead Redis costs no latency per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import structlog

from gateway.clock import Clock, wall_time
from gateway.limits.backend import (
    BackendObserver,
    LimitBackend,
    LimitBackendError,
    ignore_backend_call,
)
from gateway.limits.breaker import CircuitBreaker
from gateway.limits.bucket_cache import BucketCache
from gateway.limits.fairness import FairShare
from gateway.limits.learned_limits import MAX_MODEL_GROUPS, LearnedLimits
from gateway.limits.learning import Learning
from gateway.limits.ledger import Ledger, OverBudget, WallClock
from gateway.limits.memory_backend import MemoryBackend
from gateway.limits.model import BucketSpec, Cost, Dimension, NeverFits, Refused, Reservation
from gateway.limits.organizations import Organizations
from gateway.limits.outcomes import (
    UNLIMITED,
    Admission,
    Admitted,
    BackendUnavailable,
    HeldBack,
    NotBudgeted,
    UnknownModel,
)
from gateway.limits.policy import Endpoint, GroupLimits, LimitsConfig
from gateway.limits.prices import Spent, price_for
from gateway.limits.queue import WaitQueue
from gateway.limits.tenants import Priority

log = structlog.get_logger(__name__)
_NO_COST = Cost()
_UNBOUNDED = 2**62
_COMBINED = (Dimension.TOKENS, Dimension.TOKENS_PER_DAY)
"""The limits that count input and output together."""
STATUS_BUCKET_SETS = 64
"""How many (group, scope, tenant) bucket sets the live view reads."""


class Limiter:
    """Admission control for one gateway instance on a (usually shared) backend."""

    def __init__(
        self,
        backend: LimitBackend,
        config: LimitsConfig,
        clock: Clock,
        *,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 5.0,
        on_backend_call: BackendObserver | None = None,
        learn_limits: bool = False,
        shared: bool = False,
        share: float = 1.0,
        wall: WallClock = wall_time,
    ) -> None:
        """`shared`: the backend is the fleet's (Redis), so what is learned about keys'
        organisations is synced with it before it is trusted (`organizations.py`).
        `share`: the part of every limit this instance enforces (`BucketCache`).
        `wall`: epoch seconds, for the calendar periods of tenants' budgets (tests)."""
        self._observe = on_backend_call or ignore_backend_call
        self._backend = backend
        self._config = config
        self._clock = clock
        self._breaker = CircuitBreaker(
            clock, threshold=breaker_threshold, cooldown=breaker_cooldown
        )
        self._fallback = MemoryBackend(clock)
        self._queue = WaitQueue(clock)
        backend.on_change(self._queue.shift)
        self._fallback.on_change(self._queue.shift)
        self._fill: dict[str, tuple[Reservation, float]] = {}
        """Per group, its latest reservation and when it was made (read at scrape time)."""
        self.learning = Learning()
        """What settled usage taught each group (input ratio, expected output)."""
        self.organizations = Organizations(shared=shared)
        """Which organisation each key belongs to (with `scope: organization`)."""
        self._fair = FairShare()
        self.ledger = Ledger(config, wall)
        """What each tenant spent this calendar day and month (`ledger.py`)."""
        self._learn_all = learn_limits
        self._learned = LearnedLimits(max_groups=len(config.groups) + MAX_MODEL_GROUPS)
        self._share = share
        self._cache = BucketCache(config, self._learned, learn_all=learn_limits, share=share)

    @property
    def breaker_open(self) -> bool:
        """Whether the backend is being skipped after repeated errors (for metrics)."""
        return self._breaker.is_open

    @property
    def degraded(self) -> bool:
        """Whether the shared backend's last call failed: requests are then admitted on this
        instance's fallback (`fail_open`) or refused (`fail_closed`) until one succeeds."""
        return not self._breaker.healthy

    async def probe(self) -> bool:
        """Check the backend (a write, see `LimitBackend.ping`) for readiness; the outcome
        feeds the breaker like a request's call, so a recovered Redis is used again at once."""
        started = self._clock.now()
        try:
            await self._backend.ping()
        except LimitBackendError as exc:
            self._observe("ping", self._clock.now() - started, False)
            self._breaker.failed(str(exc))
            return False
        self._observe("ping", self._clock.now() - started, True)
        self._breaker.succeeded()
        return True

    def bucket_fill(self) -> dict[tuple[str, Dimension], float]:
        """Last seen level / capacity per (group, dimension); below 0 means queued debt."""
        now = self._clock.now()
        return {
            (bucket.group, bucket.dimension): min(
                1.0, (level + bucket.rate * (now - seen_at)) / bucket.capacity
            )
            for reservation, seen_at in self._fill.values()
            for bucket, level in zip(reservation.buckets, reservation.levels, strict=True)
            if bucket.capacity > 0
        }

    @property
    def config(self) -> LimitsConfig:
        """The limits file in force."""
        return self._config

    @property
    def waiting(self) -> int:
        """Requests of this instance waiting in the queue now."""
        return len(self._queue)

    def reconfigure(self, config: LimitsConfig) -> None:
        """Enforce `config` from the next admission on (a reload). Reservations in flight
        keep the buckets they were made on, so they settle where they were charged; what
        was learned (limits, ratios, organisations) is kept."""
        self._config = config
        self.ledger.reconfigure(config)
        self._learned.resize(len(config.groups) + MAX_MODEL_GROUPS)
        self._cache = BucketCache(
            config, self._learned, learn_all=self._learn_all, share=self._share
        )
        self._fill.clear()

    async def levels(self, count: int = STATUS_BUCKET_SETS) -> list[tuple[BucketSpec, float]]:
        """The current level of each bucket of the `count` bucket sets used most recently,
        read with a zero-cost reservation (one backend call each; none while the breaker
        is open). For the live view, not the hot path."""
        found: list[tuple[BucketSpec, float]] = []
        for buckets in self._cache.recent(count):
            if not buckets or not self._breaker.allow():
                continue
            try:
                reply = await self._backend.reserve(buckets, _NO_COST, max_wait=0)
            except LimitBackendError as exc:
                self._breaker.failed(str(exc))
                continue
            if isinstance(reply, Reservation):
                found.extend(zip(buckets, reply.levels, strict=True))
        return found

    def scope_for(self, key_scope: str) -> str:
        """The scope a request with this key (hash) is charged in: its organisation's, or
        with `scope: key` its own."""
        if self._config.scope == "key":
            return key_scope
        return self.organizations.scope_for(key_scope)

    def learn_organization(self, key_scope: str, org_id: str | None) -> None:
        """A response named the organisation of this key (`anthropic-organization-id`)."""
        if self._config.scope == "organization":
            self.organizations.learn(key_scope, org_id)

    def queue_limit(self, requested: float | None) -> float:
        """The longest wait allowed: the config's, or a requested one capped by it."""
        cap = self._config.queue.max_wait_seconds
        return cap if requested is None else max(0.0, min(requested, cap))

    def cost_for(
        self,
        model: str,
        input_estimate: int,
        max_tokens: int,
        *,
        uncached: int | None = None,
        tenant: str = "",
    ) -> Cost:
        """What to reserve: the input the API will charge and the output the group's
        `output_reservation` asks for (raw figures for unmatched models).

        Input: the estimate scaled by the group's learned ratio; for a request with cache
        breakpoints (`uncached`: the estimate of what follows the last one), that part scaled
        by what the group's cached requests were charged of it (cache reads are not charged;
        a cache write, now and then, is settled when it happens), never more than the whole.
        Output: never more than the group's output and combined limits (and the `tenant`'s
        sub-quotas on them) can hold when upstream charges output as generated, so
        `max_tokens` alone never makes a request never fit.
        """
        group = self.group_for(model)
        if group is None:
            return Cost(1, input_estimate, max_tokens)
        name, learning = group.name, self.learning
        input_tokens = learning.scaled(name, input_estimate)
        if uncached is not None:
            input_tokens = min(input_tokens, learning.scaled(name, uncached, cached=True))
        reservation = group.output_reservation
        output = reservation.amount(
            max_tokens, learning.expected_output(name), learning.high_output(name)
        )
        if reservation.charges_as_generated:
            output = min(output, self._output_room(group, input_tokens, tenant))
        return Cost(1, input_tokens, output)

    def _output_room(self, group: GroupLimits, input_tokens: int, tenant: str) -> int:
        """The most output the group's output-counting limits could ever hold at once.

        Runs for every admitted request: plain loops over the limits, no temporary lists.
        """
        limits = group.limits()
        learned = self._learned.limits(group.name)
        if learned:
            limits = {**learned, **limits}  # a configured limit wins over a learned one
        sets = (limits, self._config.tenant_limits(group, tenant)) if tenant else (limits,)
        room = _UNBOUNDED
        for found in sets:
            output = found.get(Dimension.OUTPUT_TOKENS)
            if output is not None:
                room = min(room, output)
            for dim in _COMBINED:
                total = found.get(dim)
                if total is not None:
                    room = min(room, max(0, total - input_tokens))
        return room

    async def admit(
        self,
        *,
        scope: str,
        model: str,
        cost: Cost,
        max_wait: float | None,
        tenant: str = "",
        priority: Priority = "interactive",
    ) -> Admission:
        """Reserve `cost` on the model's buckets in `scope`, and on the `tenant`'s sub-quota
        of them in the same backend call; an `Admitted` says how long to wait (at most
        `max_wait`, capped by the file's queue limit) before going. A `batch` request may
        only use what lies above the file's `priority_reserve` and never queues: held back,
        it is `Refused` with the wait until it would fit (its ticket asks again then)."""
        group = self.group_for(model)
        budgeted = bool(tenant) and self.ledger.has_budgets(tenant)
        if group is None:
            if budgeted:
                return NotBudgeted(model, "no group of the limits file covers it")
            if self._config.unmatched_models == "pass" or not self._config.groups:
                return UNLIMITED
            return UnknownModel(model)
        if budgeted:
            over = self._over_budget(tenant, model, cost)
            if over is not None:
                return over
        buckets = self._cache.buckets(group, scope, tenant)
        if not buckets:
            return self._unlearned(group, cost) if self.learns_limits(group.name) else UNLIMITED
        lane = self._lane(group.name, tenant, priority)
        floor = self._config.priority_reserve if lane else 0.0
        admission = await self._admit_on(group.name, buckets, cost, max_wait, floor)
        if isinstance(admission, Refused) and lane:
            return HeldBack(admission, lane)
        if isinstance(admission, Admitted) and lane == "over_share":
            self._fair.note(group.name, tenant, self._clock.now())  # still its share's use
        return admission

    def _lane(self, group: str, tenant: str, priority: Priority) -> str:
        """Why a request is held to the batch lane ("" when it is not): its priority, or
        (with `fair_share`) its tenant took more than an equal share of the last minute."""
        if priority == "batch":
            return "batch"
        if not (self._config.fair_share and tenant):
            return ""
        now, tenants = self._clock.now(), len(self._config.tenants)
        if self._fair.over_share(group, tenant, now, tenants=tenants):
            return "over_share"
        self._fair.note(group, tenant, now)  # counted now: concurrent arrivals see it at once
        return ""

    def _over_budget(self, tenant: str, model: str, cost: Cost) -> OverBudget | NotBudgeted | None:
        """Whether the tenant's budgets can cover `cost` (priced for `model`)."""
        price = price_for(self._config.prices, model)
        tokens = cost.input_tokens + cost.output_tokens
        if price is None:
            states = self.ledger.states(tenant)
            if any(state.unit == "usd" for state in states):
                return NotBudgeted(model, "the limits file's prices table has no price for it")
            return self.ledger.check(tenant, 0, tokens)
        return self.ledger.check(
            tenant, price.micro_usd(cost.input_tokens, cost.output_tokens), tokens
        )

    def charge_budget(self, tenant: str, model: str, spent: Spent) -> None:
        """Charge a settled request's real usage to its tenant's budgets."""
        if not tenant or not self.ledger.has_budgets(tenant):
            return
        price = price_for(self._config.prices, model)
        micro_usd = 0 if price is None else price.micro_usd(*spent)
        self.ledger.charge(tenant, micro_usd, spent.tokens)

    async def admit_endpoint(
        self, *, scope: str, endpoint: Endpoint, max_wait: float | None
    ) -> Admission:
        """Reserve one request on `endpoint`'s own RPM bucket in `scope` (`Unlimited` when the
        file sets none); it stays charged unless refunded."""
        buckets = self._cache.endpoint_buckets(endpoint, scope)
        if not buckets:
            return UNLIMITED
        return await self._admit_on(buckets[0].group, buckets, Cost(requests=1), max_wait)

    def enforces(self, group: str) -> bool:
        """Whether decisions on `group` ("none": a model no group matches) are enforced,
        or only computed, counted and logged (`enforce: false`, shadow mode)."""
        return self._config.enforces(None if group == "none" else group)

    def limits_endpoint(self, endpoint: Endpoint) -> bool:
        """Whether the limits file gives `endpoint` its own RPM bucket."""
        return self._config.endpoint_limit(endpoint) is not None

    def charges_live(self, group: str) -> bool:
        """Whether a stream of this group is charged its output while it is generated (every
        `output_reservation` but `max_tokens`, whose reservation already covers it all)."""
        config = self._cache.group(group)
        return config is not None and config.output_reservation.charges_as_generated

    def counts_cache_reads(self, group: str) -> bool:
        """Whether the group's cache reads count toward its ITPM (`cache_reads_count`)."""
        config = self._cache.group(group)
        return config is not None and config.cache_reads_count

    def learn_limits(self, group: str, reported: Mapping[Dimension, int]) -> None:
        """Adopt the limits the API reported for a learning group; log when they change."""
        if not self.learns_limits(group) or not self._learned.learn(group, dict(reported)):
            return
        self._cache.forget(group)  # its cached buckets lack (or misstate) what was learned
        log.info("limits.learned", group=group, **{
            f"{dimension}_per_minute": limit
            for dimension, limit in self._learned.limits(group).items()
        })  # fmt: skip

    async def _admit_on(
        self,
        group: str,
        buckets: Sequence[BucketSpec],
        cost: Cost,
        max_wait: float | None,
        floor: float = 0.0,
    ) -> Admission:
        """Reserve `cost` on `buckets` of `group` (above `floor` of each)."""
        limit = self.queue_limit(max_wait)
        outcome, fallback = await self._reserve(buckets, cost, limit, floor)
        if isinstance(outcome, Reservation):
            now = self._clock.now()
            self._fill[group] = (outcome, now)  # one write per admission: read at scrape
            return Admitted(outcome, group, fallback, now, limit)
        return outcome

    async def wait(self, admitted: Admitted) -> Refused | None:
        """Wait out an admission's queue time, re-timed whenever its buckets' debt moves
        (`queue.py`): None to go, or a `Refused` as soon as it is known that it cannot go
        within its max wait (give its reservation back then)."""
        return await self._queue.wait(admitted, admitted.max_wait)

    def group_for(self, model: str) -> GroupLimits | None:
        """The file's group for `model`; with learning and no groups, one per model name."""
        return self._cache.group_for(model)

    def learns_limits(self, name: str) -> bool:
        """Whether the group called `name` learns its limits from the API's headers (the
        settlement reads the `-limit` headers only for such groups)."""
        group = self._cache.group(name)
        if group is None:
            return self._learn_all and not self._config.groups
        return self._learn_all or group.learn_limits

    def _unlearned(self, group: GroupLimits, cost: Cost) -> Admitted:
        """Admit at once on no bucket, so the response can teach the group its limits."""
        return Admitted(Reservation((), cost, 0.0, ()), group.name, reserved_at=self._clock.now())

    def settle(self, admission: Admission, actual: Cost) -> None:
        """Charge or refund the difference between `actual` and what was charged so far
        (the reservation and any live charge), once.

        A second call, or any outcome other than `Admitted`, is a no-op. A backend error is
        logged and dropped: the buckets then simply refill as if the reservation was used.
        Never waits and is not timed: the backend takes it without a round trip (see
        `LimitBackend.adjust`), so a cancelled or disconnected request cannot skip it.
        """
        if not isinstance(admission, Admitted) or admission.settled:
            return
        admission.settled = True
        self._adjust(admission, actual.minus(admission.reservation.cost).minus(admission.live))

    def charge(self, admission: Admitted, extra: Cost) -> None:
        """Charge `extra` at once, while the response still runs (a stream's output past
        its reservation, as the API counts it live); settlement later corrects the total."""
        if admission.settled:
            return
        admission.live = admission.live.plus(extra)
        self._adjust(admission, extra)

    def _adjust(self, admission: Admitted, delta: Cost) -> None:
        """Apply `delta` where the admission was reserved: the shared backend or the local
        fail-open one; skipped while the breaker is open."""
        if delta == _NO_COST or not admission.reservation.buckets:
            return  # nothing to correct, or admitted on no bucket (limits not learned yet)
        if admission.fallback:
            self._fallback.adjust(admission.reservation, delta)
            return
        if self._breaker.is_open:
            log.warning("limits.settle_skipped", group=admission.group, reason="breaker open")
            return
        try:
            self._backend.adjust(admission.reservation, delta)
        except LimitBackendError as exc:
            self._breaker.failed(str(exc))
            log.warning("limits.settle_failed", group=admission.group, error=str(exc))

    async def pull_down(
        self, admission: Admitted, ceilings: Mapping[Dimension, float], *, at: float
    ) -> None:
        """Lower buckets of an admission's group to at most what upstream reported left at
        clock time `at` (refilled since), in one backend call; never raises a bucket."""
        buckets = [b for b in admission.reservation.buckets if b.dimension in ceilings]
        if not buckets or admission.fallback or self._breaker.is_open:
            return
        elapsed = max(0.0, self._clock.now() - at)
        levels = [ceilings[b.dimension] + elapsed * b.rate for b in buckets]
        started = self._clock.now()
        try:
            await self._backend.cap(buckets, levels)
        except LimitBackendError as exc:
            self._observe("cap", self._clock.now() - started, False)
            self._breaker.failed(str(exc))
            log.warning("limits.pull_down_failed", group=admission.group, error=str(exc))
        else:
            self._observe("cap", self._clock.now() - started, True)
            log.info("limits.pulled_down", group=admission.group, **{
                str(b.dimension): round(level) for b, level in zip(buckets, levels, strict=True)
            })  # fmt: skip

    async def _reserve(
        self, buckets: Sequence[BucketSpec], cost: Cost, max_wait: float, floor: float = 0.0
    ) -> tuple[Reservation | Refused | NeverFits | BackendUnavailable, bool]:
        """Reserve on the backend, or per policy on the local fallback; True = fallback."""
        if self._breaker.allow():
            started = self._clock.now()
            try:
                outcome = await self._backend.reserve(buckets, cost, max_wait=max_wait, floor=floor)
            except LimitBackendError as exc:
                self._observe("reserve", self._clock.now() - started, False)
                self._breaker.failed(str(exc))
                log.warning("limits.backend_failed", error=str(exc), policy=self._policy)
            else:
                self._observe("reserve", self._clock.now() - started, True)
                self._breaker.succeeded()
                return outcome, False
        if self._policy == "fail_closed":
            return BackendUnavailable(), False
        local = self._cache.fallback(buckets)
        return await self._fallback.reserve(local, cost, max_wait=max_wait, floor=floor), True

    @property
    def _policy(self) -> str:
        return self._config.redis_failure
