"""The HTML report opened in headless Chromium (Debian's ``chromium``): it renders offline, whole.

``--dump-dom`` prints the page after its scripts ran, so the assertions are on what a person
would see: the summary, a chart that Chart.js drew (one bar per district), tables that tablesort
made sortable, and hostile site names shown as text, never run as markup.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from monitor.errors import ProbeErrorReason
from monitor.history.sqlite import SqliteStore, database_path
from monitor.report.compliance import build_report
from monitor.report.render import render
from monitor.results import IcmpResult
from monitor.upstreams import UPSTREAM_GROUP, upstream_detail
from tests.conftest import need
from tests.factories import OCT, START, icmp, iperf3_test, record_october, target, throughput_target
from tests.netlab import child_env
from tests.report_golden import DISTRICT_SENTENCES

HOSTILE = "</script><script>document.body.setAttribute('data-pwned','1')</script><b>x</b>"


def chromium_dom(page: Path) -> str:
    browser = shutil.which("chromium")
    need(browser is not None, "needs Debian's chromium (scripts/install --test installs it)")
    assert browser is not None
    with tempfile.TemporaryDirectory(prefix="connmon-chromium-") as profile:
        # the closed-network flags: Chromium must not try to reach anything (and the page must not need it)
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def canvas_attributes(dom: str) -> dict[str, object]:
    """The chart's data-* attributes (JSON values) that the page's script set after Chart.js drew it."""
    canvas = re.search(r'<canvas id="download-chart"([^>]*)>', dom)
    assert canvas is not None
    return {name: json.loads(html.unescape(value)) for name, value in re.findall(r'(data-[a-z-]+)="([^"]*)"',
                                                                                   canvas.group(1))}


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    record_october(tmp_path)
    hostile, third = throughput_target(HOSTILE, district="Шалқар"), throughput_target("s5", district="Mugalzhar")
    store = SqliteStore(database_path(tmp_path))
    store.write([], [icmp(hostile, START + 60, 0.004), iperf3_test(hostile, START + 120, 9e6),
                     icmp(third, START + 60, 0.004), iperf3_test(third, START + 120, 2e6)])
    store.close()
    page = tmp_path / "october.html"
    argv = [sys.executable, "-m", "monitor", "report", "--from", "2026-10-01", "--to", "2026-10-31",
            "--timezone", "UTC", "--state-dir", str(tmp_path), "--format", "html", "--output", str(page)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=child_env())
    assert proc.returncode == 0, proc.stderr
    source = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//""", source)  # offline

    dom = chromium_dom(page)
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None
    attributes = body.group(1)
    assert 'data-ready="1"' in attributes  # every script ran to the end
    assert 'data-chart-bars="4"' in attributes  # Aktobe, Khromtau, Mugalzhar, Шалқар
    # the bars and the target line as Chart.js drew them (read back from the scale): per district the median
    # and the lowest of the sites' median downloads (Aktobe: s1 6, s2 4; Khromtau: s3 1.5; Mugalzhar: s5 2;
    # Шалқар: 9), one dashed line at the schools' 4 Mbit/s (clinic c1 measured no download: no line of its own)
    chart = canvas_attributes(dom)
    assert chart["data-median-bars"] == [5, 1.5, 2, 9] and chart["data-lowest-bars"] == [4, 1.5, 2, 9]
    assert chart["data-target-lines"] == [4] and chart["data-target-labels"] == ["target 4 Mbit/s"]
    assert "data-pwned" not in attributes  # the hostile name did not run
    assert "2 of 5 schools met 4 Mbit/s in every test; 2 never did; 1 did in some tests." in dom
    assert DISTRICT_SENTENCES["school", "Aktobe"] in dom  # the districts' sentences under their kind's
    sites = dom[dom.index('id="sites"'):]
    sites = sites[:sites.index("</table>")]
    assert sites.count("<tr") == 1 + 6  # header + every site
    assert 'role="columnheader"' in sites  # tablesort took the table
    assert "&lt;/script&gt;&lt;script&gt;" in sites and "&lt;b&gt;x&lt;/b&gt;" in sites  # shown, as text
    assert re.search(r'<tr class="never">\s*<td class="text">s3</td>', sites)
    assert "<canvas" in dom and "Шалқар" in dom
    # the ministry's KPI section (issue 11): its header says what was left out, one row per scope
    assert "no maintenance is left out of availability (no --config given)" in dom
    kpis = dom[dom.index('id="kpis"'):]
    kpis = kpis[:kpis.index("</table>")]
    assert kpis.count("<tr") == 1 + 1 + 2 + 5  # header, all sites, 2 kinds, 5 kind·district pairs
    assert re.search(r'<td class="text">all sites</td>\s*<td>6</td>', kpis)


