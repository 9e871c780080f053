"""The read-only JSON API for other systems (issue 11): ``/api/v1/...`` on the daemon's web server.

Routes (every one described in ``monitor/web/openapi.yaml``, served at ``/api/v1/openapi.yaml``):

* ``GET /api/v1/sites``: every site of this instance's config (its shard) with its current
  state, from :class:`~monitor.web.site_state.SiteStateSink`;
* ``GET /api/v1/sites/{name}``: one site, plus its recent history read from the history store;
* ``GET /api/v1/summary``: the compliance report's figures (:func:`monitor.report.compliance.build_report`)
  for a period, serialized by :func:`report_to_json`, the one place a report becomes JSON.

Conventions: numbers in base units (seconds, bits per second, ratios 0..1), times as Unix seconds
(UTC by definition), dates as ``YYYY-MM-DD``. Errors are ``{"error": ..., "parameter": ...}``
with 400 (a malformed query value), 404 (no such site) or 503 (no history is kept, or it cannot be
read). A history the daemon's writer has not created yet (the first moments after start-up) is
read as an empty one: the summary answers from the first request, with zero counts and nulls.
The history is read in a worker thread with a read connection of its own, so the event loop
(probing, /metrics) never waits on the disk. Auth and TLS are the web server's, as for /metrics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from monitor.config import Config
from monitor.config.calendar import SchoolCalendar
from monitor.config.windows import MaintenanceWindows
from monitor.history.store import EmptyHistory, EndpointRecord, HistoryNotCreated, HistoryStore, StoredCycle, StoredTest
from monitor.report.compliance import GroupSummary, Period, Report, SiteRow, build_report
from monitor.report.gaps import Downtime
from monitor.report.kpis import DEFAULT_THRESHOLDS, Thresholds, maintenance_of
from monitor.report.school_hours import calendars_of
from monitor.text import text_fault
from monitor.web.answers import error_response, json_response, json_text_response
from monitor.web.site_state import SiteStateSink

log = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")
HISTORY_ICMP_SECONDS = 24 * 3600.0  # a site's page shows the last day of ICMP cycles
HISTORY_TESTS = 20  # and its last this many throughput tests
HISTORY_TESTS_SECONDS = 90 * 24 * 3600.0  # looked for this far back
SITES_PER_SLICE = 1_000  # /api/v1/sites is built this many sites at a time, letting other loop work run between
MAX_LABEL_LENGTH = 200  # a kind or district longer than this is malformed, not merely unknown
MAX_TIMEZONE_LENGTH = 200  # IANA names are far shorter; a longer one is malformed
# The summary's dates (openapi.yaml states the same pattern): YYYY-MM-DD in the years 1970 to 2999. Beyond them a
# period (and the equally long one before it, which the KPIs compare with) leaves what Unix time and the stores
# can count in; such a query is malformed (400), not a failure to read the history (503).
DATE_PATTERN = "^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
FIRST_DATE, LAST_DATE = dt.date(1970, 1, 1), dt.date(2999, 12, 31)
_DATE = re.compile(DATE_PATTERN)
NO_HISTORY = "this daemon keeps no history (started with --no-history): there are no report figures to give"


class QueryError(ValueError):
    """A malformed query value: answered 400 naming the parameter."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class SummaryQuery:
    period: Period
    kind: str | None
    district: str | None


def _label(query: dict[str, str], name: str) -> str | None:
    """A kind or district: as clean as the names it is compared with (:data:`monitor.text.NAME_PATTERN`)."""
    value = query.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_LABEL_LENGTH:
        raise QueryError(name, f"{name}: must be a non-empty label of at most {MAX_LABEL_LENGTH} characters")
    fault = text_fault(value)
    if fault is not None:
        raise QueryError(name, f"{name}: {fault}")
    return value


def _date(query: dict[str, str], name: str) -> dt.date | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return dt.datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise QueryError(name, f"{name}: {value!r} is not a date from {FIRST_DATE} to {LAST_DATE} "
                               "(YYYY-MM-DD)") from None


