"""`Learning`: what settled usage teaches each model group, shared by the fleet.

Four running figures per group, all moving averages that start as plain means (the first
sample counts fully) and then weigh new samples by `ALPHA`:

- the input ratio: charged / estimated input tokens of requests without cache breakpoints,
  averaged as a log-ratio clipped to [1/RATIO_BOUND, RATIO_BOUND], so one odd request moves
  it at most a little; new estimates are multiplied by it;
- the expected output: output tokens of complete responses (`output_reservation:
  expected`), and the mean of their squares, which with it gives a high quantile of the
  output (`high_output`, what `output_reservation: estimate` reserves). None until the group
  has settled one;
- the cached input ratio: of requests with `cache_control` breakpoints, whose cache reads
  the API does not charge (reference §1.3), the charged input against the estimate of what
  follows their last breakpoint (a cache hit charges about that; a cache write, now and
  then, more), apart from uncached requests (`scaled(..., cached=True)`).

Each instance learns from the responses it relays at once, and keeps the samples since its
last sync per group. `LearningSync` (`learning_sync.py`) pushes them to the backend every
few seconds and adopts the fleet's merged figures (`LimitBackend.learn`, the `merged`
arithmetic below, transcribed by `lua/learn.lua`). A batch of `k` samples whose (clipped)
mean is `m` moves a figure `v` that has seen `n` samples to
`v + w * (m - v)` with `w = max(1 - (1 - ALPHA) ** k, k / (n + k))`: for one sample, exactly
the local moving average; for a batch, about what `k` samples in a row would do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gateway.limits.model import DAY

ALPHA = 0.1
RATIO_BOUND = 4.0
COUNT_CAP = 1_000
"""Most samples a figure counts: past 1 / ALPHA the count only says new samples weigh ALPHA."""
OUTPUT_CAP = 1_000_000.0
"""Highest expected output (tokens): above any model's output limit, a bound on bad input."""
LEARNED_TTL = DAY
"""The fleet forgets a group's figures after this many seconds without a sync."""
_CLIP = math.log(RATIO_BOUND)
_BOUNDS = ((-_CLIP, _CLIP), (0.0, OUTPUT_CAP), (0.0, OUTPUT_CAP**2), (-_CLIP, _CLIP))
"""(low, high) of each figure: the input log-ratio, the output tokens, their square, and the
cached input's log-ratio (`Figures` order)."""
HIGH_QUANTILE_Z = 1.2816
"""Standard deviations above the mean for a 90th percentile (of a normal distribution)."""


@dataclass(frozen=True, slots=True)
class Mean:
    """A running mean and how many samples it has seen (at most COUNT_CAP); 0 = unknown."""

    value: float = 0.0
    count: int = 0


@dataclass(frozen=True, slots=True)
class Samples:
    """Samples gathered since the last sync: their sum and how many."""

    total: float = 0.0
    count: int = 0

    def plus(self, other: Samples) -> Samples:
        """Both batches as one."""
        return Samples(self.total + other.total, self.count + other.count)


@dataclass(frozen=True, slots=True)
class Figures:
    """What one group has learned: the input log-ratio, the output tokens and their square,
    and the cached input's log-ratio."""

    log_ratio: Mean = Mean()
    output: Mean = Mean()
    output_square: Mean = Mean()
    cached_log_ratio: Mean = Mean()

    def means(self) -> tuple[Mean, Mean, Mean, Mean]:
        """Every figure, in `_BOUNDS` order."""
        return (self.log_ratio, self.output, self.output_square, self.cached_log_ratio)


