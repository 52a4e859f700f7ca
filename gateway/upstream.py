"""Open one upstream response, retrying per `RetryPolicy` while nothing has reached the client.

This is the retry boundary: everything here happens before the first byte is relayed, so a
failed attempt can still become another attempt or a clean gateway error; `relay.py` never
retries. A retryable error answer's body is read and dropped so the connection is reused; the
answer that is kept goes back with its body unread (or, if it was read, put back byte for byte).
Request bodies held in memory are replayed byte for byte; streamed bodies are never retried.

aiohttp's errors are mapped to the gateway's own here and nowhere else::

    connect refused / DNS              -> UpstreamUnavailable (502 api_error)      retried
    reset or closed before a response  -> UpstreamUnavailable (502 api_error)      retried
    connect timeout                    -> UpstreamTimeout     (504 timeout_error)  retried
    read timeout before the headers    -> UpstreamTimeout     (504 timeout_error)
    any other client error             -> UpstreamUnavailable (502 api_error)
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp.base_protocol import BaseProtocol
from multidict import CIMultiDict
from yarl import URL

from gateway.clock import Clock, SystemClock, wall_time
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from gateway.logs import get_logger
from gateway.retry import (
    CONNECT_ERROR,
    CONNECT_TIMEOUT,
    SHOULD_RETRY,
    RetryBudget,
    RetryPlan,
    RetryPolicy,
    client_retry_count,
    client_should_retry,
    is_retryable,
    retry_after,
)

log = get_logger("gateway.upstream")
ATTEMPTS_HEADER = "x-gateway-upstream-attempts"
Body = bytes | AsyncIterable[bytes] | None


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Where the API lives, how long to wait for it, and how to retry it."""

    base_url: str
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    connection_limit: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    jitter_seed: int | None = None  # tests pin the backoff jitter; None = random


class AttemptObserver(Protocol):
    """Protocol: what the attempt loop reports; the request's `RequestRecord` satisfies it.

    `upstream_attempt_started` comes just before each attempt is sent, with the headers it
    will carry (a trace sets its `traceparent` there); `upstream_retry` says why, and after
    how long, the next attempt follows.
    """

    def upstream_attempt_started(self, headers: CIMultiDict[str]) -> None: ...
    def upstream_attempt(self, status: str) -> None: ...
    def upstream_retry(self, cause: str, delay: float) -> None: ...
    def retry_budget_exhausted(self) -> None: ...
    def upstream_rate_limited(self) -> None: ...


class _Unobserved:
    """The default observer: nobody listens."""

    def upstream_attempt_started(self, headers: CIMultiDict[str]) -> None: ...
    def upstream_attempt(self, status: str) -> None: ...
    def upstream_retry(self, cause: str, delay: float) -> None: ...
    def retry_budget_exhausted(self) -> None: ...
    def upstream_rate_limited(self) -> None: ...


UNOBSERVED = _Unobserved()


@dataclass(frozen=True, slots=True)
class Opened:
    """The kept upstream response (body unread), and what it took to get it."""

    response: aiohttp.ClientResponse
    attempts: int
    answered: int  # attempts that got an HTTP answer: each one counted toward the API's RPM
    should_retry: str | None = None  # the `x-should-retry` the client sees; None = upstream's
    charge_rpm: bool = True

    @property
    def charged_requests(self) -> int:
        """RPM to settle: every attempt the API answered, or 1 without GATEWAY_RETRY_CHARGE_RPM."""
        return max(1, self.answered) if self.charge_rpm else 1

    def client_headers(self) -> dict[str, str]:
        """Headers the gateway adds to the relayed response."""
        headers = {ATTEMPTS_HEADER: str(self.attempts)}
        if self.should_retry is not None:
            headers[SHOULD_RETRY] = self.should_retry
        return headers


@dataclass(frozen=True, slots=True)
class _Failed:
    """An attempt that got no response; `cause` is None when it must not be retried."""

    error: GatewayError
    cause: str | None


def open_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
    """One pooled session for the process: no decompression, no cookies, no default headers."""
    connector = aiohttp.TCPConnector(
        limit=settings.connection_limit,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        ),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        raise_for_status=False,
    )


