"""Availability of agent sites with classified gaps (issue 10), and of sites probed while the centre was cut off
itself (issue 21, the second half of the module): recorded days whose right answers are worked out below.

2026-11-10 (UTC), cycles every 10 minutes (144 marks in the day: 00:00 … 23:50):

* ``vsat-a`` (agent, interval 600 s):
  - a **power** gap 06:00–10:00: the 24 marks 06:00 … 09:50 have no row, except a stray answered row at 07:00,
    which is left out (neither up nor run). Hours without power: 4.00.
  - a **link** gap 12:00–14:00 (the last post heard at 12:00): 11 cycles were due (12:10 … 13:50); the spool
    brought 5 of them (12:10 … 12:50, unanswered), the other 6 have no row and count as run and down.
  - an **unknown** gap 20:00–21:00: 5 cycles due (20:10 … 20:50), no row: 5 down.
  - every other mark has a row (144 − 24 − 11 − 5 = 104), answered except 01:00, 01:10, 01:20, 01:30.
  → cycles 104 + 5 + 6 + 5 = 120, up 100: availability 83.3333% (without the gap rule: 101 / 110).
  Hours site down (issue 21): the 4 unanswered rows at 01:00 … 01:30 and the 5 spooled ones, 10 minutes each,
  and the 6 + 5 due cycles without a row, an interval each: 20 × 10 min = 3.3333.
* ``vsat-b`` (agent): a link gap from 23:00 to 01:00 the next day, no row in it; rows 00:00 … 23:00, all
  answered (139). Only the 5 cycles due before midnight (23:10 … 23:50) are this day's:
  → cycles 144, up 139: 96.5278%; hours site down: the 5 due cycles, 0.8333.
* ``fibre-1`` (probed from the centre, no gaps): 144 answered rows → 100%.

KPIs with a maintenance window at vsat-a 12:00–12:30 (it takes the rows 12:00, 12:10, 12:20 and the due
cycles 12:10, 12:20): vsat-a counts 103 rows outside gaps and maintenance (99 up) + 3 spooled rows + 6 missing
(9 due outside maintenance − 3 rows) + 5 unknown = 117 cycles, 99 up, 3 in maintenance.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.config.windows import MaintenanceWindows
from monitor.errors import ProbeErrorReason
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import EndpointRecord, HistoryStore, StoredGap
from monitor.report.compliance import Period, build_report
from monitor.report.gaps import Downtime, GapAccount, cut_off_seconds, due_cycles
from monitor.report.kpis import Span, compute_kpis
from monitor.report.render import render
from monitor.report.sections import UPSTREAM_SENTENCE, kpi_header
from monitor.results import Gap, Result
from monitor.upstreams import UPSTREAM_GROUP
from monitor.web.site_api import report_to_json
from tests.factories import cause_day, icmp, throughput_target
from tests.netlab import child_env
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.stores import StoreOpeners

DAY = Period(dt.date(2026, 11, 10), dt.date(2026, 11, 10), "UTC")
D = DAY.start
MINUTE = 60.0
HOUR = 3600.0
STEP = 600.0


def at(hours: int, minutes: int = 0) -> float:
    return D + hours * HOUR + minutes * MINUTE


def recorded_day() -> tuple[list[Result], list[Gap]]:
    a, b, f = throughput_target("vsat-a"), throughput_target("vsat-b"), throughput_target("fibre-1")
    marks = [D + i * STEP for i in range(144)]
    power = (at(6), at(10))
    link_due = {at(12) + k * STEP for k in range(1, 12)}
    unknown_due = {at(20) + k * STEP for k in range(1, 6)}
    down = {at(1), at(1, 10), at(1, 20), at(1, 30)}
    rows: list[Result] = []
    for t in marks:
        if power[0] <= t < power[1] or t in link_due or t in unknown_due:
            continue
        rows.append(icmp(a, t, None, None) if t in down else icmp(a, t, 0.6, 0.61))
    rows.append(icmp(a, at(7), 0.6))  # a stray row inside the power gap: left out
    rows += [icmp(a, at(12) + k * STEP, None, None) for k in range(1, 6)]  # the spool's unanswered cycles
    rows += [icmp(b, t, 0.6) for t in marks if t <= at(23)]
    rows += [icmp(b, D + 86400 + 2 * HOUR, 0.6)]  # the next day: not this report's
    rows += [icmp(f, t, 0.01) for t in marks]
    gaps = [Gap(a, *power, "power", STEP), Gap(a, at(12), at(14), "link", STEP),
            Gap(a, at(20), at(21), "unknown", STEP), Gap(b, at(23), D + 86400 + HOUR, "link", STEP)]
    return rows, gaps


@pytest.fixture
def state(tmp_path: Path) -> Path:
    store = SqliteStore(database_path(tmp_path))
    rows, gaps = recorded_day()
    store.write([], rows, gaps)
    store.close()
    return tmp_path


def test_due_cycles_follow_the_gap_start_and_split_at_the_period_border() -> None:
    gap = StoredGap("x", 1000.0, 1000.0 + 7200.0, "link", 600.0)
    assert due_cycles(gap, 0.0, 1e9) == 11  # 1600 … 7600: a cycle at the gap's end is not due in it
    assert due_cycles(gap, 0.0, 1000.0 + 3600.0) + due_cycles(gap, 1000.0 + 3600.0, 1e9) == 11  # split, not doubled
    assert due_cycles(gap, 0.0, 1000.0 + 3600.0) == 5
    assert due_cycles(StoredGap("x", 0.0, 610.0, "unknown", 600.0), 0.0, 1e9) == 1
    assert due_cycles(StoredGap("x", 0.0, 600.0, "unknown", 600.0), 0.0, 1e9) == 0


def test_availability_leaves_out_power_and_counts_link_and_unknown_gaps_as_down(state: Path) -> None:
    store = SqliteStore(database_path(state), read_only=True)
    report = build_report(store, DAY)
    rows = {r.name: r for r in report.sites}
    a, b, f = rows["vsat-a"], rows["vsat-b"], rows["fibre-1"]
    assert (a.cycles, a.cycles_up, a.cycles_missing, a.power_off_seconds) == (120, 100, 11, 4 * HOUR)
    assert a.availability == 100 / 120 and a.hours_without_power == 4.0
    assert a.downtime == Downtime(site_seconds=20 * STEP, power_seconds=4 * HOUR)  # issue 21: by cause
    assert rows["vsat-b"].downtime == Downtime(site_seconds=5 * STEP) and rows["fibre-1"].downtime == Downtime()
    assert a.echoes == 104 * 2 + 5 * 2  # the stray row in the power gap is not in the loss either
    assert (b.cycles, b.cycles_up, b.cycles_missing, b.power_off_seconds) == (144, 139, 5, 0.0)
    assert (f.cycles, f.cycles_up, f.cycles_missing, f.power_off_seconds) == (144, 144, 0, 0.0)
    assert report.power_gaps
    assert report.by_kind[0].availability == (100 + 139 + 144) / (120 + 144 + 144)
    # the next day holds the rest of vsat-b's gap: 01:00 − 23:00 = 2 h, 11 due; 5 were the 10th's, 6 are the 11th's
    nxt = {r.name: r for r in build_report(store, Period(dt.date(2026, 11, 11), dt.date(2026, 11, 11), "UTC")).sites}
    assert (nxt["vsat-b"].cycles, nxt["vsat-b"].cycles_up, nxt["vsat-b"].cycles_missing) == (7, 1, 6)


def test_kpis_leave_out_power_hours_and_maintenance_alike(state: Path) -> None:
    store = SqliteStore(database_path(state), read_only=True)
    window = MaintenanceWindows("UTC", once=((dt.datetime(2026, 11, 10, 12, 0), dt.datetime(2026, 11, 10, 12, 30)),))
    endpoints = [EndpointRecord.of(throughput_target(n)) for n in ("vsat-a", "vsat-b", "fibre-1")]
    kpis = compute_kpis(store, endpoints, Span(DAY.start, DAY.end), maintenance={"vsat-a": window})
    sites = {s.name: s for s in kpis.sites}
    a = sites["vsat-a"]
    assert (a.cycles, a.cycles_up, a.cycles_in_maintenance, a.cycles_missing) == (117, 99, 3, 11)
    assert a.power_off_seconds == 4 * HOUR
    everyone = kpis.groups[0].current
    assert (everyone.cycles, everyone.cycles_up) == (117 + 144 + 144, 99 + 139 + 144)
    assert everyone.availability == (99 + 139 + 144) / (117 + 144 + 144)
    assert everyone.power_off_seconds == 4 * HOUR and kpis.power_gaps
    plain = compute_kpis(store, endpoints, Span(DAY.start, DAY.end))  # no maintenance: the report's figures
    assert {s.name: (s.cycles, s.cycles_up) for s in plain.sites} == {
        "vsat-a": (120, 100), "vsat-b": (144, 139), "fibre-1": (144, 144)}


def test_every_format_shows_the_hours_without_power(state: Path) -> None:
    report = build_report(SqliteStore(database_path(state), read_only=True), DAY)
    table = render(report, "table")
    assert "hours without power" in table and "agent sites' hours without power are left out" in table
    line = next(ln.split() for ln in table.splitlines() if ln.startswith("vsat-a"))
    assert line[5:7] == ["83.33", "4.00"]  # availability %, then hours without power
    md = render(report, "markdown")
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| vsat-a")]
    assert cells[0][5:7] == ["83.33", "4.00"]
    html = render(report, "html")
    assert "<th>hours without power</th>" in html and "<td class=\"\">4.00</td>" in html
    sites, kpis = render(report, "csv").split("\n\n")
    by_name = {r["site"]: r for r in csv.DictReader(io.StringIO(sites))}
    assert (by_name["vsat-a"]["availability_percent"], by_name["vsat-a"]["hours_without_power"],
            by_name["vsat-a"]["cycles_missing"], by_name["vsat-a"]["cycles"]) == ("83.3333", "4.0000", "11", "120")
    assert by_name["vsat-b"]["availability_percent"] == "96.5278" and by_name["fibre-1"]["hours_without_power"] == \
        "0.0000"
    kpi_rows = list(csv.DictReader(io.StringIO(kpis)))
    assert kpi_rows[0]["kpi_scope"] == "all" and kpi_rows[0]["hours_without_power"] == "4.0000"
    doc = json.loads(render(report, "json"))
    assert doc["kpis"]["groups"][0]["current"]["power_off_seconds"] == 4 * HOUR
    assert {s["name"]: s["power_off_seconds"] for s in doc["kpis"]["sites"]} == {
        "vsat-a": 4 * HOUR, "vsat-b": 0.0, "fibre-1": 0.0}
    api = report_to_json(report)  # GET /api/v1/summary
    row = next(r for r in api["sites"] if r["name"] == "vsat-a")
    assert (row["availability_ratio"], row["power_off_seconds"], row["cycles_missing"]) == (100 / 120, 4 * HOUR, 11)


def test_no_power_column_without_power_gaps(tmp_path: Path) -> None:
    """Link gaps alone change availability but add no column: reports without power cuts keep their shape."""
    store = SqliteStore(database_path(tmp_path))
    rows, gaps = recorded_day()
    store.write([], rows, [g for g in gaps if g.cause != "power"])
    report = build_report(store, DAY)
    assert not report.power_gaps and not report.kpis.power_gaps  # type: ignore[union-attr]
    for fmt in ("table", "csv", "markdown", "html", "json"):
        text = render(report, fmt)
        assert "without power" not in text and "without_power" not in text and "power_off" not in text, fmt
    store.close()


def test_cli_report_counts_the_gaps(state: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-11-10", "--to", "2026-11-10",
                           "--timezone", "UTC", "--state-dir", str(state), "--format", "csv"], capture_output=True,
                          text=True, timeout=60, check=False, env=child_env())
    assert proc.returncode == 0, proc.stderr
    sites = proc.stdout.split("\n\n")[0]
    header, *lines = sites.splitlines()
    assert header.startswith("site,kind,district,link,target_mbps,cycles,cycles_up,availability_percent,"
                             "hours_without_power,cycles_missing,hours_site_down,rtt_median_ms,")
    assert any(ln.startswith("vsat-a,school,Aktobe,fibre,4,120,100,83.3333,4.0000,11,3.3333,") for ln in lines)


def test_gap_account_reads_only_the_span(state: Path) -> None:
    store = SqliteStore(database_path(state), read_only=True)
    account = GapAccount.of(store, "vsat-a", at(9), at(12, 30))  # half the power gap, the first half hour of link
    assert account.power_seconds == HOUR
    assert account.without_power(at(9, 50)) and not account.without_power(at(10))
    assert account.missing_cycles([at(12, 10), at(12, 20)]) == 0  # due 12:10, 12:20: both have rows
    assert account.missing_cycles([]) == 2


# ------------------------------------------------------------------------------ the monitor cut off (issue 21)
# The same day, 2026-11-10 (UTC), for three sites probed from the centre every 10 minutes:
#
# * ``centre-a``: the centre was cut off 03:00–05:00: its 12 cycles 03:00 … 04:50 have error
#   monitor_cut_off (unanswered); of the other 132, all but 01:00 and 01:10 answered.
#   → cycles 132, up 130: 98.4848%; hours monitor cut off 12 × 10 min = 2.00; hours site down 2 × 10 min = 0.3333.
# * ``centre-b``: the same cut-off, but it answered at 03:00 (a site that answers stays up): 11 cut-off
#   cycles 03:10 … 04:50, and the day ends cut off at 23:50 (no next cycle: the one before gives 10 min).
#   → cycles 132, up 132: 100%; 12 × 10 min = 2.00 hours.
# * ``centre-c``: answered 00:00 … 11:50 and 18:00 … 23:50; cut off at 12:00, then the daemon was stopped
#   until 18:00: the cycle stands for 10 minutes (the time since the one before), not 6 hours.
#   → cycles 108, up 108: 100%; 0.1667 hours.
#
# KPIs with a maintenance window at centre-a 03:00–03:30: 3 of its cut-off cycles are in maintenance,
# the other 9 are left out: cycles 132, up 130, in maintenance 3, cut off 9 × 10 min = 1.50 hours.
CUT_FROM, CUT_TO = at(3), at(5)


def cut_off_day() -> list[Result]:
    a, b, c = throughput_target("centre-a"), throughput_target("centre-b"), throughput_target("centre-c")
    marks = [D + i * STEP for i in range(144)]
    cut = ProbeErrorReason.MONITOR_CUT_OFF
    rows: list[Result] = []
    for t in marks:
        if CUT_FROM <= t < CUT_TO:
            rows.append(icmp(a, t, None, None, error=cut))
        else:
            rows.append(icmp(a, t, None, None) if t in (at(1), at(1, 10)) else icmp(a, t, 0.01, 0.02))
        if CUT_FROM < t < CUT_TO or t == at(23, 50):
            rows.append(icmp(b, t, None, None, error=cut))
        else:
            rows.append(icmp(b, t, 0.01))
        if t < at(12) or t >= at(18):
            rows.append(icmp(c, t, 0.01))
    rows.append(icmp(c, at(12), None, None, error=cut))
    return rows


@pytest.fixture
def cut_off_state(tmp_path: Path) -> Path:
    store = SqliteStore(database_path(tmp_path))
    store.write([], cut_off_day())
    store.close()
    return tmp_path


def test_cut_off_time_is_the_shorter_spacing_to_a_neighbour_and_ends_with_the_span() -> None:
    """A cut-off cycle stands for the time to its nearer neighbour; a lone one adds none; the span's end caps it."""
    assert cut_off_seconds([0.0, 600.0, 1200.0], [1], 1e9) == 600.0
    assert cut_off_seconds([0.0, 600.0, 7200.0], [1], 1e9) == 600.0  # a stopped monitor after it: not 6600
    assert cut_off_seconds([0.0, 5000.0, 5600.0], [1], 1e9) == 600.0  # a restart before it
    assert cut_off_seconds([0.0, 600.0], [0, 1], 1e9) == 1200.0  # the last one goes by the one before
    assert cut_off_seconds([0.0, 600.0], [1], 700.0) == 100.0  # not past the span's end
    assert cut_off_seconds([300.0], [0], 1e9) == 0.0  # no neighbour to go by
    assert cut_off_seconds([0.0, 600.0], [], 1e9) == 0.0


