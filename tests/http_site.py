"""A site's web server for the throughput tests: run inside a site namespace by ``Site.start_http``.

    python tests/http_site.py --port 8080 [--host ADDRESS]

Routes (all without compression, so bytes on the wire are the bytes counted):

* ``GET /blob[?bytes=N]``: random bytes in 64 KiB chunks, endless unless ``bytes`` is given (then
  with a Content-Length). The client fetching it measures the *site's upload*. The bytes come from
  one ``os.urandom`` pool made at start-up and repeated, so they are incompressible yet cost no
  CPU per request: at the shaped rates the link, never this server, must be the bottleneck.
* ``POST /upload`` and ``PUT /upload``: read the body as it arrives, throw it away and answer
  ``{"bytes": n}``. The client sending it measures the *site's download*.
* ``GET /status/CODE``: an empty answer with that status (404, 500, 503 ...), for error handling.
* ``GET /hang``: accepts the request and never answers, for client timeouts at the HTTP layer.

A stand-alone script (no import of the project) so it runs the same under any interpreter that
has aiohttp, and so a crash in it cannot take the test process down.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os

from aiohttp import web

CHUNK = 64 * 1024
POOL = os.urandom(16 * CHUNK)  # 1 MiB: a repeat period far longer than any compression window
CHUNKS = [POOL[i:i + CHUNK] for i in range(0, len(POOL), CHUNK)]


async def blob(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("bytes")
    try:
        total = None if raw is None else int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text="bytes must be an integer") from None
    if total is not None and total < 0:
        raise web.HTTPBadRequest(text="bytes must not be negative")
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-store"})
    if total is not None:
        response.content_length = total
    await response.prepare(request)
    sent = 0
    try:
        for chunk in itertools.cycle(CHUNKS):
            if total is not None:
                if sent >= total:
                    break
                chunk = chunk[:total - sent]
            await response.write(chunk)
            sent += len(chunk)
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        # The client hung up, which is how a duration-limited fetch of the endless blob ends.
        return response
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    count = 0
    async for chunk in request.content.iter_any():
        count += len(chunk)
    return web.json_response({"bytes": count})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if not 200 <= code <= 599:
        raise web.HTTPBadRequest(text="status must be 200..599")
    return web.Response(status=code)


async def hang(request: web.Request) -> web.Response:
    await asyncio.Event().wait()  # never set: the client's timeout must end this
    raise AssertionError("unreachable")


def make_app() -> web.Application:
    # client_max_size only limits request.read()/post(); the streaming upload handler is not capped.
    app = web.Application()
    app.router.add_get("/blob", blob)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get(r"/status/{code:\d{3}}", status)
    app.router.add_get("/hang", hang)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default=None, help="address to bind (default: every address, IPv4 and IPv6)")
    args = parser.parse_args()
    # No access log: a request per test would be noise, and a full pipe would stall the server.
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None,
                handle_signals=True, shutdown_timeout=1)


if __name__ == "__main__":
    main()
