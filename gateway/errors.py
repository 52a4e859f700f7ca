"""The gateway's own errors and the Anthropic error envelope they render to.

Exception tree::

    GatewayError                     status, error type and a client-safe message
    ├── InvalidRequest               400 invalid_request_error  (malformed JSON, bad header value)
    ├── NotFound                     404 not_found_error        (a path outside /v1 and ops)
    ├── MethodNotAllowed             405 invalid_request_error  (CONNECT, TRACE)
    ├── RequestTimeout               408 invalid_request_error  (a request body stalled;
    │                                                            closes the connection)
    ├── RequestTooLarge              413 request_too_large      (a body over the configured limit;
    │                                                            never_fits: a cost over a limit)
    ├── RateLimited                  429 rate_limit_error       (queue wait would exceed the cap)
    ├── InternalError                500 api_error              (a bug; details only in the log)
    ├── UpstreamUnavailable          502 api_error              (connect failed, connection dropped)
    ├── Overloaded                   503 overloaded_error       (shutting down, limiter unavailable)
    └── UpstreamTimeout              504 timeout_error          (upstream did not answer in time)

Foreign errors (aiohttp, redis) are mapped to these at the boundary that sees them
(`upstream.py`, `limits/redis_backend.py`); one middleware renders the envelope. This module
imports no HTTP library: the envelope is plain data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


class GatewayError(Exception):
    """An error the gateway answers itself, in Anthropic's envelope."""

    status: int = 500
    error_type: str = "api_error"
    outcome: str = "gateway_error"  # the metrics/access-log outcome label
    closes_connection: bool = False  # the answer ends the connection (its request is unusable)

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        outcome: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})
        if outcome is not None:
            self.outcome = outcome


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    outcome = "invalid_request"


class AuthenticationFailed(GatewayError):
    """A gateway key that is missing or unknown (the API's own 401 words)."""

    status = 401
    error_type = "authentication_error"


class PermissionDenied(GatewayError):
    """A gateway key used for something its tenant may not do."""

    status = 403
    error_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    outcome = "invalid_request"


class RequestTimeout(GatewayError):
    status = 408
    error_type = "invalid_request_error"
    outcome = "client_timeout"
    closes_connection = True


class RequestTooLarge(GatewayError):
    status = 413
    error_type = "request_too_large"
    outcome = "invalid_request"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    outcome = "rejected"


class InternalError(GatewayError):
    status = 500
    error_type = "api_error"


class UpstreamUnavailable(GatewayError):
    status = 502
    error_type = "api_error"
    outcome = "upstream_unavailable"


class Overloaded(GatewayError):
    status = 503
    error_type = "overloaded_error"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "timeout_error"
    outcome = "upstream_timeout"


def envelope(error_type: str, message: str, request_id: str | None = None) -> bytes:
    """The API's error body; `request_id` is the gateway's own id, never a forged upstream one."""
    body: dict[str, object] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body, separators=(",", ":")).encode()
