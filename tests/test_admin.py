"""The live view (`GET /gateway/v1/status`) and reload (`POST /gateway/v1/reload`, SIGHUP).

Both refuse without the admin token (401 in the API's envelope), and with no token
configured they refuse everyone. The status shows each group's buckets, the tenants' shares
and the last minute's decisions, and never a key. A reload validates the file as
`check-config` does: a bad one is refused with the same line and the old limits stay in
force; a good one applies from the next request, while a request in flight finishes and
settles.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.admin import ADMIN, reload
from gateway.config import ConfigError
from gateway.identity import new_key
from gateway.server import reload_on_signal
from gateway.startup import startup_for
from tests.conftest import GatewayFactory, RunningGateway
from tests.support.fake_clock import FakeClock
from tests.support.fake_upstream import Delay, FakeUpstream
from tests.test_admission import limits_file, send

TOKEN = "admin-token-0123456789"
UPSTREAM_KEY = "sk-ant-upstream-abcdef0123456789"
NO_WAIT = {"x-gateway-max-wait": "0"}


async def admin(
    gateway: RunningGateway, method: str, path: str, token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gateway.url + path, headers=headers) as response,
    ):
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize("configured", [TOKEN, None])
async def test_the_admin_endpoints_refuse_without_the_token(
    make_gateway: GatewayFactory, tmp_path: Path, configured: str | None
) -> None:
    path = limits_file(tmp_path, "    requests_per_minute: 30\n")
    gateway = await make_gateway(limits_file=str(path), admin_token=configured)
    for method, endpoint in (("GET", "/gateway/v1/status"), ("POST", "/gateway/v1/reload")):
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x", ""):
            status, body = await admin(gateway, method, endpoint, token)
            assert status == 401
            assert body["error"]["type"] == "authentication_error"
        status, _ = await admin(gateway, method, endpoint, TOKEN)
        assert status == (200 if configured else 401)


async def test_the_status_shows_buckets_tenant_shares_and_decisions_but_no_key(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    small = new_key()
    path = limits_file(
        tmp_path,
        "    requests_per_minute: 30\n"
        f"tenants:\n  - name: small\n    keys: ['{small.stored}']\n"
        "    limits:\n      sonnet:\n        requests_per_minute: '10%'\n",
    )
    gateway = await make_gateway(
        limits_file=str(path), admin_token=TOKEN, upstream_api_key=UPSTREAM_KEY, clock=FakeClock()
    )
    statuses = [(await send(gateway.url, key=small.key, headers=NO_WAIT))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    status, document = await admin(gateway, "GET", "/gateway/v1/status")
    assert status == 200
    (group,) = document["groups"]
    assert group["name"] == "sonnet"
    assert group["enforce"] is True
    assert group["limits"] == {"requests_per_minute": 30}
    assert group["tenant_limits"] == {"small": {"requests_per_minute": 3}}
    levels = {(b["tenant"], b["dimension"]): (b["limit"], b["level"]) for b in group["buckets"]}
    assert levels == {(None, "requests"): (30, 27.0), ("small", "requests"): (3, 0.0)}
    assert group["decisions_last_minute"] == [{"tenant": "small", "now": 3, "rejected": 1}]
    assert document["queue_depth"] == 0
    assert document["identity"].startswith("gateway keys")
    text = json.dumps(document)
    assert small.key not in text
    assert small.stored not in text
    assert UPSTREAM_KEY not in text


async def test_a_bad_reload_is_refused_with_check_configs_line_and_the_old_limits_stay(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = limits_file(tmp_path, "    requests_per_minute: 2\n")
    gateway = await make_gateway(limits_file=str(path), admin_token=TOKEN, clock=FakeClock())
    good = path.read_text()
    path.write_text(good.replace("requests_per_minute: 2", "requests_per_minute: -1"))
    status, body = await admin(gateway, "POST", "/gateway/v1/reload")
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    settings = gateway.app[ADMIN].settings
    with pytest.raises(ConfigError) as check_config:
        startup_for(settings)
    assert str(check_config.value) in body["error"]["message"]
    assert "the previous limits stay in force" in body["error"]["message"]
    statuses = [(await send(gateway.url, headers=NO_WAIT))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]  # still 2 a minute


async def test_a_reload_applies_to_the_next_request_and_one_in_flight_settles(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A bucket keeps what it holds across a reload: a lowered limit caps it at once, a
    raised one is reached as it refills at the new rate (within a minute), so a reload never
    hands out a fresh bucket."""
    path = limits_file(tmp_path, "    requests_per_minute: 2\n")
    clock = FakeClock()
    gateway = await make_gateway(limits_file=str(path), admin_token=TOKEN, clock=clock)
    fake_upstream.script(Delay(0.5))
    in_flight = asyncio.ensure_future(send(gateway.url, headers=NO_WAIT))
    for _ in range(500):  # until it was admitted and reached the upstream
        if fake_upstream.requests:
            break
        await asyncio.sleep(0.01)
    assert fake_upstream.requests
    path.write_text(path.read_text().replace("requests_per_minute: 2", "requests_per_minute: 5"))
    status, body = await admin(gateway, "POST", "/gateway/v1/reload")
    assert (status, body["groups"], body["reloaded"]) == (200, ["sonnet"], True)
    assert (await in_flight)[0] == 200
    assert [(await send(gateway.url, headers=NO_WAIT))[0] for _ in range(2)] == [200, 429]
    clock.advance(60.0)
    statuses = [(await send(gateway.url, headers=NO_WAIT))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]  # the new bucket: 5 a minute
    assert '"event": "limits.reloaded"' in gateway.logs.getvalue()


async def test_a_reload_takes_new_tenants_and_revokes_removed_keys(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    old, new = new_key(), new_key()
    path = limits_file(
        tmp_path,
        f"    requests_per_minute: 30\ntenants:\n  - name: a\n    keys: ['{old.stored}']\n",
    )
    gateway = await make_gateway(
        limits_file=str(path), admin_token=TOKEN, upstream_api_key=UPSTREAM_KEY
    )
    assert (await send(gateway.url, key=old.key))[0] == 200
    path.write_text(path.read_text().replace(old.stored, new.stored))
    reload_on_signal(gateway.app)  # what SIGHUP runs
    assert (await send(gateway.url, key=old.key))[0] == 401
    assert (await send(gateway.url, key=new.key))[0] == 200


async def test_sighup_with_a_bad_file_logs_and_keeps_the_old_one(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = limits_file(tmp_path, "    requests_per_minute: 1\n")
    gateway = await make_gateway(limits_file=str(path), clock=FakeClock())
    path.write_text("groups: [")
    reload_on_signal(gateway.app)
    assert '"event": "limits.reload_refused"' in gateway.logs.getvalue()
    statuses = [(await send(gateway.url, headers=NO_WAIT))[0] for _ in range(2)]
    assert statuses == [200, 429]


async def test_a_gateway_started_without_limits_asks_for_a_restart_to_add_them(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text("")
    gateway = await make_gateway(limits_file=str(path), admin_token=TOKEN)
    path.write_text("groups:\n  - name: s\n    models: ['*']\n    requests_per_minute: 5\n")
    with pytest.raises(ConfigError, match="restart it"):
        reload(gateway.app)
