"""Retry policy, pure: what is retryable, backoff with jitter, retry-after, the retry budget.

No HTTP library and no I/O: statuses, header mappings and bytes in, decisions out. Time comes
from an injected `Clock`, jitter from an injected `random.Random`. `upstream.py` runs the loop.

- Retryable: `x-should-retry: true|false` decides first (the SDKs' rule); otherwise 429, 500,
  502, 503, 504 and 529, plus connection errors and connect timeouts. Never the spend-cap 429
  (`enforced_spend_limit_reached`), whatever the headers say.
- Delay: `retry-after-ms` / `retry-after` when present, else full jitter,
  `uniform(0, min(cap, base * 2**retry))`. A delay that would end past the request's time
  budget stops the retries: the client gets the upstream's answer instead.
- Never lower the client's success. An official SDK announces which of its attempts this
  is (`x-stainless-retry-count`) and obeys `x-should-retry`; on its own it would make
  `client_attempts` (3: `max_retries=2`) attempts in all. The gateway makes the ones still
  to come itself, close together and with jitter, and only once it has made at least as
  many does a relayed error say `x-should-retry: false`; before that the client keeps its
  own retries. Those attempts add no load the client would not have made, so they draw
  nothing from the budget; attempts past them (up to `max_attempts`), and every retry for a
  client that does not announce its attempts, do.
- Budget: `RetryBudget` lets retries add at most `ratio` of this instance's first attempts
  (plus a small floor per second so low traffic can retry), so a fleet under an upstream
  storm adds at most that share of load. A retry the budget cannot pay for now waits until
  the floor has earned it, if that is within the request's time budget (later waiters wait
  longer: the budget goes into debt, like the limiter's buckets), instead of failing.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gateway.clock import Clock
from gateway.encoding import decoded
from gateway.errors import InvalidRequest

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
SPEND_CAP_CODE = "enforced_spend_limit_reached"
SPEND_CAP_WORDS = ("spend limit", "usage limit", SPEND_CAP_CODE)
MAX_RETRIES_HEADER = "x-gateway-max-retries"
SHOULD_RETRY = "x-should-retry"
CLIENT_RETRY_COUNT = "x-stainless-retry-count"
"""Sent by the official SDKs on every attempt: 0, then 1, 2, ... on their own retries."""
SDK_RETRIED_STATUSES = frozenset({408, 409, 429})
"""Besides every 5xx: what the SDKs retry unless told `x-should-retry: false`."""
SDK_RETRY_AFTER_CAP = 60.0  # the Python SDK ignores a longer retry-after (reference §4)
CONNECT_ERROR = "connect_error"
CONNECT_TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard one request may retry, and how this instance bounds retries overall."""

    max_attempts: int = 6
    client_attempts: int = 3
    """Attempts a client makes on its own: the official SDKs' default `max_retries=2`."""
    base_seconds: float = 0.5
    cap_seconds: float = 8.0
    budget_seconds: float = 30.0
    budget_ratio: float = 0.2
    budget_min_per_second: float = 2.0
    budget_burst: float = 10.0
    charge_rpm: bool = True

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter before retry number `retry` (0 = the first retry): [0, min(cap, base·2ⁿ)]."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2.0 ** min(retry, 62))
        return rng.random() * ceiling

    def attempts_for(self, requested_retries: int | None, *, replayable: bool) -> int:
        """Attempts one request may make: the policy's, lowered by the client, 1 if unreplayable."""
        if not replayable:
            return 1
        if requested_retries is None:
            return max(1, self.max_attempts)
        return max(1, min(self.max_attempts, requested_retries + 1))


def is_retryable(status: int, headers: Mapping[str, str], body: bytes = b"") -> str | None:
    """The retry cause (the status as text) for a retryable answer, else None.

    `headers` must be case-insensitive or lower-case. The body only ever turns a retryable
    answer into a final one (the spend cap), so a caller may first ask without it.
    """
    if status < 400 or is_spend_cap(status, headers, body):
        return None  # a success is never retried, whatever x-should-retry says
    should = headers.get(SHOULD_RETRY, "").strip().lower()
    if should == "true":
        return str(status)
    if should == "false":
        return None
    return str(status) if status in RETRYABLE_STATUSES else None


