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
from monitor.report.cells import (
    CUT_OFF_CSV_HEADERS,
    CUT_OFF_HEADER,
    MAINTENANCE_CSV_HEADER,
    MAINTENANCE_HEADER,
    SITE_DOWN_CSV_HEADER,
    SITE_DOWN_HEADER,
    UPSTREAM_CSV_HEADERS,
    UPSTREAM_HEADERS,
    by_node,
    fixed,
    hours,
    translated,
)
from monitor.report.compliance import VERDICT_WORDS, GroupSummary, Report, ReportFormat, SiteRow
from monitor.report.gaps import Downtime
from monitor.report.i18n import N_, current, language, ngettext
from monitor.report.i18n import date as say_date
from monitor.report.i18n import gettext as _
from monitor.report.sections import (
    CONNECTED_CSV_HEADERS,
    CONNECTED_HEADERS,
    KPI_ALIGN,
    KPI_HEADERS,
    ROLLOUT_ALIGN,
    ROLLOUT_CSV_HEADERS,
    ROLLOUT_HEADERS,
    UPSTREAM_ALIGN,
    UPSTREAM_CSV_SECTION_HEADERS,
    UPSTREAM_SECTION_HEADERS,
    UPSTREAM_SENTENCE,
    connected_rows,
    kpi_csv_headers,
    kpi_csv_rows,
    kpi_header,
    kpi_rows,
    kpi_table,
    kpis_json,
    rollout_json,
    rollout_rows,
    rollout_sentence,
    school_csv_rows,
    school_rows,
    upstream_rows,
    upstreams_json,
)
from monitor.report.words import format_mbps, kind_noun, say_mbps

HEADERS = (N_("site"), N_("kind"), N_("district"), N_("link"), N_("target Mbit/s"), N_("availability %"),
           N_("RTT median ms"), N_("RTT p95 ms"), N_("loss %"), N_("tests"), N_("failed tests"),
           N_("download median Mbit/s"), N_("download min Mbit/s"), N_("met %"), N_("verdict"))
CSV_HEADERS = ("site", "kind", "district", "link", "target_mbps", "cycles", "cycles_up", "availability_percent",
               "rtt_median_ms", "rtt_p95_ms", "echoes", "replies", "loss_percent", "tests", "tests_failed",
               "tests_met", "download_median_mbps", "download_min_mbps", "met_percent", "verdict")


POWER_HEADER = N_("hours without power")  # after availability, only when some site had power gaps (issue 10)
POWER_CSV_HEADERS = ("hours_without_power", "cycles_missing")  # after availability_percent, likewise
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


def _cause_headers(report: Report) -> tuple[str, ...]:
    """The downtime-by-cause headers of the site and district tables, each only when some site has any."""
    return (((SITE_DOWN_HEADER,) if report.by_cause else ()) + (UPSTREAM_HEADERS if report.upstream_down else ())
            + ((MAINTENANCE_HEADER,) if report.maintenance else ()))


def _cause_cells(report: Report, d: Downtime, digits: int, csv_form: bool = False) -> list[str]:
    cells = [hours(d.site_seconds, digits)] if report.by_cause else []
    if report.upstream_down:
        cells += [hours(d.upstream_total_seconds, digits),
                  by_node(d, digits, "=", ";") if csv_form else by_node(d, digits)]
    if report.maintenance:
        cells.append(hours(d.maintenance_seconds, digits))
    return cells


def _headers(report: Report) -> tuple[str, ...]:
    extra = (((SCHOOL_HEADER,) if report.school_hours else ()) + ((POWER_HEADER,) if report.power_gaps else ())
             + ((CUT_OFF_HEADER,) if report.monitor_cut_off else ()) + _cause_headers(report))
    headers = HEADERS[:_AVAILABILITY_COLUMN] + extra + HEADERS[_AVAILABILITY_COLUMN:]
    return headers[:-1] + (LATENCY_HEADER,) + headers[-1:] if report.latency_under_load else headers


