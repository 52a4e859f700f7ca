"""Which request targets the gateway forwards: a plain path, no dot-segments, known methods.

The handler forwards the target as the client sent it (`request.raw_path`), appended to the
upstream base URL, so the API sees exactly the bytes the SDK wrote. That is only safe when
the target cannot climb out of that base: `/v1/../../internal/admin` would reach
`https://proxy/anthropic/internal/admin` on a path-prefixed upstream.

Decision: refuse, never normalise. No SDK sends a dot-segment, an encoded dot or slash, or an
absolute-form target, so a request that does is crafted; answering it a 400 is simpler than
deciding what a normalised path should mean to the upstream's own router (which may decode
`%2F`, or a second layer of `%25`, differently from ours). What is refused:

- a target that is not origin-form (`GET http://evil.example/v1/models`, `CONNECT host:443`,
  `OPTIONS *`): 400;
- a path with a `.` or `..` segment, after decoding percent-escapes repeatedly (`%2e`, `%2E`,
  `%252e`), with `/`, `%2F` and `\\` all taken as separators: 400;
- CONNECT and TRACE on any path (a proxy's tunnel, and an echo of the request's headers,
  credentials included): 405. Which methods `/v1/*` takes is `V1_METHODS`, applied by the
  router.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from gateway.errors import InvalidRequest, MethodNotAllowed

V1_METHODS = ("GET", "POST", "DELETE", "OPTIONS")
"""What `/v1/*` forwards: the API's GET, POST and DELETE, and OPTIONS for a browser's CORS
preflight (the TypeScript SDK runs in browsers); anything else is a 405."""
REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
MAX_DECODES = 4
"""Percent-decoding rounds checked; a target still changing after them is refused."""
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")


def check_target(method: str, raw_target: str) -> None:
    """Raise the client error for a target or method the gateway never forwards."""
    if method in REFUSED_METHODS:
        raise MethodNotAllowed(f"Method {method} is not allowed.")
    if not raw_target.startswith("/"):
        raise InvalidRequest("The request target must be a path starting with '/'.")
    if _climbs(raw_target.partition("?")[0]):
        raise InvalidRequest("The request path must not contain '.' or '..' segments.")


def _climbs(path: str) -> bool:
    """Whether any decoding of `path` has a dot-segment (or it never stops decoding)."""
    for _ in range(MAX_DECODES):
        if any(segment in (".", "..") for segment in _SEGMENT_SEPARATORS.split(path)):
            return True
        decoded = unquote(path) if "%" in path else path
        if decoded == path:
            return False
        path = decoded
    return True