def is_spend_cap(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """True for the monthly spend-cap 429, which no retry can fix before next month."""
    if status != 429 or not body:
        return False
    text = _decoded(body, headers.get("content-encoding", ""))
    if text is None:  # unreadable: only a 429 with retry-after is surely a rate limit
        return retry_after(headers) is None
    if _error_code(text) == SPEND_CAP_CODE:
        return True
    return retry_after(headers) is None and any(word in text.lower() for word in SPEND_CAP_WORDS)


def retry_after(headers: Mapping[str, str], wall_now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, else `retry-after` (seconds or, given `wall_now`, a date)."""
    millis = _positive(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = headers.get("retry-after")
    seconds = _positive(raw)
    if seconds is not None or raw is None or wall_now is None:
        return seconds
    try:
        at = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return at - wall_now if at > wall_now else None


def requested_retries(raw: str | None, policy: RetryPolicy) -> int | None:
    """The client's `x-gateway-max-retries` (capped by the policy), or None when absent."""
    if raw is None:
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit()):
        raise InvalidRequest(f"{MAX_RETRIES_HEADER}: must be an integer >= 0, got {raw!r}.")
    return min(int(value), max(0, policy.max_attempts - 1))


def client_retry_count(headers: Mapping[str, str]) -> int | None:
    """Which retry of its own this request is for an official SDK (0 = its first attempt),
    or None when the client does not say (plain HTTP, other libraries) or says nonsense."""
    raw = headers.get(CLIENT_RETRY_COUNT, "").strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 3:
        return None
    return int(raw)


def client_should_retry(
    status: int, headers: Mapping[str, str], *, client_done: bool, hopeless: bool = False
) -> str | None:
    """The `x-should-retry` to put on a relayed answer, or None to relay upstream's unchanged.

    `false` on an error the SDK would retry once the gateway has made at least as many
    attempts as the client would still have made on its own (`client_done`): its retries
    could then only multiply the gateway's (3 x 3 attempts), never add success it would have
    had without the gateway. Before that, upstream's word stands and the client keeps every
    retry. Also `false` on an answer known `hopeless` (the spend cap) and on a 429 with
    neither `retry-after` nor `x-should-retry` (the spend cap's shape, reference §7.4).
    """
    if status < 400:
        return None
    if hopeless:
        return "false"
    if status == 429 and retry_after(headers) is None and SHOULD_RETRY not in headers:
        return "false"
    if client_done and (status >= 500 or status in SDK_RETRIED_STATUSES):
        return "false"
    return None


class RetryBudget:
    """Token bucket bounding this instance's retries to `ratio` of its first attempts.

    Each first attempt deposits `ratio` tokens, each retry withdraws one; a floor of
    `min_per_second` tokens refills with time; the level never exceeds `burst` (it starts full).
    """

    def __init__(self, clock: Clock, *, ratio: float, min_per_second: float, burst: float) -> None:
        self._clock = clock
        self._ratio, self._floor, self._burst = ratio, min_per_second, max(1.0, burst)
        self._tokens = self._burst
        self._at = clock.now()

    @classmethod
    def of(cls, policy: RetryPolicy, clock: Clock) -> RetryBudget:
        """The budget a policy describes."""
        return cls(
            clock,
            ratio=policy.budget_ratio,
            min_per_second=policy.budget_min_per_second,
            burst=policy.budget_burst,
        )

    @property
    def tokens(self) -> float:
        """Retries available right now (fractional)."""
        self._refill()
        return self._tokens

    def deposit(self) -> None:
        """A first attempt: earn `ratio` of a retry."""
        self._refill()
        self._tokens = min(self._burst, self._tokens + self._ratio)

    def withdraw(self, within: float = 0.0) -> float | None:
        """Take one retry: the seconds until it is paid for (0 = at once), or None, taking
        nothing, when that is more than `within` seconds away.

        With nothing saved, the retry is owed to the floor's refill: the level goes below
        zero, so each later retry waits one more `1 / min_per_second` behind it, in order.
        """
        self._refill()
        if self._tokens >= 1.0 - 1e-9:  # ten deposits of 0.2 sum to 1.999...
            self._tokens -= 1.0
            return 0.0
        if self._floor <= 0:
            return None
        wait = (1.0 - self._tokens) / self._floor
        if wait > within:
            return None
        self._tokens -= 1.0
        return wait

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed, self._at = max(0.0, now - self._at), now
        self._tokens = min(self._burst, self._tokens + elapsed * self._floor)


@dataclass(slots=True)
class RetryPlan:
    """One request's retries: attempts left, its deadline, and why it stopped retrying."""

    policy: RetryPolicy
    budget: RetryBudget
    rng: random.Random
    allowed: int
    deadline: float
    client_left: int = 1
    """Attempts the client would still have made on its own, this one included."""
    unbudgeted: int = 1
    """Attempts that draw nothing from the budget: `client_left` for an SDK that announces
    its attempts (it stops when told), else only the first."""
    made: int = 0
    answered: int = 0  # attempts the API answered: each one counts toward its RPM
    stopped: str | None = None  # "attempts", "deadline", "budget" or "hopeless" once it gave up

    def attempt_started(self) -> None:
        """Count an attempt (the first one deposits into the budget)."""
        if self.made == 0:
            self.budget.deposit()
        self.made += 1

    @classmethod
    def create(
        cls,
        policy: RetryPolicy,
        budget: RetryBudget,
        rng: random.Random,
        *,
        now: float,
        allowed: int,
        client_retries: int | None,
    ) -> RetryPlan:
        """The plan for a request that may make `allowed` attempts; `client_retries` is its
        `x-stainless-retry-count` (None when the client does not send one)."""
        client_left = max(1, policy.client_attempts - (client_retries or 0))
        unbudgeted = 1 if client_retries is None else client_left
        deadline = now + policy.budget_seconds
        return cls(policy, budget, rng, allowed, deadline, client_left, unbudgeted)

    def next_delay(self, hint: float | None, now: float) -> float | None:
        """Seconds to wait before another attempt, or None to give up (see `stopped`)."""
        if self.made >= self.allowed:
            self.stopped = "attempts"
            return None
        delay = hint if hint is not None else self.policy.backoff(self.made - 1, self.rng)
        if now + delay > self.deadline:
            self.stopped = "deadline"
            return None
        if self.made < self.unbudgeted:
            return delay
        paid_in = self.budget.withdraw(within=self.deadline - now)
        if paid_in is None:
            self.stopped = "budget"
            return None
        return max(delay, paid_in)

    @property
    def client_done(self) -> bool:
        """True once the gateway has made at least as many attempts as the client would
        still have made on its own: a retry of the client's could add load, not success."""
        return self.made >= self.client_left


def _positive(raw: str | None) -> float | None:
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _decoded(body: bytes, encoding: str) -> str | None:
    """The body as text, gunzipped or inflated when so encoded; None when unreadable."""
    plain = decoded(body, encoding, limit=1 << 20)
    try:
        return None if plain is None else plain.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _error_code(text: str) -> str | None:
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    code = details.get("error_code") if isinstance(details, dict) else None
    return code if isinstance(code, str) else None
