"""Plain calls to a served gateway, and the Anthropic error envelope an answer may carry."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.conftest import TEST_KEY

HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": []}


async def call(
    url: str, path: str = "/v1/messages", *, method: str = "POST", data: Any = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Send one request; return status, JSON body and headers."""
    payload = json.dumps(BODY).encode() if data is None else data
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, data=payload, headers=HEADERS) as response,
    ):
        return response.status, json.loads(await response.read()), dict(response.headers)


def envelope_of(document: dict[str, Any]) -> tuple[str, str]:
    """(error type, message) of an Anthropic error body."""
    assert "error" == document["type"]
    return document["error"]["type"], document["error"]["message"]
