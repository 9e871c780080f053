"""``connmon report`` from a recorded history whose right answers are known (worked out by hand below)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_config, parse_config
from monitor.errors import ProbeErrorReason
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import EndpointRecord
from monitor.report.compliance import Period, build_report, nearest_rank
from monitor.report.render import render
from monitor.results import Result
from monitor.targets import Target, build_targets
from tests.factories import HOUR, OCT, START, icmp, iperf3_test, record_october, throughput_target, write_config
from tests.netlab import child_env
from tests.report_golden import DISTRICT_SENTENCES, GOLDEN_CSV


@pytest.fixture
def state(tmp_path: Path) -> Path:
    record_october(tmp_path)
    return tmp_path


def test_nearest_rank_is_a_measured_value() -> None:
    assert nearest_rank([1.0, 2.0, 3.0, 4.0], 0.95) == 4.0
    assert nearest_rank([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_site_figures_match_the_recorded_history(state: Path) -> None:
    store = SqliteStore(database_path(state), read_only=True)
    report = build_report(store, OCT)
    rows = {r.name: r for r in report.sites}
    s1 = rows["s1"]
    assert (s1.cycles, s1.cycles_up, s1.echoes, s1.replies) == (10, 10, 40, 30)
    assert s1.availability == 1.0 and s1.loss == 0.25
    assert s1.rtt_median_seconds == 0.020 and s1.rtt_p95_seconds == 0.030
    assert (s1.tests, s1.tests_met, s1.download_median_bits_per_second, s1.download_min_bits_per_second) == \
        (3, 3, 6e6, 5e6)
    assert s1.verdict == "met"
    s2 = rows["s2"]
    assert s2.availability == 0.5 and s2.loss == 0.5 and s2.verdict == "partly" and s2.met_share == 0.5
    s3 = rows["s3"]
    assert (s3.tests, s3.tests_failed, s3.verdict, s3.cycles) == (2, 1, "never", 0)
    assert rows["c1"].verdict == "untested" and rows["c1"].rtt_median_seconds == pytest.approx(0.650)
    assert [r.name for r in report.sites] == ["s3", "s2", "c1", "s1"]  # worst first


def test_summary_in_the_words_ops_use(state: Path) -> None:
    store = SqliteStore(database_path(state), read_only=True)
    cfg = write_config(state, """
groups:
  - name: g
    kind: school
    district: Aktobe
    endpoints:
      - {name: s4, host: 192.0.2.4}
""")
    from monitor.config import load_config
    from monitor.history.store import EndpointRecord
    from monitor.targets import build_targets

    configured = [EndpointRecord.of(t) for t in build_targets(load_config(str(cfg)))]
    report = build_report(store, OCT, configured=configured)
    schools = next(s for s in report.by_kind if s.kind == "school")
    assert schools.sentence() == ("1 of 4 schools met 4 Mbit/s in every test; 1 never did; 1 did in some tests; "
                                  "1 was not tested. Up 85.71% of cycles.")  # 12 of 14 cycles answered
    clinics = next(s for s in report.by_kind if s.kind == "clinic")
    assert clinics.sentence() == "0 of 1 clinic met 2 Mbit/s in every test; 0 never did; 1 was not tested. " \
                                 "Up 100.00% of cycles."
    khromtau = next(s for s in report.by_district if s.kind == "school" and s.district == "Khromtau")
    assert (khromtau.sites, khromtau.never, khromtau.availability) == (1, 1, None)
    assert {r.name: r.verdict for r in report.sites}["s4"] == "no_data"


def test_filters_and_time_zone_boundaries(state: Path) -> None:
    """--kind/--district narrow the sites; days are whole days in the report's time zone."""
    store = SqliteStore(database_path(state), read_only=True)
    assert [r.name for r in build_report(store, OCT, kind="clinic").sites] == ["c1"]
    assert [r.name for r in build_report(store, OCT, district="Aktobe").sites] == ["s2", "s1"]
    # In Almaty (UTC+5) October ends at 19:00 UTC on the 31st: s1's last-minute cycle falls in November,
    # and the cycle 1 s before October (UTC) is 04:59:59 on 1 October there, so it counts.
    almaty = build_report(store, Period(dt.date(2026, 10, 1), dt.date(2026, 10, 31), "Asia/Almaty"))
    s1 = {r.name: r for r in almaty.sites}["s1"]
    assert s1.cycles == 10 and s1.cycles_up == 9


