"""Which headers cross the gateway each way, and the ones it adds (`x-gateway-*`).

Requests: everything end-to-end goes upstream unchanged (credentials, `anthropic-*`,
`x-stainless-*`, `accept-encoding`); hop-by-hop headers, `host` and the client's own
`x-gateway-*` controls stay here. Responses: everything end-to-end comes back unchanged
(`request-id`, `anthropic-ratelimit-*`, `retry-after`, `x-should-retry`, `content-encoding`).

Credentials: `CredentialPolicy` decides what the upstream sees: the client's `x-api-key` or
`authorization` as is, or, when the gateway holds the upstream key (`identity.py`), that key
in place of whatever the client sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from multidict import CIMultiDict, CIMultiDictProxy

GATEWAY_PREFIX = "x-gateway-"
REQUEST_ID = "x-gateway-request-id"

# RFC 9110 §7.6.1 plus the ones proxies conventionally treat as hop-by-hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {"host", "content-length"}
_NOT_RELAYED_DOWNSTREAM = HOP_BY_HOP | {"content-length"}

Headers = Mapping[str, str] | CIMultiDictProxy[str] | CIMultiDict[str]


def _connection_tokens(headers: Headers) -> frozenset[str]:
    """Header names listed in `Connection:` are hop-by-hop for this message too."""
    getall = getattr(headers, "getall", None)
    values: Iterable[str] = getall("connection", []) if getall else [headers.get("connection", "")]
    tokens = {token.strip().lower() for value in values for token in value.split(",")}
    tokens.discard("")
    return frozenset(tokens)


def _copy_except(headers: Headers, dropped: frozenset[str]) -> CIMultiDict[str]:
    """Copy `headers` without `dropped`, `Connection`-listed names and `x-gateway-*` (hot path).

    Runs twice a request, so the work stays in C: one copy, one lowercase string of the
    names, a set intersection; the per-name loops only run when something must go.
    """
    copied = CIMultiDict(headers)
    lowered = "\n".join(headers.keys()).lower()
    present = set(lowered.split("\n"))
    if "connection" in present:
        dropped = dropped | _connection_tokens(headers)
    doomed = present & dropped
    if GATEWAY_PREFIX in lowered:
        doomed.update(name for name in present if name.startswith(GATEWAY_PREFIX))
    for name in doomed:
        del copied[name]
    return copied


@dataclass(frozen=True, slots=True)
class Credential:
    """The upstream credential a request carries; `scope` is a hash safe to log and key on."""

    header: str
    value: str
    held: bool = False
    """The gateway's own upstream key: it replaces the client's credential headers."""

    @property
    def scope(self) -> str:
        """First 16 hex digits of SHA-256 of the secret: stable, short, not reversible."""
        return _scope_of(self.value)


@lru_cache(maxsize=1024)
def _scope_of(secret: str) -> str:
    """Hashed once per key, not once per request: an organisation has a handful of keys,
    and the hash cost 1.4% of a Redis-limited request's CPU (py-spy). The cache lives in
    this process only, like the request that carried the key."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def credential_of(headers: Headers) -> Credential | None:
    """The key the client sent, from `x-api-key` or `authorization: Bearer` (SDKs use both)."""
    api_key = headers.get("x-api-key")
    if api_key:
        return Credential("x-api-key", api_key.strip())
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        value = token.strip() if scheme.lower() == "bearer" and token else authorization.strip()
        return Credential("authorization", value)
    return None


CREDENTIAL_HEADERS = ("x-api-key", "authorization")


class CredentialPolicy:
    """Forward the client's own credential unchanged, or put the gateway's in its place."""

    def apply(self, outgoing: CIMultiDict[str], credential: Credential | None) -> None:
        """Set the upstream credential on `outgoing` (the client's headers are already
        there): a gateway-held key replaces every credential header the client sent."""
        if credential is None or not credential.held:
            return  # the client's header was copied through as is
        for name in CREDENTIAL_HEADERS:
            outgoing.popall(name, None)
        outgoing[credential.header] = credential.value


def upstream_request_headers(
    incoming: Headers, *, streamed_length: int | None = None
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop ones, `host`, and the gateway's own controls;
    a body streamed through keeps its `Content-Length` (`streamed_length`) when it had one."""
    outgoing = _copy_except(incoming, _NOT_FORWARDED_UPSTREAM)
    if streamed_length is not None:
        outgoing["Content-Length"] = str(streamed_length)
    return outgoing


def downstream_response_headers(upstream: Headers) -> CIMultiDict[str]:
    """The upstream response headers minus hop-by-hop ones; `relay` re-frames the body."""
    return _copy_except(upstream, _NOT_RELAYED_DOWNSTREAM)
