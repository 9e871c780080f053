"""Availability in school hours and around the clock (issue 22), from a recorded history whose answers are
worked out by hand below.

The region is Europe/Berlin (``monitor.timezone``); the period is Monday 19 to Friday 30 October 2026 there,
across the end of summer time on Sunday 25 October (CEST, UTC+2, before; CET, UTC+1, after): from
18 October 22:00 UTC to 30 October 23:00 UTC, 289 hours. The calendar ``de-schools`` (the defaults'
``calendar:``) has Giga's hours, Monday to Friday 08:00-20:00, a holiday on Wednesday 21 October and a
term break from Wednesday 28 to Friday 30 October. So the school days are 19, 20, 22, 23, 26 and 27
October, 12 hourly cycles each (08:00 … 19:00 local): 72 cycles.

Every site is probed on the hour (UTC):

* a: down at 06:00 and 07:00 UTC every day, up otherwise: 24 of 289 down, **265/289** around the clock.
  In school hours: 06:00 and 07:00 UTC are 08:00 and 09:00 local in summer (4 school days: 8 down) but
  07:00 and 08:00 local in winter (2 school days: only 07:00 UTC is in school hours: 2 down): **62/72**.
  Had the calendar stayed in UTC, or on UTC+2 after the change, the answer would differ.
* b: as a, with maintenance Mon-Fri 08:00-09:00 written without a zone, so in the region's: the 08:00 local
  cycle of each of the 10 weekdays is left out (all down: 06:00 UTC in summer, 07:00 UTC in winter):
  **265/279**; in school hours the 6 school days' 08:00 cycles are left out, the 4 summer 09:00 ones are
  down: **62/66**.
* c: an agent site, always answered, with no rows at 08:00-11:00 UTC on 20 October (a power gap from
  07:30 to 11:30 UTC: the device was off) and none at 17:00-19:00 UTC on 22 October (a link gap from
  16:00 to 20:00 UTC, hourly: 3 cycles due without a row, down). Around the clock 282 rows + 3 missing:
  **282/285**. In school hours, of the 72 cycles the power gap's 4 (10:00-13:00 local) are not counted
  ("while the device is on"), and of the link gap's 3 due cycles only 19:00 local is in school hours
  (run and down): 67 rows answered, **67/68**.
* d (clinics, the group's ``calendar: always``) and e (its own ``calendar: always``: every hour of every
  day) have a's rows: in "school hours" as around the clock, **265/289**.

All sites: 1342/1431 around the clock, 721/784 in school hours; schools (a, b, c, e) 1077/1142 and
456/495.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from aiohttp import test_utils, web  # test_utils, not its Test* names: pytest would try to collect them
from openapi_core.testing import MockRequest, MockResponse

from monitor.config import load_config
from monitor.config.calendar import SchoolCalendar, parse_dates
from monitor.config.windows import parse_window
from monitor.errors import ConfigError
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import EndpointRecord
from monitor.history.store_url import opener as store_opener
from monitor.report.compliance import Period, build_report
from monitor.report.gaps import GapAccount
from monitor.report.kpis import maintenance_of
from monitor.report.render import render
from monitor.report.school_hours import SchoolHoursLedger, calendars_of
from monitor.results import Gap, Result
from monitor.targets import Target, build_targets
from monitor.web.site_api import SiteApi
from monitor.web.site_state import SiteStateSink
from tests.api_spec import SPEC
from tests.factories import icmp, write_config
from tests.netlab import child_env

GOLDEN = Path(__file__).resolve().parent / "golden"
BERLIN = "Europe/Berlin"
PERIOD = Period(dt.date(2026, 10, 19), dt.date(2026, 10, 30), BERLIN)
HOUR = 3600.0

CONFIG = """\
monitor:
  timezone: Europe/Berlin
calendars:
  de-schools:
    hours: Mon-Fri 08:00-20:00
    holidays: [2026-10-21]
    breaks: ["2026-10-28..2026-10-30"]
  always:
    hours: ["00:00-24:00"]
defaults:
  calendar: de-schools
groups:
  - name: schools
    kind: school
    district: Mitte
    endpoints:
      - {name: a, host: 192.0.2.1}
      - {name: b, host: 192.0.2.2, maintenance: {windows: ["Mon-Fri 08:00-09:00"]}}
      - {name: e, host: 192.0.2.5, calendar: always}
  - name: vsat
    kind: school
    district: Mitte
    mode: agent
    endpoints:
      - {name: c}
  - name: clinics
    kind: clinic
    district: Mitte
    calendar: always
    endpoints:
      - {name: d, host: 192.0.2.4}
