"""The HTTP edge: ``/metrics``, ``/-/healthy``, ``/-/ready``, ``/-/reload``, the JSON API and an index page.

It only reads: the exposition comes ready-made from :class:`~monitor.exposition.sink.MetricsSink`, so a
scrape costs a write of cached bytes and never waits for, or delays, probing.

As Prometheus does (issue 7): ``POST``/``PUT /-/reload`` runs the daemon's one reload coroutine and
answers 200, or 500 with the errors; without ``--web.enable-lifecycle`` it answers 403, and other
methods 405. With a web config (:mod:`monitor.web.config`) every route, health checks included,
asks for basic auth (401 with ``WWW-Authenticate: Basic``) and the server speaks only TLS.
A scraper that sends ``Accept-Encoding: gzip`` (Prometheus does) gets the body gzipped,
compressed once per change (issue 9).
Every answered request is a line of the access log (:mod:`monitor.web.access_log`, issue 22),
naming the basic-auth user it was let in as; failed logins are counted.
"""

from __future__ import annotations

import html
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily

from monitor import __version__
from monitor.errors import StartupError
from monitor.reload import ReloadOutcome
from monitor.text import printable
from monitor.web.access_log import ACCESS_USER, AccessLogger, ensure_configured
from monitor.web.access_log import log as access_log
from monitor.web.config import BasicAuth
from monitor.web.listen import parse_listen

EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SHUTDOWN_TIMEOUT_SECONDS = 1.0  # requests still running at shutdown get this long (issue 7: exit within 10 s)
WRITE_BYTES = 256 * 1024  # per write: the transport buffers at most about this much per scraper
JUNK_LOG_EVERY_SECONDS = 60.0

class MalformedRequestLog(logging.Filter):
    """Protocol junk is one quiet line: aiohttp logs every malformed request as an ERROR with a traceback.

    Any client could write tracebacks into the log at will (issue 24: a NUL byte in a header).
    This filter on aiohttp's server logger counts such requests
    (``connmon_http_malformed_requests_total``) and lets one WARNING a minute through, one line,
    without a traceback; the request itself is answered 400 by aiohttp. Errors raised by a
    handler (a bug) keep their traceback.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._last = -JUNK_LOG_EVERY_SECONDS
        self._unsaid = 0
        self.count = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        """The count, for the scrape-time registry (a plain counter: no ``_created`` series)."""
        yield CounterMetricFamily("connmon_http_malformed_requests",
                                  "Requests the web server answered 400 because they were not valid HTTP "
                                  "(bad headers, NUL bytes, absurd Content-Length, ...).", value=self.count)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        self.count += 1
        self._unsaid += 1
        now = self._clock()
        if now - self._last < JUNK_LOG_EVERY_SECONDS:
            return False
        self._last, count, self._unsaid = now, self._unsaid, 0
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.msg = "malformed HTTP request from %s answered 400: %s (%d since the last such line; " \
                     "connmon_http_malformed_requests_total)"
        record.args = (printable(str(remote)), printable(str(error.message or error))[:200], count)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_JUNK_FILTER = MalformedRequestLog()
REGISTRY.register(_JUNK_FILTER)


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


def write_pieces(chunks: Iterable[bytes]) -> Iterator[bytes | memoryview]:
    """The body in pieces of about :data:`WRITE_BYTES`: small chunks joined, large ones sliced.

    A plain body is ~1,000 chunks (families × pages); a write each cost a scrape ~20 ms of
    event-loop time in per-write overhead (issue 9). Slices of a large chunk are views, not
    copies, so a 40 MB body is never buffered whole per scraper.
    """
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        if len(chunk) >= WRITE_BYTES:
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            view = memoryview(chunk)
            for start in range(0, len(view), WRITE_BYTES):
                yield view[start:start + WRITE_BYTES]
            continue
        pending.append(chunk)
        size += len(chunk)
        if size >= WRITE_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


class RouteSet(Protocol):
    """Routes the daemon hands the server: the site API, the agents' API. The server knows no more of them."""

    def add_routes(self, app: web.Application) -> None: ...


class Exposition(Protocol):
    """The /metrics body, ready-made: cached chunks, plain or gzipped."""

    async def plain_exposition(self) -> Sequence[bytes]: ...

    async def gzip_exposition(self) -> Sequence[bytes]: ...