def connmon_report(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-10-01", "--to", "2026-10-31",
                           "--timezone", "UTC", "--state-dir", str(state), *args], capture_output=True, text=True,
                          timeout=60, check=False, env=child_env())


def test_cli_csv_is_golden(state: Path) -> None:
    proc = connmon_report(state, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    sites, kpis = proc.stdout.split("\n\n")  # the site table, then the KPI table (tests/test_kpis.py)
    assert sites + "\n" == GOLDEN_CSV
    assert kpis.startswith("kpi_scope,kind,district,sites,")


def test_cli_table_markdown_and_output_file(state: Path, tmp_path: Path) -> None:
    table = connmon_report(state)
    assert table.returncode == 0, table.stderr
    assert "1 of 3 schools met 4 Mbit/s in every test; 1 never did; 1 did in some tests." in table.stdout
    assert any(line.split()[:2] == ["s1", "school"] and line.split()[-1] == "met" for line in table.stdout.splitlines())
    out = tmp_path / "october.md"
    md = connmon_report(state, "--format", "markdown", "--kind", "school", "--output", str(out))
    assert md.returncode == 0 and md.stdout == ""
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# connmon report, 2026-10-01 to 2026-10-31 (UTC) — school\n")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| s2")]
    assert cells == [["s2", "school", "Aktobe", "fibre", "4", "50.00", "5.000", "5.000", "50.00", "2", "0", "4.00",
                      "3.00", "50", "partly"]]
    assert "c1" not in text


def test_cli_errors_are_clear(tmp_path: Path, state: Path) -> None:
    missing = connmon_report(tmp_path / "nowhere")
    assert missing.returncode == 3 and "cannot read the history" in missing.stderr
    backwards = subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-10-31", "--to",
                                "2026-10-01", "--state-dir", str(state)], capture_output=True, text=True, check=False,
                               env=child_env())
    assert backwards.returncode == 2 and "before --from" in backwards.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    sqlite3.connect(database_path(foreign)).close()  # an empty SQLite file: no connmon tables
    empty = connmon_report(foreign)
    assert empty.returncode == 3 and "cannot read the history" in empty.stderr and "Traceback" not in empty.stderr
    bad_zone = connmon_report(state, "--timezone", "Mars/Olympus")
    assert bad_zone.returncode == 2 and "not a time zone" in bad_zone.stderr


def test_every_format_shows_the_same_figures(state: Path) -> None:
    store = SqliteStore(database_path(state), read_only=True)
    report = build_report(store, OCT)
    for fmt in ("table", "markdown", "html"):
        text = render(report, fmt)
        for figure in ("25.00", "20.000", "30.000", "650.000", "1.50"):
            assert figure in text, (fmt, figure)


