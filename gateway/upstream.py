"""Open one upstream response; nothing has reached the client yet.

This is the retry boundary: everything here happens before the first byte is relayed, so a
failed attempt can still become a clean gateway error (or, with a retry policy, another
attempt). aiohttp's errors are mapped to the gateway's own here and nowhere else::

    connect refused / DNS / reset before a response   -> UpstreamUnavailable (502 api_error)
    connect or read timeout before the headers        -> UpstreamTimeout     (504 timeout_error)
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.logs import get_logger

log = get_logger("gateway.upstream")


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Where the API lives and how long to wait for it."""

    base_url: str
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    connection_limit: int = 0


def open_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
    """One pooled session for the process: no decompression, no cookies, no default headers."""
    connector = aiohttp.TCPConnector(
        limit=settings.connection_limit,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        ),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        raise_for_status=False,
    )


class Upstream:
    """Sends a request upstream and returns its response with the body still unread."""

    def __init__(self, session: aiohttp.ClientSession, settings: UpstreamSettings) -> None:
        self._session = session
        self._base = settings.base_url.rstrip("/")

    @property
    def is_open(self) -> bool:
        """False once the session is closed (shutdown), for readiness."""
        return not self._session.closed

    async def open(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """One attempt; the caller owns the response and must release or close it."""
        url = URL(self._base + path_qs, encoded=True)
        try:
            return await self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("The upstream API did not answer in time.") from exc
        except aiohttp.ClientConnectorError as exc:
            log.warning("upstream_connect_failed", error=type(exc).__name__, detail=str(exc))
            raise UpstreamUnavailable("Could not connect to the upstream API.") from exc
        except aiohttp.ClientError as exc:
            log.warning("upstream_request_failed", error=type(exc).__name__, detail=str(exc))
            raise UpstreamUnavailable("The upstream API closed the connection.") from exc