@dataclass(frozen=True, slots=True)
class Lesson:
    """One instance's sync of one group: its figures now, and the samples since its last
    sync (already in `seed`). The fleet takes `seed` when it knows nothing of the group
    (first sync, expired, or Redis restarted), and merges the samples otherwise."""

    seed: Figures
    log_ratios: Samples = Samples()
    outputs: Samples = Samples()
    output_squares: Samples = Samples()
    cached_log_ratios: Samples = Samples()

    def samples(self) -> tuple[Samples, Samples, Samples, Samples]:
        """Every figure's samples, in `_BOUNDS` order."""
        return (self.log_ratios, self.outputs, self.output_squares, self.cached_log_ratios)

    def rows(self) -> tuple[tuple[float, float, Mean, Samples], ...]:
        """(low, high, seed, samples) per figure, in `_BOUNDS` order."""
        return tuple(
            (*bounds, seed, new)
            for bounds, seed, new in zip(_BOUNDS, self.seed.means(), self.samples(), strict=True)
        )


def learning_key(group: str) -> str:
    """The backend key of a group's fleet figures, e.g. `cgw:learning:{sonnet}`."""
    return f"cgw:learning:{{{group}}}"


def merged(stored: Figures, lesson: Lesson) -> Figures:
    """The fleet's figures after one lesson: each figure seeded when unknown, else merged."""
    return Figures(
        *(
            _merge(old, seed, new, low, high)
            for old, (low, high, seed, new) in zip(stored.means(), lesson.rows(), strict=True)
        )
    )


def _merge(stored: Mean, seed: Mean, new: Samples, low: float, high: float) -> Mean:
    if stored.count <= 0 < seed.count:
        return Mean(max(low, min(high, seed.value)), min(seed.count, COUNT_CAP))
    return _absorb(stored, new, low, high)


def _absorb(mean: Mean, new: Samples, low: float, high: float) -> Mean:
    """`mean` moved toward a batch's clipped mean, weighted by the batch's size."""
    if new.count <= 0:
        return mean
    count = min(new.count, COUNT_CAP)
    sample = max(low, min(high, new.total / new.count))
    weight = max(1.0 - (1.0 - ALPHA) ** count, count / (mean.count + count))
    return Mean(mean.value + weight * (sample - mean.value), min(mean.count + count, COUNT_CAP))


def _moved_value(value: float, count: int, sample: float, low: float, high: float) -> float:
    """`_absorb` of a single sample, on plain numbers (settlement updates figures in place):
    the weight is `max(ALPHA, 1 / (n + 1))`."""
    weight = max(ALPHA, 1.0 / (count + 1))
    clipped = max(low, min(high, sample))
    return value + weight * (clipped - value)


@dataclass(slots=True)
class _Figure:
    """One running figure of a group and the samples it took since the last sync.

    Mutable on purpose: every settlement moves it, and building frozen `Mean`s and `Samples`
    for that cost more than the arithmetic (9.6 us per observe against 2.9, timeit).
    """

    value: float = 0.0
    count: int = 0
    total: float = 0.0
    """Sum of the samples since the last sync (or gathered while it was in flight)."""
    samples: int = 0

    def move(self, sample: float, low: float, high: float) -> None:
        """Take one sample: the running figure moves, the sample waits for the next sync."""
        self.value = _moved_value(self.value, self.count, sample, low, high)
        self.count = min(self.count + 1, COUNT_CAP)
        self.total += sample
        self.samples += 1

    def mean(self) -> Mean:
        return Mean(self.value, self.count)

    def pending(self) -> Samples:
        return Samples(self.total, self.samples)

    def adopt(self, mean: Mean) -> None:
        self.value, self.count = mean.value, mean.count

    def keep(self, samples: Samples) -> None:
        """Count `samples` (of a sync that failed) as gathered before the pending ones."""
        self.total, self.samples = samples.total + self.total, samples.count + self.samples


@dataclass(slots=True)
class _Group:
    ratio: _Figure = field(default_factory=_Figure)
    """The input log-ratio (requests without cache breakpoints)."""
    output: _Figure = field(default_factory=_Figure)
    """The output tokens."""
    output_square: _Figure = field(default_factory=_Figure)
    """The output tokens' square (with `output`, a spread)."""
    cached_ratio: _Figure = field(default_factory=_Figure)
    """The input log-ratio of requests with cache breakpoints."""

    def all(self) -> tuple[_Figure, _Figure, _Figure, _Figure]:
        """Every figure, in `_BOUNDS` order."""
        return (self.ratio, self.output, self.output_square, self.cached_ratio)

    def figures(self) -> Figures:
        return Figures(*(figure.mean() for figure in self.all()))