def test_verdicts_come_from_the_verdict_not_the_download(tmp_path: Path) -> None:
    """A test with a good download and a failed checked upload gives no verdict (a failed test); an
    upload-only site is judged by its upload; budget skips are not failures; a site long removed from
    the config with nothing in the period is left out."""
    from monitor.results import DirectionResult, ThroughputResult

    both = throughput_target("both")
    both = dataclasses.replace(both, target_upload_bits_per_second=1e6)
    up_only = dataclasses.replace(throughput_target("up-only"), target_upload_bits_per_second=5e6)
    gone = throughput_target("gone")

    def run(t: Target, at: float, down: float | None, up: float | None,
            error: ProbeErrorReason | None = None) -> ThroughputResult:
        dirs = []
        if down is not None or error is None:
            dirs.append(DirectionResult("download", at, at + 5, down, 100, 4.0))
        if up is not None or error is not None:
            dirs.append(DirectionResult("upload", at + 6, at + 11, up, 100, 4.0, None, error))
        return ThroughputResult(t, "iperf3", at, at + 11, t.address, tuple(dirs), error)

    store = SqliteStore(database_path(tmp_path))
    store.write([], [
        run(both, START + 100, 5e6, 2e6),  # met both
        run(both, START + 200, 5e6, None, ProbeErrorReason.REFUSED),  # upload failed: no verdict
        ThroughputResult(both, "iperf3", START + 300, START + 300, None, (), ProbeErrorReason.BUDGET),
        ThroughputResult(up_only, "http", START + 100, START + 111, None,
                         (DirectionResult("upload", START + 100, START + 111, 6e6, 100, 10.0),)),
        icmp(gone, START - 86400, 0.001),  # September only
    ])
    store.close()
    report = build_report(SqliteStore(database_path(tmp_path), read_only=True), OCT)
    rows = {r.name: r for r in report.sites}
    assert set(rows) == {"both", "up-only"}
    assert (rows["both"].tests, rows["both"].tests_met, rows["both"].tests_failed, rows["both"].verdict) == \
        (1, 1, 1, "met")
    assert rows["both"].download_median_bits_per_second == 5e6  # both downloads were measured
    assert (rows["up-only"].tests, rows["up-only"].verdict) == (1, "met")
    assert rows["up-only"].download_median_bits_per_second is None


# ----------------------------------------------------------------------------- roll-out (issue 11)

NOV = Period(dt.date(2026, 11, 1), dt.date(2026, 11, 30), "UTC")
DAY = 86400.0
ROLLOUT_CONFIG = """\
groups:
  - name: aktobe-schools
    kind: school
    district: Aktobe
    endpoints:
      - {name: a1, host: 192.0.2.1, planned_date: 2026-11-10, contracted_mbps: 10}
      - {name: a2, host: 192.0.2.2}
      - {name: a3, host: 192.0.2.3}
      - {name: a4, host: 192.0.2.4, status: planned, planned_date: 2026-12-01, provider: KazSat}
  - name: khromtau-clinics
    kind: clinic
    district: Khromtau
    endpoints:
      - {name: k1, status: planned}
      - {name: k2, host: 192.0.2.12, status: retired}
      - {name: k3, host: 192.0.2.13, planned_date: 2026-10-28}
      - {name: k4, host: 192.0.2.14}
  - name: temir-schools
    kind: school
    district: Temir
    endpoints:
      - {name: t1, host: 192.0.2.21}
"""


def record_rollout(state: Path) -> list[EndpointRecord]:
    """November 2026 of a region still connecting sites; the right answers, by hand:

    * a1: connected, planned_date 10 Nov → connected in the period (by its date); measured 6 Mbit/s
      against a 4 Mbit/s target and a 10 Mbit/s contract → meets the target, not 80% of the contract.
    * a2: first result 20 Oct → connected before the period. a3: first result 5 Nov → in the period.
    * a4: planned for 1 Dec; k1: planned without a host → planned, in no site row and no KPI.
    * k2: retired, results in October only → retired, not in November's site rows.
    * k3: planned_date 28 Oct wins over its first result on 2 Nov → not in the period.
    * k4: connected, never measured, no date → connected, not known to be new; a "no data" row with --config.
    * t1: first result 30 Nov 20:00 UTC → in November in UTC, on 1 Dec in Almaty (UTC+5).
    """
    config = parse_config(ROLLOUT_CONFIG, "rollout.yaml")
    targets = {t.name: t for t in build_targets(config)}
    records = [EndpointRecord.of(t) for t in targets.values()]
    start = NOV.start
    rows: list[Result] = [icmp(targets["a1"], start + 9 * DAY + i * HOUR, 0.01) for i in range(3)]
    rows += [iperf3_test(targets["a1"], start + 12 * DAY, 6e6), iperf3_test(targets["a1"], start + 13 * DAY, 6e6)]
    rows += [icmp(targets["a2"], start - 12 * DAY, 0.01), icmp(targets["a2"], start + DAY, 0.01)]
    rows += [icmp(targets["a3"], start + 4 * DAY + HOUR, 0.01)]
    rows += [icmp(targets["k2"], start - 20 * DAY, 0.01)]
    rows += [icmp(targets["k3"], start + DAY + HOUR, None)]
    rows += [icmp(targets["t1"], NOV.end - 4 * HOUR, 0.01)]
    store = SqliteStore(database_path(state))
    store.write(records, rows)
    store.close()
    return records


