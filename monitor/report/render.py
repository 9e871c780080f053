"""The report in each format: a terminal table, CSV for spreadsheets, Markdown, and one HTML file.

Every format shows the figures :mod:`monitor.report.compliance` computed, rounded only here. The HTML
report is a single self-contained file that opens offline (a ministry's laptop in a school has
no reason to reach a CDN): its template, Chart.js (the chart) and tablesort (click a column to
sort) are shipped in the package and inlined; the table and the summary are plain HTML, so the
page reads even with scripts off.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import statistics
from collections.abc import Callable
from importlib import resources

import jinja2
import markupsafe
from tabulate import tabulate

from monitor import __version__
from monitor.report.compliance import (
    VERDICT_WORDS,
    GroupSummary,
    Report,
    ReportFormat,
    Rollout,
    RolloutCounts,
    SiteRow,
    UpstreamRow,
    format_mbps,
    kind_noun,
    say_mbps,
)
from monitor.report.gaps import Downtime
from monitor.report.i18n import N_, current, language, ngettext, number
from monitor.report.i18n import date as say_date
from monitor.report.i18n import gettext as _
from monitor.report.kpis import KpiFigures, KpiReport

HEADERS = (N_("site"), N_("kind"), N_("district"), N_("link"), N_("target Mbit/s"), N_("availability %"),
           N_("RTT median ms"), N_("RTT p95 ms"), N_("loss %"), N_("tests"), N_("failed tests"),
           N_("download median Mbit/s"), N_("download min Mbit/s"), N_("met %"), N_("verdict"))
CSV_HEADERS = ("site", "kind", "district", "link", "target_mbps", "cycles", "cycles_up", "availability_percent",
               "rtt_median_ms", "rtt_p95_ms", "echoes", "replies", "loss_percent", "tests", "tests_failed",
               "tests_met", "download_median_mbps", "download_min_mbps", "met_percent", "verdict")


POWER_HEADER = N_("hours without power")  # after availability, only when some site had power gaps (issue 10)
POWER_CSV_HEADERS = ("hours_without_power", "cycles_missing")  # after availability_percent, likewise
# after availability (and the power columns), only when the monitor was cut off from some site (issue 21)
CUT_OFF_HEADER = N_("hours monitor cut off")
CUT_OFF_CSV_HEADERS = ("hours_monitor_cut_off",)
# downtime by cause (issue 21), after those: the site's own hours when some site had time of another cause,
# the upstream hours (total, then per node) when some site had any, the hours in maintenance likewise
SITE_DOWN_HEADER, SITE_DOWN_CSV_HEADER = N_("hours site down"), "hours_site_down"
UPSTREAM_HEADERS = (N_("hours upstream down"), N_("upstream nodes (hours)"))
UPSTREAM_CSV_HEADERS = ("hours_upstream_down", "upstream_down_hours_by_node")
MAINTENANCE_HEADER, MAINTENANCE_CSV_HEADER = N_("hours in maintenance"), "hours_maintenance"
LATENCY_HEADER = N_("added latency ms")  # before the verdict, only when some site had a sampled test (issue 20)
LATENCY_CSV_HEADERS = ("added_latency_median_ms", "latency_exceeded")  # last, likewise
# issue 22: availability in school hours, right after availability (the district table: last), and a section
# after the KPIs, only when the config declares a calendar (Report.school_hours)
SCHOOL_HEADER = N_("availability % school hours")
SCHOOL_CSV_HEADERS = ("cycles_school_hours", "cycles_up_school_hours", "availability_school_hours_percent")
SCHOOL_TITLE = N_("Availability in school hours")
SCHOOL_SENTENCE = N_("Availability in school hours: ICMP cycles that started in the site's school hours (the school "
                     "days and hours of its calendar, less holidays and term breaks; Monday to Friday 08:00-20:00 when "
                     "it names none) with at least one reply / those cycles run, by the same rule as availability "
                     "around the clock: maintenance, power cuts and a cut-off monitor are left out of both.")
SCHOOL_SECTION_HEADERS = (N_("scope"), N_("sites"), N_("availability %"), N_("availability % school hours"),
                          N_("prev"), N_("Δ pp"))
SCHOOL_CSV_SECTION_HEADERS = ("school_hours_scope", "kind", "district", "sites", "cycles", "cycles_up",
                              "availability_percent", "cycles_school_hours", "cycles_up_school_hours",
                              "availability_school_hours_percent", "previous_availability_school_hours_percent",
                              "availability_school_hours_change_pp")
_SCHOOL_ALIGN = ("left",) + ("right",) * (len(SCHOOL_SECTION_HEADERS) - 1)
_AVAILABILITY_COLUMN = HEADERS.index("availability %") + 1
_AVAILABILITY_CSV_COLUMN = CSV_HEADERS.index("availability_percent") + 1


# the verdict cell's word (the key stays the row's class in HTML, and the CSV's value)
VERDICT_CELLS = {"met": N_("met"), "partly": N_("partly"), "never": N_("never"), "untested": N_("untested"),
                 "no_data": N_("no_data")}
CONNECTED_SOURCES = {"planned_date": N_("planned_date"), "first_result": N_("first_result")}


def _fixed(value: float | None, digits: int, scale: float = 1.0) -> str:
    """A figure rounded to ``digits``, written in the report's language ("99.50", "99,50"; CSV: always the first)."""
    return "" if value is None else number(value * scale, digits)


