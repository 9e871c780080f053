"""Maintenance windows through the API (issue 21): ``/api/v1/maintenance`` on the daemon's web server.

Routes (described in ``monitor/web/openapi.yaml``):

* ``GET /api/v1/maintenance``: the run-time windows open now or to come, and every site a window
  (declared or run-time) holds in maintenance now;
* ``POST /api/v1/maintenance``: open a window on a site or an upstream node (201 with the window
  and its id);
* ``DELETE /api/v1/maintenance/{id}``: close a window early (or cancel one not begun).

Writes are an operator's act, so, as ``POST /-/reload`` needs ``--web.enable-lifecycle``, they need
``connmon run --web.enable-admin-api`` (403 without), and with a web config's basic auth they are
behind it like every route. A window is stored in the history store before it applies (a restart
keeps it: the restore reads it back into the :class:`~monitor.maintenance.MaintenanceBook`); a
store that cannot take it is a 503 and nothing changes; a daemon without history (``--no-history``)
answers 503 to writes. The store is written in a worker thread, with a connection of its own, so
the event loop never waits on the disk or the database.

The body is read whole, however it is segmented (:func:`monitor.agent.centre.bodies.read_body`), at
most :data:`MAX_BODY_BYTES`; a field that is wrong is a 400 that names it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from monitor.agent.centre.bodies import Refusal, read_body
from monitor.history.store import HistoryStore, StoredWindow
from monitor.maintenance import KINDS, MaintenanceBook
from monitor.text import printable, text_fault
from monitor.web.answers import error_response, json_response

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
BODY_IDLE_SECONDS = 30.0
BODY_TOTAL_SECONDS = 60.0
MAX_TARGET_LENGTH = 200
MAX_REASON_LENGTH = 500
MAX_WINDOW_SECONDS = 366 * 86400.0  # a school closed for the summer fits; a typo of a year does not
LAST_TIME = 32_503_680_000.0  # 3000-01-01T00:00:00Z: times are from 1970 to the end of 2999, as the API's dates
MAX_ID = 2**63 - 1
# RFC 3339 with a time zone (openapi.yaml's MaintenanceTime states the same pattern)
TIME_PATTERN = ("^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]"
                ":[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
_TIME = re.compile(TIME_PATTERN)
_ID = re.compile("^[1-9][0-9]{0,18}$")
FIELDS = ("target", "kind", "starts_at", "ends_at", "reason")
NOT_ENABLED = ("opening and closing maintenance windows through the API is not enabled "
               "(connmon run --web.enable-admin-api)")
NO_HISTORY = ("this daemon keeps no history (started with --no-history): maintenance windows opened through "
              "the API are kept there")


class FieldError(ValueError):
    """A wrong field of the body: answered 400 naming it."""

    def __init__(self, parameter: str | None, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def parse_time(value: object, name: str) -> float:
    """A time of the body: Unix seconds, or RFC 3339 text with a zone (``2026-12-06T14:00:00Z``).

    Raises:
        FieldError: neither, or outside 1970-01-01 to 2999-12-31.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FieldError(name, f"{name}: must be Unix seconds or an RFC 3339 time such as 2026-12-06T14:00:00Z")
    if isinstance(value, str):
        if not _TIME.fullmatch(value):
            raise FieldError(name, f"{name}: {printable(value[:40])!r} is not an RFC 3339 time with a zone "
                                   "(e.g. 2026-12-06T14:00:00Z or 2026-12-06T19:00:00+05:00)")
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise FieldError(name, f"{name}: {value!r} is not a day that exists") from None
    # an integer too large for a float (10**400) is out of range, not an OverflowError in isfinite
    if not 0 <= value < LAST_TIME or not math.isfinite(value):
        raise FieldError(name, f"{name}: Unix seconds from 0 to {LAST_TIME:.0f} (the year 3000)")
    return float(value)


def parse_request(body: object, now: float) -> tuple[str, str, float, float, str]:
    """The window a ``POST`` asks for: (target, kind, starts_at, ends_at, reason).

    Raises:
        FieldError: naming the field (``None``: the body as a whole).
    """
    if not isinstance(body, dict):
        raise FieldError(None, "the body must be a JSON object: {\"target\", \"kind\", \"starts_at\", \"ends_at\", "
                               "\"reason\"}")
    unknown = [key for key in body if key not in FIELDS]
    if unknown:
        raise FieldError(unknown[0], f"{printable(unknown[0][:40])}: unknown field ({', '.join(FIELDS)})")
    for name in ("target", "ends_at", "reason"):
        if name not in body:
            raise FieldError(name, f"{name}: is required")
    target = body["target"]
    if not isinstance(target, str) or not 0 < len(target) <= MAX_TARGET_LENGTH:
        raise FieldError("target", f"target: a site's or upstream node's name of 1 to {MAX_TARGET_LENGTH} characters")
    fault = text_fault(target)
    if fault is not None:
        raise FieldError("target", f"target: {fault}")
    kind = body.get("kind", "site")
    if kind not in KINDS:
        raise FieldError("kind", f"kind: one of {', '.join(KINDS)}")
    reason = body["reason"]
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_LENGTH:
        raise FieldError("reason", f"reason: text of 1 to {MAX_REASON_LENGTH} characters (why, who to ask)")
    fault = text_fault(reason, free_text=True)
    if fault is not None:
        raise FieldError("reason", f"reason: {fault}")
    starts_at = parse_time(body["starts_at"], "starts_at") if "starts_at" in body else now
    ends_at = parse_time(body["ends_at"], "ends_at")
    if ends_at <= starts_at:
        raise FieldError("ends_at", "ends_at: must be after starts_at")
    if ends_at <= now:
        raise FieldError("ends_at", "ends_at: is past already; a window must end in the future")
    if ends_at - starts_at > MAX_WINDOW_SECONDS:
        raise FieldError("ends_at", f"ends_at: a window lasts at most {MAX_WINDOW_SECONDS / 86400:g} days")
    return target, kind, starts_at, ends_at, reason


