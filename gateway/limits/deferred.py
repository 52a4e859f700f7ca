"""`DeferredSettlements`: a settlement rides on its hash tag's next script call.

Each response settles its reservation (a charge or refund per bucket). Sent alone, that is a
second round trip and script run per request, and a task waiting on it. Under load the same
`{scope:group}` admits again within a millisecond, so a settlement instead waits in a list
per hash tag and travels with that tag's next reserve, whose script applies it first. A list
that no call has taken `delay` seconds after it started is flushed in one adjust call instead.
The timers run on the event loop's own clock, which only schedules the flush; the buckets'
time still comes from the store.

What this keeps:
- this instance decides nothing on a tag without its own settlements: they go with the call;
- each settlement is applied as one adjust call would apply it: in order, at its own time,
  clamped one by one (the scripts replay the list);
- other instances see a settlement within `delay`, or sooner with this instance's next
  admission of the tag; a charge (`urgent`) goes at once;
- a flush or call that fails loses what it carried, as a failed adjust always did: those
  buckets refill as if the reservation was used. The backend logs it, and also logs a call
  cancelled before Redis answered, whose settlements may or may not have landed (never
  sent twice).

`add` never waits, so settling never holds up a response. Flushes of one tag fly one after
another, in order; `landed` lets a caller wait for them (a cap must follow them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.limits.model import BucketSpec

MAX_PENDING = 64
"""Settlements one tag may hold; the next one flushes them at once, so script calls stay
small even when a tag settles many requests without admitting any."""


@dataclass(frozen=True, slots=True)
class Settlement:
    """One adjust: `(bucket, amount)` of one hash tag at `now` (None: the store's clock)."""

    touched: Sequence[tuple[BucketSpec, int]]
    now: float | None


Flush = Callable[[str, list[Settlement]], Awaitable[None]]
"""Apply a tag's settlements in one call; handles (logs) its own failures, never raises."""


class DeferredSettlements:
    """Settlements per hash tag, waiting for the tag's next call or a flush."""

    def __init__(self, flush: Flush, *, delay: float, max_pending: int = MAX_PENDING) -> None:
        self._flush = flush
        self._delay = delay
        self._max_pending = max_pending
        self._pending: dict[str, list[Settlement]] = {}
        self._started: dict[str, float] = {}
        """Loop time at which each tag's pending list got its first settlement."""
        self._armed: set[str] = set()
        """Tags with a flush timer running."""
        self._flights: dict[str, asyncio.Task[None]] = {}
        """The latest flush of each tag still flying; it waits for the one before it."""

    def add(self, tag: str, settlement: Settlement, *, urgent: bool = False) -> None:
        """Queue a settlement of `tag`; it goes with the tag's next call, or by `delay`, or
        at once (with any queued before it) when `urgent`."""
        pending = self._pending.get(tag)
        if pending is None:
            pending = self._pending[tag] = []
            self._started[tag] = asyncio.get_running_loop().time()
        pending.append(settlement)
        if urgent or len(pending) >= self._max_pending:
            self._fly(tag)
        elif tag not in self._armed:
            self._arm(tag, self._delay)

    def take(self, tag: str) -> list[Settlement]:
        """The tag's queued settlements, now the caller's to send (in this order)."""
        self._started.pop(tag, None)
        return self._pending.pop(tag, [])

    async def landed(self, tag: str) -> None:
        """Return once every flush of `tag` started so far has landed."""
        flight = self._flights.get(tag)
        if flight is not None:
            await asyncio.shield(flight)

    def flying(self, tag: str) -> bool:
        """Whether a flush of `tag` is in flight (a call must wait for it to keep order).

        A flush that has finished is not, even before the loop has run its done callback:
        awaiting a finished task never yields, so a caller looping on `landed` would spin."""
        flight = self._flights.get(tag)
        return flight is not None and not flight.done()

    async def settled(self, tag: str) -> None:
        """Send the tag's queued settlements now; return once every flush of it has landed."""
        self._fly(tag)
        await self.landed(tag)

    async def drain(self) -> None:
        """Flush every queued settlement now and return once all flushes have landed."""
        for tag in list(self._pending):
            self._fly(tag)
        while self._flights:
            await asyncio.gather(*self._flights.values(), return_exceptions=True)

    def _arm(self, tag: str, seconds: float) -> None:
        self._armed.add(tag)
        asyncio.get_running_loop().call_later(seconds, self._due, tag)

    def _due(self, tag: str) -> None:
        """The tag's timer ran out: flush its list if no call took it for `delay`; a list
        started since (calls took the older ones) gets the rest of its own `delay`."""
        self._armed.discard(tag)
        started = self._started.get(tag)
        if started is None:
            return
        left = started + self._delay - asyncio.get_running_loop().time()
        if left > 0:
            self._arm(tag, left)
        else:
            self._fly(tag)

    def _fly(self, tag: str) -> None:
        self._started.pop(tag, None)
        settlements = self._pending.pop(tag, [])
        if not settlements:
            return
        before = self._flights.get(tag)
        flight = asyncio.get_running_loop().create_task(self._send(tag, settlements, before))
        self._flights[tag] = flight
        flight.add_done_callback(lambda done: self._landed(tag, done))

    async def _send(
        self, tag: str, settlements: list[Settlement], before: asyncio.Task[None] | None
    ) -> None:
        if before is not None:  # keep a tag's flushes in order on pooled connections
            await asyncio.wait([before])
        await self._flush(tag, settlements)

    def _landed(self, tag: str, flight: asyncio.Task[None]) -> None:
        if self._flights.get(tag) is flight:
            del self._flights[tag]
