"""Who is calling, and which upstream credential their request goes out with.

Two modes. **Pass-through** (no upstream key configured, no tenants): clients bring their own
Anthropic key and it goes upstream unchanged. **Gateway keys** (`GATEWAY_UPSTREAM_API_KEY`
or `_FILE` set, or tenants in the limits file): clients present a gateway key, which names
their tenant; the gateway strips it and sends the tenant's upstream key, so no client ever
holds the real one. A missing or unknown key is a 401 `authentication_error`, a model the
tenant may not use a 403 `permission_error`; no header chooses a tenant.

Gateway keys look like `cgw_<12 hex id>_<43 url-safe characters>`: 256 random bits. The
limits file stores `sha256:<id>:<salt>:<SHA-256 of salt and secret>`; the id finds the
stored hash, and the digests are compared with `hmac.compare_digest`. A fast salted hash
is enough because the secret is random and long (no dictionary to try); a slow KDF would
only add per-request latency. An unknown id is hashed and compared against a decoy all the
same, so the answer takes as long for a wrong id as for a wrong secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.headers import Credential
from gateway.limits.tenants import KEY_HASH, TenantConfig

KEY_PREFIX = "cgw_"
_ID_HEX = 12
_DECOY_SALT = bytes(16)
_DECOY_DIGEST = hashlib.sha256(_DECOY_SALT + b"decoy").digest()


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made gateway key: show `key` once, store `stored` in the limits file."""

    key: str
    stored: str


def new_key() -> NewKey:
    """A random gateway key and the salted hash the limits file keeps of it."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    digest = hashlib.sha256(salt + secret.encode()).hexdigest()
    return NewKey(f"{KEY_PREFIX}{key_id}_{secret}", f"sha256:{key_id}:{salt.hex()}:{digest}")


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: its tenant (None in pass-through mode) and the credential sent upstream."""

    tenant: TenantConfig | None
    upstream: Credential | None

    def check_model(self, model: str | None) -> None:
        """Raise 403 when the tenant may not use `model` (nothing to check without one)."""
        tenant = self.tenant
        if tenant is not None and model and not tenant.may_use(model):
            raise PermissionDenied(f"model: '{model}' is not one of the models this key may use.")

    @property
    def restricts_models(self) -> bool:
        """Whether the tenant may use only some models (a batch must then be read)."""
        return self.tenant is not None and self.tenant.models != ("*",)


class Identities:
    """Turns a presented credential into an `Identity` (one instance per limits file)."""

    def __init__(
        self,
        tenants: tuple[TenantConfig, ...],
        upstream_keys: Mapping[str | None, str],
    ) -> None:
        """`upstream_keys`: each upstream key's secret by its name in the limits file, and the
        default one (`GATEWAY_UPSTREAM_API_KEY`) under None. No key and no tenant: pass-through."""
        self.holds_keys = bool(upstream_keys) or bool(tenants)
        self._credentials = {
            name: Credential("x-api-key", secret, held=True)
            for name, secret in upstream_keys.items()
        }
        self._by_id: dict[str, tuple[TenantConfig, bytes, bytes]] = {}
        for tenant in tenants:
            for stored in tenant.keys:
                match = KEY_HASH.match(stored)
                assert match is not None  # the limits file validated it
                salt, digest = bytes.fromhex(match["salt"]), bytes.fromhex(match["digest"])
                self._by_id[match["id"]] = (tenant, salt, digest)
        self._tenants = tenants

    def adopt(self, other: Identities) -> None:
        """Take `other`'s keys, tenants and upstream keys (a reload): requests already past
        `identify` keep the identity they were given."""
        self.holds_keys, self._credentials = other.holds_keys, other._credentials
        self._by_id, self._tenants = other._by_id, other._tenants

    def describe(self) -> str:
        """The mode in one line for `check-config`: names and counts, never a key."""
        if not self.holds_keys:
            return "pass-through (clients send their own Anthropic key)"
        tenants = ", ".join(f"{t.name} ({len(t.keys)} key(s))" for t in self._tenants)
        return f"gateway keys; tenants: {tenants or 'none'}"

    def identify(self, presented: Credential | None) -> Identity:
        """The caller behind `presented`: raise 401 when gateway keys are required and it is
        missing or unknown."""
        if not self.holds_keys:
            return Identity(None, presented)
        if presented is None:
            raise AuthenticationFailed("x-api-key header is required")
        tenant = self._tenant_of(presented.value)
        if tenant is None:
            raise AuthenticationFailed("invalid x-api-key")
        upstream = self._credentials.get(tenant.upstream_key)
        if upstream is None:  # startup checks every tenant has one; never a silent default
            raise AuthenticationFailed("this key has no upstream key configured")
        return Identity(tenant, upstream)

    def _tenant_of(self, key: str) -> TenantConfig | None:
        """The tenant whose stored hash `key` matches, in time independent of where it fails."""
        prefix, key_id, secret = _parts(key)
        entry = self._by_id.get(key_id) if prefix == KEY_PREFIX else None
        tenant, salt, digest = entry if entry is not None else (None, _DECOY_SALT, _DECOY_DIGEST)
        computed = hashlib.sha256(salt + secret.encode()).digest()
        return tenant if hmac.compare_digest(computed, digest) and tenant is not None else None


def _parts(key: str) -> tuple[str, str, str]:
    """`cgw_<id>_<secret>` as (prefix, id, secret); anything else yields no usable id."""
    prefix, key_id, secret = key[: len(KEY_PREFIX)], key[len(KEY_PREFIX) :][:_ID_HEX], ""
    if len(key) > len(KEY_PREFIX) + _ID_HEX + 1 and key[len(KEY_PREFIX) + _ID_HEX] == "_":
        secret = key[len(KEY_PREFIX) + _ID_HEX + 1 :]
    return prefix, key_id, secret