def test_availability_leaves_out_the_cycles_of_a_cut_off_monitor(cut_off_state: Path) -> None:
    """Cycles with error monitor_cut_off are neither up nor run; their time is stated per site."""
    store = SqliteStore(database_path(cut_off_state), read_only=True)
    report = build_report(store, DAY)
    rows = {r.name: r for r in report.sites}
    a, b, c = rows["centre-a"], rows["centre-b"], rows["centre-c"]
    assert (a.cycles, a.cycles_up, a.monitor_cut_off_seconds) == (132, 130, 2 * HOUR)
    assert a.availability == 130 / 132 and a.hours_monitor_cut_off == 2.0
    assert a.echoes == 132 * 2  # the cut-off cycles are not in the loss either
    assert (b.cycles, b.cycles_up, b.monitor_cut_off_seconds) == (132, 132, 2 * HOUR)
    assert (c.cycles, c.cycles_up, c.monitor_cut_off_seconds) == (108, 108, STEP)
    assert report.monitor_cut_off and not report.power_gaps
    assert report.by_kind[0].availability == (130 + 132 + 108) / (132 + 132 + 108)


def test_kpis_leave_out_the_cut_off_cycles_and_maintenance_comes_first(cut_off_state: Path) -> None:
    """A cut-off cycle inside a declared window counts as maintenance; the others are left out with their time."""
    store = SqliteStore(database_path(cut_off_state), read_only=True)
    window = MaintenanceWindows("UTC", once=((dt.datetime(2026, 11, 10, 3, 0), dt.datetime(2026, 11, 10, 3, 30)),))
    endpoints = [EndpointRecord.of(throughput_target(n)) for n in ("centre-a", "centre-b", "centre-c")]
    kpis = compute_kpis(store, endpoints, Span(DAY.start, DAY.end), maintenance={"centre-a": window})
    sites = {s.name: s for s in kpis.sites}
    a = sites["centre-a"]
    assert (a.cycles, a.cycles_up, a.cycles_in_maintenance, a.monitor_cut_off_seconds) == (132, 130, 3, 1.5 * HOUR)
    everyone = kpis.groups[0].current
    assert (everyone.cycles, everyone.cycles_up) == (132 + 132 + 108, 130 + 132 + 108)
    assert everyone.monitor_cut_off_seconds == 1.5 * HOUR + 2 * HOUR + STEP and kpis.monitor_cut_off
    assert kpis.groups[0].previous.monitor_cut_off_seconds == 0.0