"""


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()  # type: ignore[misc]


def _hours() -> list[float]:
    return [PERIOD.start + i * HOUR for i in range(289)]


def _down_at_six_and_seven(t: Target) -> list[Result]:
    return [icmp(t, at, None if dt.datetime.fromtimestamp(at, dt.UTC).hour in (6, 7) else 0.01) for at in _hours()]


def record(state: Path, targets: dict[str, Target]) -> None:
    """The history of the module's docstring."""
    rows: list[Result] = []
    for name in ("a", "b", "d", "e"):
        rows += _down_at_six_and_seven(targets[name])
    c = targets["c"]
    power, link = (utc(2026, 10, 20, 7, 30), utc(2026, 10, 20, 11, 30)), (utc(2026, 10, 22, 16), utc(2026, 10, 22, 20))
    rows += [icmp(c, at, 0.5) for at in _hours() if not (power[0] <= at < power[1] or link[0] < at < link[1])]
    gaps = [Gap(c, *power, "power", HOUR), Gap(c, *link, "link", HOUR)]
    store = SqliteStore(database_path(state))
    store.write([EndpointRecord.of(t) for t in targets.values()], rows, gaps)
    store.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    write_config(directory, CONFIG)
    record(directory, {t.name: t for t in build_targets(load_config(directory / "connmon.yaml"))})
    return directory


def test_the_calendar_cascades_and_takes_the_region_zone(tmp_path: Path) -> None:
    """defaults → group → endpoint: a, b and c follow the defaults' calendar, d its group's, e its own; a calendar
    without a timezone is in monitor.timezone, and its holidays and breaks are whole local days."""
    calendars = calendars_of(load_config(write_config(tmp_path, CONFIG)))
    assert {name: c.name for name, c in calendars.items()} == {"a": "de-schools", "b": "de-schools", "c": "de-schools",
                                                               "d": "always", "e": "always"}
    school = calendars["a"]
    assert school.timezone == BERLIN
    assert school.covers(utc(2026, 10, 23, 6)) and not school.covers(utc(2026, 10, 23, 18))  # 08:00 in, 20:00 out
    assert school.covers(utc(2026, 10, 26, 7)) and not school.covers(utc(2026, 10, 26, 6))  # 08:00 in, 07:00 out
    assert not school.covers(utc(2026, 10, 21, 10)) and not school.covers(utc(2026, 10, 29, 10))  # holiday, break
    assert not school.covers(utc(2026, 10, 24, 10))  # a Saturday
    assert calendars["d"].covers(utc(2026, 10, 24, 3))
    bare = calendars_of(load_config(write_config(tmp_path, "groups:\n  - {name: g, endpoints: [{name: x, host: "
                                                           "192.0.2.9}]}\n", "bare.yaml")))
    assert bare["x"] == SchoolCalendar(timezone="UTC")  # no calendar named: Giga's hours, the region's zone (UTC)


