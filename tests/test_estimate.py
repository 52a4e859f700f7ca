"""Input-token estimates before a request is sent (the heuristic and its calibration)."""

from __future__ import annotations

import json

import pytest

from gateway.estimate import (
    IMAGE_TOKENS_BOUND,
    estimate_input_tokens,
    image_tokens,
    max_output_tokens,
    uncached_input_tokens,
)
from tests.support.token_eval import corpus, corpus_errors, png_source, simulate


@pytest.mark.parametrize(("name", "estimate", "count"), corpus())
def test_heuristic_is_within_two_percent_on_the_documented_corpus(
    name: str, estimate: object, count: int
) -> None:
    """Every documented example is estimated within 2% (and never below by more than 1 token)."""
    assert callable(estimate)
    got = estimate(1.0)
    assert (name, True) == (name, abs(got - count) <= max(1, 0.02 * count))


def test_calibration_stays_close_on_the_corpus() -> None:
    """Learning from a noisy replay of the corpus keeps the worst error within 3%."""
    _, after, _ = corpus_errors()
    assert True is (after.worst <= 0.03)


def test_calibration_removes_a_workload_bias() -> None:
    """A workload 25% denser than the heuristic is learned: median error falls below 8%."""
    before, after, ratio = simulate(7, 1.25)
    assert (True, True, True) == (before.median > 0.15, after.median < 0.08, 1.15 < ratio < 1.3)


def test_image_uses_the_formula_when_the_size_is_known() -> None:
    """A 400x300 PNG costs 400*300/750 = 160 tokens; an unknown image costs the bound."""
    unknown = {"type": "url", "url": "https://example.com/cat.jpg"}
    assert (160, IMAGE_TOKENS_BOUND) == (image_tokens(png_source(400, 300)), image_tokens(unknown))


def test_earlier_thinking_blocks_are_not_counted() -> None:
    """Thinking in an earlier assistant turn is stripped by the API, so not estimated."""
    thinking = {"type": "thinking", "thinking": "x" * 4000, "signature": "s" * 400}
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": []}]}
    plain["messages"].append({"role": "user", "content": "Go on"})
    with_thinking = json.loads(json.dumps(plain))
    with_thinking["messages"][1]["content"] = [thinking]
    assert estimate_input_tokens(plain) == estimate_input_tokens(with_thinking)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 300}, 300),
        ({"max_tokens_to_sample": 200}, 200),
        ({"max_tokens": True}, 0),
        ({"max_tokens": -5}, 0),
        ({}, 0),
    ],
)
def test_max_output_tokens_reads_max_tokens_or_the_legacy_field(
    body: dict[str, object], expected: int
) -> None:
    """`max_tokens` (or the legacy `max_tokens_to_sample`), 0 when absent or not a count."""
    assert expected == max_output_tokens(body)


def test_the_uncached_part_is_what_follows_the_last_breakpoint() -> None:
    """A 4,000-character system block marked for caching is left out; the question after it
    is counted; a request without breakpoints has no uncached part to speak of."""
    cached_system = [{"type": "text", "text": "x" * 4_000, "cache_control": {"type": "ephemeral"}}]
    body = {
        "system": cached_system,
        "messages": [{"role": "user", "content": "y" * 400}],
    }
    plain = {"messages": [{"role": "user", "content": "y" * 400}]}
    automatic = {"cache_control": {"type": "ephemeral"}, **plain}
    assert (103, None, 103) == (
        uncached_input_tokens(body),
        uncached_input_tokens(plain),
        uncached_input_tokens(automatic),
    )


def test_a_breakpoint_on_a_later_message_block_moves_the_cut() -> None:
    """The last `cache_control` wins, in prompt order: tools, system, then messages."""
    mark = {"cache_control": {"type": "ephemeral"}}
    body = {
        "tools": [{"name": "t", "description": "d" * 400, **mark}],
        "system": "s" * 400,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a" * 800, **mark}]},
            {"role": "user", "content": [{"type": "text", "text": "b" * 40}]},
        ],
    }
    assert 13 == uncached_input_tokens(body)


def test_a_body_too_deep_to_walk_is_estimated_from_its_size() -> None:
    """Nested past the recursion limit, the text is still counted (iteratively), and the
    request is taken as uncached: nesting never lowers what is reserved."""
    nested: object = "x" * 400
    for _ in range(5_000):
        nested = [nested]
    body = {"messages": [{"role": "user", "content": nested}], "cache_control": {}}
    assert (104, None) == (estimate_input_tokens(body), uncached_input_tokens(body))