def test_every_format_shows_the_hours_monitor_cut_off(cut_off_state: Path) -> None:
    report = build_report(SqliteStore(database_path(cut_off_state), read_only=True), DAY)
    table = render(report, "table")
    assert "hours monitor cut off" in table and "the hours the monitor was cut off itself are left out" in table
    line = next(ln.split() for ln in table.splitlines() if ln.startswith("centre-a"))
    assert line[5:7] == ["98.48", "2.00"]  # availability %, then hours monitor cut off
    assert "hours without power" not in table  # each column only when some site has any
    md = render(report, "markdown")
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| centre-c")]
    assert cells[0][5:7] == ["100.00", "0.17"]
    html = render(report, "html")
    assert "<th>hours monitor cut off</th>" in html and "<td class=\"\">2.00</td>" in html
    sites, kpis = render(report, "csv").split("\n\n")
    header = sites.splitlines()[0]
    assert ",availability_percent,hours_monitor_cut_off,hours_site_down,rtt_median_ms," in header
    by_name = {r["site"]: r for r in csv.DictReader(io.StringIO(sites))}
    assert (by_name["centre-a"]["availability_percent"], by_name["centre-a"]["hours_monitor_cut_off"],
            by_name["centre-a"]["hours_site_down"], by_name["centre-a"]["cycles"]) == ("98.4848", "2.0000", "0.3333",
                                                                                        "132")
    assert by_name["centre-c"]["hours_monitor_cut_off"] == "0.1667"
    kpi_rows = list(csv.DictReader(io.StringIO(kpis)))
    assert kpi_rows[0]["kpi_scope"] == "all" and kpi_rows[0]["hours_monitor_cut_off"] == "4.1667"
    assert "hours_without_power" not in kpi_rows[0]
    doc = json.loads(render(report, "json"))
    assert doc["kpis"]["groups"][0]["current"]["monitor_cut_off_seconds"] == 4 * HOUR + STEP
    assert {s["name"]: s["monitor_cut_off_seconds"] for s in doc["kpis"]["sites"]} == {
        "centre-a": 2 * HOUR, "centre-b": 2 * HOUR, "centre-c": STEP}
    assert "power_off_seconds" not in doc["kpis"]["sites"][0]
    api = report_to_json(report)  # GET /api/v1/summary
    row = next(r for r in api["sites"] if r["name"] == "centre-a")
    assert (row["availability_ratio"], row["monitor_cut_off_seconds"], row["power_off_seconds"]) == (
        130 / 132, 2 * HOUR, 0.0)


