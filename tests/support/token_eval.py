"""The estimator's error on the documented corpus and on simulated response streams.

`python -m tests.support.token_eval` prints the tables in docs/token-accounting.md. Error is
(estimate - actual) / actual; an under-estimate is an estimate below the actual count.
"""

from __future__ import annotations

import base64
import json
import math
import random
import statistics
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from gateway.estimate import estimate_input_tokens, image_tokens
from gateway.limits.learning import Learning

CORPUS = Path(__file__).parents[1] / "data" / "token_corpus.json"
WORDS = ("the", "request", "limit", "gateway", "tokens", "def", "return", "{", "}", "=", "x1")


@dataclass(frozen=True, slots=True)
class Errors:
    """Summary of relative errors."""

    median: float
    p95: float
    worst: float
    under: float

    def row(self, label: str) -> str:
        """One markdown table row, in percent."""
        return (
            f"| {label} | {self.median:.1%} | {self.p95:.1%} | {self.worst:.1%} | "
            f"{self.under:.0%} |"
        )


def png_source(width: int, height: int) -> dict[str, str]:
    """A base64 image source holding just a PNG signature and IHDR of that size."""
    head = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height)
    return {"type": "base64", "media_type": "image/png", "data": base64.b64encode(head).decode()}


def corpus() -> list[tuple[str, Callable[[float], int], int]]:
    """(name, estimate given an input ratio, stated count) per corpus item."""
    items = json.loads(CORPUS.read_text())["items"]
    out: list[tuple[str, Callable[[float], int], int]] = []
    for item in items:
        if item["kind"] == "image":
            source = png_source(item["width"], item["height"])
            out.append((item["name"], _scaled(partial(image_tokens, source)), item["count"]))
        else:
            body = item["body"]
            out.append((item["name"], _scaled(partial(estimate_input_tokens, body)), item["count"]))
    return out


def _scaled(raw: Callable[[], int]) -> Callable[[float], int]:
    return lambda ratio: math.ceil(raw() * ratio)


def summarize(pairs: Sequence[tuple[int, int]]) -> Errors:
    """Errors of (estimate, actual) pairs."""
    errors = [(est - act) / act for est, act in pairs]
    sizes = sorted(abs(e) for e in errors)
    p95 = sizes[min(len(sizes) - 1, math.ceil(0.95 * len(sizes)) - 1)]
    under = sum(1 for e in errors if e < 0) / len(errors)
    return Errors(statistics.median(sizes), p95, sizes[-1], under)


def synthetic_body(rng: random.Random) -> dict[str, Any]:
    """A random code-like request: a few messages of short tokens."""
    turns = rng.randint(1, 6)
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant",
         "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 400)))}
        for i in range(turns)
    ]  # fmt: skip
    return {"model": "m", "messages": messages}


def true_count(rng: random.Random, estimate: int, bias: float) -> int:
    """The simulated API's count: the estimate times a workload bias and noise, 2% outliers."""
    noise = math.exp(rng.gauss(0.0, 0.08))
    if rng.random() < 0.02:
        noise *= rng.choice((0.2, 5.0))
    return max(1, round(estimate * bias * noise))


def simulate(seed: int, bias: float, responses: int = 500) -> tuple[Errors, Errors, float]:
    """Errors on a held-out simulated workload before and after learning from `responses`."""
    rng, learning = random.Random(seed), Learning()
    for _ in range(responses):
        estimate = estimate_input_tokens(synthetic_body(rng))
        learning.observe("g", estimate, true_count(rng, estimate, bias), None)
    before, after = [], []
    for _ in range(300):
        estimate = estimate_input_tokens(synthetic_body(rng))
        actual = true_count(rng, estimate, bias)
        before.append((estimate, actual))
        after.append((learning.scaled("g", estimate), actual))
    return summarize(before), summarize(after), learning.input_ratio("g")


def corpus_errors(seed: int = 1) -> tuple[Errors, Errors, float]:
    """Corpus errors before and after learning from a replay of the corpus (5% noise)."""
    rng, learning, items = random.Random(seed), Learning(), corpus()
    for _ in range(500):
        _, estimate, count = rng.choice(items)
        actual = max(1, round(count * math.exp(rng.gauss(0, 0.05))))
        learning.observe("g", estimate(1.0), actual, None)
    ratio = learning.input_ratio("g")
    before = summarize([(estimate(1.0), count) for _, estimate, count in items])
    after = summarize([(estimate(ratio), count) for _, estimate, count in items])
    return before, after, ratio


def main() -> None:
    """Print the tables."""
    print("| Data | median abs error | p95 | worst | under-estimates |")
    print("|---|---|---|---|---|")
    before, after, ratio = corpus_errors()
    print(before.row("corpus, heuristic"))
    print(after.row(f"corpus, calibrated (ratio {ratio:.3f})"))
    for bias in (1.0, 1.25, 0.8):
        before, after, ratio = simulate(7, bias)
        print(before.row(f"simulated x{bias}, heuristic"))
        print(after.row(f"simulated x{bias}, calibrated (ratio {ratio:.3f})"))


if __name__ == "__main__":
    main()
