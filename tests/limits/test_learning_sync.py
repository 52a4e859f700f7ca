"""`LearningSync`: the fleet shares one ratio, synced on the clock, never per request."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import fakeredis
import pytest
import redis.asyncio
from structlog.testing import capture_logs

from gateway.limits import LearningSync, LimitBackendError, Limiter, LimitsConfig, MemoryBackend
from gateway.limits.learning import Figures, Learning, Lesson
from gateway.limits.redis_backend import RedisBackend
from tests.support.fake_clock import FakeClock
from tests.support.redis_server import RedisServer

GROUP = "sonnet"
CONFIG = LimitsConfig.model_validate(
    {"groups": [{"name": GROUP, "models": ["claude-sonnet-4*"], "requests_per_minute": 60}]}
)


class TickClock(FakeClock):
    """A fake clock whose one sleeper wakes only when the test calls `tick()`."""

    def __init__(self) -> None:
        super().__init__()
        self._asleep = asyncio.Event()
        self._wake: asyncio.Future[None] | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._wake = asyncio.get_running_loop().create_future()
        self._asleep.set()
        await self._wake
        self.advance(seconds)

    async def tick(self) -> None:
        """Wake the sleeper and return once it sleeps again."""
        await self._asleep.wait()
        self._asleep.clear()
        assert self._wake is not None
        self._wake.set_result(None)
        await self._asleep.wait()


class CountingBackend(MemoryBackend):
    """A MemoryBackend that counts `learn` calls and fails them while `failing`."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.learned: list[str] = []
        self.failing = False

    async def learn(self, group: str, lesson: Lesson, *, now: float | None = None) -> Figures:
        self.learned.append(group)
        if self.failing:
            raise LimitBackendError("connection refused")
        return await super().learn(group, lesson, now=now)


def teach(learning: Learning, ratio: float, times: int) -> None:
    """`times` settled responses whose input was `ratio` times the estimate."""
    for _ in range(times):
        learning.observe(GROUP, 1_000, round(1_000 * ratio), None)


@asynccontextmanager
async def two_backends(
    kind: str, request: pytest.FixtureRequest
) -> AsyncIterator[list[RedisBackend]]:
    """Two backends with their own clients on one fakeredis or real redis-server."""
    if kind == "fakeredis":
        server = fakeredis.FakeServer()
        pair = [RedisBackend(fakeredis.FakeAsyncRedis(server=server)) for _ in range(2)]
    else:
        real: RedisServer = request.getfixturevalue("redis_server")
        admin = redis.asyncio.Redis.from_url(real.url)
        await admin.flushall()
        await admin.aclose()
        pair = [RedisBackend.from_url(real.url) for _ in range(2)]
    try:
        yield pair
    finally:
        for backend in pair:
            await backend.aclose()


async def test_sync_runs_at_the_interval_not_per_request() -> None:
    """A hundred settled responses cost no backend call; each interval costs one per group."""
    clock = TickClock()
    backend = CountingBackend(clock)
    learning = Learning()
    runner = asyncio.get_running_loop().create_task(LearningSync(learning, backend, clock).run())
    teach(learning, 1.25, 100)
    before = list(backend.learned)
    await clock.tick()
    after_one = list(backend.learned)
    await clock.tick()  # nothing new to teach: no call
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    assert ([], [GROUP], [GROUP]) == (before, after_one, backend.learned)
    assert [5.0, 5.0, 5.0] == clock.sleeps


