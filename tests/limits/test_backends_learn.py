"""The `LimitBackend.learn` contract, run on every backend with one fake clock.

Each backend must return exactly what `learning.merged` computes: the same bits from memory,
fakeredis and a real Redis prove `lua/learn.lua` transcribes the Python.
"""

from __future__ import annotations

import math

import fakeredis
import pytest

from gateway.limits import LimitBackend, MemoryBackend
from gateway.limits.learning import (
    COUNT_CAP,
    LEARNED_TTL,
    OUTPUT_CAP,
    RATIO_BOUND,
    Figures,
    Lesson,
    Mean,
    Samples,
    learning_key,
    merged,
)
from gateway.limits.redis_backend import RedisBackend
from tests.limits.conftest import GROUP
from tests.support.fake_clock import FakeClock

SEED = Figures(Mean(math.log(1.25), 20), Mean(500.0, 8))
"""An instance that learned 1.25 from 20 inputs and 500 tokens from 8 outputs."""


async def learn(backend: LimitBackend, clock: FakeClock, lesson: Lesson) -> Figures:
    """Teach the test group at the clock's time."""
    return await backend.learn(GROUP, lesson, now=clock.now())


def read(seed: Figures | None = None) -> Lesson:
    """A lesson without samples: it only reads (or seeds) the fleet's figures."""
    return Lesson(seed or Figures())


async def test_first_lesson_seeds_the_fleet(backend: LimitBackend, clock: FakeClock) -> None:
    """A group the fleet does not know takes the instance's own figures as they are."""
    lesson = Lesson(SEED, Samples(3 * math.log(1.25), 3), Samples(1_500.0, 3))
    assert SEED == await learn(backend, clock, lesson)


async def test_batches_merge_weighted_by_size(backend: LimitBackend, clock: FakeClock) -> None:
    """Ten samples of mean 0.2 move a figure that saw 20 by 1 - 0.9**10 of the way."""
    await learn(backend, clock, read(SEED))
    lesson = Lesson(Figures(), Samples(2.0, 10), Samples(4_000.0, 10))
    fleet = await learn(backend, clock, lesson)
    weight = 1 - 0.9**10
    assert merged(SEED, lesson) == fleet
    assert (30, 18) == (fleet.log_ratio.count, fleet.output.count)
    assert fleet.log_ratio.value == pytest.approx(math.log(1.25) + weight * (0.2 - math.log(1.25)))
    assert fleet.output.value == pytest.approx(500 + weight * (400 - 500))


async def test_young_figures_are_plain_means(backend: LimitBackend, clock: FakeClock) -> None:
    """While a figure has seen few samples, a batch counts by its share of them all."""
    await learn(backend, clock, read(Figures(output=Mean(100.0, 2))))
    fleet = await learn(backend, clock, Lesson(Figures(), outputs=Samples(600.0, 2)))
    assert (Mean(), Mean(200.0, 4)) == (fleet.log_ratio, fleet.output)


async def test_samples_are_clipped_and_counts_capped(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """A wild batch moves a figure only as far as the bounds, and counts stop at the cap."""
    wild = Figures(Mean(9.0, COUNT_CAP * 5), Mean(OUTPUT_CAP * 3, 1))
    seeded = await learn(backend, clock, read(wild))
    lesson = Lesson(Figures(), Samples(-50.0, 2), Samples(-9.0, 1))
    fleet = await learn(backend, clock, lesson)
    clip = math.log(RATIO_BOUND)
    assert Figures(Mean(clip, COUNT_CAP), Mean(OUTPUT_CAP, 1)) == seeded
    assert merged(seeded, lesson) == fleet
    assert (COUNT_CAP, Mean(OUTPUT_CAP / 2, 2)) == (fleet.log_ratio.count, fleet.output)


async def test_known_figures_ignore_the_seed(backend: LimitBackend, clock: FakeClock) -> None:
    """Once the fleet knows a group, another instance's seed does not replace its figures."""
    await learn(backend, clock, read(SEED))
    other = Figures(Mean(-1.0, 900), Mean(9_000.0, 900))
    assert SEED == await learn(backend, clock, read(other))


async def test_groups_learn_apart(backend: LimitBackend, clock: FakeClock) -> None:
    """Each group has its own figures."""
    await learn(backend, clock, read(SEED))
    assert Figures() == await backend.learn("haiku", read(), now=clock.now())


async def test_a_lesson_without_samples_for_a_figure_leaves_it(
    backend: LimitBackend, clock: FakeClock
) -> None:
    """Output samples alone leave the input ratio where the fleet had it."""
    await learn(backend, clock, read(SEED))
    fleet = await learn(backend, clock, Lesson(Figures(), outputs=Samples(700.0, 1)))
    assert SEED.log_ratio == fleet.log_ratio


async def test_idle_figures_expire_in_memory() -> None:
    """The in-process backend forgets a group's figures after LEARNED_TTL without a lesson."""
    clock = FakeClock()
    backend = MemoryBackend(clock)
    await learn(backend, clock, read(SEED))
    clock.advance(LEARNED_TTL - 1)
    kept = await learn(backend, clock, read())
    clock.advance(LEARNED_TTL)
    assert (SEED, Figures()) == (kept, await learn(backend, clock, read()))


async def test_redis_key_is_one_per_group_and_expires_when_idle() -> None:
    """Redis keeps a group's figures in one key, `cgw:learning:{group}`, with a one-day PX."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    backend = RedisBackend(client)
    await backend.learn(GROUP, read(SEED))
    ttl = await client.pttl(learning_key(GROUP))
    keys = await client.keys("*")
    await backend.aclose()
    assert [b"cgw:learning:{sonnet}"] == keys
    assert LEARNED_TTL * 1000 - 1_000 < ttl <= LEARNED_TTL * 1000