def _hours(seconds: float, digits: int) -> str:
    return number(seconds / 3600.0, digits)


def _t(headers: tuple[str, ...]) -> tuple[str, ...]:
    """Headers in the report's language: the constants are the English message ids, compared as such."""
    return tuple(_(h) for h in headers)


def _by_node(d: Downtime, digits: int, between: str = " ", separator: str = ", ") -> str:
    """The hours charged to each upstream node: "agg 1.50, isp 0.50" (CSV: "agg=1.5000;isp=0.5000")."""
    return separator.join(f"{name}{between}{_hours(seconds, digits)}" for name, seconds in d.upstream_seconds)


def _cause_headers(report: Report) -> tuple[str, ...]:
    """The downtime-by-cause headers of the site and district tables, each only when some site has any."""
    return (((SITE_DOWN_HEADER,) if report.by_cause else ()) + (UPSTREAM_HEADERS if report.upstream_down else ())
            + ((MAINTENANCE_HEADER,) if report.maintenance else ()))


def _cause_cells(report: Report, d: Downtime, digits: int, csv_form: bool = False) -> list[str]:
    cells = [_hours(d.site_seconds, digits)] if report.by_cause else []
    if report.upstream_down:
        cells += [_hours(d.upstream_total_seconds, digits),
                  _by_node(d, digits, "=", ";") if csv_form else _by_node(d, digits)]
    if report.maintenance:
        cells.append(_hours(d.maintenance_seconds, digits))
    return cells


def _headers(report: Report) -> tuple[str, ...]:
    extra = (((SCHOOL_HEADER,) if report.school_hours else ()) + ((POWER_HEADER,) if report.power_gaps else ())
             + ((CUT_OFF_HEADER,) if report.monitor_cut_off else ()) + _cause_headers(report))
    headers = HEADERS[:_AVAILABILITY_COLUMN] + extra + HEADERS[_AVAILABILITY_COLUMN:]
    return headers[:-1] + (LATENCY_HEADER,) + headers[-1:] if report.latency_under_load else headers


def _row(r: SiteRow, report: Report) -> list[str]:
    cells = [r.name, r.kind, r.district, r.link, say_mbps(r.target_bits_per_second),
             _fixed(r.availability, 2, 100), _fixed(r.rtt_median_seconds, 3, 1e3), _fixed(r.rtt_p95_seconds, 3, 1e3),
             _fixed(r.loss, 2, 100), str(r.tests), str(r.tests_failed),
             _fixed(r.download_median_bits_per_second, 2, 1e-6), _fixed(r.download_min_bits_per_second, 2, 1e-6),
             _fixed(r.met_share, 0, 100), _(VERDICT_CELLS[r.verdict])]
    extra = ([_fixed(r.school_availability, 2, 100)] if report.school_hours else []) + (
        [_fixed(r.hours_without_power, 2)] if report.power_gaps else []) + (
        [_fixed(r.hours_monitor_cut_off, 2)] if report.monitor_cut_off else []) + _cause_cells(report, r.downtime, 2)
    cells[_AVAILABILITY_COLUMN:_AVAILABILITY_COLUMN] = extra
    if report.latency_under_load:  # before the verdict, which the HTML table keeps last
        cells.insert(len(cells) - 1, _fixed(r.added_latency_median_seconds, 1, 1e3))
    return cells


def _align(headers: tuple[str, ...], text: int) -> tuple[str, ...]:
    """Names (the first ``text`` columns, the per-node hours, the verdict) left, figures right."""
    return tuple("left" if i < text or h in (UPSTREAM_HEADERS[1], "verdict") else "right"
                 for i, h in enumerate(headers))


def _site_align(report: Report) -> tuple[str, ...]:
    return _align(_headers(report), 4)


def _title(report: Report) -> str:
    scope = " · ".join(x for x in (report.kind, report.district) if x)
    p = report.period
    period = _("{first} to {last} ({timezone})").format(first=say_date(p.first), last=say_date(p.last),
                                                         timezone=p.timezone)
    return _("connmon report, {period}").format(period=period) + (f" — {scope}" if scope else "")


def _district_rows(report: Report) -> list[list[str]]:
    out = []
    for s in report.by_district:
        d = s.downtime
        out.append([s.kind, s.district or "", str(s.sites), str(s.met), str(s.partly), str(s.never),
                    str(s.untested + s.no_data), _fixed(s.availability, 2, 100),
                    _fixed(s.download_median_bits_per_second, 2, 1e-6),
                    *([_hours(d.power_seconds, 2)] if report.power_gaps else []),
                    *([_hours(d.monitor_cut_off_seconds, 2)] if report.monitor_cut_off else []),
                    *_cause_cells(report, d, 2),
                    *([_fixed(s.school.availability if s.school else None, 2, 100)] if report.school_hours else [])])
    return out


_DISTRICT_HEADERS = (N_("kind"), N_("district"), N_("sites"), N_("met in every test"), N_("in some tests"),
                     N_("never"), N_("not tested"), N_("availability %"), N_("median download Mbit/s"))


def district_headers(report: Report) -> tuple[str, ...]:
    """The district table's headers: the downtime columns (issue 21) last, each only when some site has any."""
    return (_DISTRICT_HEADERS + ((POWER_HEADER,) if report.power_gaps else ())
            + ((CUT_OFF_HEADER,) if report.monitor_cut_off else ()) + _cause_headers(report)
            + ((SCHOOL_HEADER,) if report.school_hours else ()))