@pytest.mark.parametrize("kind", ["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
async def test_two_limiters_converge_on_one_ratio(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Instances with different traffic end up using one fleet ratio once each has synced."""
    clock = FakeClock()
    async with two_backends(kind, request) as backends:
        a, b = (Limiter(backend, CONFIG, clock) for backend in backends)
        syncs = [LearningSync(x.learning, y, clock) for x, y in zip((a, b), backends, strict=True)]
        teach(a.learning, 1.25, 20)
        teach(b.learning, 0.8, 20)
        alone = (a.learning.input_ratio(GROUP), b.learning.input_ratio(GROUP))
        for _ in range(2):  # two intervals: each instance syncs once in each
            assert [True, True] == [await sync.sync() for sync in syncs]
            teach(a.learning, 1.25, 1)
            teach(b.learning, 0.8, 1)
        assert [True, True] == [await sync.sync() for sync in syncs]
        fleet = await backends[0].learn(GROUP, Lesson(Figures()))
        shared = (a.learning.input_ratio(GROUP), b.learning.input_ratio(GROUP))
    assert (1.25, 0.8) == tuple(round(ratio, 9) for ratio in alone)
    assert math.exp(fleet.log_ratio.value) == b.learning.input_ratio(GROUP)
    assert shared[0] == pytest.approx(shared[1], rel=0.02)
    assert 0.8 < min(shared) <= max(shared) < 1.25


async def test_backend_down_during_sync_keeps_learning_locally() -> None:
    """A refused connection raises nothing; local learning goes on and the samples wait."""
    clock = FakeClock()
    down = RedisBackend.from_url("redis://127.0.0.1:1/0", timeout=0.5)
    learning = Learning()
    sync = LearningSync(learning, down, clock)
    teach(learning, 1.25, 10)
    with capture_logs() as logs:
        failed = [await sync.sync(), await sync.sync()]
    teach(learning, 2.0, 10)
    await down.aclose()
    alone = Learning()  # what an instance without a fleet learns from the same responses
    teach(alone, 1.25, 10)
    teach(alone, 2.0, 10)
    assert [False, False] == failed
    assert ["limits.learning_sync_failed"] == [line["event"] for line in logs]
    assert (20, alone.input_ratio(GROUP)) == (
        learning.lessons()[GROUP].log_ratios.count,
        learning.input_ratio(GROUP),
    )


async def test_failures_log_once_a_minute_and_samples_land_after_recovery() -> None:
    """While the backend fails, one line a minute; once back, the kept samples are pushed."""
    clock = FakeClock()
    backend = CountingBackend(clock)
    learning = Learning()
    sync = LearningSync(learning, backend, clock)
    teach(learning, 1.25, 3)
    backend.failing = True
    with capture_logs() as logs:
        for _ in range(13):  # 65 s of failed passes
            await sync.sync()
            clock.advance(5.0)
        backend.failing = False
        recovered = await sync.sync()
    fleet = await backend.learn(GROUP, Lesson(Figures()))
    assert (True, 3) == (recovered, fleet.log_ratio.count)
    assert [
        "limits.learning_sync_failed",
        "limits.learning_sync_failed",
        "limits.learning_sync_recovered",
    ] == [line["event"] for line in logs]


async def test_sync_failures_leave_the_breaker_closed() -> None:
    """Failed syncs do not open the limiter's circuit breaker: requests still use the backend."""
    clock = FakeClock()
    backend = CountingBackend(clock)
    limiter = Limiter(backend, CONFIG, clock, breaker_threshold=1)
    sync = LearningSync(limiter.learning, backend, clock)
    backend.failing = True
    for _ in range(3):
        teach(limiter.learning, 1.25, 1)
        await sync.sync()
    assert (False, 3) == (limiter.breaker_open, len(backend.learned))


async def test_two_instances_agree_on_the_organizations_after_one_sync_each() -> None:
    """Each instance pushes the keys' organisations it learned and adopts the fleet's: the
    second instance charges a key it never saw to the first one's organisation scope."""
    clock = FakeClock()
    shared = MemoryBackend(clock)
    one = Limiter(shared, CONFIG, clock, shared=True)
    two = Limiter(shared, CONFIG, clock, shared=True)
    one.learn_organization("k1", "org-a")
    two.learn_organization("k2", "org-b")
    for limiter in (one, two, one):
        sync = LearningSync(limiter.learning, shared, clock, organizations=limiter.organizations)
        assert await sync.sync()
    assert ("org", "org-org-b", "org", "org-org-b") == (
        one.scope_for("k1"),
        one.scope_for("k2"),
        two.scope_for("k1"),
        two.scope_for("k2"),
    )