def parse_summary_query(query: dict[str, str], default_timezone: str, now: float) -> SummaryQuery:
    """The summary's parameters; the period defaults to the current calendar month up to today.

    ``from`` alone runs to today (or to ``from``, when it is later); ``to`` alone starts on the first day
    of its month, so a period given by one end is never reversed.

    Raises:
        QueryError: a malformed value, an unknown time zone or ``from`` after ``to``.
    """
    unknown = sorted(set(query) - {"kind", "district", "from", "to", "timezone"})
    if unknown:
        raise QueryError(unknown[0], f"{unknown[0]}: unknown parameter (kind, district, from, to, timezone)")
    zone = query.get("timezone", default_timezone)
    try:
        if not 0 < len(zone) <= MAX_TIMEZONE_LENGTH:
            raise ValueError(zone)
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a key the file system cannot even look up
        raise QueryError("timezone", f"timezone: {zone!r} is not a time zone name (e.g. UTC, Asia/Almaty)") from None
    today = dt.datetime.fromtimestamp(now, ZoneInfo(zone)).date()
    given_last = _date(query, "to")
    first = _date(query, "from") or (given_last or today).replace(day=1)  # to's month, or this one
    last = given_last or max(today, first)
    if first > last:
        raise QueryError("from", f"from: {first} is after to: {last}")
    return SummaryQuery(Period(first, last, zone), _label(query, "kind"), _label(query, "district"))


def _summary_json(summary: GroupSummary) -> dict[str, Any]:
    return {
        "kind": summary.kind, "district": summary.district, "sites": summary.sites, "met": summary.met,
        "never": summary.never, "partly": summary.partly, "untested": summary.untested, "no_data": summary.no_data,
        "availability_ratio": summary.availability,
        "targets_bits_per_second": list(summary.targets_bits_per_second),
        "download_median_bits_per_second": summary.download_median_bits_per_second,
        "sentence": summary.sentence(),
        **_downtime_json(summary.downtime),
        # issue 22: only when the config declares a calendar (the report's school-hours columns)
        **({"availability_school_hours_ratio": summary.school.availability} if summary.school is not None else {}),
    }


def _downtime_json(d: Downtime) -> dict[str, Any]:
    """The silent time by cause (issue 21, :mod:`monitor.report.gaps`): site and upstream count against availability."""
    return {"site_down_seconds": d.site_seconds, "upstream_down_seconds": dict(d.upstream_seconds),
            "monitor_cut_off_seconds": d.monitor_cut_off_seconds, "power_off_seconds": d.power_seconds,
            "maintenance_seconds": d.maintenance_seconds}


def _row_json(row: SiteRow) -> dict[str, Any]:
    return {
        "name": row.name, "kind": row.kind, "district": row.district, "link": row.link,
        "target_bits_per_second": row.target_bits_per_second, "cycles": row.cycles, "cycles_up": row.cycles_up,
        "availability_ratio": row.availability, "cycles_missing": row.cycles_missing,
        "power_off_seconds": row.power_off_seconds, "monitor_cut_off_seconds": row.monitor_cut_off_seconds,
        "site_down_seconds": row.site_down_seconds, "upstream_down_seconds": dict(row.upstream_down_seconds),
        "maintenance_seconds": row.maintenance_seconds,
        **({"cycles_school_hours": row.school.cycles, "cycles_up_school_hours": row.school.cycles_up,
            "availability_school_hours_ratio": row.school.availability} if row.school is not None else {}),
        "echoes": row.echoes, "replies": row.replies,
        "loss_ratio": row.loss, "rtt_median_seconds": row.rtt_median_seconds, "rtt_p95_seconds": row.rtt_p95_seconds,
        "tests": row.tests, "tests_met": row.tests_met, "tests_failed": row.tests_failed,
        "met_ratio": row.met_share, "download_median_bits_per_second": row.download_median_bits_per_second,
        "download_min_bits_per_second": row.download_min_bits_per_second, "verdict": row.verdict,
    }