def _district_align(report: Report) -> tuple[str, ...]:
    return _align(district_headers(report), 2)


def summaries(report: Report) -> list[tuple[GroupSummary, list[GroupSummary]]]:
    """Each kind's summary with its districts' summaries, for the sentences on top of every report."""
    return [(kind, [d for d in report.by_district if d.kind == kind.kind]) for kind in report.by_kind]


def render_table(report: Report) -> str:
    lines = [_title(report), ""]
    for kind, districts in summaries(report):  # each kind, then its districts indented under it
        lines += [kind.sentence(), *(f"  {d.sentence()}" for d in districts)]
    lines += ["", tabulate(_district_rows(report), _t(district_headers(report)), tablefmt="simple",
                           disable_numparse=True, colalign=_district_align(report)), ""]
    lines.append(tabulate([_row(r, report) for r in report.sites], _t(_headers(report)), tablefmt="simple",
                          disable_numparse=True, colalign=_site_align(report)))
    if report.latency_under_load:
        lines += ["", report.latency_sentence()]
    if report.pep_sites:
        lines += ["", report.pep_sentence()]
    if report.kpis is not None:
        lines += ["", kpi_header(report.kpis), "", _kpi_table(report.kpis, "simple")]
        if report.kpis.school_hours:  # issue 22
            lines += ["", _(SCHOOL_SENTENCE), "", tabulate(school_rows(report.kpis), _t(SCHOOL_SECTION_HEADERS),
                                                           tablefmt="simple", disable_numparse=True,
                                                           colalign=_SCHOOL_ALIGN)]
    if report.upstreams:
        lines += ["", _(UPSTREAM_SENTENCE), "", tabulate(_upstream_rows(report.upstreams), _t(UPSTREAM_SECTION_HEADERS),
                                                       tablefmt="simple", disable_numparse=True,
                                                       colalign=_UPSTREAM_ALIGN)]
    if report.rollout is not None:
        lines += ["", rollout_sentence(report.rollout), "",
                  tabulate(_rollout_rows(report.rollout), _t(ROLLOUT_HEADERS), tablefmt="simple", disable_numparse=True,
                           colalign=_ROLLOUT_ALIGN)]
        if report.rollout.connected:
            lines += ["", tabulate(_connected_rows(report.rollout), _t(CONNECTED_HEADERS), tablefmt="simple",
                                   disable_numparse=True)]
    return "\n".join(lines) + "\n"


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    power, cut_off = report.power_gaps, report.monitor_cut_off
    cut = _AVAILABILITY_CSV_COLUMN
    causes = (((SITE_DOWN_CSV_HEADER,) if report.by_cause else ())
              + (UPSTREAM_CSV_HEADERS if report.upstream_down else ())
              + ((MAINTENANCE_CSV_HEADER,) if report.maintenance else ()))
    latency = report.latency_under_load
    school = report.school_hours  # issue 22
    writer.writerow(CSV_HEADERS[:cut] + (SCHOOL_CSV_HEADERS if school else ()) + (POWER_CSV_HEADERS if power else ())
                    + (CUT_OFF_CSV_HEADERS if cut_off else ()) + causes + CSV_HEADERS[cut:]
                    + (LATENCY_CSV_HEADERS if latency else ()))
    for r in report.sites:
        cells: list[object] = [
            r.name, r.kind, r.district, r.link, format_mbps(r.target_bits_per_second), r.cycles,
            r.cycles_up, _fixed(r.availability, 4, 100), _fixed(r.rtt_median_seconds, 3, 1e3),
            _fixed(r.rtt_p95_seconds, 3, 1e3), r.echoes, r.replies, _fixed(r.loss, 4, 100), r.tests,
            r.tests_failed, r.tests_met, _fixed(r.download_median_bits_per_second, 3, 1e-6),
            _fixed(r.download_min_bits_per_second, 3, 1e-6), _fixed(r.met_share, 2, 100), r.verdict]
        cells[cut:cut] = ([r.school.cycles if r.school else 0, r.school.cycles_up if r.school else 0,
                           _fixed(r.school_availability, 4, 100)] if school else []) + (
            [_fixed(r.hours_without_power, 4), r.cycles_missing] if power else []) + (
            [_fixed(r.hours_monitor_cut_off, 4)] if cut_off else []) + _cause_cells(report, r.downtime, 4, True)
        if latency:
            cells += [_fixed(r.added_latency_median_seconds, 3, 1e3),
                      "" if r.latency_exceeded is None else str(r.latency_exceeded).lower()]
        writer.writerow(cells)
    if report.kpis is not None:  # a second table after a blank line: the KPIs, with their raw counts
        writer.writerow([])
        writer.writerow(kpi_csv_headers(report.kpis))
        writer.writerows(kpi_csv_rows(report.kpis))
        if report.kpis.school_hours:  # then availability in school hours (issue 22)
            writer.writerow([])
            writer.writerow(SCHOOL_CSV_SECTION_HEADERS)
            writer.writerows(school_csv_rows(report.kpis))
    if report.rollout is not None:  # then the roll-out counts, and the sites connected in the period
        writer.writerow([])
        writer.writerow(ROLLOUT_CSV_HEADERS)
        writer.writerows([["district" if c.district is not None else "all", c.district or "", c.planned,
                           c.connected, c.connected_in_period, c.retired]
                          for c in (*report.rollout.districts, report.rollout.total)])
        writer.writerow([])
        writer.writerow(CONNECTED_CSV_HEADERS)
        writer.writerows(_connected_rows(report.rollout))
    if latency:  # the KPI line of issue 20, as one row after a blank line
        writer.writerow([])
        writer.writerow(("latency_sites_exceeding", "latency_sites_judged"))
        writer.writerow(report.latency_sites)
    if report.pep_sites:  # and the sites behind a proxy (issue 20), one per row
        writer.writerow([])
        writer.writerow(("pep_detected_site",))
        writer.writerows([name] for name in report.pep_sites)
    if report.upstreams:  # last, so that the tables before it keep their places
        writer.writerow([])
        writer.writerow(UPSTREAM_CSV_SECTION_HEADERS)
        writer.writerows([[u.name, u.kind, u.cycles, u.cycles_up, _fixed(u.availability, 4, 100),
                           _hours(u.down_seconds, 4), u.sites, _hours(u.site_seconds, 4)] for u in report.upstreams])
    return out.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    lines = [f"# {_md_escape(_title(report))}", "", "## " + _("Summary"), ""]
    for kind, districts in summaries(report):
        lines += [f"- {_md_escape(kind.sentence())}", *(f"  - {_md_escape(d.sentence())}" for d in districts)]
    lines += ["", "## " + _("By district"), "",
              tabulate([[_md_escape(c) for c in row] for row in _district_rows(report)], _t(district_headers(report)),
                       tablefmt="github", disable_numparse=True, colalign=_district_align(report)),
              "", "## " + _("Sites"), "",
              tabulate([[_md_escape(c) for c in _row(r, report)] for r in report.sites], _t(_headers(report)),
                       tablefmt="github", disable_numparse=True, colalign=_site_align(report)), ""]
    if report.latency_under_load:
        lines += [_md_escape(report.latency_sentence()), ""]
    if report.pep_sites:
        lines += [_md_escape(report.pep_sentence()), ""]
    if report.kpis is not None:
        lines += ["## " + _("KPIs for the ministry"), "", _md_escape(kpi_header(report.kpis)), "",
                  tabulate([[_md_escape(c) for c in row] for row in _kpi_rows(report.kpis)], _t(KPI_HEADERS),
                           tablefmt="github", disable_numparse=True, colalign=_KPI_ALIGN), ""]
        if report.kpis.school_hours:  # issue 22
            lines += ["## " + _(SCHOOL_TITLE), "", _md_escape(_(SCHOOL_SENTENCE)), "",
                      tabulate([[_md_escape(c) for c in row] for row in school_rows(report.kpis)],
                               _t(SCHOOL_SECTION_HEADERS), tablefmt="github", disable_numparse=True,
                               colalign=_SCHOOL_ALIGN), ""]
    if report.upstreams:
        lines += ["## " + _("Upstream nodes"), "", _(UPSTREAM_SENTENCE), "",
                  tabulate([[_md_escape(c) for c in row] for row in _upstream_rows(report.upstreams)],
                           _t(UPSTREAM_SECTION_HEADERS), tablefmt="github", disable_numparse=True,
                           colalign=_UPSTREAM_ALIGN), ""]
    if report.rollout is not None:
        lines += ["## " + _("Roll-out"), "", _md_escape(rollout_sentence(report.rollout)), "",
                  tabulate([[_md_escape(c) for c in row] for row in _rollout_rows(report.rollout)], _t(ROLLOUT_HEADERS),
                           tablefmt="github", disable_numparse=True, colalign=_ROLLOUT_ALIGN), ""]
        if report.rollout.connected:
            lines += [tabulate([[_md_escape(c) for c in row] for row in _connected_rows(report.rollout)],
                               _t(CONNECTED_HEADERS), tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines)


def chart_data(report: Report) -> dict[str, object]:
    """Per district: the median and the lowest of its sites' median downloads; a line per distinct target.

    Sites of different targets (4 Mbit/s schools, 2 Mbit/s clinics) share a district's bars, so one
    line at the most common target would misjudge the others: every target of the sites in the
    bars gets its own line, labelled with how many sites of which kind have it.
    """
    districts = sorted({r.district for r in report.sites})
    medians, lowest = [], []
    for district in districts:
        rates = [r.download_median_bits_per_second / 1e6 for r in report.sites
                 if r.district == district and r.download_median_bits_per_second is not None]
        medians.append(round(statistics.median(rates), 3) if rates else None)
        lowest.append(round(min(rates), 3) if rates else None)
    # the targets of the sites in the bars; with no download at all, those of every site (an empty chart)
    charted = [r for r in report.sites if r.download_median_bits_per_second is not None] or list(report.sites)
    targets = sorted({r.target_bits_per_second for r in charted})
    lines = []
    for target in targets:
        label = _("target {mbps} Mbit/s").format(mbps=say_mbps(target))
        if len(targets) > 1:
            kinds = sorted({r.kind for r in charted if r.target_bits_per_second == target})
            label += " (" + ", ".join(
                f"{n} {kind_noun(k, n)}" for k in kinds
                for n in [sum(1 for r in charted if r.kind == k and r.target_bits_per_second == target)]) + ")"
        lines.append({"mbps": target / 1e6, "label": label})
    return {"districts": districts, "median": medians, "lowest": lowest, "targets": lines}


def _asset(name: str) -> str:
    return resources.files("monitor.report").joinpath("assets", name).read_text(encoding="utf-8")


def render_html(report: Report) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("monitor.report", "templates"),
                             autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined,
                             extensions=["jinja2.ext.i18n"])
    # the template's words through the same catalogues (issue 22), as the template's own text was: trusted markup
    # (the shipped catalogues), so an apostrophe stays one; old-style: no %-formatting of the result
    env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda message: markupsafe.Markup(_(message)),
        lambda singular, plural, n: markupsafe.Markup(ngettext(singular, plural, n)), newstyle=False)
    template = env.get_template("report.html.j2")
    generated = dt.datetime.fromtimestamp(report.generated_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return template.render(
        title=_title(report), lang=current().language, report=report, headers=_t(_headers(report)),
        rows=[(_row(r, report), r) for r in report.sites],
        district_headers=_t(district_headers(report)), district_rows=_district_rows(report),
        summaries=summaries(report), verdict_words={key: _(words) for key, words in VERDICT_WORDS.items()},
        verdict_cells={key: _(word) for key, word in VERDICT_CELLS.items()},
        chart=chart_data(report), version=__version__,
        generated=generated,
        kpi_header=None if report.kpis is None else kpi_header(report.kpis), kpi_headers=_t(KPI_HEADERS),
        kpi_rows=[] if report.kpis is None else _kpi_rows(report.kpis),
        school=None if report.kpis is None or not report.kpis.school_hours else {  # issue 22
            "title": _(SCHOOL_TITLE), "sentence": _(SCHOOL_SENTENCE), "headers": _t(SCHOOL_SECTION_HEADERS),
            "rows": school_rows(report.kpis)},
        latency_sentence=report.latency_sentence() if report.latency_under_load else None,
        pep_sentence=report.pep_sentence() if report.pep_sites else None,
        rollout=None if report.rollout is None else {
            "sentence": rollout_sentence(report.rollout), "headers": _t(ROLLOUT_HEADERS),
            "rows": _rollout_rows(report.rollout), "connected_headers": _t(CONNECTED_HEADERS),
            "connected": _connected_rows(report.rollout)},
        upstreams=None if not report.upstreams else {
            "sentence": _(UPSTREAM_SENTENCE), "headers": _t(UPSTREAM_SECTION_HEADERS),
            "rows": _upstream_rows(report.upstreams)},
        # the libraries go in verbatim; "</" never occurs in them outside strings (checked by a test)
        scripts=[markupsafe.Markup(_asset(name)) for name in
                 ("chart.umd.min.js", "tablesort.min.js", "tablesort.number.min.js")])


# ----------------------------------------------------------------------------- the ministry's KPIs (issue 11)

KPI_HEADERS = (N_("scope"), N_("sites"), N_("measured"), N_("median ≥ target %"), N_("prev"), N_("Δ pp"),
               N_("≥ 80% of contract %"), N_("prev"), N_("Δ pp"), N_("availability %"), N_("prev"), N_("Δ pp"),
               N_("live"), N_("at risk"), N_("dropped"), N_("prev live/at risk/dropped"))
KPI_CSV_HEADERS = ("kpi_scope", "kind", "district", "sites", "sites_measured", "median_met_target",
                   "median_met_target_percent", "previous_median_met_target_percent", "median_met_target_change_pp",
                   "at_80_percent_of_contract", "at_80_percent_of_contract_percent",
                   "previous_at_80_percent_of_contract_percent", "at_80_percent_of_contract_change_pp",
                   "cycles", "cycles_up", "cycles_in_maintenance", "availability_percent",
                   "previous_availability_percent", "availability_change_pp", "live", "at_risk", "dropped",
                   "previous_live", "previous_at_risk", "previous_dropped")
_KPI_ALIGN = ("left",) + ("right",) * (len(KPI_HEADERS) - 1)


def _signed(value: float | None, digits: int) -> str:
    return "" if value is None else number(value, digits, signed=True)


def kpi_header(kpis: KpiReport) -> str:
    """What the KPI figures left out, in one sentence for the report's reader."""
    t = kpis.thresholds
    if kpis.maintenance_considered:
        maintenance = _("declared maintenance windows (--config) are left out of availability")
    elif kpis.maintenance:  # windows opened through the API are in the history itself (issue 21)
        maintenance = _("maintenance opened through the API is left out of availability; declared windows are not "
                        "(no --config given)")
    else:
        maintenance = _("no maintenance is left out of availability (no --config given)")
    if kpis.power_gaps:
        maintenance += _("; agent sites' hours without power are left out too")
    if kpis.monitor_cut_off:
        maintenance += _("; the hours the monitor was cut off itself are left out too")
    text = _("KPIs for the ministry: {maintenance}; at risk after {at_risk} days without a success, "
             "dropped after {dropped}; previous period: the {days} before.").format(
                 maintenance=maintenance, at_risk=_days_figure(t.at_risk_days), dropped=_days_figure(t.dropped_days),
                 days=_days(kpis))
    if kpis.by_cause:
        text += " " + downtime_sentence(kpis.groups[0].current.downtime)
    return text


def downtime_sentence(d: Downtime) -> str:
    """The hours of each cause (issue 21) in one sentence, e.g. for the KPI header.

    "Downtime by cause, all sites: against availability site 3.00 h, upstream 2.00 h (agg 2.00); left out of it:
    without power 4.00 h." (the causes left out only when they have any time).
    """
    against = [_("site {hours} h").format(hours=_hours(d.site_seconds, 2))]
    if d.upstream_seconds:
        against.append(_("upstream {hours} h ({nodes})").format(hours=_hours(d.upstream_total_seconds, 2),
                                                                 nodes=_by_node(d, 2)))
    left = [_(name).format(hours=_hours(seconds, 2)) for name, seconds in (
        (N_("monitor cut off {hours} h"), d.monitor_cut_off_seconds), (N_("without power {hours} h"), d.power_seconds),
        (N_("maintenance {hours} h"), d.maintenance_seconds)) if seconds > 0]
    text = _("Downtime by cause, all sites: against availability {causes}").format(causes=", ".join(against))
    return text + (_("; left out of it: {causes}").format(causes=", ".join(left)) if left else "") + "."


def _days(kpis: KpiReport) -> str:
    """The period's length in days, as words: "30 days", "1 day" (a report of one day is common)."""
    days = f"{(kpis.span.end - kpis.span.start) / 86400:.0f}"
    return ngettext("{days} day", "{days} days", int(days)).format(days=days)


def _days_figure(days: float) -> str:
    """A threshold in days as configured ("21", "10.5"), written in the report's language."""
    text = f"{days:g}"
    return number(days, len(text.partition(".")[2])) if "e" not in text else text


def _kpi_rows(kpis: KpiReport) -> list[list[str]]:
    rows = []
    for g in kpis.groups:
        c, p, d = g.current, g.previous, g.changes()
        rows.append([_("all sites") if g.scope == "all" else g.label, str(c.sites), str(c.sites_measured),
                     _fixed(c.median_met_target_share, 2, 100), _fixed(p.median_met_target_share, 2, 100),
                     _signed(d["median_met_target"], 2),
                     _fixed(c.at_contract_share_share, 2, 100), _fixed(p.at_contract_share_share, 2, 100),
                     _signed(d["at_80_percent_of_contract"], 2),
                     _fixed(c.availability, 2, 100), _fixed(p.availability, 2, 100), _signed(d["availability"], 2),
                     str(c.live), str(c.at_risk), str(c.dropped), f"{p.live}/{p.at_risk}/{p.dropped}"])
    return rows


def _kpi_table(kpis: KpiReport, fmt: str) -> str:
    return tabulate(_kpi_rows(kpis), _t(KPI_HEADERS), tablefmt=fmt, disable_numparse=True, colalign=_KPI_ALIGN)


def kpi_csv_headers(kpis: KpiReport) -> tuple[str, ...]:
    """The KPI CSV's header: hours without power, then hours monitor cut off, last; each only when some site has any."""
    return (KPI_CSV_HEADERS + (("hours_without_power",) if kpis.power_gaps else ())
            + (CUT_OFF_CSV_HEADERS if kpis.monitor_cut_off else ()) + _kpi_cause_headers(kpis))


def _kpi_cause_headers(kpis: KpiReport) -> tuple[str, ...]:
    """The KPI CSV's downtime columns (issue 21), after the others, each only when some site has any."""
    return (((SITE_DOWN_CSV_HEADER,) if kpis.by_cause else ())
            + (UPSTREAM_CSV_HEADERS[:1] if kpis.upstream_down else ())
            + ((MAINTENANCE_CSV_HEADER,) if kpis.maintenance else ()))


def kpi_csv_rows(kpis: KpiReport) -> list[list[object]]:
    out: list[list[object]] = []
    for g in kpis.groups:
        c, p, d = g.current, g.previous, g.changes()
        power: list[object] = [_fixed(c.power_off_seconds, 4, 1 / 3600)] if kpis.power_gaps else []
        if kpis.monitor_cut_off:
            power.append(_fixed(c.monitor_cut_off_seconds, 4, 1 / 3600))
        if kpis.by_cause:
            power.append(_hours(c.downtime.site_seconds, 4))
        if kpis.upstream_down:
            power.append(_hours(c.downtime.upstream_total_seconds, 4))
        if kpis.maintenance:
            power.append(_hours(c.downtime.maintenance_seconds, 4))
        out.append([g.scope, g.kind or "", g.district or "", c.sites, c.sites_measured, c.median_met_target,
                    _fixed(c.median_met_target_share, 4, 100), _fixed(p.median_met_target_share, 4, 100),
                    _fixed(d["median_met_target"], 4), c.at_contract_share,
                    _fixed(c.at_contract_share_share, 4, 100), _fixed(p.at_contract_share_share, 4, 100),
                    _fixed(d["at_80_percent_of_contract"], 4), c.cycles, c.cycles_up, c.cycles_in_maintenance,
                    _fixed(c.availability, 4, 100), _fixed(p.availability, 4, 100), _fixed(d["availability"], 4),
                    c.live, c.at_risk, c.dropped, p.live, p.at_risk, p.dropped, *power])
    return out


def _causes_json(d: Downtime, kpis: KpiReport) -> dict[str, object]:
    """The downtime fields (issue 21), each only when some site has any, so older documents stay as they were."""
    out: dict[str, object] = {}
    if kpis.by_cause:
        out["site_down_seconds"] = d.site_seconds
    if kpis.upstream_down:
        out["upstream_down_seconds"] = dict(d.upstream_seconds)
    if kpis.maintenance:
        out["maintenance_seconds"] = d.maintenance_seconds
    return out


def _figures_json(f: KpiFigures, power: bool, cut_off: bool) -> dict[str, object]:
    out: dict[str, object] = {
        "sites": f.sites, "sites_measured": f.sites_measured, "median_met_target": f.median_met_target,
        "at_80_percent_of_contract": f.at_contract_share, "cycles": f.cycles, "cycles_up": f.cycles_up,
        "cycles_in_maintenance": f.cycles_in_maintenance, "live": f.live, "at_risk": f.at_risk,
        "dropped": f.dropped, "shares": f.shares()}
    if power:  # absent, not 0, without power gaps: older documents stay as they were
        out["power_off_seconds"] = f.power_off_seconds
    if cut_off:  # likewise absent without a cut-off monitor (issue 21)
        out["monitor_cut_off_seconds"] = f.monitor_cut_off_seconds
    if f.school is not None:  # likewise absent without calendars (issue 22); the share is in "shares"
        out["cycles_school_hours"], out["cycles_up_school_hours"] = f.school.cycles, f.school.cycles_up
    return out


def kpis_json(kpis: KpiReport) -> dict[str, object]:
    """The KPI document (``--format json`` and the summary API): raw counts, shares in 0..1, changes in pp."""
    power, cut_off = kpis.power_gaps, kpis.monitor_cut_off
    sites: list[dict[str, object]] = []
    for s in kpis.sites:
        site: dict[str, object] = {
            "name": s.name, "kind": s.kind, "district": s.district,
            "target_bits_per_second": s.target_bits_per_second,
            "contracted_bits_per_second": s.contracted_bits_per_second,
            "download_median_bits_per_second": s.download_median_bits_per_second,
            "median_met_target": s.median_met_target, "at_80_percent_of_contract": s.at_contract_share,
            "cycles": s.cycles, "cycles_up": s.cycles_up, "cycles_in_maintenance": s.cycles_in_maintenance,
            "last_success_at": s.last_success_at, "status": s.status}
        if power:
            site["power_off_seconds"] = s.power_off_seconds
            site["cycles_missing"] = s.cycles_missing
        if cut_off:
            site["monitor_cut_off_seconds"] = s.monitor_cut_off_seconds
        site.update(_causes_json(s.downtime, kpis))
        if s.school is not None:  # issue 22
            site.update({"cycles_school_hours": s.school.cycles, "cycles_up_school_hours": s.school.cycles_up,
                         "availability_school_hours_ratio": s.school.availability})
        sites.append(site)
    return {
        "period": {"start": kpis.span.start, "end": kpis.span.end},
        "previous_period": {"start": kpis.previous_span.start, "end": kpis.previous_span.end},
        "maintenance_considered": kpis.maintenance_considered,
        "thresholds": {"at_risk_days": kpis.thresholds.at_risk_days, "dropped_days": kpis.thresholds.dropped_days},
        "groups": [{"scope": g.scope, "kind": g.kind, "district": g.district,
                    "current": {**_figures_json(g.current, power, cut_off), **_causes_json(g.current.downtime, kpis)},
                    "previous": {**_figures_json(g.previous, power, cut_off),
                                 **_causes_json(g.previous.downtime, kpis)},
                    "change_pp": g.changes()} for g in kpis.groups],
        "sites": sites,
    }


def render_json(report: Report) -> str:
    """A stable machine-readable document: the period, the KPIs, and every site's row (base units)."""
    doc: dict[str, object] = {
        "format": "connmon-report/1",
        "period": {"first": report.period.first.isoformat(), "last": report.period.last.isoformat(),
                   "timezone": report.period.timezone},
        "kind": report.kind, "district": report.district,
        "kpis": None if report.kpis is None else kpis_json(report.kpis),
    }
    if report.rollout is not None:  # absent, not null, without roll-out keys: older documents stay as they were
        doc["rollout"] = rollout_json(report.rollout)
    if report.upstreams:  # likewise absent without upstream nodes (issue 21)
        doc["upstreams"] = upstreams_json(report.upstreams)
    if report.latency_under_load:  # likewise absent without a sampled test (issue 20)
        over, judged = report.latency_sites
        doc["latency_under_load"] = {
            "sites_exceeding": over, "sites_judged": judged, "sentence": report.latency_sentence(),
            "sites": [{"name": r.name, "added_latency_median_seconds": r.added_latency_median_seconds,
                       "exceeded": r.latency_exceeded} for r in report.sites
                      if r.added_latency_median_seconds is not None]}
    if report.pep_sites:  # likewise absent when no site is behind a proxy (issue 20)
        doc["pep_detected"] = {"sites": list(report.pep_sites), "sentence": report.pep_sentence()}
    if report.school_hours:  # likewise absent without calendars (issue 22): the figures are in "kpis"
        doc["school_hours"] = {"sentence": _(SCHOOL_SENTENCE)}
    if current().language != "en":  # the language of the sentences; the keys never change (issue 22)
        doc["language"] = current().language
    return json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


# ----------------------------------------------------------------------------- school hours (issue 22)

def school_rows(kpis: KpiReport) -> list[list[str]]:
    """The school-hours section: each KPI group's availability around the clock and in school hours."""
    rows = []
    for g in kpis.groups:
        c, p, d = g.current, g.previous, g.changes()
        rows.append([_("all sites") if g.scope == "all" else g.label, str(c.sites), _fixed(c.availability, 2, 100),
                     _fixed(c.school_availability, 2, 100), _fixed(p.school_availability, 2, 100),
                     _signed(d.get("availability_school_hours"), 2)])
    return rows


def school_csv_rows(kpis: KpiReport) -> list[list[object]]:
    out: list[list[object]] = []
    for g in kpis.groups:
        c, p, d = g.current, g.previous, g.changes()
        school = c.school
        out.append([g.scope, g.kind or "", g.district or "", c.sites, c.cycles, c.cycles_up,
                    _fixed(c.availability, 4, 100), school.cycles if school else 0, school.cycles_up if school else 0,
                    _fixed(c.school_availability, 4, 100), _fixed(p.school_availability, 4, 100),
                    _fixed(d.get("availability_school_hours"), 4)])
    return out


# ----------------------------------------------------------------------------- roll-out (issue 11)

ROLLOUT_HEADERS = (N_("district"), N_("planned"), N_("connected"), N_("connected in the period"), N_("retired"))
ROLLOUT_CSV_HEADERS = ("rollout_scope", "district", "planned", "connected", "connected_in_period", "retired")
CONNECTED_HEADERS = (N_("connected in the period"), N_("kind"), N_("district"), N_("on"), N_("date from"))
CONNECTED_CSV_HEADERS = ("connected_site", "kind", "district", "connected_on", "date_from")
_ROLLOUT_ALIGN = ("left",) + ("right",) * (len(ROLLOUT_HEADERS) - 1)


def rollout_sentence(rollout: Rollout) -> str:
    """E.g. "Roll-out: 5 sites connected (2 of them in the period), 3 planned, 1 retired."."""
    t = rollout.total
    counts = ngettext("Roll-out: {connected} site connected ({in_period} of them in the period), {planned} planned, "
                      "{retired} retired.",
                      "Roll-out: {connected} sites connected ({in_period} of them in the period), {planned} planned, "
                      "{retired} retired.", t.connected).format(connected=t.connected, in_period=t.connected_in_period,
                                                                planned=t.planned, retired=t.retired)
    return counts + " " + _("Connected in the period: the site's planned_date, or else its first result, falls "
                            "within the period.")


def _rollout_rows(rollout: Rollout) -> list[list[str]]:
    def row(c: RolloutCounts) -> list[str]:
        return [c.district if c.district is not None else _("all"), str(c.planned), str(c.connected),
                str(c.connected_in_period), str(c.retired)]
    return [row(c) for c in rollout.districts] + [row(rollout.total)]


def _connected_rows(rollout: Rollout) -> list[list[str]]:
    return [[c.name, c.kind, c.district, say_date(c.connected_on), _(CONNECTED_SOURCES[c.source])]
            for c in rollout.connected]


def rollout_json(rollout: Rollout) -> dict[str, object]:
    def counts(c: RolloutCounts) -> dict[str, object]:
        return {"district": c.district, "planned": c.planned, "connected": c.connected,
                "connected_in_period": c.connected_in_period, "retired": c.retired}
    return {"districts": [counts(c) for c in rollout.districts], "total": counts(rollout.total),
            "connected_in_period": [{"name": c.name, "kind": c.kind, "district": c.district,
                                     "connected_on": c.connected_on.isoformat(), "date_from": c.source}
                                    for c in rollout.connected]}


# ----------------------------------------------------------------------------- upstream nodes (issue 21)

UPSTREAM_SENTENCE = N_("Upstream nodes: each node's own cycles (availability and hours down, by the sites' rule), "
                        "and the site-hours behind it: the time of the report's sites charged to it (upstream_down).")
UPSTREAM_SECTION_HEADERS = (N_("upstream node"), N_("kind"), N_("cycles"), N_("availability %"), N_("hours down"),
                            N_("sites behind"), N_("site-hours behind"))
UPSTREAM_CSV_SECTION_HEADERS = ("upstream_node", "kind", "cycles", "cycles_up", "availability_percent", "hours_down",
                                "sites_behind", "site_hours_behind")
_UPSTREAM_ALIGN = ("left",) * 2 + ("right",) * (len(UPSTREAM_SECTION_HEADERS) - 2)


def _upstream_rows(upstreams: tuple[UpstreamRow, ...]) -> list[list[str]]:
    return [[u.name, u.kind, str(u.cycles), _fixed(u.availability, 2, 100), _hours(u.down_seconds, 2), str(u.sites),
             _hours(u.site_seconds, 2)] for u in upstreams]


def upstreams_json(upstreams: tuple[UpstreamRow, ...]) -> list[dict[str, object]]:
    """The upstream section (``--format json`` and the summary API), in base units."""
    return [{"name": u.name, "kind": u.kind, "cycles": u.cycles, "cycles_up": u.cycles_up,
             "availability_ratio": u.availability, "down_seconds": u.down_seconds, "sites": u.sites,
             "site_seconds": u.site_seconds} for u in upstreams]


RENDERERS: dict[ReportFormat, Callable[[Report], str]] = {
    "table": render_table, "csv": render_csv, "markdown": render_markdown, "html": render_html,
    "json": render_json}


def render(report: Report, fmt: ReportFormat, lang: str = "en") -> str:
    """The report in ``fmt`` and language ``lang`` (issue 22).

    CSV is data for spreadsheets and scripts: its headers are keys and its figures have a decimal point in
    every language, as JSON's keys and numbers do; JSON's sentences are in ``lang``.
    """
    with language("en" if fmt == "csv" else lang):
        return RENDERERS[fmt](report)

