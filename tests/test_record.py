"""`RequestRecord`: facts written by the steps, the outcome derived once at the end."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.record import RequestRecord
from gateway.relay import Ending, RelayResult


def record(**facts: Any) -> RequestRecord:
    """A record of one POST /v1/messages that started at t=100 s, with `facts` set."""
    made = RequestRecord("gw_1", 100.0, "POST", "/v1/messages")
    for name, value in facts.items():
        setattr(made, name, value)
    return made


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param({"status": 200, "ending": "complete"}, "ok", id="complete"),
        pytest.param(
            {"status": 200, "ending": "complete", "queue_wait": 0.5}, "queued_ok", id="queued"
        ),
        pytest.param({"status": 529, "ending": "complete"}, "upstream_error", id="api-error"),
        pytest.param(
            {"status": 429, "ending": "complete", "queue_wait": 0.5},
            "upstream_error",
            id="api-error-after-queue",
        ),
        pytest.param(
            {"status": 200, "ending": "client_disconnect"}, "client_disconnect", id="client-left"
        ),
        pytest.param(
            {"status": 200, "ending": "upstream_dropped"}, "upstream_dropped", id="api-dropped"
        ),
        pytest.param(
            {"status": 499, "cancelled": True}, "client_disconnect", id="cancelled-unended"
        ),
        pytest.param(
            {"status": 200, "ending": "complete", "cancelled": True},
            "ok",
            id="cancelled-after-complete",
        ),
        pytest.param(
            {"status": 200, "ending": "upstream_dropped", "cancelled": True},
            "upstream_dropped",
            id="cancelled-after-drop",
        ),
        pytest.param({"status": 429, "error_outcome": "rejected"}, "rejected", id="gateway-error"),
        pytest.param(
            {"status": 502, "error_outcome": "upstream_unavailable", "cancelled": True},
            "upstream_unavailable",
            id="gateway-error-then-cancelled",
        ),
        pytest.param(
            {"status": 200, "ending": "client_disconnect", "error_outcome": "internal_error"},
            "internal_error",
            id="gateway-error-wins-over-ending",
        ),
    ],
)
def test_outcome_is_derived_from_what_happened(facts: dict[str, Any], expected: str) -> None:
    """The gateway's own error wins; then how the body ended; then a cancellation before the
    body completed; then an upstream error status; else ok, or queued_ok after a queue wait."""
    assert expected == record(**facts).finish()


def test_finish_derives_once_and_later_facts_change_nothing() -> None:
    """`finish()` fixes the outcome: calling it again after more facts returns the same."""
    finished = record(status=200, ending="complete")
    first = finished.finish()
    finished.status, finished.cancelled = 500, True
    assert ("ok", "ok", "ok") == (first, finished.finish(), finished.outcome)


def test_an_unfinished_record_has_no_outcome() -> None:
    """Until `finish()`, no step has written an outcome."""
    assert "" == record(status=200).outcome


def test_relayed_copies_what_the_relay_did() -> None:
    """`relayed()` takes the relay's bytes, first-byte time and ending (its value)."""
    relayed = record()
    relayed.relayed(RelayResult(ending=Ending.COMPLETE, bytes_out=512, first_byte_at=100.25))
    unended = record()
    unended.relayed(RelayResult())
    assert ((512, 0.25, "complete"), (0, None, None)) == (
        (relayed.bytes_out, relayed.ttfb, relayed.ending),
        (unended.bytes_out, unended.ttfb, unended.ending),
    )


def test_overhead_leaves_the_queue_wait_out() -> None:
    """Overhead is the time before going upstream minus the queue wait; None if never sent."""
    sent = record(upstream_sent_at=102.0, queue_wait=1.5)
    assert (0.5, None) == (sent.overhead, record().overhead)


def test_attempts_retries_and_429s_are_collected_in_order() -> None:
    """As upstream's observer the record keeps every attempt, retry cause and upstream 429."""
    observed = record()
    observed.upstream_attempt("529")
    observed.upstream_retry("529", 0.25)
    observed.upstream_attempt("429")
    observed.upstream_rate_limited()
    observed.upstream_retry("429", 1.0)
    observed.retry_budget_exhausted()
    assert (["529", "429"], ["529", "429"], 1, True) == (
        observed.attempts,
        observed.retries,
        observed.upstream_429s,
        observed.budget_ran_out,
    )