def report_to_json(report: Report) -> dict[str, Any]:
    """The one serialization of a :class:`~monitor.report.compliance.Report` (later report fields are added here)."""
    # Imported here: the renderers bring jinja2 and tabulate, ~4 MB resident that a daemon whose
    # API is never asked for a summary need not hold (issue 9: memory at 10,000 sites).
    from monitor.report.sections import kpis_json, rollout_json, upstreams_json

    return {
        "period": {"from": report.period.first.isoformat(), "to": report.period.last.isoformat(),
                   "timezone": report.period.timezone, "start": report.period.start, "end": report.period.end},
        "kind": report.kind,
        "district": report.district,
        "generated_at": report.generated_at,
        "site_count": len(report.sites),
        "by_kind": [_summary_json(s) for s in report.by_kind],
        "by_district": [_summary_json(s) for s in report.by_district],
        "sites": [_row_json(r) for r in report.sites],
        "kpis": None if report.kpis is None else kpis_json(report.kpis),
        # as in the report: null when no site uses the roll-out keys (status, planned_date)
        "rollout": None if report.rollout is None else rollout_json(report.rollout),
        # the upstream nodes' section (issue 21): null when the history has no upstream node
        "upstreams": upstreams_json(report.upstreams) if report.upstreams else None,
    }


def _cycle_json(cycle: StoredCycle) -> dict[str, Any]:
    replies = [r for r in cycle.rtts_seconds if r is not None]
    return {"started_at": cycle.started_at, "sent": cycle.sent, "received": len(replies),
            "loss_ratio": 1.0 - len(replies) / cycle.attempted if cycle.attempted and cycle.sent else 1.0,
            "rtt_avg_seconds": sum(replies) / len(replies) if replies else None, "error": cycle.error}


def _test_json(test: StoredTest) -> dict[str, Any]:
    return {"started_at": test.started_at, "ended_at": test.ended_at, "method": test.method,
            "download_bits_per_second": test.direction_rate("download"),
            "upload_bits_per_second": test.direction_rate("upload"),
            "target_bits_per_second": test.target_bits_per_second,
            "target_upload_bits_per_second": test.target_upload_bits_per_second,
            "target_met": test.target_met, "error": test.error,
            # issue 20: the worst direction's added latency under load, and the verdict with the limit of then
            "added_latency_seconds": test.max_added_latency_measured_seconds,
            "latency_under_load_ok": test.latency_under_load_ok}