def test_power_and_cut_off_columns_side_by_side(tmp_path: Path) -> None:
    """With both, the hours without power come first, then the hours monitor cut off, after availability."""
    store = SqliteStore(database_path(tmp_path))
    rows, gaps = recorded_day()
    store.write([], rows + cut_off_day(), gaps)
    report = build_report(store, DAY)
    table = render(report, "table")
    header = next(ln for ln in table.splitlines() if ln.startswith("site "))
    assert header.index("availability %") < header.index("hours without power") < header.index(
        "hours monitor cut off") < header.index("RTT median ms")
    assert next(ln.split() for ln in table.splitlines() if ln.startswith("vsat-a"))[5:8] == ["83.33", "4.00", "0.00"]
    assert next(ln.split() for ln in table.splitlines() if ln.startswith("centre-a"))[5:8] == ["98.48", "0.00", "2.00"]
    sites = render(report, "csv").split("\n\n")[0]
    assert ",availability_percent,hours_without_power,cycles_missing,hours_monitor_cut_off,hours_site_down," \
           "rtt_median_ms," in sites.splitlines()[0]
    assert "the hours the monitor was cut off itself" in kpi_header(report.kpis)  # type: ignore[arg-type]
    store.close()


def test_no_cut_off_column_without_a_cut_off(state: Path) -> None:
    """A report without cut-off cycles keeps its shape: no column, no sentence, no JSON key but the summary row's."""
    report = build_report(SqliteStore(database_path(state), read_only=True), DAY)
    assert not report.monitor_cut_off and not report.kpis.monitor_cut_off  # type: ignore[union-attr]
    for fmt in ("table", "csv", "markdown", "html", "json"):
        text = render(report, fmt)
        assert "cut off" not in text and "cut_off" not in text, fmt
    assert all(r["monitor_cut_off_seconds"] == 0.0 for r in report_to_json(report)["sites"])


