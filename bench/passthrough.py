"""The floor: the barest correct aiohttp reverse proxy, to compare the gateway against.

`python -m bench.passthrough --port N --upstream URL`

One shared `ClientSession(auto_decompress=False)`; every method and path is forwarded with
its query, headers (minus hop-by-hop and Host) and body; the response streams back chunk by
chunk (`iter_any()` -> `StreamResponse.write`). No limits, no retries, no logging. Runs on
uvloop when importable, as the gateway does.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from bench.serving import raise_nofile_limit, run_main, serve

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def forwardable(headers: Mapping[str, str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones, those named in `Connection`, and `drop`."""
    skip = set(HOP_BY_HOP) | {name.lower() for name in drop}
    for value in headers.get("connection", "").split(","):
        skip.add(value.strip().lower())
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in skip:
            out.add(name, value)
    return out


NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def session_ctx() -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass through as the upstream sent them
            cookie_jar=aiohttp.DummyCookieJar(),  # never share one client's cookies with another
            skip_auto_headers=NO_AUTO_HEADERS,  # send only what the client sent
            timeout=timeout,
        ) as session:
            app[SESSION] = session
            yield

    return ctx


def _bad_gateway(exc: Exception) -> web.Response:
    error = {"type": "api_error", "message": f"upstream unreachable: {type(exc).__name__}"}
    return web.json_response({"type": "error", "error": error}, status=502)


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward one request upstream and stream the answer back as it arrives."""
    session = request.app[SESSION]
    url = request.app[UPSTREAM] + request.rel_url.raw_path_qs
    body = await request.read()
    headers = forwardable(request.headers, drop=("host", "content-length"))
    try:
        upstream = await session.request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        )
    except (aiohttp.ClientError, OSError) as exc:
        return _bad_gateway(exc)
    async with upstream:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=forwardable(upstream.headers),
        )
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    return response


def create_app(upstream: str) -> web.Application:
    """The passthrough proxy as an aiohttp application."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx())
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, metavar="URL")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    run_main(serve(create_app(args.upstream), args.host, args.port))


if __name__ == "__main__":
    main()