def build_app(metrics: Exposition, is_ready: Callable[[], bool],
              reload: Callable[[], Awaitable[ReloadOutcome]] | None = None,
              auth: BasicAuth | None = None, routes: Sequence[RouteSet] = (),
              self_authenticated: Sequence[str] = ()) -> web.Application:
    """The routes.

    Args:
        metrics: serves the exposition.
        is_ready: asked at each /-/ready so start-up and shutdown answer 503.
        reload: the daemon's reload coroutine when ``--web.enable-lifecycle`` is given, else None
            (``/-/reload`` then answers 403).
        auth: basic-auth users from the web config, or None for none (it guards every route, the API's too).
        routes: further route sets: the JSON API (``/api/v1/...``), the site agents' routes (issue 10).
        self_authenticated: path prefixes of routes that check their own credentials instead of basic
            auth (the agents' routes take each site's bearer token).
    """

    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": EXPOSITION_CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            chunks = await metrics.gzip_exposition()  # compressed once per change, not per scrape
            headers["Content-Encoding"] = "gzip"
        else:
            chunks = await metrics.plain_exposition()  # inflated once per change, not per scrape
        response = web.StreamResponse(headers=headers)
        response.content_length = sum(len(chunk) for chunk in chunks)
        await response.prepare(request)
        for piece in write_pieces(chunks):
            await response.write(piece)
        await response.write_eof()
        return response

    async def healthy(_request: web.Request) -> web.Response:
        return web.Response(text="connmon is Healthy.\n")

    async def ready(_request: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="connmon is Ready.\n")
        return web.Response(status=503, text="connmon is not ready (starting or stopping).\n")

    async def index(_request: web.Request) -> web.Response:
        paths = ("/metrics", "/-/healthy", "/-/ready", "/api/v1/sites", "/api/v1/openapi.yaml")
        links = "".join(f'<li><a href="{p}">{html.escape(p)}</a></li>' for p in paths)
        return web.Response(content_type="text/html",
                            text=f"<!doctype html><title>connmon</title><h1>connmon {__version__}</h1><ul>{links}</ul>")

    async def reload_config(_request: web.Request) -> web.Response:
        if reload is None:
            return web.Response(status=403, text="Lifecycle API is not enabled.\n")
        outcome = await reload()
        if outcome.ok:
            return web.Response(text=outcome.message + "\n")
        return web.Response(status=500, text=f"failed to reload config: {outcome.message}\n")

    middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = []
    if auth is not None:
        @web.middleware
        async def require_auth(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if _is_self_authenticated(request, self_authenticated):
                return await handler(request)
            header = request.headers.get("Authorization")
            if await auth.check(header):
                pair = auth.credentials(header)
                request[ACCESS_USER] = pair[0] if pair is not None else ""  # for the access log (issue 22)
                return await handler(request)
            return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "Basic"})

        middlewares.append(require_auth)

    app = web.Application(middlewares=middlewares)
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/", index)
    for route_set in routes:
        route_set.add_routes(app)
    for method in ("POST", "PUT"):
        app.router.add_route(method, "/-/reload", reload_config)
    return app


def _is_self_authenticated(request: web.Request, prefixes: Sequence[str]) -> bool:
    """Whether the route that matched (not the raw path, which ``..`` could dress up) checks its own credentials."""
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical.startswith(tuple(prefixes))


async def start_server(app: web.Application, listen: str, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Bind and serve ``app`` (over TLS when ``ssl_context`` is given).

    A port in use or a bad address is a start-up error that says so. A client that speaks plain
    HTTP to the TLS port gets its connection closed: asyncio logs failed handshakes only in debug
    mode, so such clients cannot fill the log.
    """
    host, port = parse_listen(listen)
    server_log = logging.getLogger("aiohttp.server")
    if _JUNK_FILTER not in server_log.filters:
        server_log.addFilter(_JUNK_FILTER)
    ensure_configured()
    runner = web.AppRunner(app, access_log=access_log, access_log_class=AccessLogger, handle_signals=False,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError as err:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {listen}: {err.strerror or err}") from None
    return runner