def test_rollout_counts_and_sites_connected_in_the_period(tmp_path: Path) -> None:
    records = record_rollout(tmp_path)
    store = SqliteStore(database_path(tmp_path), read_only=True)
    report = build_report(store, NOV, configured=records)
    assert report.rollout is not None
    counts = {c.district: (c.planned, c.connected, c.connected_in_period, c.retired)
              for c in (*report.rollout.districts, report.rollout.total)}
    assert counts == {"Aktobe": (1, 3, 2, 0), "Khromtau": (1, 2, 0, 1), "Temir": (0, 1, 1, 0), None: (2, 6, 3, 1)}
    assert [(c.name, c.connected_on.isoformat(), c.source) for c in report.rollout.connected] == [
        ("a3", "2026-11-05", "first_result"), ("a1", "2026-11-10", "planned_date"),
        ("t1", "2026-11-30", "first_result")]
    # planned sites are in no row and no KPI; the retired one has no result in November; k4 is configured
    assert sorted(r.name for r in report.sites) == ["a1", "a2", "a3", "k3", "k4", "t1"]
    assert {r.name: r.verdict for r in report.sites}["k4"] == "no_data"
    assert report.kpis is not None
    a1 = next(s for s in report.kpis.sites if s.name == "a1")
    assert (a1.contracted_bits_per_second, a1.median_met_target, a1.at_contract_share) == (10e6, True, False)
    # in Almaty t1's first result is on 1 December; --district narrows the counts too
    almaty = build_report(store, Period(NOV.first, NOV.last, "Asia/Almaty"), configured=records)
    assert almaty.rollout is not None and [c.name for c in almaty.rollout.connected] == ["a3", "a1"]
    khromtau = build_report(store, NOV, district="Khromtau", configured=records).rollout
    assert khromtau is not None and [c.district for c in khromtau.districts] == ["Khromtau"]
    assert (khromtau.total.planned, khromtau.total.connected, khromtau.total.retired) == (1, 2, 1)
    # without --config the history's records count (the same sites here), and unconfigured k4 has no row
    alone = build_report(store, NOV)
    assert alone.rollout is not None and alone.rollout.total == report.rollout.total
    assert "k4" not in {r.name for r in alone.sites}


GOLDEN_ROLLOUT_CSV = """\
rollout_scope,district,planned,connected,connected_in_period,retired
district,Aktobe,1,3,2,0
district,Khromtau,1,2,0,1
district,Temir,0,1,1,0
all,,2,6,3,1

connected_site,kind,district,connected_on,date_from
a3,school,Aktobe,2026-11-05,first_result
a1,school,Aktobe,2026-11-10,planned_date
t1,school,Temir,2026-11-30,first_result
"""