# ------------------------------------------------------------------------------ downtime by cause (issue 21)
# The same day, 2026-11-10 (UTC), cycles every 10 minutes (tests.factories.cause_day), written through the real
# store (both backends).
# Two upstream nodes, kept as endpoints of group monitor.upstreams: ``isp`` (a pop) and ``agg`` (a router
# behind it). Each site's silent cycles stand for 10 minutes each.
#
# * ``school-1`` (Aktobe, behind agg): upstream_down naming agg 02:00–03:00 (6 cycles), naming isp
#   05:00–05:30 (3), timeout 08:00 and 08:10 (2: its own), error maintenance 12:00–13:00 (6, a window opened
#   through the API), monitor_cut_off 15:00–16:00 (6); the rest answered.
#   → run 144 − 6 − 6 = 132, up 132 − 6 − 3 − 2 = 121: 91.6667%; hours: site 0.3333, upstream 1.50
#   (agg 1.00, isp 0.50), monitor cut off 1.00, maintenance 1.00.
# * ``school-2`` (Aktobe, behind agg): upstream_down naming agg 02:00–03:00 (6), lost echoes without an error
#   at 20:00 (1), silent 22:00–22:20 (3) and answered 22:30–22:50.
#   → without a config: run 144, up 134; site 4 × 10 min = 0.6667, agg 1.00.
#   → with its declared window 22:00–23:00: run 138 (the window's 6 cycles left out, answered ones too), up 131:
#     94.9275%; site 0.1667, agg 1.00, maintenance 0.50.
# * ``clinic-1`` (Khromtau, no upstream): dns at 09:00 → 143 / 144, site 0.1667.
# * ``agg``'s own cycles: silent 02:00–03:00 and 05:00–05:30 (9), monitor_cut_off 15:00–16:00 (6, left out)
#   → run 138, up 129: 93.4783%, 1.50 hours down; behind it school-1 and school-2, 2.00 site-hours.
# * ``isp``: silent 05:00–05:30 (3), cut off 15:00–16:00 → run 138, up 135, 0.50 hours down; behind it
#   school-1, 0.50 site-hours.
SCHOOL_2_WINDOW = MaintenanceWindows("UTC", once=((dt.datetime(2026, 11, 10, 22), dt.datetime(2026, 11, 10, 23)),))


