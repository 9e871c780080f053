"""The ministry's KPIs (issue 11) from a recorded history whose right answers are worked out by hand below.

The period is November 2026 (UTC, 30 days); the previous period is 2 to 31 October. Every site's
target (and, for now, contract) is 10 Mbit/s. Sites straddle each boundary:

* at-target: median exactly 10 (9, 10, 11) → met; below: median 9.9 → not met, ≥ 80%;
  p80: 8.0 = exactly 80% of contract → counts; p79: 7.9 → does not; risk-21's one test: 10 → met.
  So 5 sites measured, 2 met (40%), 4 at ≥ 80% of contract (80%).
* maint (clinic): its only down cycles started inside its group's maintenance (Sun 02:00-04:00
  Asia/Almaty = Sat 21:00-23:00 UTC, and the one-off 2026-11-14 08:00-12:00 Almaty). A cycle at
  04:00 Almaty (the window's end) is not inside. maint-own has its own window (Mon 00:00-01:00 UTC),
  which replaces the group's: its Sunday-02:00-Almaty down cycle counts, its Monday 00:30 one not.
  With the config: 13 cycles, 11 up (84.6154%), 4 left out; without: 17 cycles, 11 up (64.7059%).
  The site table follows the same rule (issue 21): maint 3 cycles, 3 up; maint-own 2, 1 up.
* downtime by cause (issue 21; each silent cycle stands for the time to its nearer neighbour, the rows here
  are days apart): maint is silent in maintenance 119 min (to the next row) + 1 min + 4 h (its one-off
  window's end comes before the next row) = 6.00 h; maint-own 30 min (to its window's end), and its
  Sunday cycle outside its own window is the site's own, 27.50 h (to its next row); drop-28's last
  cycle, an hour before the end, 1.00 h. So 28.50 h against availability, 6.50 h left out.
* live-20.99 (last success 20.99 days before the end) is live; risk-21 (a throughput test that
  measured, exactly 21 days before, and a failed test later) and risk-27.99 are at risk; drop-28
  (an answered cycle exactly 28 days before, a down cycle an hour before the end) is dropped.
  7 live, 2 at risk, 1 dropped.
* previous period: at-target measured 5 (not met, < 80%; last success 22 days before 1 November:
  at risk); p79 measured 10 (met); maint 2 cycles, 1 up. 2 measured, 1 met (50%), 1 at 80% (50%),
  availability 50%; 2 live, 1 at risk, 7 dropped. Changes: −10, +30 and +34.6154 points.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.config.windows import MaintenanceWindows, parse_maintenance_window, parse_window
from monitor.errors import ProbeErrorReason
from monitor.history.sqlite import SqliteStore, database_path
from monitor.report.compliance import Period, build_report
from monitor.report.kpis import DAY_SECONDS, Thresholds, maintenance_of, status_of
from monitor.report.render import render
from monitor.report.sections import kpi_header
from monitor.results import Result
from monitor.targets import Target
from tests.factories import icmp, iperf3_test, throughput_target, write_config
from tests.netlab import child_env

NOV = Period(dt.date(2026, 11, 1), dt.date(2026, 11, 30), "UTC")
START, END = NOV.start, NOV.end  # 2026-11-01 and 2026-12-01 00:00 UTC
D = DAY_SECONDS
GOLDEN = Path(__file__).resolve().parent / "golden"
SUNDAY_0200_ALMATY = dt.datetime(2026, 11, 7, 21, 0, tzinfo=dt.UTC).timestamp()  # Sun 8 Nov 02:00 at UTC+5
ONE_OFF_ALMATY = dt.datetime(2026, 11, 14, 3, 0, tzinfo=dt.UTC).timestamp()  # 14 Nov 08:00 at UTC+5
MONDAY_0030_UTC = dt.datetime(2026, 11, 9, 0, 30, tzinfo=dt.UTC).timestamp()

CONFIG = """\
defaults:
  target_mbps: 10
report:
  at_risk_days: 21
  dropped_days: 28
groups:
  - name: schools
    kind: school
    district: Aktobe
    endpoints:
      - {name: at-target, host: 192.0.2.1}
      - {name: below, host: 192.0.2.2}
      - {name: p80, host: 192.0.2.3, district: Khromtau}
      - {name: p79, host: 192.0.2.4, district: Khromtau}
      - {name: live-20.99, host: 192.0.2.7}
      - {name: risk-21, host: 192.0.2.8}
      - {name: risk-27.99, host: 192.0.2.9}
      - {name: drop-28, host: 192.0.2.10}
  - name: clinics
    kind: clinic
    district: Khromtau
    maintenance:
      timezone: Asia/Almaty
      windows: ["Sun 02:00-04:00", "2026-11-14 08:00-2026-11-14 12:00"]
    endpoints:
      - {name: maint, host: 192.0.2.5}
      - name: maint-own
        host: 192.0.2.6
        maintenance: {windows: ["Mon 00:00-01:00"]}
