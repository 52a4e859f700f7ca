"""`DeferredSettlements` alone: what waits, what a call takes, what a flush sends, in order."""

from __future__ import annotations

import asyncio

import pytest

from gateway.limits import Dimension
from gateway.limits.deferred import DeferredSettlements, Settlement
from tests.limits.conftest import bucket

RPM = bucket(Dimension.REQUESTS, 60)
OTHER = bucket(Dimension.REQUESTS, 60, scope="k2")


def refund(amount: int, now: float | None = None) -> Settlement:
    return Settlement(((RPM, -amount),), now)


class Store:
    """A flush target that records each call; `hold` keeps the next call from landing."""

    def __init__(self) -> None:
        self.flushed: list[tuple[str, list[Settlement]]] = []
        self.hold: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def flush(self, tag: str, settlements: list[Settlement]) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            await hold.wait()
        self.flushed.append((tag, settlements))
        self.called.set()


async def test_a_call_takes_its_tags_settlements_in_order_and_nothing_is_flushed() -> None:
    """What a call takes is its to send; the timer later finds nothing left to flush."""
    store = Store()
    deferred = DeferredSettlements(store.flush, delay=0)
    deferred.add(RPM.hash_tag, refund(1, 1.0))
    deferred.add(RPM.hash_tag, refund(2, 2.0))
    deferred.add(OTHER.hash_tag, Settlement(((OTHER, 1),), None))
    taken = deferred.take(RPM.hash_tag)
    await deferred.drain()
    assert ([refund(1, 1.0), refund(2, 2.0)], [], [OTHER.hash_tag]) == (
        taken,
        deferred.take(RPM.hash_tag),
        [tag for tag, _ in store.flushed],
    )


async def test_the_timer_flushes_what_no_call_took() -> None:
    """With no call to ride on, a tag's settlements go in one flush once the delay is up."""
    store = Store()
    deferred = DeferredSettlements(store.flush, delay=0)
    deferred.add(RPM.hash_tag, refund(1))
    deferred.add(RPM.hash_tag, refund(2))
    await asyncio.wait_for(store.called.wait(), timeout=5)
    assert [(RPM.hash_tag, [refund(1), refund(2)])] == store.flushed


async def test_a_full_list_is_flushed_without_waiting_for_the_timer() -> None:
    """The `max_pending`-th settlement sends the list at once, even with an hour's delay."""
    store = Store()
    deferred = DeferredSettlements(store.flush, delay=3_600, max_pending=3)
    for amount in (1, 2, 3, 4):
        deferred.add(RPM.hash_tag, refund(amount))
    await deferred.landed(RPM.hash_tag)
    assert ([(RPM.hash_tag, [refund(1), refund(2), refund(3)])], [refund(4)]) == (
        store.flushed,
        deferred.take(RPM.hash_tag),
    )


async def test_flushes_of_one_tag_land_in_the_order_they_started() -> None:
    """A second flush waits for the first, however slow: a tag's settlements keep order."""
    store = Store()
    deferred = DeferredSettlements(store.flush, delay=3_600)
    store.hold = release = asyncio.Event()
    deferred.add(RPM.hash_tag, refund(1))
    first = asyncio.ensure_future(deferred.settled(RPM.hash_tag))
    await asyncio.sleep(0)
    deferred.add(RPM.hash_tag, refund(2))
    second = asyncio.ensure_future(deferred.settled(RPM.hash_tag))
    await asyncio.sleep(0)
    flying, landed_early = deferred.flying(RPM.hash_tag), list(store.flushed)
    release.set()
    await asyncio.gather(first, second)
    assert (True, [], [[refund(1)], [refund(2)]], False) == (
        flying,
        landed_early,
        [settlements for _, settlements in store.flushed],
        deferred.flying(RPM.hash_tag),
    )


async def test_a_list_is_flushed_once_no_call_took_it_for_the_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The delay runs from a list's first settlement: a timer armed for an older list that a
    call took does not flush a newer one early (which would race the next admission)."""
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    store = Store()
    deferred = DeferredSettlements(store.flush, delay=1.0)
    deferred.add(RPM.hash_tag, refund(1))  # the timer is due at +1.0
    now[0] += 0.9
    taken = deferred.take(RPM.hash_tag)  # an admission took it along
    deferred.add(RPM.hash_tag, refund(2))  # a new list, started at +0.9
    now[0] += 0.2
    await _turns(3)  # the timer ran at +1.1 and re-armed for +1.9
    early = list(store.flushed)
    now[0] += 0.8
    await _turns(5)
    assert ([refund(1)], [], [(RPM.hash_tag, [refund(2)])]) == (taken, early, store.flushed)


async def _turns(count: int) -> None:
    """Let the event loop run `count` iterations (due timers, then the tasks they start)."""
    for _ in range(count):
        await asyncio.sleep(0)