def test_the_ledgers_stretches_answer_as_the_calendar_does(tmp_path: Path) -> None:
    """The ledger's precomputed stretches (a bisection per cycle, for a month of cycles per site) say "in school
    hours" exactly when the calendar does: every 7 minutes of the period, across the DST change and closed days."""
    calendars = calendars_of(load_config(write_config(tmp_path, CONFIG)))
    night = SchoolCalendar("night", (parse_window("Mon-Fri 22:00-06:00"),), ((dt.date(2026, 10, 22),) * 2,), BERLIN)
    for calendar in (calendars["a"], calendars["d"], night):
        ledger = SchoolHoursLedger(GapAccount(PERIOD.start, PERIOD.end), None, calendar)
        times = [PERIOD.start + 420.0 * i for i in range(int((PERIOD.end - PERIOD.start) // 420))]
        assert [ledger.in_hours(t) for t in times] == [calendar.covers(t) for t in times], calendar.name
    assert sum(1 for t in times if ledger.in_hours(t)) > 0


def test_school_hour_availability_matches_the_recorded_history(state: Path) -> None:
    """The site table, the district summaries and the KPIs give both figures, as worked out in the module doc."""
    config = load_config(state / "connmon.yaml")
    store = SqliteStore(database_path(state), read_only=True)
    try:
        report = build_report(store, PERIOD, configured=[EndpointRecord.of(t) for t in build_targets(config)],
                              maintenance=maintenance_of(config), calendars=calendars_of(config))
        plain = build_report(store, PERIOD, maintenance=maintenance_of(config))
    finally:
        store.close()
    rows = {r.name: r for r in report.sites}
    got = {name: ((r.cycles_up, r.cycles), (r.school.cycles_up, r.school.cycles) if r.school else None)
           for name, r in rows.items()}
    assert got == {"a": ((265, 289), (62, 72)), "b": ((265, 279), (62, 66)), "c": ((282, 285), (67, 68)),
                   "d": ((265, 289), (265, 289)), "e": ((265, 289), (265, 289))}
    assert rows["c"].hours_without_power == 4.0
    assert report.school_hours and report.kpis is not None and report.kpis.school_hours
    kpis = {g.label: g.current for g in report.kpis.groups}
    assert {label: (f.cycles_up, f.cycles, f.school.cycles_up if f.school else None, f.school.cycles if f.school
                    else None) for label, f in kpis.items()} == {
        "all sites": (1342, 1431, 721, 784), "school": (1077, 1142, 456, 495), "clinic": (265, 289, 265, 289),
        "school · Mitte": (1077, 1142, 456, 495), "clinic · Mitte": (265, 289, 265, 289)}
    assert kpis["all sites"].school_availability == pytest.approx(721 / 784)
    assert kpis["all sites"].shares()["availability_school_hours"] == pytest.approx(721 / 784)
    schools = next(s for s in report.by_kind if s.kind == "school")
    assert schools.school is not None and (schools.school.cycles_up, schools.school.cycles) == (456, 495)
    assert schools.sentence().endswith("Up 94.31% of cycles, 92.12% in school hours.")
    # without calendars, nothing changes: no school-hour figure, no column
    assert not plain.school_hours and all(r.school is None for r in plain.sites)
    assert plain.kpis is not None and "availability_school_hours" not in plain.kpis.groups[0].current.shares()
    assert "school" not in render(plain, "csv").splitlines()[0]


def connmon_report(state: Path, fmt: str) -> str:
    env = child_env()
    env["TZ"] = "UTC"
    proc = subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-10-19", "--to", "2026-10-30",
                           "--state-dir", str(state), "--config", str(state / "connmon.yaml"), "--format", fmt],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_format_gives_both_figures(state: Path) -> None:
    """connmon report --config (days in monitor.timezone) shows availability in school hours in the text table,
    Markdown, HTML, CSV (golden) and JSON, beside availability around the clock, with the definition."""
    csv_text = connmon_report(state, "csv")
    assert csv_text == (GOLDEN / "school-hours-october.csv").read_text(encoding="utf-8")
    doc = json.loads(connmon_report(state, "json"))
    assert doc["period"]["timezone"] == BERLIN
    whole = doc["kpis"]["groups"][0]["current"]
    assert (whole["cycles_school_hours"], whole["cycles_up_school_hours"]) == (784, 721)
    assert whole["shares"]["availability_school_hours"] == pytest.approx(721 / 784)
    sites = {s["name"]: s for s in doc["kpis"]["sites"]}
    assert sites["b"]["availability_school_hours_ratio"] == pytest.approx(62 / 66)
    assert doc["school_hours"]["sentence"].startswith("Availability in school hours: ICMP cycles that started")
    for fmt in ("table", "markdown", "html"):
        text = connmon_report(state, fmt)
        assert "availability % school hours" in text, fmt
        assert "91.96" in text and "86.11" in text, fmt  # all sites' 721/784 (KPI section), a's 62/72
        assert "Availability in school hours: ICMP cycles that started" in text, fmt


def test_the_api_summary_gives_both_figures(state: Path) -> None:
    """/api/v1/summary with the running config's calendars: the same figures as the report, in the documented
    fields (checked against the OpenAPI document); a reload to a config without calendars drops them."""
    config = load_config(state / "connmon.yaml")
    sink = SiteStateSink()
    sink.set_targets(build_targets(config))
    api = SiteApi(sink, store_opener(None, str(state), read_only=True), clock=lambda: utc(2026, 11, 2))
    api.set_report_settings(config)
    path = "/api/v1/summary?from=2026-10-19&to=2026-10-30"

    async def get() -> dict[str, object]:
        app = web.Application()
        api.add_routes(app)
        async with test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1")) as client:
            response = await client.get(path)
            body = await response.text()
            parsed = urllib.parse.urlsplit(path)
            SPEC.validate_response(
                MockRequest("http://connmon", "get", parsed.path, args=dict(urllib.parse.parse_qsl(parsed.query))),
                MockResponse(body.encode(), status_code=response.status, content_type=response.content_type))
            assert response.status == 200, body
            doc: dict[str, object] = json.loads(body)
            return doc

    summary = asyncio.run(get())
    assert summary["period"]["timezone"] == BERLIN  # type: ignore[index]
    sites = {s["name"]: s for s in summary["sites"]}  # type: ignore[attr-defined]
    assert (sites["c"]["cycles_school_hours"], sites["c"]["cycles_up_school_hours"]) == (68, 67)
    assert sites["a"]["availability_school_hours_ratio"] == pytest.approx(62 / 72)
    schools = next(s for s in summary["by_kind"] if s["kind"] == "school")  # type: ignore[attr-defined]
    assert schools["availability_school_hours_ratio"] == pytest.approx(456 / 495)
    whole = summary["kpis"]["groups"][0]["current"]  # type: ignore[index]
    assert (whole["cycles_school_hours"], whole["cycles_up_school_hours"]) == (784, 721)
    plain_text = "monitor: {timezone: Europe/Berlin}\ngroups:\n  - {name: s, endpoints: [{name: a, host: 192.0.2.1}]}\n"
    api.set_report_settings(load_config(write_config(state, plain_text, "plain.yaml")))
    plain = asyncio.run(get())
    assert all("availability_school_hours_ratio" not in s for s in plain["sites"])  # type: ignore[attr-defined]
    assert "availability_school_hours" not in plain["kpis"]["groups"][0]["current"]["shares"]  # type: ignore[index]


def test_included_files_name_the_main_files_calendars(tmp_path: Path) -> None:
    """A district file's groups may name the calendars of the file given (and their maintenance takes its
    monitor.timezone); a calendar it does not declare is an error located in the district file."""
    main = write_config(tmp_path, "monitor: {timezone: Europe/Berlin}\n"
                                  "calendars:\n  short: {hours: Mon-Fri 08:00-13:00}\ninclude: [sites.d/*.yaml]\n")
    (tmp_path / "sites.d").mkdir()
    write_config(tmp_path / "sites.d", "groups:\n  - name: g\n    calendar: short\n"
                                       "    maintenance: {windows: [\"Sun 02:00-04:00\"]}\n"
                                       "    endpoints: [{name: x, host: 192.0.2.1}]\n", "mitte.yaml")
    config = load_config(main)
    assert calendars_of(config)["x"].name == "short" and maintenance_of(config)["x"].timezone == BERLIN
    district = write_config(tmp_path / "sites.d", "groups:\n  - name: h\n    calendar: long\n"
                                                  "    endpoints: [{name: y, host: 192.0.2.2}]\n", "nord.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert str(caught.value).splitlines() == [
        f"{district}:3:15: groups[0].calendar: unknown calendar 'long' (the calendars are: short)"]


def test_calendar_errors_are_located(tmp_path: Path) -> None:
    """A bad stretch, a range that ends before it starts, an unknown zone and a calendar: naming no declared
    calendar are each reported with file, line, column and key path."""
    bad = CONFIG.replace("hours: Mon-Fri 08:00-20:00", "hours: Mon-Fri 8-20").replace(
        '"2026-10-28..2026-10-30"', '"2026-10-30..2026-10-28"').replace(
        "    hours: [\"00:00-24:00\"]", "    hours: [\"00:00-24:00\"]\n    timezone: Europe/Nowhere").replace(
        "calendar: always}", "calendar: alway}")
    path = write_config(tmp_path, bad)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).splitlines() == [
        f"{path}:5:12: calendars.de-schools.hours: 'Mon-Fri 8-20' is not a time window; write e.g. '22:00-06:00' "
        "or 'Mon-Fri 08:00-15:00'",
        f"{path}:7:14: calendars.de-schools.breaks[0]: '2026-10-30..2026-10-28': the range ends before it starts",
        f"{path}:10:15: calendars.always.timezone: unknown time zone 'Europe/Nowhere'; use an IANA name such as "
        "Asia/Almaty or UTC",
        f"{path}:20:46: groups[0].endpoints[2].calendar: unknown calendar 'alway' (the calendars are: always, "
        "de-schools)"]


def test_parse_dates() -> None:
    """A holiday is one date or a range FIRST..LAST, both days included."""
    assert parse_dates("2026-12-16") == (dt.date(2026, 12, 16), dt.date(2026, 12, 16))
    assert parse_dates(" 2026-12-29 .. 2027-01-10 ") == (dt.date(2026, 12, 29), dt.date(2027, 1, 10))
    for text in ("2026-13-01", "29.12.2026", "2026-12-29..", "2026-12-30..2026-12-29"):
        with pytest.raises(ValueError):
            parse_dates(text)