@pytest.fixture(params=["sqlite", "postgresql"])
def cause_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    """The cause day, written through the backend under test, opened again for reading."""
    opener = StoreOpeners(request.param, tmp_path / "history.sqlite3",
                          request.getfixturevalue("pg_url") if request.param == "postgresql" else None)
    writer = opener()
    writer.write([], cause_day(D))
    yield opener()
    opener.close_all()


def test_downtime_is_split_by_cause_and_availability_follows_the_one_rule(cause_store: HistoryStore) -> None:
    """Site and upstream time count against the site; maintenance (an API window's rows, a declared window) and a
    cut-off monitor are left out; every cause's hours are stated, per site, per district and in the KPIs."""
    report = build_report(cause_store, DAY, maintenance={"school-2": SCHOOL_2_WINDOW})
    rows = {r.name: r for r in report.sites}
    assert set(rows) == {"school-1", "school-2", "clinic-1"}  # the nodes are not sites
    s1, s2, c1 = rows["school-1"], rows["school-2"], rows["clinic-1"]
    assert (s1.cycles, s1.cycles_up, s1.availability) == (132, 121, 121 / 132)
    assert s1.downtime == Downtime(2 * STEP, (("agg", HOUR), ("isp", 3 * STEP)), HOUR, 0.0, HOUR)
    assert (s2.cycles, s2.cycles_up) == (138, 131)
    assert s2.downtime == Downtime(STEP, (("agg", HOUR),), maintenance_seconds=3 * STEP)
    assert (c1.cycles, c1.cycles_up) == (144, 143) and c1.downtime == Downtime(STEP)
    assert report.upstream_down and report.maintenance and report.monitor_cut_off and report.by_cause
    aktobe = next(d for d in report.by_district if d.district == "Aktobe")
    assert aktobe.availability == (121 + 131) / (132 + 138)
    assert aktobe.downtime == Downtime(3 * STEP, (("agg", 2 * HOUR), ("isp", 3 * STEP)), HOUR, 0.0, HOUR + 3 * STEP)

    kpis = report.kpis
    assert kpis is not None and kpis.by_cause and kpis.upstream_down and kpis.maintenance
    everyone = kpis.groups[0].current
    assert (everyone.sites, everyone.cycles, everyone.cycles_up, everyone.cycles_in_maintenance) == (
        3, 132 + 138 + 144, 121 + 131 + 143, 12)
    assert everyone.downtime == Downtime(4 * STEP, (("agg", 2 * HOUR), ("isp", 3 * STEP)), HOUR, 0.0,
                                         HOUR + 3 * STEP)
    assert {s.name: (s.cycles, s.cycles_up) for s in kpis.sites} == {  # the site table's figures, by one rule
        r.name: (r.cycles, r.cycles_up) for r in report.sites}

    assert [(u.name, u.kind, u.cycles, u.cycles_up, u.down_seconds, u.sites, u.site_seconds)
            for u in report.upstreams] == [("agg", "router", 138, 129, 9 * STEP, 2, 2 * HOUR),
                                           ("isp", "pop", 138, 135, 3 * STEP, 1, 3 * STEP)]

    bare = build_report(cause_store, DAY)  # no config: no declared window, the API's window still left out
    school_2 = {r.name: r for r in bare.sites}["school-2"]
    assert (school_2.cycles, school_2.cycles_up) == (144, 134)
    assert school_2.downtime == Downtime(4 * STEP, (("agg", HOUR),))
    assert bare.kpis is not None and not bare.kpis.maintenance_considered
    assert kpi_header(bare.kpis).startswith("KPIs for the ministry: maintenance opened through the API is left out "
                                            "of availability; declared windows are not (no --config given);")