def test_a_district_of_mixed_targets_gets_a_line_per_target(tmp_path: Path) -> None:
    """A 2 Mbit/s clinic beside 4 Mbit/s schools: the chart draws both targets, each labelled with its sites,
    instead of judging the clinic by the schools' line."""
    record_october(tmp_path)
    clinic = throughput_target("c2", kind="clinic", district="Khromtau", mbps=2)
    store = SqliteStore(database_path(tmp_path))
    store.write([], [icmp(clinic, START + 60, 0.004), iperf3_test(clinic, START + 120, 2.5e6)])
    store.close()
    report = build_report(SqliteStore(database_path(tmp_path), read_only=True), OCT)
    page = tmp_path / "mixed.html"
    page.write_text(render(report, "html"), encoding="utf-8")
    dom = chromium_dom(page)
    assert 'data-ready="1"' in dom
    chart = canvas_attributes(dom)
    assert chart["data-target-lines"] == [2, 4]
    assert chart["data-target-labels"] == ["target 2 Mbit/s (1 clinic)", "target 4 Mbit/s (3 schools)"]
    assert chart["data-median-bars"] == [5, 2] and chart["data-lowest-bars"] == [4, 1.5]  # Khromtau: s3 1.5, c2 2.5


def test_the_hours_monitor_cut_off_show_as_a_sortable_column(tmp_path: Path) -> None:
    """A site with a cut-off cycle (issue 21) gives the site table its hours column, which tablesort takes,
    and the KPI header says those hours are left out."""
    record_october(tmp_path)
    site = throughput_target("s6", district="Mugalzhar")
    store = SqliteStore(database_path(tmp_path))
    store.write([], [icmp(site, START + 60, 0.004),
                     icmp(site, START + 660, None, error=ProbeErrorReason.MONITOR_CUT_OFF),
                     icmp(site, START + 1260, 0.004)])
    store.close()
    report = build_report(SqliteStore(database_path(tmp_path), read_only=True), OCT)
    page = tmp_path / "cut-off.html"
    page.write_text(render(report, "html"), encoding="utf-8")
    dom = chromium_dom(page)
    assert 'data-ready="1"' in dom
    sites = dom[dom.index('id="sites"'):]
    sites = sites[:sites.index("</table>")]
    assert re.search(r'<th[^>]*role="columnheader"[^>]*>hours monitor cut off</th>', sites)
    # s6: two cycles counted, both answered; its cut-off cycle stands for 10 minutes
    assert re.search(r'<td class="text">s6</td>(\s*<td[^>]*>[^<]*</td>){4}\s*<td class="">100.00</td>\s*'
                     r'<td class="">0.17</td>', sites)
    assert "the hours the monitor was cut off itself are left out too" in dom


def test_the_hours_by_cause_and_the_upstream_nodes_show_as_sortable_tables(tmp_path: Path) -> None:
    """A site charged to an upstream node and one in maintenance (issue 21): the site table gets the hours by
    cause, a section lists the node with the site-hours behind it, and tablesort takes that table too."""
    record_october(tmp_path)
    site, agg = throughput_target("s7", district="Mugalzhar"), target("agg", group=UPSTREAM_GROUP, kind="router")
    down = ProbeErrorReason.UPSTREAM_DOWN
    store = SqliteStore(database_path(tmp_path))
    store.write([], [icmp(site, START + 60, 0.004), icmp(agg, START + 60, 0.001),
                     IcmpResult(site, START + 660, site.address, 1, (None,), down, upstream_detail("agg")),
                     icmp(agg, START + 660, None),
                     icmp(site, START + 1260, None, error=ProbeErrorReason.MAINTENANCE), icmp(agg, START + 1260, 0.001),
                     icmp(site, START + 1860, 0.004), icmp(agg, START + 1860, 0.001)])
    store.close()
    report = build_report(SqliteStore(database_path(tmp_path), read_only=True), OCT)
    page = tmp_path / "causes.html"
    page.write_text(render(report, "html"), encoding="utf-8")
    dom = chromium_dom(page)
    assert 'data-ready="1"' in dom
    sites = dom[dom.index('id="sites"'):]
    sites = sites[:sites.index("</table>")]
    for header in ("hours site down", "hours upstream down", "upstream nodes (hours)", "hours in maintenance"):
        assert re.search(rf'<th[^>]*role="columnheader"[^>]*>{re.escape(header)}</th>', sites), header
    # s7: 3 cycles run (the maintenance one left out), 2 up; 10 minutes charged to agg, 10 in maintenance
    assert re.search(r'<td class="text">s7</td>(\s*<td[^>]*>[^<]*</td>){4}\s*<td class="">66.67</td>\s*'
                     r'<td class="">0.00</td>\s*<td class="">0.17</td>\s*<td class="">agg 0.17</td>\s*'
                     r'<td class="">0.17</td>', sites)
    upstreams = dom[dom.index('id="upstreams"'):]
    upstreams = upstreams[:upstreams.index("</table>")]
    assert 'role="columnheader"' in upstreams  # sortable
    assert re.search(r'<td class="text">agg</td>\s*<td class="text">router</td>\s*<td>4</td>\s*<td>75.00</td>\s*'
                     r'<td>0.17</td>\s*<td>1</td>\s*<td>0.17</td>', upstreams)
    assert "Downtime by cause, all sites: against availability site" in dom