def window_json(window: StoredWindow, now: float) -> dict[str, Any]:
    """The one JSON shape of a run-time window (openapi.yaml's ``MaintenanceWindow``)."""
    return {"id": window.id, "target": window.target, "kind": window.kind, "starts_at": window.starts_at,
            "ends_at": window.ends_at, "reason": window.reason, "opened_at": window.opened_at,
            "closed_at": window.closed_at, "open": window.covers(now)}


class MaintenanceApi:
    """The maintenance routes over the daemon's book and a way to open a writing connection to the history.

    Args:
        book: the daemon's maintenance book (its windows apply at once, to every part that asks it).
        open_store: opens a connection to the history store that may write (called in a worker
            thread, closed there after each request), or None when the daemon keeps no history.
        writes_enabled: ``--web.enable-admin-api``; without, writes answer 403.
        clock: now, as Unix time.
    """

    def __init__(self, book: MaintenanceBook, open_store: Callable[[], HistoryStore] | None, *,
                 writes_enabled: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.book = book
        self.open_store = open_store
        self.writes_enabled = writes_enabled
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/maintenance", self.list_windows)
        app.router.add_post("/api/v1/maintenance", self.open_window)
        app.router.add_delete("/api/v1/maintenance/{id}", self.close_window)

    async def list_windows(self, _request: web.Request) -> web.Response:
        now = self.clock()
        held = self.book.open_now(now)
        return json_response({
            "generated_at": now,
            "windows": [window_json(w, now) for w in self.book.windows(now)],
            "sites_in_maintenance": [{"site": site, "window": window} for site, window in held.items()],
        })

    def _refusal(self, request: web.Request) -> web.Response | None:
        """403 or 503 when writes cannot be taken at all (the body is then left unread, the connection closed)."""
        if not self.writes_enabled:
            response = error_response(403, NOT_ENABLED)
        elif self.open_store is None:
            response = error_response(503, NO_HISTORY)
        else:
            return None
        if request.body_exists:
            response.force_close()
        return response

    async def open_window(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        if request.content_type != "application/json" or (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            response = error_response(415, "the body must be JSON in UTF-8 (Content-Type: application/json)")
            response.force_close()
            return response
        try:
            raw = await read_body(request, MAX_BODY_BYTES, BODY_IDLE_SECONDS, BODY_TOTAL_SECONDS)
        except Refusal as refusal:  # 413, 408 or 400, the connection to be closed
            response = error_response(refusal.status, refusal.message)
            response.force_close()
            return response
        now = self.clock()
        try:
            body = _json(raw)
            target, kind, starts_at, ends_at, reason = parse_request(body, now)
        except FieldError as err:
            return error_response(400, str(err), err.parameter)
        if not self.book.knows(kind, target):
            what = "site" if kind == "site" else "upstream node"
            return error_response(404, f"target: no {what} named {printable(target)!r} in this instance's config",
                                  "target")
        try:
            window = await asyncio.to_thread(self._store, lambda store: store.open_maintenance(
                target, kind, starts_at, ends_at, reason, now))
        except Exception as err:  # any backend's failure: nothing opened, and the operator is told
            log.warning("api: cannot store a maintenance window: %s", printable(str(err)))
            return error_response(503, f"cannot store the window in the history: {printable(str(err))}")
        assert window is not None
        self.book.opened(window)
        response = json_response(window_json(window, self.clock()), 201)
        response.headers["Location"] = f"/api/v1/maintenance/{window.id}"
        return response

    async def close_window(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        text = request.match_info["id"]
        if not _ID.fullmatch(text) or int(text) > MAX_ID:
            return error_response(400, f"id: a window's id, a whole number from 1 to {MAX_ID}", "id")
        window_id, now = int(text), self.clock()
        try:
            window = await asyncio.to_thread(self._store, lambda store: store.close_maintenance(window_id, now))
        except Exception as err:
            log.warning("api: cannot close maintenance window %d: %s", window_id, printable(str(err)))
            return error_response(503, f"cannot close the window in the history: {printable(str(err))}")
        if window is None:
            return error_response(404, f"id: no maintenance window {window_id}", "id")
        if window.closed_at == now and window.ends_at > now:  # this request closed it before its end
            self.book.closed(window)
        return json_response(window_json(window, self.clock()))

    def _store(self, act: Callable[[HistoryStore], StoredWindow | None]) -> StoredWindow | None:
        """Run ``act`` on a connection of its own (in a worker thread), then close it."""
        assert self.open_store is not None
        store = self.open_store()
        try:
            return act(store)
        finally:
            store.close()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return obj


def _json(raw: bytes) -> object:
    """The body as JSON (UTF-8, no NaN, no key twice).

    Raises:
        FieldError: it is not.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FieldError(None, f"the body is not UTF-8 (byte {err.start})") from None
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:
        raise FieldError(None, f"the body is not JSON: {printable(str(err))[:200]}") from None