def test_every_format_shows_the_hours_by_cause_and_the_upstream_section(tmp_path: Path) -> None:
    """Table, Markdown, HTML, CSV, JSON and the summary API carry the hours by cause and the upstream nodes."""
    store = SqliteStore(database_path(tmp_path))
    store.write([], cause_day(D))
    report = build_report(store, DAY, maintenance={"school-2": SCHOOL_2_WINDOW})
    table = render(report, "table")
    header = next(ln for ln in table.splitlines() if ln.startswith("site "))
    assert header.index("availability %") < header.index("hours monitor cut off") < header.index(
        "hours site down") < header.index("hours upstream down") < header.index("upstream nodes (hours)") < \
        header.index("hours in maintenance") < header.index("RTT median ms")
    line = next(ln.split() for ln in table.splitlines() if ln.startswith("school-1"))
    assert line[5:12] == ["91.67", "1.00", "0.33", "1.50", "agg", "1.00,", "isp"]
    assert "Downtime by cause, all sites: against availability site 0.67 h, upstream 2.50 h (agg 2.00, isp 0.50); " \
           "left out of it: monitor cut off 1.00 h, maintenance 1.50 h." in table
    district = next(ln for ln in table.splitlines() if ln.startswith("school  Aktobe"))
    assert district.split()[-8:] == ["1.00", "0.50", "2.50", "agg", "2.00,", "isp", "0.50", "1.50"]
    upstreams = table[table.index(UPSTREAM_SENTENCE):].splitlines()
    assert upstreams[4].split() == ["agg", "router", "138", "93.48", "1.50", "2", "2.00"]
    assert upstreams[5].split() == ["isp", "pop", "138", "97.83", "0.50", "1", "0.50"]

    md = render(report, "markdown")
    assert "## Upstream nodes" in md and "| agg  " in md and "agg 2.00, isp 0.50" in md

    sites, kpi_table, upstream_table = render(report, "csv").split("\n\n")
    assert sites.splitlines()[0].startswith(
        "site,kind,district,link,target_mbps,cycles,cycles_up,availability_percent,hours_monitor_cut_off,"
        "hours_site_down,hours_upstream_down,upstream_down_hours_by_node,hours_maintenance,rtt_median_ms,")
    by_name = {r["site"]: r for r in csv.DictReader(io.StringIO(sites))}
    assert [by_name["school-1"][k] for k in ("availability_percent", "hours_monitor_cut_off", "hours_site_down",
                                             "hours_upstream_down", "upstream_down_hours_by_node",
                                             "hours_maintenance")] == [
        "91.6667", "1.0000", "0.3333", "1.5000", "agg=1.0000;isp=0.5000", "1.0000"]
    assert by_name["clinic-1"]["upstream_down_hours_by_node"] == ""
    kpi_all = next(csv.DictReader(io.StringIO(kpi_table)))
    assert [kpi_all[k] for k in ("hours_monitor_cut_off", "hours_site_down", "hours_upstream_down",
                                 "hours_maintenance")] == ["1.0000", "0.6667", "2.5000", "1.5000"]
    assert list(csv.reader(io.StringIO(upstream_table))) == [
        ["upstream_node", "kind", "cycles", "cycles_up", "availability_percent", "hours_down", "sites_behind",
         "site_hours_behind"],
        ["agg", "router", "138", "129", "93.4783", "1.5000", "2", "2.0000"],
        ["isp", "pop", "138", "135", "97.8261", "0.5000", "1", "0.5000"]]

    doc = json.loads(render(report, "json"))
    figures = doc["kpis"]["groups"][0]["current"]
    assert (figures["site_down_seconds"], figures["upstream_down_seconds"], figures["maintenance_seconds"]) == (
        4 * STEP, {"agg": 2 * HOUR, "isp": 3 * STEP}, HOUR + 3 * STEP)
    assert {s["name"]: s["upstream_down_seconds"] for s in doc["kpis"]["sites"]} == {
        "school-1": {"agg": HOUR, "isp": 3 * STEP}, "school-2": {"agg": HOUR}, "clinic-1": {}}
    assert doc["upstreams"][0] == {"name": "agg", "kind": "router", "cycles": 138, "cycles_up": 129,
                                   "availability_ratio": 129 / 138, "down_seconds": 9 * STEP, "sites": 2,
                                   "site_seconds": 2 * HOUR}

    html = render(report, "html")
    assert '<table id="upstreams">' in html and "<th>hours upstream down</th>" in html
    assert "<td>agg 2.00, isp 0.50</td>" in html  # the district table's per-node hours

    api = report_to_json(report)  # GET /api/v1/summary
    assert api["site_count"] == 3 and [u["name"] for u in api["upstreams"]] == ["agg", "isp"]
    row = next(r for r in api["sites"] if r["name"] == "school-1")
    assert (row["site_down_seconds"], row["upstream_down_seconds"], row["monitor_cut_off_seconds"],
            row["maintenance_seconds"], row["availability_ratio"]) == (
        2 * STEP, {"agg": HOUR, "isp": 3 * STEP}, HOUR, HOUR, 121 / 132)
    aktobe = next(d for d in api["by_district"] if d["district"] == "Aktobe")
    assert (aktobe["site_down_seconds"], aktobe["upstream_down_seconds"], aktobe["maintenance_seconds"],
            aktobe["power_off_seconds"]) == (3 * STEP, {"agg": 2 * HOUR, "isp": 3 * STEP}, HOUR + 3 * STEP, 0.0)
    store.close()


