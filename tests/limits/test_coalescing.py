"""`Coalescer`: one settlement in flight per hash tag, the rest summed into one batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.limits import BucketSpec, Dimension, LimitBackendError
from gateway.limits.coalescing import Coalescer
from tests.limits.conftest import bucket

RPM = bucket(Dimension.REQUESTS, 60)
ITPM = bucket(Dimension.INPUT_TOKENS, 6_000)
OTHER = bucket(Dimension.REQUESTS, 60, scope="other")

Call = tuple[tuple[tuple[BucketSpec, int], ...], float | None]


class Store:
    """A fake `apply` that records each call and lands only when released."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None

    async def apply(self, touched: Sequence[tuple[BucketSpec, int]], now: float | None) -> None:
        self.calls.append((tuple(touched), now))
        await self.gate.wait()
        if self.error is not None:
            raise self.error


async def test_an_idle_tag_applies_at_once_in_the_callers_task() -> None:
    """With nothing in flight, a call goes straight through: no task, no added latency."""
    store = Store()
    coalescer = Coalescer(store.apply)
    await coalescer.adjust(RPM.hash_tag, [(RPM, -1)], 5.0)
    assert [(((RPM, -1),), 5.0)] == store.calls


async def test_calls_behind_a_flight_are_summed_per_bucket_into_one() -> None:
    """Three calls during a flight become one apply of the summed, non-zero amounts."""
    store = Store()
    coalescer = Coalescer(store.apply)
    store.gate.clear()
    first = asyncio.ensure_future(coalescer.adjust(RPM.hash_tag, [(RPM, 5)], 1.0))
    await asyncio.sleep(0)
    queued = [
        coalescer.adjust(RPM.hash_tag, [(RPM, -1), (ITPM, -100)], 2.0),
        coalescer.adjust(RPM.hash_tag, [(RPM, 1), (ITPM, -50)], 3.0),
        coalescer.adjust(RPM.hash_tag, [(ITPM, 20)], 4.0),
    ]
    pending = asyncio.gather(*queued)
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, pending)
    assert [(((RPM, 5),), 1.0), (((ITPM, -130),), 4.0)] == store.calls


async def test_other_tags_fly_independently() -> None:
    """A flight of one hash tag never holds back another tag's call."""
    store = Store()
    coalescer = Coalescer(store.apply)
    store.gate.clear()
    first = asyncio.ensure_future(coalescer.adjust(RPM.hash_tag, [(RPM, 1)], None))
    other = asyncio.ensure_future(coalescer.adjust(OTHER.hash_tag, [(OTHER, 1)], None))
    await asyncio.sleep(0)
    calls_while_both_fly = len(store.calls)
    store.gate.set()
    await asyncio.gather(first, other)
    assert 2 == calls_while_both_fly


async def test_a_failed_batch_fails_each_caller_and_frees_the_tag() -> None:
    """Every caller of a failed batch raises LimitBackendError; the next call goes at once."""
    store = Store()
    coalescer = Coalescer(store.apply)
    store.gate.clear()
    first = asyncio.ensure_future(coalescer.adjust(RPM.hash_tag, [(RPM, 1)], None))
    await asyncio.sleep(0)
    queued = asyncio.gather(
        *(coalescer.adjust(RPM.hash_tag, [(RPM, -1)], None) for _ in range(3)),
        return_exceptions=True,
    )
    await asyncio.sleep(0)
    store.error = LimitBackendError("redis down")
    store.gate.set()
    with pytest.raises(LimitBackendError):
        await first
    outcomes = await queued
    store.error = None
    await coalescer.adjust(RPM.hash_tag, [(RPM, 2)], None)
    assert [LimitBackendError] * 3 == [type(outcome) for outcome in outcomes]
    assert 3 == len(store.calls)


async def test_a_cancelled_caller_still_has_its_adjustment_applied() -> None:
    """Giving up on the wait does not take the amount back out of the batch."""
    store = Store()
    coalescer = Coalescer(store.apply)
    store.gate.clear()
    first = asyncio.ensure_future(coalescer.adjust(RPM.hash_tag, [(RPM, 1)], None))
    await asyncio.sleep(0)
    impatient = asyncio.ensure_future(coalescer.adjust(RPM.hash_tag, [(RPM, -3)], None))
    await asyncio.sleep(0)
    impatient.cancel()
    store.gate.set()
    await first
    await coalescer.drain()
    assert [(((RPM, 1),), None), (((RPM, -3),), None)] == store.calls
