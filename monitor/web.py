"""The HTTP edge: ``/metrics``, ``/-/healthy``, ``/-/ready`` and a small index page.

It only reads: the exposition comes ready-made from :class:`~monitor.metrics.MetricsSink`, so a
scrape costs a write of cached bytes and never waits for, or delays, probing. A scraper that sends
``Accept-Encoding: gzip`` (Prometheus does) gets the body gzipped, compressed once per change.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from aiohttp import web

from monitor import __version__
from monitor.errors import StartupError
from monitor.listen import parse_listen
from monitor.metrics import MetricsSink

EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WRITE_BYTES = 256 * 1024  # per write: the transport buffers at most about this much per scraper


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (``gzip``, ``gzip;q=0.5``, ``*``; not ``q=0``)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return True
    return False


def build_app(metrics: MetricsSink, is_ready: Callable[[], bool]) -> web.Application:
    """The routes; ``is_ready`` is asked at each /-/ready so start-up and shutdown answer 503."""

    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": EXPOSITION_CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            chunks = await metrics.gzip_exposition()  # compressed once per change, not per scrape
            headers["Content-Encoding"] = "gzip"
        else:
            chunks = metrics.exposition()
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(chunk) for chunk in chunks)
        await response.prepare(request)
        for chunk in chunks:
            view = memoryview(chunk)  # slices, not copies: a 40 MB body is never buffered whole per scraper
            for start in range(0, len(view), WRITE_BYTES):
                await response.write(view[start:start + WRITE_BYTES])
        await response.write_eof()
        return response

    async def healthy(_request: web.Request) -> web.Response:
        return web.Response(text="connmon is Healthy.\n")

    async def ready(_request: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="connmon is Ready.\n")
        return web.Response(status=503, text="connmon is not ready (starting or stopping).\n")

    async def index(_request: web.Request) -> web.Response:
        links = "".join(f'<li><a href="{p}">{html.escape(p)}</a></li>' for p in ("/metrics", "/-/healthy", "/-/ready"))
        return web.Response(content_type="text/html",
                            text=f"<!doctype html><title>connmon</title><h1>connmon {__version__}</h1><ul>{links}</ul>")

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/", index)
    return app


async def start_server(app: web.Application, listen: str) -> web.AppRunner:
    """Bind and serve ``app``; a port in use or a bad address is a start-up error that says so."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {listen}: {err.strerror or err}") from None
    return runner