def test_no_upstream_section_or_cause_column_without_them(tmp_path: Path) -> None:
    """A history of sites alone (their own downtime only) keeps the report's shape: no section, no new column."""
    store = SqliteStore(database_path(tmp_path))
    store.write([], [r for r in cause_day(D) if r.target.group != UPSTREAM_GROUP and r.target.name == "clinic-1"])
    report = build_report(store, DAY)
    assert report.upstreams == () and not report.by_cause
    for fmt in ("table", "csv", "markdown", "html", "json"):
        text = render(report, fmt)
        assert "Upstream nodes" not in text and "hours upstream" not in text and "upstream_down" not in text, fmt
        assert "site down" not in text and "site_down" not in text, fmt
        assert "by cause" not in text and "maintenance_seconds" not in text, fmt
    assert report_to_json(report)["upstreams"] is None
    store.close()


def test_a_window_opened_through_the_api_leaves_out_every_cycle_in_it(tmp_path: Path) -> None:
    """A site's run-time window (POST /api/v1/maintenance, issue 21) counts as a declared one: its answered
    cycles are left out of availability too, not only the silent ones kept as maintenance; one closed early
    stops at its close; a window on an upstream node is left to the rows it made silent."""
    store = SqliteStore(database_path(tmp_path))
    site = throughput_target("fibre-1")
    rows: list[Result] = [icmp(site, D + i * STEP, 0.01) for i in range(144)]  # answers all day
    rows[30] = icmp(site, D + 30 * STEP, None, None)  # 05:00, silent outside any window: the site's own
    store.write([], rows)
    opened = store.open_maintenance("fibre-1", "site", at(8), at(12), "fibre splice", at(7))
    store.close_maintenance(opened.id, at(10))  # closed early: 08:00-10:00, 12 cycles
    store.open_maintenance("agg", "upstream", at(14), at(16), "router swap", at(13))  # covers no row of its own
    store.close()
    reader = SqliteStore(database_path(tmp_path), read_only=True)
    try:
        row = next(r for r in build_report(reader, DAY).sites if r.name == "fibre-1")
    finally:
        reader.close()
    assert (row.cycles, row.cycles_up) == (144 - 12, 144 - 12 - 1)
    assert row.downtime == Downtime(site_seconds=STEP)  # downtime is silent time: the site answered in the window