"""


def record(state: Path) -> None:
    """November 2026 and the October before it, as the module docstring works them out."""
    def school(name: str, district: str = "Aktobe") -> Target:
        return throughput_target(name, district=district, mbps=10)

    at_target, below = school("at-target"), school("below")
    p80, p79 = school("p80", "Khromtau"), school("p79", "Khromtau")
    maint = throughput_target("maint", kind="clinic", district="Khromtau", mbps=10)
    maint_own = throughput_target("maint-own", kind="clinic", district="Khromtau", mbps=10)
    live, risk21, risk28, drop = school("live-20.99"), school("risk-21"), school("risk-27.99"), school("drop-28")
    rows: list[Result] = [
        iperf3_test(at_target, START + 4 * D, 9e6), iperf3_test(at_target, START + 5 * D, 10e6),
        iperf3_test(at_target, START + 6 * D, 11e6), icmp(at_target, END - D, 0.01),
        iperf3_test(below, START + 4 * D, 9.9e6), icmp(below, END - 2 * D, 0.01),
        iperf3_test(p80, START + 4 * D, 8e6), icmp(p80, END - 2 * D, 0.01),
        iperf3_test(p79, START + 4 * D, 7.9e6), icmp(p79, END - 2 * D, 0.01),
        icmp(maint, START + D / 2, 0.02),
        icmp(maint, SUNDAY_0200_ALMATY, None), icmp(maint, SUNDAY_0200_ALMATY + 119 * 60, None),
        icmp(maint, SUNDAY_0200_ALMATY + 120 * 60, 0.02),  # 04:00 Almaty: the window has ended
        icmp(maint, ONE_OFF_ALMATY, None), icmp(maint, END - D, 0.02),
        icmp(maint_own, SUNDAY_0200_ALMATY, None), icmp(maint_own, MONDAY_0030_UTC, None),
        icmp(maint_own, END - D / 2, 0.02),  # Monday 30 November 12:00 UTC, after its window
        icmp(live, END - 20.99 * D, 0.01),
        iperf3_test(risk21, END - 21 * D, 10e6),
        iperf3_test(risk21, END - D, None, moved=0, error=ProbeErrorReason.REFUSED),
        icmp(risk28, END - 27.99 * D, 0.01),
        icmp(drop, END - 28 * D, 0.01), icmp(drop, END - 3600, None),
        # October (the previous period: 2 to 31 October)
        iperf3_test(at_target, START - 22 * D, 5e6), iperf3_test(p79, START - 7 * D, 10e6),
        icmp(maint, START - 12 * D, 0.02), icmp(maint, START - 11 * D, None),
    ]
    store = SqliteStore(database_path(state))
    store.write([], rows)
    store.close()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    record(tmp_path)
    write_config(tmp_path, CONFIG)
    return tmp_path


def connmon_report(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-11-01", "--to", "2026-11-30",
                           "--timezone", "UTC", "--state-dir", str(state), *args], capture_output=True, text=True,
                          timeout=60, check=False, env=child_env())


def test_status_boundaries_are_inclusive_at_the_threshold() -> None:
    """20.99 days is live, exactly 21 at risk, 27.99 at risk, exactly 28 dropped; no success is dropped."""
    t = Thresholds(21, 28)
    assert [status_of(days * D, t) for days in (0, 20.99, 21, 27.99, 28, 400)] == \
        ["live", "live", "at_risk", "at_risk", "dropped", "dropped"]
    assert status_of(None, t) == "dropped"


def test_maintenance_windows_cover_start_not_end() -> None:
    """A weekly window in its zone covers [start, end); a one-off dated window too; others nothing."""
    m = MaintenanceWindows("Asia/Almaty", (parse_window("Sun 02:00-04:00"),),
                           (parse_maintenance_window("2026-11-14 08:00-2026-11-14 12:00"),))
    assert m.covers(SUNDAY_0200_ALMATY) and m.covers(SUNDAY_0200_ALMATY + 7199)
    assert not m.covers(SUNDAY_0200_ALMATY + 7200) and not m.covers(SUNDAY_0200_ALMATY - 1)
    assert m.covers(SUNDAY_0200_ALMATY + 7 * D)  # every week
    assert m.covers(ONE_OFF_ALMATY) and not m.covers(ONE_OFF_ALMATY + 4 * 3600) and not m.covers(ONE_OFF_ALMATY - 1)
    overnight = MaintenanceWindows("UTC", (parse_window("Sat 23:00-01:00"),))
    assert overnight.covers(dt.datetime(2026, 11, 8, 0, 30, tzinfo=dt.UTC).timestamp())  # Sunday, from Saturday's


def test_endpoint_maintenance_replaces_the_groups(state: Path) -> None:
    found = maintenance_of(load_config(state / "connmon.yaml"))
    assert found["maint"].timezone == "Asia/Almaty" and len(found["maint"].once) == 1
    assert found["maint-own"].timezone == "UTC" and [str(w) for w in found["maint-own"].weekly] == ["Mon 00:00-01:00"]
    assert "p80" not in found


def test_kpis_match_the_recorded_history(state: Path) -> None:
    """The hand-worked figures of the module docstring, with and without the config's maintenance."""
    config = load_config(state / "connmon.yaml")
    store = SqliteStore(database_path(state), read_only=True)
    report = build_report(store, NOV, maintenance=maintenance_of(config))
    assert report.kpis is not None
    whole = report.kpis.groups[0]
    assert whole.scope == "all"
    c, p = whole.current, whole.previous
    assert (c.sites, c.sites_measured, c.median_met_target, c.at_contract_share) == (10, 5, 2, 4)
    assert (c.cycles, c.cycles_up, c.cycles_in_maintenance) == (13, 11, 4)
    assert (c.live, c.at_risk, c.dropped) == (7, 2, 1)
    assert (p.sites_measured, p.median_met_target, p.at_contract_share, p.cycles, p.cycles_up) == (2, 1, 1, 2, 1)
    assert (p.live, p.at_risk, p.dropped) == (2, 1, 7)
    changes = whole.changes()
    assert changes["median_met_target"] == pytest.approx(-10.0)
    assert changes["at_80_percent_of_contract"] == pytest.approx(30.0)
    assert changes["availability"] == pytest.approx(11 / 13 * 100 - 50)
    sites = {s.name: s for s in report.kpis.sites}
    assert sites["at-target"].median_met_target is True and sites["below"].median_met_target is False
    assert sites["p80"].at_contract_share is True and sites["p79"].at_contract_share is False
    assert {n: s.status for n, s in sites.items() if s.status != "live"} == \
        {"risk-21": "at_risk", "risk-27.99": "at_risk", "drop-28": "dropped"}
    assert sites["live-20.99"].status == "live"
    clinic = next(g for g in report.kpis.groups if g.scope == "kind" and g.kind == "clinic")
    assert (clinic.current.cycles, clinic.current.cycles_up, clinic.current.availability) == (5, 4, 0.8)
    aktobe = next(g for g in report.kpis.groups if g.scope == "district" and g.district == "Aktobe")
    assert (aktobe.current.sites, aktobe.current.median_met_target, aktobe.current.sites_measured) == (6, 2, 3)

    assert (whole.current.downtime.site_seconds, whole.current.downtime.maintenance_seconds) == (28.5 * 3600,
                                                                                                 6.5 * 3600)
    rows = {r.name: r for r in report.sites}  # the site table by the same rule (issue 21)
    assert (rows["maint"].cycles, rows["maint"].cycles_up, rows["maint"].maintenance_seconds) == (3, 3, 6 * 3600)
    assert (rows["maint-own"].cycles, rows["maint-own"].site_down_seconds) == (2, 27.5 * 3600)
    bare = build_report(store, NOV).kpis  # no config: nothing left out
    assert bare is not None and not bare.maintenance_considered
    assert (bare.groups[0].current.cycles, bare.groups[0].current.cycles_up) == (17, 11)
    assert kpi_header(bare).endswith("previous period: the 30 days before.")
    one_day = build_report(store, Period(dt.date(2026, 11, 30), dt.date(2026, 11, 30), "UTC")).kpis
    assert one_day is not None and kpi_header(one_day).endswith("previous period: the 1 day before.")