class SiteApi:
    """The API's handlers over the current state and a way to open a read connection to the history.

    Args:
        state: the current-state sink of the daemon's pipeline.
        open_reader: opens a read connection to the history (called in a worker thread; closed
            there after each request), or None when the daemon keeps no history.
        default_timezone: the summary's days are in this zone unless ``timezone=`` is given or the
            config sets ``monitor.timezone`` (issue 22).
        clock: now, as Unix time.
    """

    def __init__(self, state: SiteStateSink, open_reader: Callable[[], HistoryStore] | None,
                 default_timezone: str = "UTC", clock: Callable[[], float] = time.time) -> None:
        self.state = state
        # The config's maintenance windows and thresholds for the summary's KPIs; the daemon sets
        # them at start and at every reload (``set_report_settings``).
        self.maintenance: Mapping[str, MaintenanceWindows] = {}
        self.thresholds = DEFAULT_THRESHOLDS
        self.region_timezone: str | None = None  # monitor.timezone (issue 22): before the machine's zone
        self.calendars: Mapping[str, SchoolCalendar] | None = None  # school calendars, when the config has some
        self.open_reader = open_reader
        self.default_timezone = default_timezone
        self.clock = clock

    def set_report_settings(self, config: Config) -> None:
        """Take the KPIs' maintenance windows and live/at-risk/dropped thresholds from ``config``.

        And (issue 22) the region's zone, the summary's default unless ``timezone=`` is given, and the
        school calendars, when the config declares some, for availability in school hours.
        """
        self.maintenance = maintenance_of(config)
        self.thresholds = Thresholds(config.report.at_risk_days, config.report.dropped_days)
        self.region_timezone = config.monitor.timezone
        self.calendars = calendars_of(config) if config.calendars else None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/sites", self.sites)
        app.router.add_get("/api/v1/sites/{name}", self.site)
        app.router.add_get("/api/v1/summary", self.summary)
        app.router.add_get("/api/v1/openapi.yaml", self.openapi)

    async def sites(self, _request: web.Request) -> web.Response:
        """Every site: built in slices on the loop (the sink's dicts are only touched there), dumped in a thread.

        At 10,000 sites a slice takes about 5 ms and the dump about 70 ms (tests/test_api.py prints them).
        """
        generated_at = self.clock()
        targets = list(self.state.targets.values())  # a reload during the slices does not change this answer
        sites: list[dict[str, Any]] = []
        for start in range(0, len(targets), SITES_PER_SLICE):
            if start:
                await asyncio.sleep(0)
            sites.extend(self.state.sites(targets[start:start + SITES_PER_SLICE]))
        data = {"generated_at": generated_at, "sites": sites}  # fresh objects: safe to dump in a thread
        text = await asyncio.to_thread(json.dumps, data, ensure_ascii=False, allow_nan=False)
        return json_text_response(text)

    async def site(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        current = self.state.site(name)
        if current is None:
            return error_response(404, f"no site named {name!r} in this instance's config", "name")
        if self.open_reader is None:
            return json_response({**current, "history": None})
        now = self.clock()
        try:
            history = await asyncio.to_thread(self._history, name, now)
        except Exception as err:  # any backend's failure: the API says so, the daemon goes on
            log.warning("api: cannot read the history of %s: %s", name, err)
            return error_response(503, f"cannot read the history: {err}")
        return json_response({**current, "history": history})

    def _history(self, name: str, now: float) -> dict[str, Any]:
        store = self._open()
        try:
            cycles = [_cycle_json(c) for c in store.icmp_cycles(name, now - HISTORY_ICMP_SECONDS, now + 1)]
            tests = store.throughput_tests(name, now - HISTORY_TESTS_SECONDS, now + 1)[-HISTORY_TESTS:]
            return {"icmp_since": now - HISTORY_ICMP_SECONDS, "icmp_cycles": cycles,
                    "throughput_tests": [_test_json(t) for t in tests]}
        finally:
            store.close()

    def _open(self) -> HistoryStore:
        if self.open_reader is None:
            raise RuntimeError(NO_HISTORY)
        try:
            return self.open_reader()
        except HistoryNotCreated:  # the writer creates it at its first write: until then nothing is recorded
            return EmptyHistory()

    async def summary(self, request: web.Request) -> web.Response:
        now = self.clock()
        try:
            query = parse_summary_query(dict(request.query), self.region_timezone or self.default_timezone, now)
        except QueryError as err:
            return error_response(400, str(err), err.parameter)
        if self.open_reader is None:
            return error_response(503, NO_HISTORY)
        configured = [EndpointRecord.of(t) for t in self.state.targets.values()]
        try:
            data = await asyncio.to_thread(self._report, query, configured, now)
        except Exception as err:
            log.warning("api: cannot build the summary: %s", err)
            return error_response(503, f"cannot read the history: {err}")
        return json_response(data)

    def _report(self, query: SummaryQuery, configured: list[EndpointRecord], now: float) -> dict[str, Any]:
        store = self._open()
        try:
            return report_to_json(build_report(store, query.period, kind=query.kind, district=query.district,
                                               configured=configured, now=now, maintenance=self.maintenance,
                                               thresholds=self.thresholds, calendars=self.calendars))
        finally:
            store.close()

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(content_type="application/yaml", text=OPENAPI_PATH.read_text(encoding="utf-8"))
