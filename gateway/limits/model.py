"""Bucket values and the one copy of the bucket arithmetic every backend shares.

Nothing here does I/O. `MemoryBackend` calls these functions; `lua/reserve.lua` and
`lua/adjust.lua` transcribe `refilled`, `decide`, `need_ms` and `ttl_ms` line for line, and
the shared contract suite proves the copies agree to the last bit.

A bucket holds a `level` (tokens available; negative means debt owed by queued requests)
and the time it was last written. It refills continuously at `capacity / period` per second
up to `capacity`; there is no window and no reset.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

MINUTE = 60.0
DAY = 86_400.0
EXPIRY_MARGIN_MS = 1_000
"""An idle key outlives the time its bucket needs to refill fully by this much, so an
expired (missing) key always means a full bucket."""

_GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class Dimension(StrEnum):
    """What a bucket counts, and over which period it refills."""

    REQUESTS = "requests"
    INPUT_TOKENS = "input_tokens"
    OUTPUT_TOKENS = "output_tokens"
    TOKENS = "tokens"
    TOKENS_PER_DAY = "tokens_per_day"

    @property
    def per_period_name(self) -> str:
        """The limits file's name for a limit on this dimension, e.g. `requests_per_minute`."""
        return "tokens_per_day" if self is Dimension.TOKENS_PER_DAY else f"{self}_per_minute"

    @property
    def period(self) -> float:
        """Seconds in which an empty bucket of this dimension refills to capacity."""
        return DAY if self is Dimension.TOKENS_PER_DAY else MINUTE