def test_cli_csv_and_json_are_golden(state: Path) -> None:
    """The whole CSV and JSON outputs, byte for byte, against tests/golden/."""
    for fmt, name in (("csv", "kpis-november.csv"), ("json", "kpis-november.json")):
        proc = connmon_report(state, "--format", fmt, "--config", str(state / "connmon.yaml"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == (GOLDEN / name).read_text(encoding="utf-8"), fmt
    doc = json.loads((GOLDEN / "kpis-november.json").read_text(encoding="utf-8"))
    assert doc["kpis"]["groups"][0]["change_pp"]["median_met_target"] == pytest.approx(-10.0)


def test_thresholds_from_the_command_line_override_the_config(state: Path) -> None:
    """--at-risk-days 20.99 makes live-20.99 at risk (exactly at the threshold); bad pairs are refused."""
    proc = connmon_report(state, "--format", "json", "--config", str(state / "connmon.yaml"),
                          "--at-risk-days", "20.99", "--dropped-days", "27.99")
    assert proc.returncode == 0, proc.stderr
    sites = {s["name"]: s["status"] for s in json.loads(proc.stdout)["kpis"]["sites"]}
    assert sites["live-20.99"] == "at_risk" and sites["risk-27.99"] == "dropped" and sites["drop-28"] == "dropped"
    bad = connmon_report(state, "--at-risk-days", "30")
    assert bad.returncode == 2 and "must be more than at-risk days" in bad.stderr


def test_every_format_renders_the_kpi_section(state: Path) -> None:
    """Table, Markdown and HTML show the KPI section with its figures; without --config they say so."""
    config = load_config(state / "connmon.yaml")
    store = SqliteStore(database_path(state), read_only=True)
    report = build_report(store, NOV, maintenance=maintenance_of(config))
    for fmt in ("table", "markdown", "html", "csv"):
        text = render(report, fmt)
        assert "KPIs for the ministry" in text or fmt == "csv", fmt
        for figure in ("40.00" if fmt != "csv" else "40.0000", "84.62" if fmt != "csv" else "84.6154",
                       "-10.00" if fmt != "csv" else "-10.0000"):
            assert figure in text, (fmt, figure)
        if fmt != "csv":
            assert "declared maintenance windows (--config) are left out" in text, fmt
    bare = render(build_report(store, NOV), "table")
    assert "no maintenance is left out of availability (no --config given)" in bare and "64.71" in bare


def test_readme_kpi_sample_is_real_output(state: Path) -> None:
    """The docs' KPI sample (docs/reports.md) is what `connmon report --config` prints for this recorded history."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "reports.md").read_text(encoding="utf-8")
    section = readme.split("## KPIs for the ministry", 1)[1].split("\n## ", 1)[0]
    sample = section.split("```text\n", 1)[1].split("\n```", 1)[0]
    proc = connmon_report(state, "--config", str(state / "connmon.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout[proc.stdout.index("KPIs for the ministry"):].rstrip("\n") == sample


def test_cut_off_cycles_change_no_kpi_count_and_are_stated_in_hours(state: Path) -> None:
    """Two cut-off cycles (issue 21) after at-target's last answer: the KPI figures stay the hand-worked ones,
    and the header, the CSV's last column and the JSON say the 20 minutes."""
    store = SqliteStore(database_path(state))
    at_target = throughput_target("at-target", mbps=10)
    store.write([], [icmp(at_target, END - D + 600, None, error=ProbeErrorReason.MONITOR_CUT_OFF),
                     icmp(at_target, END - D + 1200, None, error=ProbeErrorReason.MONITOR_CUT_OFF)])
    store.close()
    config = load_config(state / "connmon.yaml")
    report = build_report(SqliteStore(database_path(state), read_only=True), NOV, maintenance=maintenance_of(config))
    assert report.kpis is not None and report.kpis.monitor_cut_off
    whole = report.kpis.groups[0]
    assert (whole.current.cycles, whole.current.cycles_up, whole.current.cycles_in_maintenance) == (13, 11, 4)
    assert (whole.current.monitor_cut_off_seconds, whole.previous.monitor_cut_off_seconds) == (1200.0, 0.0)
    assert "; the hours the monitor was cut off itself are left out too; at risk after 21 days" in \
        kpi_header(report.kpis)
    kpi_csv = render(report, "csv").split("\n\n")[1].splitlines()
    assert kpi_csv[0].endswith(",previous_dropped,hours_monitor_cut_off,hours_site_down,hours_maintenance")
    assert kpi_csv[1].endswith(",0.3333,28.5000,6.5000")
    doc = json.loads(render(report, "json"))["kpis"]
    assert {s["name"]: s["monitor_cut_off_seconds"] for s in doc["sites"] if s["monitor_cut_off_seconds"]} == {
        "at-target": 1200.0}
    row = next(r for r in report.sites if r.name == "at-target")
    assert (row.cycles, row.cycles_up, row.monitor_cut_off_seconds) == (1, 1, 1200.0)