class Upstream:
    """Sends a request upstream, retrying per policy; returns a response with its body unread."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: UpstreamSettings,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._base = settings.base_url.rstrip("/")
        self._policy = settings.retry
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.budget = RetryBudget.of(self._policy, self._clock)

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy (the handler caps `x-gateway-max-retries` with it)."""
        return self._policy

    @property
    def is_open(self) -> bool:
        """False once the session is closed (shutdown), for readiness."""
        return not self._session.closed

    async def open(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: Body,
        *,
        retries: int | None = None,
        observer: AttemptObserver = UNOBSERVED,
    ) -> Opened:
        """Attempt until an answer is kept; the caller owns `Opened.response` and must release it.

        `retries` is the client's cap (None = the policy's); `observer` hears of every
        attempt and retry. A final failure raises its `GatewayError` carrying the attempts
        header.
        """
        url = URL(self._base + path_qs, encoded=True)
        plan = RetryPlan.create(
            self._policy,
            self.budget,
            self._rng,
            now=self._clock.now(),
            allowed=self._policy.attempts_for(
                retries, replayable=body is None or isinstance(body, bytes)
            ),
            client_retries=client_retry_count(headers),
        )
        while True:
            plan.attempt_started()
            observer.upstream_attempt_started(headers)
            outcome = await self._send(method, url, headers, body, observer)
            if isinstance(outcome, _Failed):
                cause = outcome.cause
                delay = None if cause is None else self._next_delay(plan, None, observer)
                if cause is None or delay is None:
                    raise _final(outcome.error, plan)
            else:
                plan.answered += 1
                verdict = await self._verdict(outcome, plan, observer)
                if verdict is None:
                    return self._kept(outcome, plan)
                delay, cause = verdict
            observer.upstream_retry(cause, delay)
            log.info("upstream_retry", attempt=plan.made, cause=cause, delay=round(delay, 3))
            await self._clock.sleep(delay)

    def _kept(self, response: aiohttp.ClientResponse, plan: RetryPlan) -> Opened:
        hint = client_should_retry(
            response.status,
            response.headers,
            client_done=plan.client_done,
            hopeless=plan.stopped == "hopeless",
        )
        return Opened(response, plan.made, plan.answered, hint, self._policy.charge_rpm)

    def _next_delay(
        self, plan: RetryPlan, hint: float | None, observer: AttemptObserver
    ) -> float | None:
        delay = plan.next_delay(hint, self._clock.now())
        if delay is None and plan.stopped == "budget":
            observer.retry_budget_exhausted()
            log.warning("retry_budget_exhausted", attempt=plan.made)
        return delay

    async def _verdict(
        self, response: aiohttp.ClientResponse, plan: RetryPlan, observer: AttemptObserver
    ) -> tuple[float, str] | None:
        """(delay, cause) to retry after this answer, or None to keep it (body intact)."""
        status, headers = response.status, response.headers
        observer.upstream_attempt(str(status))
        if status == 429:
            observer.upstream_rate_limited()
        if plan.allowed <= 1 or is_retryable(status, headers) is None:
            return None
        try:
            body = await response.read()
        except asyncio.CancelledError:
            response.close()
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            response.close()
            retry_delay = self._next_delay(plan, None, observer)
            if retry_delay is None:
                message = "The upstream API closed the connection."
                raise _final(UpstreamUnavailable(message), plan) from exc
            return retry_delay, CONNECT_ERROR
        cause = is_retryable(status, headers, body)
        if cause is None:
            plan.stopped = "hopeless"
        hint = None if cause is None else retry_after(headers, wall_time())
        delay = None if cause is None else self._next_delay(plan, hint, observer)
        if cause is None or delay is None:
            _put_back(response, body)
            return None
        response.release()
        return delay, cause

    async def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: Body,
        observer: AttemptObserver,
    ) -> aiohttp.ClientResponse | _Failed:
        """One attempt: the response, or the mapped failure and whether it may be retried."""
        try:
            return await self._session.request(
                method, url, headers=headers, data=body, allow_redirects=False, compress=None
            )
        except asyncio.CancelledError:
            observer.upstream_attempt("cancelled")
            raise
        except Exception as exc:
            failed = _mapped(exc)
            if failed is None:
                raise
            failed.error.__cause__ = exc
            label = CONNECT_TIMEOUT if isinstance(failed.error, UpstreamTimeout) else CONNECT_ERROR
            observer.upstream_attempt(label)
            return failed


def _mapped(exc: Exception) -> _Failed | None:
    """The gateway error for an aiohttp failure (None: not ours to map), retryable or not."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _Failed(UpstreamTimeout("The upstream API did not answer in time."), CONNECT_TIMEOUT)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return _Failed(UpstreamTimeout("The upstream API did not answer in time."), None)
    if isinstance(exc, aiohttp.ClientConnectorError):
        log.warning("upstream_connect_failed", error=type(exc).__name__, detail=str(exc))
        return _Failed(UpstreamUnavailable("Could not connect to the upstream API."), CONNECT_ERROR)
    if isinstance(exc, aiohttp.ClientError):
        log.warning("upstream_request_failed", error=type(exc).__name__, detail=str(exc))
        retryable = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
        message = "The upstream API closed the connection."
        return _Failed(UpstreamUnavailable(message), CONNECT_ERROR if retryable else None)
    return None


def _final(error: GatewayError, plan: RetryPlan) -> GatewayError:
    """`error`, carrying the attempts header (and `x-should-retry: false` once the gateway
    made the attempts the client would have)."""
    error.headers[ATTEMPTS_HEADER] = str(plan.made)
    if plan.client_done:
        error.headers[SHOULD_RETRY] = "false"
    return error


def _put_back(response: aiohttp.ClientResponse, body: bytes) -> None:
    """Refill a response whose body was read, so the relay streams it like any other."""
    loop = asyncio.get_running_loop()
    reader = aiohttp.StreamReader(BaseProtocol(loop), max(len(body), 2**16), loop=loop)
    if body:
        reader.feed_data(body)
    reader.feed_eof()
    response.content = reader