LIMIT_FIELDS = tuple((dim, dim.per_period_name) for dim in Dimension)
"""Each dimension with the name of its limit in the limits file, worked out once: a group's
`limits()` runs for every admitted request, and `per_period_name` builds a string each time."""


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request takes from its buckets; negative only as a settlement delta."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def minus(self, other: Cost) -> Cost:
        """The difference `self - other`, field by field."""
        return Cost(
            self.requests - other.requests,
            self.input_tokens - other.input_tokens,
            self.output_tokens - other.output_tokens,
        )

    def plus(self, other: Cost) -> Cost:
        """The sum `self + other`, field by field."""
        return Cost(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
        )

    def on(self, dimension: Dimension) -> int:
        """The amount this cost takes from a bucket of `dimension`."""
        if dimension is Dimension.REQUESTS:
            return self.requests
        if dimension is Dimension.INPUT_TOKENS:
            return self.input_tokens
        if dimension is Dimension.OUTPUT_TOKENS:
            return self.output_tokens
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One bucket: whose (scope), which model group, what it counts and how much it holds.

    `limit` is the configured figure per period; `capacity` is what the bucket really holds
    once headroom (and, on the fail-open fallback, the local share) is taken off, and
    `refill` what it regains per period (None: `capacity`). The derived `hash_tag`, `key`
    and `rate` are computed once, at construction: backends read them several times per
    request, and the limiter reuses one spec across many requests.
    """

    scope: str
    group: str
    dimension: Dimension
    limit: int
    capacity: float
    refill: float | None = None
    tenant: str = ""
    """The tenant whose sub-quota this is ("" for the scope's own bucket): a tenant's
    buckets share the hash tag of the scope's, so one script debits both or neither."""
    hash_tag: str = field(init=False, repr=False, compare=False)
    """The Redis Cluster hash tag every bucket of one admission shares."""
    key: str = field(init=False, repr=False, compare=False)
    """The storage key, e.g. `cgw:{3f2a9c:sonnet}:input_tokens`, or for a tenant's share
    `cgw:{3f2a9c:sonnet}:tenant=search:input_tokens`."""
    rate: float = field(init=False, repr=False, compare=False)
    """Refill per second."""

    def __post_init__(self) -> None:
        if not self.scope or "{" in self.scope or "}" in self.scope:
            raise ValueError(f"scope must be non-empty and without braces: {self.scope!r}")
        if not _GROUP_NAME.fullmatch(self.group):
            raise ValueError(f"group name must match {_GROUP_NAME.pattern}: {self.group!r}")
        if self.limit < 0 or self.capacity < 0:
            raise ValueError("limit and capacity must be >= 0")
        if self.tenant and not _GROUP_NAME.fullmatch(self.tenant):
            raise ValueError(f"tenant name must match {_GROUP_NAME.pattern}: {self.tenant!r}")
        hash_tag = f"{{{self.scope}:{self.group}}}"
        owner = f"tenant={self.tenant}:" if self.tenant else ""
        object.__setattr__(self, "hash_tag", hash_tag)
        object.__setattr__(self, "key", f"cgw:{hash_tag}:{owner}{self.dimension.value}")
        refill = self.capacity if self.refill is None else self.refill
        object.__setattr__(self, "rate", refill / self.dimension.period)

    def __hash__(self) -> int:
        """The key's (cached) string hash: specs key dicts on the Redis path, and equal
        specs share a key, so this agrees with `==` without hashing five fields."""
        return hash(self.key)

    @classmethod
    def create(
        cls,
        scope: str,
        group: str,
        dimension: Dimension,
        limit: int,
        *,
        headroom: float = 0.0,
        burst_seconds: float | None = None,
        tenant: str = "",
    ) -> BucketSpec:
        """A bucket refilling at `limit` less `headroom` (a fraction, 0.02 = 2%) per period.

        It holds as much, or only `burst_seconds` of that refill on a per-minute bucket (the
        API may enforce 60 RPM as one a second). Neither ever takes a requests bucket below
        one request: `requests_per_minute: 1` admits its first request at once, then one
        every 61.2 s. (A token bucket needs no such floor: a request fits while its cost is
        within the limit, see `check_request`.)
        """
        sustained = limit * (1.0 - headroom)
        capacity = sustained
        if burst_seconds is not None and dimension.period == MINUTE:
            capacity = min(sustained, sustained * burst_seconds / MINUTE)
        if dimension is Dimension.REQUESTS:
            capacity = max(capacity, min(limit, 1))
        if capacity == sustained:
            return cls(scope, group, dimension, limit, capacity, tenant=tenant)
        return cls(scope, group, dimension, limit, capacity, sustained, tenant=tenant)

    def scaled(self, share: float) -> BucketSpec:
        """The same bucket holding and refilling only `share` (the fail-open fallback)."""
        refill = None if self.refill is None else self.refill * share
        return replace(self, capacity=self.capacity * share, refill=refill)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Every bucket was debited; go after `wait` seconds (0 = now)."""

    buckets: tuple[BucketSpec, ...]
    cost: Cost
    wait: float
    levels: tuple[float, ...]
    """Each bucket's level just after the debit, in `buckets` order."""
    at: float = field(default=0.0, compare=False)
    """When the debit happened, in the backend's own order (Redis TIME; the memory backend
    counts its operations): a change stamped later is news to the reservation's waiter
    (`queue.py`)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was debited: the wait would exceed `max_wait`.

    `bucket` needs the longest; `retry_after` is the wait this request needs now;
    `remaining` is that bucket's level before the (refused) debit.
    """

    bucket: BucketSpec
    retry_after: float
    remaining: float


@dataclass(frozen=True, slots=True)
class NeverFits:
    """Nothing was debited: `cost` exceeds `bucket`'s limit, so no wait can help."""

    bucket: BucketSpec
    cost: int


def check_request(buckets: Sequence[BucketSpec], cost: Cost) -> NeverFits | None:
    """Validate one admission and find a bucket it can never fit, before any I/O.

    A cost never fits when it exceeds the bucket's limit, the most the API's own bucket
    holds. One between the capacity (the limit less headroom) and the limit fits: it takes
    the bucket into debt and waits until that is repaid, like any queued request.
    One pass with no set or string building: this runs on every reserve.
    """
    tag = buckets[0].hash_tag if buckets else ""
    never: NeverFits | None = None
    for bucket in buckets:
        if bucket.hash_tag != tag:
            raise ValueError("all buckets of one admission must share scope and group")
        if never is None:
            amount = cost.on(bucket.dimension)
            if amount > bucket.limit or (amount > 0 and bucket.rate == 0):
                never = NeverFits(bucket, amount)
    if cost.requests < 0 or cost.input_tokens < 0 or cost.output_tokens < 0:
        raise ValueError(f"a reserved cost cannot be negative: {cost}")
    return never


def refilled(bucket: BucketSpec, stored: tuple[float, float] | None, now: float) -> float:
    """The level at `now` from a stored `(level, updated_at)`; no state means full."""
    if stored is None:
        return bucket.capacity
    level, updated_at = stored
    return min(bucket.capacity, level + max(0.0, now - updated_at) * bucket.rate)


def need_ms(bucket: BucketSpec, level: float, amount: int, floor: float = 0.0) -> int:
    """Milliseconds until `level - amount` is repaid to >= `floor` (0 when it fits now)."""
    after = level - amount - floor
    if amount <= 0 or after >= 0:
        return 0
    return math.ceil(-after / bucket.rate * 1000)


def decide(
    buckets: Sequence[BucketSpec],
    amounts: Sequence[int],
    levels: Sequence[float],
    max_wait: float,
    floor: float = 0.0,
) -> int | Refused:
    """The wait in milliseconds if every bucket may be debited, else the refusal.

    `floor` > 0 is a lower-priority request's (the limits file's `priority_reserve`): it
    may only use what lies above that share of each bucket's capacity, and never queues into
    debt (held back, it is refused with the wait until it would fit, and asks again then).
    """
    wait, worst = 0, 0
    for index, (bucket, amount, level) in enumerate(zip(buckets, amounts, levels, strict=True)):
        need = need_ms(bucket, level, amount, floor * bucket.capacity)
        if need > wait:
            wait, worst = need, index
    if wait > max_wait * 1000 or (floor > 0 and wait > 0):
        return Refused(buckets[worst], wait / 1000, levels[worst])
    return wait


def ttl_ms(bucket: BucketSpec, level: float) -> int:
    """How long an idle bucket at `level` keeps its state: until full, plus a margin."""
    if level >= bucket.capacity:
        return EXPIRY_MARGIN_MS
    return math.ceil((bucket.capacity - level) / bucket.rate * 1000) + EXPIRY_MARGIN_MS


def adjusted(bucket: BucketSpec, level: float, amount: int) -> float:
    """The level after charging `amount` (a refund when negative), never above capacity."""
    return min(bucket.capacity, level - amount)


def changes(buckets: Sequence[BucketSpec], delta: Cost) -> list[tuple[BucketSpec, int]]:
    """The buckets an adjustment touches: non-zero amounts on buckets that hold anything."""
    touched = []
    for bucket in buckets:
        amount = delta.on(bucket.dimension)
        if amount and bucket.capacity > 0:
            touched.append((bucket, amount))
    return touched