def _row(r: SiteRow, report: Report) -> list[str]:
    cells = [r.name, r.kind, r.district, r.link, say_mbps(r.target_bits_per_second),
             fixed(r.availability, 2, 100), fixed(r.rtt_median_seconds, 3, 1e3), fixed(r.rtt_p95_seconds, 3, 1e3),
             fixed(r.loss, 2, 100), str(r.tests), str(r.tests_failed),
             fixed(r.download_median_bits_per_second, 2, 1e-6), fixed(r.download_min_bits_per_second, 2, 1e-6),
             fixed(r.met_share, 0, 100), _(VERDICT_CELLS[r.verdict])]
    extra = ([fixed(r.school_availability, 2, 100)] if report.school_hours else []) + (
        [fixed(r.hours_without_power, 2)] if report.power_gaps else []) + (
        [fixed(r.hours_monitor_cut_off, 2)] if report.monitor_cut_off else []) + _cause_cells(report, r.downtime, 2)
    cells[_AVAILABILITY_COLUMN:_AVAILABILITY_COLUMN] = extra
    if report.latency_under_load:  # before the verdict, which the HTML table keeps last
        cells.insert(len(cells) - 1, fixed(r.added_latency_median_seconds, 1, 1e3))
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
                    str(s.untested + s.no_data), fixed(s.availability, 2, 100),
                    fixed(s.download_median_bits_per_second, 2, 1e-6),
                    *([hours(d.power_seconds, 2)] if report.power_gaps else []),
                    *([hours(d.monitor_cut_off_seconds, 2)] if report.monitor_cut_off else []),
                    *_cause_cells(report, d, 2),
                    *([fixed(s.school.availability if s.school else None, 2, 100)] if report.school_hours else [])])
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
    lines += ["", tabulate(_district_rows(report), translated(district_headers(report)), tablefmt="simple",
                           disable_numparse=True, colalign=_district_align(report)), ""]
    lines.append(tabulate([_row(r, report) for r in report.sites], translated(_headers(report)), tablefmt="simple",
                          disable_numparse=True, colalign=_site_align(report)))
    if report.latency_under_load:
        lines += ["", report.latency_sentence()]
    if report.pep_sites:
        lines += ["", report.pep_sentence()]
    if report.kpis is not None:
        lines += ["", kpi_header(report.kpis), "", kpi_table(report.kpis, "simple")]
        if report.kpis.school_hours:  # issue 22
            lines += ["", _(SCHOOL_SENTENCE), "", tabulate(school_rows(report.kpis), translated(SCHOOL_SECTION_HEADERS),
                                                           tablefmt="simple", disable_numparse=True,
                                                           colalign=_SCHOOL_ALIGN)]
    if report.upstreams:
        lines += ["", _(UPSTREAM_SENTENCE), "",
                  tabulate(upstream_rows(report.upstreams), translated(UPSTREAM_SECTION_HEADERS), tablefmt="simple",
                           disable_numparse=True, colalign=UPSTREAM_ALIGN)]
    if report.rollout is not None:
        lines += ["", rollout_sentence(report.rollout), "",
                  tabulate(rollout_rows(report.rollout), translated(ROLLOUT_HEADERS), tablefmt="simple",
                           disable_numparse=True, colalign=ROLLOUT_ALIGN)]
        if report.rollout.connected:
            lines += ["", tabulate(connected_rows(report.rollout), translated(CONNECTED_HEADERS), tablefmt="simple",
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
            r.cycles_up, fixed(r.availability, 4, 100), fixed(r.rtt_median_seconds, 3, 1e3),
            fixed(r.rtt_p95_seconds, 3, 1e3), r.echoes, r.replies, fixed(r.loss, 4, 100), r.tests,
            r.tests_failed, r.tests_met, fixed(r.download_median_bits_per_second, 3, 1e-6),
            fixed(r.download_min_bits_per_second, 3, 1e-6), fixed(r.met_share, 2, 100), r.verdict]
        cells[cut:cut] = ([r.school.cycles if r.school else 0, r.school.cycles_up if r.school else 0,
                           fixed(r.school_availability, 4, 100)] if school else []) + (
            [fixed(r.hours_without_power, 4), r.cycles_missing] if power else []) + (
            [fixed(r.hours_monitor_cut_off, 4)] if cut_off else []) + _cause_cells(report, r.downtime, 4, True)
        if latency:
            cells += [fixed(r.added_latency_median_seconds, 3, 1e3),
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
        writer.writerows(connected_rows(report.rollout))
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
        writer.writerows([[u.name, u.kind, u.cycles, u.cycles_up, fixed(u.availability, 4, 100),
                           hours(u.down_seconds, 4), u.sites, hours(u.site_seconds, 4)] for u in report.upstreams])
    return out.getvalue()


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    lines = [f"# {_md_escape(_title(report))}", "", "## " + _("Summary"), ""]
    for kind, districts in summaries(report):
        lines += [f"- {_md_escape(kind.sentence())}", *(f"  - {_md_escape(d.sentence())}" for d in districts)]
    lines += ["", "## " + _("By district"), "",
              tabulate([[_md_escape(c) for c in row] for row in _district_rows(report)],
                       translated(district_headers(report)), tablefmt="github", disable_numparse=True,
                       colalign=_district_align(report)),
              "", "## " + _("Sites"), "",
              tabulate([[_md_escape(c) for c in _row(r, report)] for r in report.sites], translated(_headers(report)),
                       tablefmt="github", disable_numparse=True, colalign=_site_align(report)), ""]
    if report.latency_under_load:
        lines += [_md_escape(report.latency_sentence()), ""]
    if report.pep_sites:
        lines += [_md_escape(report.pep_sentence()), ""]
    if report.kpis is not None:
        lines += ["## " + _("KPIs for the ministry"), "", _md_escape(kpi_header(report.kpis)), "",
                  tabulate([[_md_escape(c) for c in row] for row in kpi_rows(report.kpis)], translated(KPI_HEADERS),
                           tablefmt="github", disable_numparse=True, colalign=KPI_ALIGN), ""]
        if report.kpis.school_hours:  # issue 22
            lines += ["## " + _(SCHOOL_TITLE), "", _md_escape(_(SCHOOL_SENTENCE)), "",
                      tabulate([[_md_escape(c) for c in row] for row in school_rows(report.kpis)],
                               translated(SCHOOL_SECTION_HEADERS), tablefmt="github", disable_numparse=True,
                               colalign=_SCHOOL_ALIGN), ""]
    if report.upstreams:
        lines += ["## " + _("Upstream nodes"), "", _(UPSTREAM_SENTENCE), "",
                  tabulate([[_md_escape(c) for c in row] for row in upstream_rows(report.upstreams)],
                           translated(UPSTREAM_SECTION_HEADERS), tablefmt="github", disable_numparse=True,
                           colalign=UPSTREAM_ALIGN), ""]
    if report.rollout is not None:
        lines += ["## " + _("Roll-out"), "", _md_escape(rollout_sentence(report.rollout)), "",
                  tabulate([[_md_escape(c) for c in row] for row in rollout_rows(report.rollout)],
                           translated(ROLLOUT_HEADERS), tablefmt="github", disable_numparse=True,
                           colalign=ROLLOUT_ALIGN), ""]
        if report.rollout.connected:
            lines += [tabulate([[_md_escape(c) for c in row] for row in connected_rows(report.rollout)],
                               translated(CONNECTED_HEADERS), tablefmt="github", disable_numparse=True), ""]
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
        title=_title(report), lang=current().language, report=report, headers=translated(_headers(report)),
        rows=[(_row(r, report), r) for r in report.sites],
        district_headers=translated(district_headers(report)), district_rows=_district_rows(report),
        summaries=summaries(report), verdict_words={key: _(words) for key, words in VERDICT_WORDS.items()},
        verdict_cells={key: _(word) for key, word in VERDICT_CELLS.items()},
        chart=chart_data(report), version=__version__,
        generated=generated,
        kpi_header=None if report.kpis is None else kpi_header(report.kpis), kpi_headers=translated(KPI_HEADERS),
        kpi_rows=[] if report.kpis is None else kpi_rows(report.kpis),
        school=None if report.kpis is None or not report.kpis.school_hours else {  # issue 22
            "title": _(SCHOOL_TITLE), "sentence": _(SCHOOL_SENTENCE), "headers": translated(SCHOOL_SECTION_HEADERS),
            "rows": school_rows(report.kpis)},
        latency_sentence=report.latency_sentence() if report.latency_under_load else None,
        pep_sentence=report.pep_sentence() if report.pep_sites else None,
        rollout=None if report.rollout is None else {
            "sentence": rollout_sentence(report.rollout), "headers": translated(ROLLOUT_HEADERS),
            "rows": rollout_rows(report.rollout), "connected_headers": translated(CONNECTED_HEADERS),
            "connected": connected_rows(report.rollout)},
        upstreams=None if not report.upstreams else {
            "sentence": _(UPSTREAM_SENTENCE), "headers": translated(UPSTREAM_SECTION_HEADERS),
            "rows": upstream_rows(report.upstreams)},
        # the libraries go in verbatim; "</" never occurs in them outside strings (checked by a test)
        scripts=[markupsafe.Markup(_asset(name)) for name in
                 ("chart.umd.min.js", "tablesort.min.js", "tablesort.number.min.js")])


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