def test_rollout_is_in_every_format_and_the_cli(tmp_path: Path) -> None:
    """The CLI with --config: the roll-out blocks close the CSV; every format shows the counts."""
    record_rollout(tmp_path)
    cfg = write_config(tmp_path, ROLLOUT_CONFIG)
    proc = subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-11-01", "--to", "2026-11-30",
                           "--timezone", "UTC", "--state-dir", str(tmp_path), "--config", str(cfg), "--format", "csv"],
                          capture_output=True, text=True, timeout=60, check=False, env=child_env())
    assert proc.returncode == 0, proc.stderr
    sites, kpis, counts, connected = proc.stdout.split("\n\n")
    assert counts + "\n\n" + connected == GOLDEN_ROLLOUT_CSV
    assert "a4" not in sites and "k1" not in sites and sites.startswith("site,kind,")
    store = SqliteStore(database_path(tmp_path), read_only=True)
    report = build_report(store, NOV, configured=[EndpointRecord.of(t) for t in build_targets(load_config(cfg))])
    sentence = "Roll-out: 6 sites connected (3 of them in the period), 2 planned, 1 retired."
    for fmt in ("table", "markdown", "html"):
        text = render(report, fmt)
        assert sentence in text, fmt
        assert "2026-11-05" in text and "Khromtau" in text, fmt
    doc = json.loads(render(report, "json"))
    assert doc["rollout"]["total"] == {"district": None, "planned": 2, "connected": 6, "connected_in_period": 3,
                                       "retired": 1}
    assert [c["name"] for c in doc["rollout"]["connected_in_period"]] == ["a3", "a1", "t1"]


def test_no_rollout_section_without_rollout_keys(state: Path) -> None:
    """A history where every site is connected and none has a planned_date: no roll-out anywhere (golden)."""
    report = build_report(SqliteStore(database_path(state), read_only=True), OCT)
    assert report.rollout is None
    assert "rollout" not in json.loads(render(report, "json"))
    for fmt in ("table", "csv", "markdown", "html"):
        assert "oll-out" not in render(report, fmt) and "rollout" not in render(report, fmt), fmt


def test_readme_rollout_samples_are_what_connmon_prints(tmp_path: Path) -> None:
    """The docs' roll-out config (docs/configuration.md) parses as described, and their report sample
    (docs/reports.md) is this history's output."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    readme = (docs / "configuration.md").read_text(encoding="utf-8")
    config = readme.split("## Roll-out: sites not connected yet", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    sites = {t.name: t for t in build_targets(parse_config(config, "docs/configuration.md"))}
    assert {n: (t.status, t.host, t.probed) for n, t in sites.items()} == {
        "shalkar-clinic-07": ("planned", "", False), "shalkar-clinic-02": ("connected", "10.40.2.1", True),
        "shalkar-clinic-01": ("retired", "10.40.1.1", False)}
    assert sites["shalkar-clinic-02"].contracted_bits_per_second == 10e6
    readme = (docs / "reports.md").read_text(encoding="utf-8")
    sample = readme.split("## Roll-out in the report", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    records = record_rollout(tmp_path)
    table = render(build_report(SqliteStore(database_path(tmp_path), read_only=True), NOV, configured=records),
                   "table")
    assert table[table.index("Roll-out: "):] == sample


def readme_report_samples() -> dict[str, str]:
    """The table, CSV and Markdown samples of the docs' Reports page (docs/reports.md), by format."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "reports.md").read_text(encoding="utf-8")
    section = readme.split("\n## Roll-out in the report\n", 1)[0]
    out = {}
    for fmt, fence in (("table", "text"), ("csv", "text"), ("markdown", "markdown")):
        after = section.split(f"`--format {fmt}`", 1)[1]
        out[fmt] = after.split(f"```{fence}\n", 1)[1].split("```", 1)[0]
    return out


def test_readme_report_samples_are_what_connmon_prints(state: Path) -> None:
    """The docs' table, CSV and Markdown samples are this recorded history's report, up to the KPI section
    (left out of the samples, as the docs say)."""
    report = build_report(SqliteStore(database_path(state), read_only=True), OCT)
    samples = readme_report_samples()
    table = render(report, "table")
    assert samples["table"] == table[:table.index("\nKPIs for the ministry")]
    assert samples["csv"] == render(report, "csv").split("\n\n", 1)[0] + "\n"
    markdown = render(report, "markdown")
    assert samples["markdown"] == markdown[:markdown.index("## KPIs for the ministry")].rstrip("\n") + "\n"


