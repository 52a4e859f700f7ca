"""Span attributes from a finished record: GenAI and HTTP names, errors, attempts."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.record import RequestRecord
from gateway.span_attributes import (
    Peer,
    attempt_attributes,
    attempt_result,
    error_type,
    request_attributes,
    step_attributes,
    step_failed,
)
from gateway.usage import MessageFacts, Usage


def finished(path: str = "/v1/messages", **facts: Any) -> RequestRecord:
    """A finished record of one POST to `path` with `facts` set."""
    record = RequestRecord("gw_1", 100.0, "POST", path)
    record.route = path
    for name, value in facts.items():
        setattr(record, name, value)
    record.finish()
    return record


def test_input_tokens_count_cache_reads_and_writes_as_the_convention_asks() -> None:
    """`gen_ai.usage.input_tokens` is all input (the API's input_tokens excludes cached)."""
    record = finished(status=200, ending="complete", model="claude-opus-4-7", max_tokens=9)
    attributes = request_attributes(record, Usage(10, 3, 20, 300), MessageFacts("msg_1", "m"))
    assert "error.type" not in attributes
    assert {
        "gen_ai.request.model": "claude-opus-4-7",
        "gen_ai.request.max_tokens": 9,
        "gen_ai.usage.input_tokens": 330,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.usage.cache_creation.input_tokens": 20,
        "gen_ai.usage.cache_read.input_tokens": 300,
        "gen_ai.response.id": "msg_1",
        "gen_ai.response.model": "m",
    }.items() <= attributes.items()


def test_only_generation_routes_carry_genai_attributes() -> None:
    """count_tokens and models calls are plain HTTP spans: no `gen_ai.*` at all."""
    routes = ["/v1/messages/count_tokens", "/v1/models", "/v1/complete"]
    named = [
        sorted(
            name
            for name in request_attributes(finished(route, status=200), None, MessageFacts())
            if name.startswith("gen_ai.")
        )
        for route in routes
    ]
    generation = ["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.system"]
    assert [[], [], generation] == named


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param({"status": 200, "ending": "complete"}, None, id="ok"),
        pytest.param({"status": 429, "error_outcome": "rejected"}, None, id="local-429"),
        pytest.param({"status": 400, "ending": "complete"}, None, id="api-400"),
        pytest.param({"status": 529, "ending": "complete"}, "529", id="api-529"),
        pytest.param(
            {"status": 502, "error_outcome": "upstream_unavailable"},
            "upstream_unavailable",
            id="unreachable",
        ),
        pytest.param(
            {"status": 200, "ending": "upstream_dropped"}, "upstream_dropped", id="dropped"
        ),
        pytest.param({"status": 200, "ending": "client_disconnect"}, None, id="client-left"),
        pytest.param(
            {"status": 500, "error_outcome": "internal_error"}, "internal_error", id="bug"
        ),
    ],
)
def test_error_type_marks_5xx_and_broken_answers_never_4xx(
    facts: dict[str, Any], expected: str | None
) -> None:
    """5xx and failures the status hides are errors; a 4xx is the client's, not the span's."""
    assert expected == error_type(finished(**facts))


def test_step_attributes_and_a_dropped_relay() -> None:
    """Each step's span says what that step decided; a relay upstream broke off is an error."""
    record = finished(
        status=200,
        ending="upstream_dropped",
        group="sonnet",
        decision="queued",
        queue_wait=1.5,
        estimate=("count_tokens", "configured"),
        bytes_out=42,
    )
    assert (
        {
            "gateway.model_group": "sonnet",
            "gateway.admission": "queued",
            "gateway.estimate": "count_tokens",
        },
        {"gateway.queue_wait_ms": 1500.0, "gateway.admission": "queued"},
        {"gateway.relay.bytes": 42, "gateway.relay.ending": "upstream_dropped"},
        (False, True),
    ) == (
        step_attributes("gateway.admission", record),
        step_attributes("gateway.queue", record),
        step_attributes("gateway.relay", record),
        (step_failed("gateway.queue", record), step_failed("gateway.relay", record)),
    )


def test_attempt_attributes_name_the_upstream_and_never_the_query() -> None:
    """An attempt names host, port and the base URL's path before the request's path."""
    peer = Peer("proxy.internal", 8443, "/anthropic")
    assert {
        "http.request.method": "POST",
        "url.path": "/anthropic/v1/messages",
        "server.address": "proxy.internal",
        "server.port": 8443,
        "gateway.upstream.attempt": 2,
    } == attempt_attributes(2, "POST", "/v1/messages", peer)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("200", ({"http.response.status_code": 200}, False)),
        ("429", ({"http.response.status_code": 429, "error.type": "429"}, True)),
        ("connect_error", ({"error.type": "connect_error"}, True)),
        ("cancelled", ({"error.type": "cancelled"}, False)),
    ],
)
def test_attempt_result_is_an_error_from_400_and_on_a_failure(
    status: str, expected: tuple[dict[str, Any], bool]
) -> None:
    """A client span is an error from 400 up and when the attempt failed; a cancelled
    attempt (the client left) is not the attempt's error."""
    assert expected == attempt_result(status)
