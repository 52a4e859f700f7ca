"""What a bench run measures and for how long: the quick and full presets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TARGETS = (
    "direct",
    "passthrough",
    "gateway",
    "gateway+memory",
    "gateway+redis",
    "gateway+redis-py",
    "gateway+redis-cluster",
    "gateway+redis-tls",
    "litellm",  # LiteLLM's proxy from its own venv (bench/litellm_env.py), for a side-by-side
)
FULL_TARGETS = ("direct", "passthrough", "gateway", "gateway+redis")  # the rest on request


def split_target(target: str) -> tuple[str, Path | None]:
    """`gateway+redis@/tmp/x` -> ("gateway+redis", /tmp/x): a gateway target served from
    another tree (a clone at another commit), for an A/B within one run; plain names -> None."""
    name, sep, tree = target.partition("@")
    return name, (Path(tree) if sep else None)


def check_target(target: str) -> str | None:
    """Why `target` cannot be run, or None."""
    name, tree = split_target(target)
    if name not in TARGETS:
        return f"unknown target {name}"
    if tree is not None:
        if not name.startswith("gateway"):
            return f"{target}: only gateway targets can come from another tree"
        if not (tree / "gateway" / "__main__.py").is_file():
            return f"{target}: {tree} holds no gateway/ package"
    return None


DISTURBED_PCT = 15.0  # foreign CPU (% of one core) above which a measurement is disturbed
SSE_FIXED_EVENTS = 6  # message_start, content_block_start, ping, block_stop, delta, stop


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """Counts and durations; every load loop is bounded by these."""

    quick: bool
    targets: tuple[str, ...]
    concurrency: int
    warmup: float  # seconds of untimed load before each timed window
    duration: float  # seconds of timed req/s per target, split over `rounds`
    rounds: int  # req/s rounds; each drives every target in turn (see scenario_proxy)
    windows: int  # sub-windows of `duration`; the one with the least foreign CPU is reported
    extra_windows: int  # more sub-windows, run only while every one so far was disturbed
    max_requests: int  # hard cap on any closed loop
    latency_samples: int  # sequential requests at concurrency 1
    latency_budget: float  # seconds to gather them from quiet chunks before giving up
    ttfb_samples: int  # sequential streamed requests
    streams: int  # slow streams held open at once
    stream_chunk_delay: float  # seconds between SSE events in the open-streams phase
    stream_deltas: int
    error_rate: float
    error_requests: int
    seed: int
    redis_duration: float
    round_redos: int = 0  # disturbed req/s rounds run again, at most this many per run
    quiet_wait: float = 0.0  # seconds to wait for an idle machine before a redo or latency

    @property
    def stream_seconds(self) -> float:
        """How long one slow stream stays open."""
        return (self.stream_deltas + SSE_FIXED_EVENTS - 1) * self.stream_chunk_delay


def preset(*, quick: bool) -> BenchSettings:
    """Quick: a < 30 s smoke run. Full: steadier numbers in < 5 minutes on 2 cores."""
    if quick:
        return BenchSettings(
            quick=True,
            targets=("direct", "passthrough", "gateway"),
            concurrency=16,
            warmup=0.5,
            duration=1.5,
            rounds=1,
            windows=1,
            extra_windows=0,
            max_requests=200_000,
            latency_samples=200,
            latency_budget=1.0,
            ttfb_samples=50,
            streams=200,
            stream_chunk_delay=0.16,
            stream_deltas=10,
            error_rate=0.3,
            error_requests=150,
            seed=1,
            redis_duration=2.0,
        )
    return BenchSettings(
        quick=False,
        targets=FULL_TARGETS,
        concurrency=16,
        warmup=1.0,
        duration=16.0,
        rounds=8,  # a median of 8 per-round ratios: one slow VM phase moves it less than of 4
        windows=4,
        extra_windows=4,
        max_requests=1_000_000,
        latency_samples=1000,
        latency_budget=15.0,
        ttfb_samples=200,
        streams=1000,
        stream_chunk_delay=0.8,
        stream_deltas=10,
        error_rate=0.3,
        error_requests=600,
        seed=1,
        redis_duration=6.0,
        round_redos=8,
        quiet_wait=60.0,
    )