def test_summary_per_district_in_every_format_under_its_kind(state: Path) -> None:
    """Each kind's sentence is followed by one per district of that kind, in the table, Markdown and HTML."""
    report = build_report(SqliteStore(database_path(state), read_only=True), OCT)
    assert {(s.kind, s.district): s.sentence() for s in report.by_district} == DISTRICT_SENTENCES
    kinds = {s.kind: s.sentence() for s in report.by_kind}
    order = [kinds["clinic"], DISTRICT_SENTENCES["clinic", "Khromtau"], kinds["school"],
             DISTRICT_SENTENCES["school", "Aktobe"], DISTRICT_SENTENCES["school", "Khromtau"]]
    table = render(report, "table").splitlines()
    assert table[2:7] == [order[0], "  " + order[1], order[2], "  " + order[3], "  " + order[4]]
    markdown = render(report, "markdown").splitlines()
    start = markdown.index("## Summary") + 2
    assert markdown[start:start + 5] == ["- " + order[0], "  - " + order[1], "- " + order[2], "  - " + order[3],
                                         "  - " + order[4]]
    page = render(report, "html")
    summary = page[page.index('<ul class="summary"'):page.index("<h2>Download per district")]
    assert [summary.index(s) for s in order] == sorted(summary.index(s) for s in order)
    assert summary.count('data-district="') == 3
    assert f'<li data-kind="school" data-district="Khromtau">{order[4]}</li>' in summary


def test_a_kind_with_several_targets_is_measured_against_their_target(tmp_path: Path) -> None:
    """Schools of 4 and 20 Mbit/s: the sentence cannot name one figure, so it says "their target"."""
    fast = throughput_target("fast", mbps=20)
    slow = throughput_target("slow")
    store = SqliteStore(database_path(tmp_path))
    store.write([], [iperf3_test(fast, START + HOUR, 25e6), iperf3_test(slow, START + HOUR, 3e6)])
    store.close()
    report = build_report(SqliteStore(database_path(tmp_path), read_only=True), OCT)
    assert [s.sentence() for s in report.by_kind] == ["1 of 2 schools met their target in every test; 1 never did."]
    assert [s.sentence() for s in report.by_district] == [
        "1 of 2 schools in Aktobe met their target in every test; 1 never did."]


def test_cli_district_narrows_the_report(state: Path) -> None:
    """--district through the command line: only that district's sites, summaries and districts."""
    proc = connmon_report(state, "--district", "Khromtau", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    sites = proc.stdout.split("\n\n")[0].splitlines()
    assert [line.split(",")[:3] for line in sites[1:]] == [["s3", "school", "Khromtau"], ["c1", "clinic", "Khromtau"]]
    table = connmon_report(state, "--district", "Khromtau")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("connmon report, 2026-10-01 to 2026-10-31 (UTC) — Khromtau\n")
    assert "Aktobe" not in table.stdout and "s1" not in table.stdout.split()
    assert "  " + DISTRICT_SENTENCES["school", "Khromtau"] in table.stdout


def test_readme_html_excerpt_is_what_connmon_prints(state: Path) -> None:
    """Each piece of the docs' HTML excerpt (docs/reports.md; pieces split by a line "…") is in this history's HTML
    report."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "reports.md").read_text(encoding="utf-8")
    section = readme.split("\n## Roll-out in the report\n", 1)[0]
    excerpt = section.split("```html\n", 1)[1].split("```", 1)[0]
    page = render(build_report(SqliteStore(database_path(state), read_only=True), OCT), "html")
    pieces = excerpt.rstrip("\n").split("\n…\n")
    assert len(pieces) == 3
    for piece in pieces:
        assert piece in page, piece
