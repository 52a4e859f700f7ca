"""`WaitQueue`: queued requests re-timed at once when their buckets' debt moves, in order."""

from __future__ import annotations

import asyncio

from gateway.limits import Admitted, Cost, Dimension, Limiter, MemoryBackend, Refused
from gateway.limits.queue import WaitQueue
from tests.limits.conftest import admitted, bucket, limits
from tests.support.fake_clock import ManualClock

RPM = bucket(Dimension.REQUESTS, 60)


async def settle_loop() -> None:
    """Let every task run until it waits again."""
    for _ in range(10):
        await asyncio.sleep(0)


async def drained(max_wait: float = 10.0) -> tuple[Limiter, ManualClock, list[Admitted]]:
    """A limiter at 60 RPM (one a second) whose minute is used up, and those 60 admissions."""
    clock = ManualClock()
    limiter = Limiter(MemoryBackend(clock), limits(queue={"max_wait_seconds": max_wait}), clock)
    return limiter, clock, [await admitted(limiter) for _ in range(60)]


async def queued(limiter: Limiter) -> tuple[asyncio.Task[Refused | None], Admitted]:
    """Admit one request that must queue and start its wait."""
    admission = await admitted(limiter)
    task = asyncio.create_task(limiter.wait(admission))
    await settle_loop()
    return task, admission


async def test_a_waiter_goes_when_its_debt_is_repaid() -> None:
    """With nothing changing, a request queued for 1 s goes after 1 s, not before."""
    limiter, clock, _ = await drained()
    task, admission = await queued(limiter)
    clock.advance(0.9)
    await settle_loop()
    early = task.done()
    clock.advance(0.1)
    await settle_loop()
    assert (1.0, False, True, None) == (admission.wait, early, task.done(), task.result())


async def test_a_refund_moves_the_whole_queue_earlier_in_order() -> None:
    """Two requests queued for 1 s and 2 s; one earlier request gives its slot back: both
    move a second earlier, so the first goes at once and the second after one more second."""
    limiter, clock, earlier = await drained()
    first, _ = await queued(limiter)
    second, planned = await queued(limiter)
    limiter.settle(earlier[0], Cost())
    await settle_loop()
    assert (2.0, True, False) == (planned.wait, first.done(), second.done())
    clock.advance(1.0)
    await settle_loop()
    assert (None, None) == (first.result(), second.result())


async def test_a_charge_pushes_waiters_back_and_refuses_one_past_its_max_wait() -> None:
    """A live charge of 5 requests' worth on a bucket in debt delays its waiters by 5 s: one
    that may wait 3 s is refused at once, naming the bucket and what it would still need."""
    limiter, _, earlier = await drained(max_wait=3.0)
    task, _ = await queued(limiter)
    limiter.charge(earlier[0], Cost(5))
    await settle_loop()
    refused = task.result()
    assert isinstance(refused, Refused)
    assert (RPM, 6.0) == (refused.bucket, refused.retry_after)


async def test_a_change_made_before_the_reservation_is_not_counted_again() -> None:
    """Only changes the backend made after a waiter's reservation move it: the levels it
    read already hold the earlier ones."""
    clock = ManualClock()
    queue = WaitQueue(clock)
    limiter = Limiter(MemoryBackend(clock), limits(), clock)
    for _ in range(60):
        await admitted(limiter)
    admission = await admitted(limiter)
    task = asyncio.create_task(queue.wait(admission, 10.0))
    await settle_loop()
    queue.shift(RPM.key, 60.0, at=admission.reservation.at)
    await settle_loop()
    stale = task.done()
    queue.shift(RPM.key, 60.0, at=admission.reservation.at + 0.001)
    await settle_loop()
    assert (False, True, None, 0) == (stale, task.done(), task.result(), len(queue))


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    """A client gone while queued takes its waiter out (its ticket refunds it)."""
    limiter, _, _ = await drained()
    task, _ = await queued(limiter)
    task.cancel()
    await settle_loop()
    assert (True, 0) == (task.cancelled(), len(limiter._queue))
