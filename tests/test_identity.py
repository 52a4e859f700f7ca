"""Gateway keys and tenants: who may call, and which upstream key their calls go out with.

Through a running gateway in front of the fake upstream, with the real Anthropic SDK where
a client would use it: the tenant's key works, the upstream sees only the gateway's key, a
missing or unknown key is a 401 and a model outside the tenant's list a 403, both in the
API's envelope; no header lets a client pick another tenant.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

import aiohttp
import anthropic
import pytest

from gateway.config import ConfigError
from gateway.errors import AuthenticationFailed
from gateway.headers import Credential
from gateway.identity import KEY_PREFIX, Identities, new_key
from gateway.limits import load_limits
from gateway.limits.tenants import KEY_HASH
from tests.conftest import GatewayFactory
from tests.support.fake_upstream import FakeUpstream
from tests.test_admission import MODEL, send

UPSTREAM_KEY = "sk-ant-upstream-0123456789abcdef"
OTHER_UPSTREAM_KEY = "sk-ant-workspace-b-fedcba9876543210"


def tenants_file(tmp_path: Path, tenants: str, *, extra: str = "") -> Path:
    """A limits file with one `sonnet` group (30 RPM) and the given `tenants:` body."""
    path = tmp_path / "limits.yaml"
    path.write_text(
        "headroom: 0\nqueue:\n  max_wait_seconds: 0\n"
        "groups:\n  - name: sonnet\n    models: ['claude-sonnet-*']\n"
        f"    requests_per_minute: 30\n{extra}tenants:\n{tenants}"
    )
    return path


def test_a_new_key_matches_only_its_own_stored_hash() -> None:
    made, other = new_key(), new_key()
    assert made.key.startswith(KEY_PREFIX)
    assert len(made.key) == 4 + 12 + 1 + 43
    match = KEY_HASH.match(made.stored)
    assert match is not None
    assert made.key[4:16] == match["id"]
    assert made.key not in made.stored  # only the hash is kept
    salt = bytes.fromhex(match["salt"])
    assert hashlib.sha256(salt + made.key[17:].encode()).hexdigest() == match["digest"]
    assert made.stored != other.stored
    assert made.key != other.key


def _identities(tmp_path: Path, *keys: str) -> Identities:
    listed = "".join(f"      - '{key}'\n" for key in keys)
    config = load_limits(tenants_file(tmp_path, f"  - name: search\n    keys:\n{listed}"))
    return Identities(config.tenants, {None: UPSTREAM_KEY})


def test_keys_are_checked_by_hash_and_the_upstream_key_replaces_them(tmp_path: Path) -> None:
    first, second = new_key(), new_key()
    identities = _identities(tmp_path, first.stored, second.stored)
    for made in (first, second):  # two keys at once: one is being rotated out
        identity = identities.identify(Credential("x-api-key", made.key))
        assert identity.tenant is not None
        assert identity.tenant.name == "search"
        assert identity.upstream == Credential("x-api-key", UPSTREAM_KEY, held=True)
    wrong_secret = first.key[:-4] + ("AAAA" if not first.key.endswith("AAAA") else "BBBB")
    for presented in (wrong_secret, second.key[:17] + first.key[17:], "sk-ant-real", "", "cgw_"):
        with pytest.raises(Exception, match="invalid x-api-key") as caught:
            identities.identify(Credential("x-api-key", presented))
        assert getattr(caught.value, "status", None) == 401


def test_an_unknown_key_id_takes_as_long_as_a_wrong_secret(tmp_path: Path) -> None:
    """Timing-safe: a wrong id is hashed and compared like a wrong secret, so neither tells
    an attacker which ids exist (medians of many tries, within a generous factor)."""
    made = new_key()
    identities = _identities(tmp_path, made.stored)
    wrong_secret = Credential("x-api-key", made.key[:17] + "x" * 43)
    wrong_id = Credential("x-api-key", KEY_PREFIX + "f" * 12 + "_" + made.key[17:])

    def median(credential: Credential) -> float:
        times = []
        for _ in range(2_000):
            started = time.perf_counter()
            with contextlib.suppress(AuthenticationFailed):  # both are 401s: only time counts
                identities.identify(credential)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2]

    slow, fast = sorted((median(wrong_secret), median(wrong_id)))
    assert fast > 0
    assert slow / fast < 2.0


def test_pass_through_without_an_upstream_key_or_tenants() -> None:
    identities = Identities((), {})
    assert not identities.holds_keys
    client = Credential("x-api-key", "sk-ant-client")
    assert identities.identify(client).upstream is client
    assert identities.identify(None).upstream is None


async def test_a_tenant_key_works_with_the_sdk_and_the_upstream_sees_only_the_gateway_key(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    made = new_key()
    path = tenants_file(tmp_path, f"  - name: search\n    keys: ['{made.stored}']\n")
    gateway = await make_gateway(limits_file=path, upstream_api_key=UPSTREAM_KEY)
    async with anthropic.AsyncAnthropic(api_key=made.key, base_url=gateway.url) as client:
        message = await client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
        )
    assert message.content
    sent = fake_upstream.requests[-1].headers
    assert sent["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in sent
    logs = gateway.logs.getvalue()
    assert '"tenant": "search"' in logs
    assert made.key not in logs
    assert made.key[17:] not in logs
    assert UPSTREAM_KEY not in logs


async def test_bearer_gateway_keys_are_replaced_too(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    made = new_key()
    path = tenants_file(tmp_path, f"  - name: search\n    keys: ['{made.stored}']\n")
    gateway = await make_gateway(limits_file=path, upstream_api_key=UPSTREAM_KEY)
    status, _, _ = await send(gateway.url, key="", headers={"authorization": f"Bearer {made.key}"})
    assert status == 200
    sent = fake_upstream.requests[-1].headers
    assert sent["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in sent


async def test_missing_and_unknown_keys_get_the_apis_401(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    made = new_key()
    path = tenants_file(tmp_path, f"  - name: search\n    keys: ['{made.stored}']\n")
    gateway = await make_gateway(limits_file=path, upstream_api_key=UPSTREAM_KEY)
    missing = await send(gateway.url, key="")
    unknown = await send(gateway.url, key=new_key().key)
    real_key = await send(gateway.url, key=UPSTREAM_KEY)  # the real key is no gateway key
    for status, body, _ in (missing, unknown, real_key):
        assert status == 401
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
    assert missing[1]["error"]["message"] == "x-api-key header is required"
    assert fake_upstream.requests == []
    async with anthropic.AsyncAnthropic(api_key="cgw_nope", base_url=gateway.url) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
            )


async def test_a_model_outside_the_tenants_list_gets_403_and_headers_choose_no_tenant(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    small, big = new_key(), new_key()
    path = tenants_file(
        tmp_path,
        f"  - name: small\n    keys: ['{small.stored}']\n    models: ['claude-haiku-*']\n"
        f"  - name: big\n    keys: ['{big.stored}']\n",
        extra="unmatched_models: pass\n",
    )
    gateway = await make_gateway(limits_file=path, upstream_api_key=UPSTREAM_KEY)
    status, body, _ = await send(gateway.url, key=small.key, model=MODEL)
    assert status == 403
    assert body["error"]["type"] == "permission_error"
    assert MODEL in body["error"]["message"]
    choosing = {"x-gateway-tenant": "big", "x-tenant": "big", "anthropic-workspace": "big"}
    status, _, _ = await send(gateway.url, key=small.key, model=MODEL, headers=choosing)
    assert status == 403
    assert (await send(gateway.url, key=small.key, model="claude-haiku-4-5"))[0] == 200
    assert fake_upstream.requests[-1].json()["model"] == "claude-haiku-4-5"
    assert len(fake_upstream.requests) == 1


async def test_each_tenant_goes_out_with_its_workspace_key(
    make_gateway: GatewayFactory,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKSPACE_B_KEY", OTHER_UPSTREAM_KEY)
    a, b = new_key(), new_key()
    path = tenants_file(
        tmp_path,
        f"  - name: a\n    keys: ['{a.stored}']\n"
        f"  - name: b\n    keys: ['{b.stored}']\n    upstream_key: workspace-b\n",
        extra="upstream_keys:\n  - name: workspace-b\n    env: WORKSPACE_B_KEY\n",
    )
    gateway = await make_gateway(limits_file=path, upstream_api_key=UPSTREAM_KEY)
    assert (await send(gateway.url, key=a.key))[0] == 200
    assert (await send(gateway.url, key=b.key))[0] == 200
    sent = [request.headers["x-api-key"] for request in fake_upstream.requests]
    assert sent == [UPSTREAM_KEY, OTHER_UPSTREAM_KEY]


async def test_a_tenant_without_an_upstream_key_stops_the_start(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tenants_file(tmp_path, f"  - name: search\n    keys: ['{new_key().stored}']\n")
    with pytest.raises(ConfigError, match="tenant 'search' has no upstream key"):
        await make_gateway(limits_file=path)
    key_file = tmp_path / "upstream.key"
    key_file.write_text(UPSTREAM_KEY + "\n")
    gateway = await make_gateway(limits_file=path, upstream_api_key_file=key_file)
    assert gateway.app is not None


async def test_a_tenant_limited_to_some_models_cannot_batch_others(
    make_gateway: GatewayFactory, fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Every request of a batch is checked against the tenant's models; a batch too large
    to read before it is sent is refused rather than let through unchecked."""
    small = new_key()
    path = tenants_file(
        tmp_path,
        f"  - name: small\n    keys: ['{small.stored}']\n    models: ['claude-haiku-*']\n",
    )
    gateway = await make_gateway(
        limits_file=path, upstream_api_key=UPSTREAM_KEY, max_body_bytes=4_096
    )
    headers = {"x-api-key": small.key, "anthropic-version": "2023-06-01"}

    def batch(*models: str, padding: int = 0) -> dict[str, object]:
        return {"requests": [
            {"custom_id": f"r{i}", "params": {"model": model, "max_tokens": 5, "messages": [
                {"role": "user", "content": "Hi" + " " * padding},
            ]}}
            for i, model in enumerate(models)
        ]}  # fmt: skip

    async with aiohttp.ClientSession() as session:

        async def create(body: dict[str, object]) -> tuple[int, str]:
            url = gateway.url + "/v1/messages/batches"
            async with session.post(url, json=body, headers=headers) as response:
                answer = await response.json()
                return response.status, str(answer.get("error", {}).get("message", ""))

        mixed = await create(batch("claude-haiku-4-5", "claude-opus-4-1"))
        allowed = await create(batch("claude-haiku-4-5", "claude-haiku-4-5"))
        large = await create(batch("claude-haiku-4-5", padding=8_000))
    assert mixed[0] == 403
    assert "claude-opus-4-1" in mixed[1]
    assert allowed[0] == 200
    assert large[0] == 403
    assert "cannot be checked" in large[1]
    assert [r.path for r in fake_upstream.requests] == ["/v1/messages/batches"]
