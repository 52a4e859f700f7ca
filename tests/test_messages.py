"""RequestFacts: parsing just enough of a Messages body."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.messages import RequestFacts, parse_facts, route_of


def test_messages_body_gives_model_stream_and_max_tokens() -> None:
    """model, stream and max_tokens are read from a Messages body."""
    body = b'{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[]}'
    facts = parse_facts("/v1/messages", body)
    assert ("claude-sonnet-4-5", True, 64) == (facts.model, facts.stream, facts.max_tokens)


def test_other_paths_are_not_parsed() -> None:
    """A Files upload body is opaque: not parsed, never rejected for not being JSON."""
    assert RequestFacts(route="/v1/files") == parse_facts("/v1/files", b"\x00\x01binary")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{bad", "Request body is not valid JSON: Expecting property name enclosed in double "
         "quotes at line 1 column 2"),
        (b"[1,2]", "Request body must be a JSON object."),
        (b'{"model": 5}', "model: must be a string."),
        (b'{"model": "m", "max_tokens": "10"}',
         "max_tokens: must be an integer up to 2,147,483,647."),
        (b"\xff\xfe", "Request body is not valid JSON: not UTF-8"),
    ],
)  # fmt: skip
def test_malformed_bodies_get_a_clear_error(body: bytes, message: str) -> None:
    """A Messages body that is not a usable JSON object is refused with a precise message."""
    with pytest.raises(InvalidRequest) as caught:
        parse_facts("/v1/messages", body)
    assert message == caught.value.message


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/messages", "/v1/messages"),
        ("/v1/models/claude-sonnet-4-5-20250929", "/v1/models/{id}"),
        ("/v1/messages/batches/msgbatch_013Zva2/results", "/v1/messages/batches/{id}/results"),
        ("/v1/files/file_011CNha8iCJcU1wXNR6q4V8w/content", "/v1/files/{id}/content"),
        ("/v1/models", "/v1/models"),
        ("/v1/invented/path", "/v1/other"),
        ("/v1/files/file_1/weird/extra", "/v1/files/other"),
        ("/v1/skills/skill_01/versions", "/v1/skills/other"),
    ],
)
def test_route_label_folds_ids(path: str, route: str) -> None:
    """Route labels stay bounded: ids in paths fold into {id}."""
    assert route == route_of(path)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=2_000) | st.text(max_size=500).map(str.encode))
def test_any_bytes_give_facts_or_a_400(body: bytes) -> None:
    """Whatever a client sends to /v1/messages, the parser answers facts or InvalidRequest."""
    try:
        facts = parse_facts("/v1/messages", body)
    except InvalidRequest:
        return
    assert facts.body is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"max_tokens": ' + b"9" * 5_000 + b"}", "number too long"),
        (b'{"max_tokens": 99999999999}', "max_tokens: must be an integer up to 2,147,483,647."),
    ],
)
def test_legal_but_hostile_json_is_a_400(body: bytes, message: str) -> None:
    """JSON nested 100,000 deep or with a 5,000-digit number is refused as a bad request."""
    with pytest.raises(InvalidRequest, match=message):
        parse_facts("/v1/messages", body)
