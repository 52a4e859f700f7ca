"""`check-config --probe`: reach what the configuration points at, before traffic does.

Redis (when configured): PING, then SCRIPT LOAD of every limiter script, which finds a
wrong password, a missing ACL permission or a server without Lua. The upstream: open a TCP
(and TLS) connection; with a key, `GET /v1/models`, which finds a wrong base URL or key.
Each probe reports its latency or one line saying what failed; none raises.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from gateway.clock import Clock
from gateway.config import Settings, mask_url
from gateway.limits import LimitBackendError
from gateway.logs import scrub
from gateway.upstream import UpstreamSettings, open_session

API_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe found: `target` names what was reached, `detail` how it went."""

    target: str
    ok: bool
    detail: str

    def line(self) -> str:
        """`probe <target>: ok, <detail>` or `probe <target>: FAILED: <detail>`."""
        return f"probe {self.target}: {'ok, ' if self.ok else 'FAILED: '}{self.detail}"


async def probe_all(
    settings: Settings, upstream: UpstreamSettings, clock: Clock, api_key: str | None
) -> list[ProbeResult]:
    """Every probe the configuration calls for, in order: Redis, upstream, the API."""
    results = []
    if settings.redis_url is not None:
        results.append(await probe_redis(settings, clock))
    connected = await probe_connect(upstream, clock)
    results.append(connected)
    if api_key is not None and connected.ok:
        results.append(await probe_models(upstream, clock, api_key))
    return results


async def probe_redis(settings: Settings, clock: Clock) -> ProbeResult:
    """A write probe (what `/readyz` runs), then SCRIPT LOAD every limiter script, each
    bounded by the Redis timeout."""
    from gateway.limits.redis_backend import RedisBackend  # noqa: PLC0415 (only with Redis)

    assert settings.redis_url is not None
    url = settings.redis_url.get_secret_value()
    target = f"redis {mask_url(url)}"
    backend = RedisBackend.from_url(
        url,
        cluster=settings.redis_cluster,
        kind=settings.redis_client,
        timeout=settings.redis_timeout_seconds,
    )
    try:
        started = clock.now()
        await backend.ping()
        pinged = clock.now()
        loaded = await backend.load_scripts()
        done = clock.now()
    except LimitBackendError as exc:
        return ProbeResult(target, False, scrub(str(exc)))
    finally:
        await backend.aclose()
    return ProbeResult(
        target,
        True,
        f"write probe {_ms(pinged - started)}, {loaded} scripts loaded in {_ms(done - pinged)}",
    )


async def probe_connect(upstream: UpstreamSettings, clock: Clock) -> ProbeResult:
    """Open (and close) one TCP connection to the upstream, with TLS for https."""
    parts = urlsplit(upstream.base_url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = f"upstream {mask_url(upstream.base_url)}"
    context = ssl.create_default_context() if secure else None
    started = clock.now()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), upstream.connect_timeout
        )
    except TimeoutError:
        return ProbeResult(target, False, f"no connection within {upstream.connect_timeout:g} s")
    except (OSError, ssl.SSLError) as exc:
        return ProbeResult(target, False, f"cannot connect to {host}:{port}: {exc}")
    connected = clock.now()
    writer.close()
    await writer.wait_closed()
    what = "TCP+TLS" if secure else "TCP"
    return ProbeResult(target, True, f"{what} connection in {_ms(connected - started)}")


async def probe_models(upstream: UpstreamSettings, clock: Clock, api_key: str) -> ProbeResult:
    """`GET /v1/models` with `api_key`: the key, the base URL and the API all answer."""
    target = "upstream GET /v1/models"
    headers = {"x-api-key": api_key, "anthropic-version": API_VERSION}
    started = clock.now()
    async with open_session(upstream) as session:
        try:
            async with session.get(f"{upstream.base_url}/v1/models", headers=headers) as reply:
                body = await reply.read()
                status = reply.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return ProbeResult(target, False, scrub(f"{type(exc).__name__}: {exc}"))
    elapsed = _ms(clock.now() - started)
    if status != 200:
        return ProbeResult(target, False, f"HTTP {status} in {elapsed}: {_error_text(body)}")
    return ProbeResult(target, True, f"HTTP 200 in {elapsed}")


def _error_text(body: bytes) -> str:
    """The API envelope's `type: message`, or the start of a body that is not one."""
    try:
        error = json.loads(body)["error"]
        return scrub(f"{error['type']}: {error['message']}")
    except (ValueError, KeyError, TypeError):
        return scrub(body[:200].decode("utf-8", "replace")) or "(empty body)"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
