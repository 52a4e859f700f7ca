"""`claude-gateway status`: the live view fetched from a running gateway, as a table."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.status_view import StatusUnavailable, fetch_status, render
from tests.conftest import GatewayFactory
from tests.support.fake_clock import FakeClock
from tests.test_admission import limits_file, send

TOKEN = "admin-token-for-status"


async def test_the_table_shows_levels_shares_and_the_last_minute(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = limits_file(tmp_path, "    requests_per_minute: 30\n    enforce: false\n")
    gateway = await make_gateway(limits_file=str(path), admin_token=TOKEN, clock=FakeClock())
    assert (await send(gateway.url))[0] == 200
    document = await asyncio.to_thread(fetch_status, gateway.url, TOKEN)
    text = render(document)
    assert "group sonnet (claude-sonnet-*)  [shadow: not enforced]" in text
    row = next(line for line in text.splitlines() if " requests " in line)
    assert row.split()[1:] == ["-", "requests", "30", "29", "3%"]
    assert "last minute, (no tenant): now 1" in text
    with pytest.raises(StatusUnavailable, match="401: this endpoint needs"):
        await asyncio.to_thread(fetch_status, gateway.url, "wrong")


async def test_the_command_prints_the_table_or_one_line_why_not(
    make_gateway: GatewayFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = limits_file(tmp_path, "    requests_per_minute: 30\n")
    gateway = await make_gateway(limits_file=str(path), admin_token=TOKEN)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", TOKEN)
    assert await asyncio.to_thread(main, ["status", "--url", gateway.url]) == 0
    out = capsys.readouterr().out
    assert "group sonnet" in out
    assert "no traffic seen yet: limits requests_per_minute=30" in out
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "nope")
    assert await asyncio.to_thread(main, ["status", "--url", gateway.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("claude-gateway: status: 401")
    assert len(err.splitlines()) == 1
    assert await asyncio.to_thread(main, ["status", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_a_gateway_without_limits_says_so() -> None:
    assert render({"limits": False, "identity": "pass-through (x)", "groups": []}) == (
        "identity: pass-through (x)\nlimits: none (plain pass-through)"
    )