class Learning:
    """Per-group input ratios and output figures, learned from settled responses."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    def snapshot(self) -> dict[str, tuple[float, float | None]]:
        """(input ratio, expected output) per group learned so far, for metrics."""
        return {name: (self.input_ratio(name), self.expected_output(name)) for name in self._groups}

    def input_ratio(self, group: str) -> float:
        """Actual / estimated input tokens, learned so far (1.0 when nothing is known)."""
        state = self._groups.get(group)
        return 1.0 if state is None else math.exp(state.ratio.value)

    def cached_ratio(self, group: str) -> float:
        """Charged input / the estimate after the last breakpoint, of requests with cache
        breakpoints (1.0 before the group has settled one)."""
        state = self._groups.get(group)
        return 1.0 if state is None else math.exp(state.cached_ratio.value)

    def high_output(self, group: str) -> float | None:
        """A high quantile (about the 90th percentile) of this group's output tokens: the
        mean plus `HIGH_QUANTILE_Z` standard deviations; None before the first response."""
        state = self._groups.get(group)
        if state is None or state.output.count <= 0:
            return None
        mean, square = state.output.value, state.output_square.value
        return mean + HIGH_QUANTILE_Z * math.sqrt(max(0.0, square - mean * mean))

    def expected_output(self, group: str) -> float | None:
        """Mean output tokens of this group's complete responses, or None before the first."""
        state = self._groups.get(group)
        if state is None or state.output.count <= 0:
            return None
        return state.output.value

    def observe(
        self,
        group: str,
        estimated: int | None,
        actual: int,
        output_tokens: int | None,
        *,
        cached: bool = False,
    ) -> None:
        """Learn from one complete response, in one update (it runs once per settlement):
        move the input ratio (the cached one for a request with cache breakpoints) toward
        `actual / estimated` (the raw, unscaled estimate against the charged input; skipped
        when either is unknown or not positive) and the output figures toward
        `output_tokens` (skipped when None)."""
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Group()
        if estimated is not None and estimated > 0 and actual > 0:
            sample = max(-_CLIP, min(_CLIP, math.log(actual / estimated)))
            (state.cached_ratio if cached else state.ratio).move(sample, *_BOUNDS[0])
        if output_tokens is not None:
            state.output.move(float(output_tokens), *_BOUNDS[1])
            state.output_square.move(float(output_tokens) ** 2, *_BOUNDS[2])

    def scaled(self, group: str, estimate: int, *, cached: bool = False) -> int:
        """`estimate` times the group's input ratio (the cached one for the uncached part of
        a request with cache breakpoints), rounded up."""
        ratio = self.cached_ratio(group) if cached else self.input_ratio(group)
        return math.ceil(estimate * ratio)

    def lessons(self) -> dict[str, Lesson]:
        """Take every group's samples since the last sync, as lessons for the backend;
        `adopt` or `restore` each one."""
        taken: dict[str, Lesson] = {}
        for name, state in self._groups.items():
            figures = state.all()
            if any(figure.samples for figure in figures):
                taken[name] = Lesson(state.figures(), *(figure.pending() for figure in figures))
                for figure in figures:
                    figure.total, figure.samples = 0.0, 0
        return taken

    def adopt(self, group: str, fleet: Figures) -> None:
        """Use the fleet's merged figures, plus any samples gathered since the lesson."""
        state = self._groups.setdefault(group, _Group())
        for figure, mean, bounds in zip(state.all(), fleet.means(), _BOUNDS, strict=True):
            figure.adopt(_absorb(mean, figure.pending(), *bounds))

    def restore(self, group: str, lesson: Lesson) -> None:
        """A lesson the backend did not take: keep its samples for the next sync."""
        state = self._groups.setdefault(group, _Group())
        for figure, samples in zip(state.all(), lesson.samples(), strict=True):
            figure.keep(samples)
