"""The report's sections beside the site table: the ministry's KPIs, school hours, roll-out, upstream nodes.

Each section gives its rows, CSV rows and JSON for every format of :mod:`monitor.report.render`,
which lays them out; the figures come from :mod:`monitor.report.kpis`, :mod:`monitor.report.rollout` and
:mod:`monitor.report.compliance`, written by :mod:`monitor.report.cells`.
"""

from __future__ import annotations

from tabulate import tabulate

from monitor.report.cells import (
    CUT_OFF_CSV_HEADERS,
    MAINTENANCE_CSV_HEADER,
    SITE_DOWN_CSV_HEADER,
    UPSTREAM_CSV_HEADERS,
    by_node,
    fixed,
    hours,
    signed,
    translated,
)
from monitor.report.compliance import UpstreamRow
from monitor.report.gaps import Downtime
from monitor.report.i18n import N_, ngettext, number
from monitor.report.i18n import date as say_date
from monitor.report.i18n import gettext as _
from monitor.report.kpis import KpiFigures, KpiReport
from monitor.report.rollout import Rollout, RolloutCounts

CONNECTED_SOURCES = {"planned_date": N_("planned_date"), "first_result": N_("first_result")}

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
KPI_ALIGN = ("left",) + ("right",) * (len(KPI_HEADERS) - 1)


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
    against = [_("site {hours} h").format(hours=hours(d.site_seconds, 2))]
    if d.upstream_seconds:
        against.append(_("upstream {hours} h ({nodes})").format(hours=hours(d.upstream_total_seconds, 2),
                                                                 nodes=by_node(d, 2)))
    left = [_(name).format(hours=hours(seconds, 2)) for name, seconds in (
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


def kpi_rows(kpis: KpiReport) -> list[list[str]]:
    rows = []
    for g in kpis.groups:
        c, p, d = g.current, g.previous, g.changes()
        rows.append([_("all sites") if g.scope == "all" else g.label, str(c.sites), str(c.sites_measured),
                     fixed(c.median_met_target_share, 2, 100), fixed(p.median_met_target_share, 2, 100),
                     signed(d["median_met_target"], 2),
                     fixed(c.at_contract_share_share, 2, 100), fixed(p.at_contract_share_share, 2, 100),
                     signed(d["at_80_percent_of_contract"], 2),
                     fixed(c.availability, 2, 100), fixed(p.availability, 2, 100), signed(d["availability"], 2),
                     str(c.live), str(c.at_risk), str(c.dropped), f"{p.live}/{p.at_risk}/{p.dropped}"])
    return rows


def kpi_table(kpis: KpiReport, fmt: str) -> str:
    return tabulate(kpi_rows(kpis), translated(KPI_HEADERS), tablefmt=fmt, disable_numparse=True, colalign=KPI_ALIGN)


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
        power: list[object] = [fixed(c.power_off_seconds, 4, 1 / 3600)] if kpis.power_gaps else []
        if kpis.monitor_cut_off:
            power.append(fixed(c.monitor_cut_off_seconds, 4, 1 / 3600))
        if kpis.by_cause:
            power.append(hours(c.downtime.site_seconds, 4))
        if kpis.upstream_down:
            power.append(hours(c.downtime.upstream_total_seconds, 4))
        if kpis.maintenance:
            power.append(hours(c.downtime.maintenance_seconds, 4))
        out.append([g.scope, g.kind or "", g.district or "", c.sites, c.sites_measured, c.median_met_target,
                    fixed(c.median_met_target_share, 4, 100), fixed(p.median_met_target_share, 4, 100),
                    fixed(d["median_met_target"], 4), c.at_contract_share,
                    fixed(c.at_contract_share_share, 4, 100), fixed(p.at_contract_share_share, 4, 100),
                    fixed(d["at_80_percent_of_contract"], 4), c.cycles, c.cycles_up, c.cycles_in_maintenance,
                    fixed(c.availability, 4, 100), fixed(p.availability, 4, 100), fixed(d["availability"], 4),
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


# ----------------------------------------------------------------------------- school hours (issue 22)

def school_rows(kpis: KpiReport) -> list[list[str]]:
    """The school-hours section: each KPI group's availability around the clock and in school hours."""
    rows = []
    for g in kpis.groups:
        c, p, d = g.current, g.previous, g.changes()
        rows.append([_("all sites") if g.scope == "all" else g.label, str(c.sites), fixed(c.availability, 2, 100),
                     fixed(c.school_availability, 2, 100), fixed(p.school_availability, 2, 100),
                     signed(d.get("availability_school_hours"), 2)])
    return rows


def school_csv_rows(kpis: KpiReport) -> list[list[object]]:
    out: list[list[object]] = []
    for g in kpis.groups:
        c, p, d = g.current, g.previous, g.changes()
        school = c.school
        out.append([g.scope, g.kind or "", g.district or "", c.sites, c.cycles, c.cycles_up,
                    fixed(c.availability, 4, 100), school.cycles if school else 0, school.cycles_up if school else 0,
                    fixed(c.school_availability, 4, 100), fixed(p.school_availability, 4, 100),
                    fixed(d.get("availability_school_hours"), 4)])
    return out


# ----------------------------------------------------------------------------- roll-out (issue 11)

ROLLOUT_HEADERS = (N_("district"), N_("planned"), N_("connected"), N_("connected in the period"), N_("retired"))
ROLLOUT_CSV_HEADERS = ("rollout_scope", "district", "planned", "connected", "connected_in_period", "retired")
CONNECTED_HEADERS = (N_("connected in the period"), N_("kind"), N_("district"), N_("on"), N_("date from"))
CONNECTED_CSV_HEADERS = ("connected_site", "kind", "district", "connected_on", "date_from")
ROLLOUT_ALIGN = ("left",) + ("right",) * (len(ROLLOUT_HEADERS) - 1)


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


def rollout_rows(rollout: Rollout) -> list[list[str]]:
    def row(c: RolloutCounts) -> list[str]:
        return [c.district if c.district is not None else _("all"), str(c.planned), str(c.connected),
                str(c.connected_in_period), str(c.retired)]
    return [row(c) for c in rollout.districts] + [row(rollout.total)]


def connected_rows(rollout: Rollout) -> list[list[str]]:
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
UPSTREAM_ALIGN = ("left",) * 2 + ("right",) * (len(UPSTREAM_SECTION_HEADERS) - 2)


def upstream_rows(upstreams: tuple[UpstreamRow, ...]) -> list[list[str]]:
    return [[u.name, u.kind, str(u.cycles), fixed(u.availability, 2, 100), hours(u.down_seconds, 2), str(u.sites),
             hours(u.site_seconds, 2)] for u in upstreams]


def upstreams_json(upstreams: tuple[UpstreamRow, ...]) -> list[dict[str, object]]:
    """The upstream section (``--format json`` and the summary API), in base units."""
    return [{"name": u.name, "kind": u.kind, "cycles": u.cycles, "cycles_up": u.cycles_up,
             "availability_ratio": u.availability, "down_seconds": u.down_seconds, "sites": u.sites,
             "site_seconds": u.site_seconds} for u in upstreams]


