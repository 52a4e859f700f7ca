"""Timed closed-loop windows with CPU accounting; the quietest of several is the one reported.

On a shared machine other processes steal CPU now and then. Splitting the timed run into a
few windows and keeping the one where processes outside the bench used the least CPU gives
steadier numbers, and `other_pct` says how quiet that window really was.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from bench.load import LoopResult, closed_loop
from bench.procs import CpuUse, cpu_use, sample_cpu
from bench.settings import DISTURBED_PCT


@dataclass(frozen=True, slots=True)
class Window:
    """The reported window, plus failures summed over every window."""

    use: CpuUse
    loop: LoopResult
    failures: Counter[str]
    total_requests: int  # over every window


async def quietest_window(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    groups: Mapping[str, Sequence[int]],
    *,
    concurrency: int,
    windows: int,
    duration: float,
    max_requests: int,
    extra: int = 0,
) -> Window:
    """Run `windows` closed loops of `duration / windows` s; return the least disturbed one.

    While every window so far was disturbed (see DISTURBED_PCT), up to `extra` more are run.
    """
    count = max(windows, 1)
    results: list[tuple[CpuUse, LoopResult]] = []
    while len(results) < count or (
        len(results) < count + extra and min(r[0].other_pct for r in results) > DISTURBED_PCT
    ):
        before = sample_cpu(groups)
        loop = await closed_loop(
            session,
            urls,
            concurrency=concurrency,
            duration=duration / count,
            max_requests=max_requests,
        )
        results.append((cpu_use(before, sample_cpu(groups)), loop))
    use, loop = min(results, key=lambda r: (r[0].other_pct, -r[1].rps))
    failures: Counter[str] = sum((r[1].failures for r in results), Counter())
    total = sum(r[1].requests for r in results)
    return Window(use, loop, failures, total)


CHUNK_SECONDS = 0.5


@dataclass(slots=True)
class Samples:
    """Latencies from the chunks that ran while the machine was quiet (or all, if none did)."""

    latencies: list[float]
    failures: Counter[str]
    other_pct: float  # mean foreign CPU over the chunks used, % of one core
    quiet: bool  # False: the budget ran out, disturbed chunks are included


async def quiet_samples(
    chunk: Callable[[int], Awaitable[LoopResult]],
    groups: Mapping[str, Sequence[int]],
    *,
    samples: int,
    budget: float,
) -> Samples:
    """Run `chunk(remaining)` until `samples` latencies come from quiet chunks, or `budget` s.

    A chunk (which should last ~CHUNK_SECONDS: CPU time comes in 10 ms ticks) is quiet when
    processes outside `groups` used at most DISTURBED_PCT of a core meanwhile.
    """
    quiet: list[tuple[CpuUse, LoopResult]] = []
    noisy: list[tuple[CpuUse, LoopResult]] = []
    deadline = time.perf_counter() + budget
    collected = 0
    while collected < samples and time.perf_counter() < deadline:
        before = sample_cpu(groups)
        result = await chunk(samples - collected)
        use = cpu_use(before, sample_cpu(groups))
        if use.other_pct <= DISTURBED_PCT:
            quiet.append((use, result))
            collected += len(result.latencies)
        else:
            noisy.append((use, result))
        if not result.latencies:  # every request failed: more chunks won't help
            break
    used = quiet if collected >= samples else quiet + noisy
    wall = sum(use.wall for use, _ in used) or 1.0
    return Samples(
        latencies=[x for _, result in used for x in result.latencies],
        failures=sum((result.failures for _, result in quiet + noisy), Counter()),
        other_pct=sum(use.other_pct * use.wall for use, _ in used) / wall,
        quiet=collected >= samples,
    )
