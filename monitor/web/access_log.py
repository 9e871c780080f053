"""The HTTP access log (issue 22): who read what, one line per request, in the event log's format.

``/api/v1/sites`` holds every school's name, address and coordinates, so reads of it, and failed
logins, must leave a trace. Each answered request is one line on the logger ``monitor.access``,
text or JSON as ``--log-format`` says (one line, cut here)::

    2026-12-06T16:30:00.123Z INFO method=GET path=/api/v1/sites status=200 user=alice client=10.0.0.7
    bytes=5321 seconds=0.004 access

``path`` is the path as sent with its query's values left out (``?slot=…``): a slot id or a token
there would otherwise be kept in the log. ``user`` is the basic-auth user the request was let in as,
``agent:SITE`` for an agent's request (its route sets :data:`ACCESS_USER`), and ``-`` for none.
``bytes`` counts what was sent, headers included. ``--web.access-log`` switches it: ``on`` (the
default) logs every request but Prometheus' scrapes of ``/metrics`` and the health checks
(``/-/healthy``, ``/-/ready``), which come every few seconds and would bury the reads that matter;
``all`` logs those too; ``off`` logs nothing.

A refused login (401 to a request that carried an ``Authorization`` header: a wrong password, an
unknown user or agent token) is counted whether or not lines are written::

    connmon_http_failed_logins_total 3

A 401 without credentials is a client's first knock (browsers ask that way), not a failed login.
What this leaves to others: the server (:mod:`monitor.web.server`) installs :class:`AccessLogger`
and marks the user; the command line calls :func:`configure` with the flag and the log format.
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily

from monitor.logs import JsonFormatter, TextFormatter, one_line

log = logging.getLogger("monitor.access")

ACCESS_USER = "connmon.access_user"
"""Key of the request mapping (``request[ACCESS_USER] = "alice"``) naming who the request was let in as."""

QUIET_PATHS = frozenset({"/metrics", "/-/healthy", "/-/ready"})
"""Scraped every few seconds by Prometheus and load balancers: left out unless ``--web.access-log=all``."""

_FIELDS = ("method", "path", "status", "user", "client", "bytes", "seconds")


class AccessLogMode(enum.StrEnum):
    """``--web.access-log``: which requests get a line."""

    ON = "on"  # all but scrapes and health checks
    ALL = "all"
    OFF = "off"


class FailedLogins:
    """The count of refused logins, for the scrape-time registry (a plain counter: no ``_created`` series)."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("connmon_http_failed_logins",
                                  "Requests answered 401 although they carried credentials (a wrong basic-auth "
                                  "password, an unknown user, an unknown agent token).", value=self.count)


FAILED_LOGINS = FailedLogins()
REGISTRY.register(FAILED_LOGINS)

_mode = AccessLogMode.ON


def configure(mode: AccessLogMode = AccessLogMode.ON, fmt: str = "text") -> None:
    """Send access lines to stderr in ``fmt`` (``text`` or ``json``, as ``--log-format``), or nowhere.

    The access log has its own handler and level: ``--log-level warning`` quiets the event log's
    chatter, not the record of who read what.
    """
    global _mode
    _mode = mode
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(AccessJsonFormatter() if fmt == "json" else AccessTextFormatter())
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    log.disabled = mode is AccessLogMode.OFF


def ensure_configured() -> None:
    """Configure the access log as the event log is (its format), unless :func:`configure` already did.

    For a server started without the command line (tests, an embedding program): lines still come,
    in the root handler's format.
    """
    if log.handlers:
        return
    formatters = [h.formatter for h in logging.getLogger().handlers]
    configure(_mode, "json" if any(isinstance(f, JsonFormatter) for f in formatters) else "text")


def _fields(record: logging.LogRecord) -> dict[str, Any] | None:
    fields = getattr(record, "access", None)
    return fields if isinstance(fields, dict) else None


def _quote(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return one_line(json.dumps(text, ensure_ascii=False))


class AccessTextFormatter(TextFormatter):
    """The event log's text line, the request's fields as ``key=value`` before the message."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if fields is None:
            return super().format(record)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        pairs = "".join(f" {key}={_quote(fields[key])}" for key in _FIELDS)
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname}{pairs} {one_line(record.getMessage())}"


class AccessJsonFormatter(JsonFormatter):
    """The event log's JSON object, the request's fields as keys of their own (status and bytes as numbers)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        if fields is None:
            return super().format(record)
        entry = json.loads(super().format(record))
        entry.update(fields)
        return json.dumps(entry, ensure_ascii=False)


def failed_login(request: BaseRequest, response: StreamResponse) -> bool:
    """Whether the request brought credentials and was refused for them."""
    return response.status == 401 and bool(request.headers.get("Authorization"))


def logged_path(raw_path: str) -> str:
    """The path as sent, its query's values left out: ``/api/v1/agent/download?slot=…&bytes=…``.

    A query value may be a secret: a throughput slot's id grants its transfer, a client may put a
    token there. The log keeps the names (what was asked) and never a value; a part without ``=`` is
    left out whole.
    """
    path, sep, query = raw_path.partition("?")
    if not sep:
        return path
    parts = [f"{part.partition('=')[0]}=…" if "=" in part else "…" for part in query.split("&") if part]
    return f"{path}?{'&'.join(parts)}" if parts else path


class AccessLogger(AbstractAccessLogger):
    """aiohttp's hook, called once a request is answered: counts failed logins, writes the line."""

    @property
    def enabled(self) -> bool:
        return True  # always called: failed logins are counted even with --web.access-log=off

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        refused = failed_login(request, response)
        if refused:
            FAILED_LOGINS.count += 1
        if log.disabled or (_mode is AccessLogMode.ON and request.path in QUIET_PATHS):
            return
        user = request.get(ACCESS_USER)
        fields = {"method": request.method, "path": logged_path(request.raw_path), "status": response.status,
                  "user": user if isinstance(user, str) and user else "-", "client": request.remote or "-",
                  "bytes": response.body_length, "seconds": round(time, 6)}
        level = logging.WARNING if refused or response.status >= 500 else logging.INFO
        log.log(level, "failed login" if refused else "access", extra={"access": fields})
