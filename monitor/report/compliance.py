"""The compliance report: per site and per kind/district, over a period, from the history.

Ops staff send it to the telecom operator and the ministry, so every figure is defined here,
once, in words a reader can check:

* **availability** = ICMP cycles in which the site answered at least one echo / cycles run. For an
  agent site (issue 10), cycles that started while it had no power (a ``power`` gap) are neither
  up nor run, and the cycles due in a ``link`` or ``unknown`` gap that left no row count as run
  and down (:mod:`monitor.report.gaps`); **hours without power** is the time of its power gaps in the
  period (a column only when some site has any, so older reports read as before). Cycles the centre
  probed while it was cut off itself (error ``monitor_cut_off``, issue 21) are neither up nor run
  either: the site's silence was not its own; **hours monitor cut off** is their time (the same rule
  in :mod:`monitor.report.gaps`; a column only when some site has any). Cycles in maintenance (error
  ``maintenance``, or started in a window the config declares, given with ``--config``) are left out
  the same way, as the KPIs leave them out;
* **availability in school hours** (issue 22, when the config declares a calendar): the same quotient over
  the cycles that started in the site's school hours (:mod:`monitor.report.school_hours`);
* **downtime by cause** (issue 21): each silent cycle's time, charged to the first cause that holds
  (:class:`monitor.report.gaps.CycleLedger`): maintenance, power, monitor cut off, an upstream node
  (by name: the cycle's error is ``upstream_down``), else the site. Site and upstream time count
  against availability, the other three do not. The columns are there only when some site has time
  of a cause other than its own, so older reports read as before;
* **upstream nodes**: the nodes the history keeps (group ``monitor.upstreams``) are not sites: they
  are in no site row, summary or KPI, but in a section of their own, shown only when the history has
  some: each node's own availability and downtime (from its own cycles, by the same rule) and the
  site-hours behind it (the sites' time charged to it);
* **loss** = echoes without a reply / echoes attempted, over every cycle of the period;
* **RTT median and p95** over every answered echo (p95 by nearest rank: a value that was measured);
* **tests** = throughput tests that gave a verdict (every direction checked against a target was
  measured); tests that failed (server down, DNS) are counted apart and give no verdict: a broken
  test server is not proof that a site is slow. Tests skipped because the month's data budget was
  spent are neither;
* **download median and min** over every test that measured the download;
* **met** = tests whose verdict (against the target the site had when the test ran) was met;
* **verdict** = ``met`` (every test met the target), ``partly``, ``never``, ``untested`` (ICMP
  data only) or ``no_data``.

Roll-out (issue 11): planned sites are not in the site table or the KPIs (nothing is measured
there yet), and retired ones only when they have results in the period; the roll-out section is
:mod:`monitor.report.rollout`'s.

Computing is separate from rendering (:mod:`monitor.report.render`), so every format shows
the same numbers.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

from monitor.config.calendar import SchoolCalendar
from monitor.config.windows import MaintenanceWindows
from monitor.history.store import EndpointRecord, HistoryStore
from monitor.report.gaps import CycleLedger, Downtime, GapAccount
from monitor.report.i18n import N_, ngettext, number
from monitor.report.i18n import gettext as _
from monitor.report.kpis import DEFAULT_THRESHOLDS, KpiReport, Span, Thresholds, compute_kpis, with_stored_windows
from monitor.report.rollout import Rollout, has_rollout, rollout
from monitor.report.school_hours import SchoolHoursCount, SchoolHoursLedger, calendar_for
from monitor.report.words import kind_noun, say_mbps
from monitor.results import PEP_NOTE
from monitor.upstreams import UPSTREAM_GROUP

# monitor.results.PEP_NOTE as a message Babel's extractor sees (issue 22); tests/test_i18n.py checks the two agree
PEP_NOTE_MESSAGE = N_("TCP is terminated before the site: speed figures include a proxy")
Verdict = Literal["met", "partly", "never", "untested", "no_data"]
ReportFormat = Literal["table", "csv", "markdown", "html", "json"]
FORMATS: tuple[ReportFormat, ...] = ("table", "csv", "markdown", "html", "json")  # rendered by monitor.report.render
VERDICT_WORDS: dict[Verdict, str] = {
    "met": N_("met the target in every test"),
    "partly": N_("met the target in some tests"),
    "never": N_("never met the target"),
    "untested": N_("no throughput test"),
    "no_data": N_("no data"),
}  # English: the words are translated where shown (monitor.report.i18n)
_VERDICT_ORDER: dict[Verdict, int] = {"never": 0, "partly": 1, "untested": 2, "no_data": 3, "met": 4}


@dataclass(frozen=True, slots=True)
class Period:
    """Whole days ``first`` … ``last`` (inclusive) in ``timezone``, as a half-open span of Unix time."""

    first: dt.date
    last: dt.date
    timezone: str

    @property
    def start(self) -> float:
        return dt.datetime.combine(self.first, dt.time(), ZoneInfo(self.timezone)).timestamp()

    @property
    def end(self) -> float:
        return dt.datetime.combine(self.last + dt.timedelta(days=1), dt.time(), ZoneInfo(self.timezone)).timestamp()

    @property
    def previous(self) -> Period:
        """The period of equal length (in days) just before this one."""
        days = self.last - self.first + dt.timedelta(days=1)
        return Period(self.first - days, self.first - dt.timedelta(days=1), self.timezone)

    def __str__(self) -> str:
        return f"{self.first.isoformat()} to {self.last.isoformat()} ({self.timezone})"


@dataclass(frozen=True, slots=True)
class SiteRow:
    """One site's figures over the period; None where there was nothing to compute from."""

    name: str
    kind: str
    district: str
    link: str
    target_bits_per_second: float
    cycles: int
    cycles_up: int
    echoes: int
    replies: int
    rtt_median_seconds: float | None
    rtt_p95_seconds: float | None
    tests: int
    tests_met: int
    tests_failed: int
    download_median_bits_per_second: float | None
    download_min_bits_per_second: float | None
    cycles_missing: int = 0  # of ``cycles``: due in a link/unknown gap of an agent site, no row (down)
    power_off_seconds: float = 0.0  # time in power gaps: left out of availability
    monitor_cut_off_seconds: float = 0.0  # time the centre was cut off itself (issue 21): left out likewise
    site_down_seconds: float = 0.0  # the site's own silent time: counts against it (issue 21)
    upstream_down_seconds: tuple[tuple[str, float], ...] = ()  # silent time charged to upstream nodes, by name
    maintenance_seconds: float = 0.0  # silent time in maintenance: left out of availability
    # Issue 20, latency under load: the median over the period's sampled tests of each test's worst direction,
    # and of that minus the site's max_added_latency when tested (None: no sampled test, or none with a limit)
    added_latency_median_seconds: float | None = None
    latency_margin_median_seconds: float | None = None
    pep_detected: bool = False  # the period's last test that could tell found a proxy answering TCP (issue 20)
    school: SchoolHoursCount | None = None  # cycles in school hours (issue 22); None: not asked for

    @property
    def school_availability(self) -> float | None:
        """Availability in school hours (:mod:`monitor.report.school_hours`); None without cycles or not asked."""
        return None if self.school is None else self.school.availability

    @property
    def latency_exceeded(self) -> bool | None:
        """Whether the site's typical test (the median) added more latency under load than its limit."""
        margin = self.latency_margin_median_seconds
        return None if margin is None else margin > 0

    @property
    def availability(self) -> float | None:
        return self.cycles_up / self.cycles if self.cycles else None

    @property
    def downtime(self) -> Downtime:
        """The site's silent time by cause (see :mod:`monitor.report.gaps`)."""
        return Downtime(self.site_down_seconds, self.upstream_down_seconds, self.monitor_cut_off_seconds,
                        self.power_off_seconds, self.maintenance_seconds)

    @property
    def hours_without_power(self) -> float:
        return self.power_off_seconds / 3600.0

    @property
    def hours_monitor_cut_off(self) -> float:
        return self.monitor_cut_off_seconds / 3600.0

    @property
    def loss(self) -> float | None:
        return 1.0 - self.replies / self.echoes if self.echoes else None

    @property
    def met_share(self) -> float | None:
        return self.tests_met / self.tests if self.tests else None

    @property
    def verdict(self) -> Verdict:
        if not self.tests:
            return "untested" if self.cycles else "no_data"
        if self.tests_met == self.tests:
            return "met"
        return "never" if self.tests_met == 0 else "partly"


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """The sites of one kind (and district, when set) in one sentence's worth of counts."""

    kind: str
    district: str | None
    sites: int
    met: int  # met the target in every test
    never: int
    partly: int
    untested: int  # ICMP data but no test (or only failed tests)
    no_data: int
    availability: float | None  # cycles up / cycles run, over all of the group's cycles
    targets_bits_per_second: tuple[float, ...]  # the distinct targets, for the wording
    download_median_bits_per_second: float | None  # median of the sites' medians
    downtime: Downtime = Downtime()  # the sites' silent time by cause, summed (issue 21)
    school: SchoolHoursCount | None = None  # the sites' cycles in school hours, summed (issue 22)

    def sentence(self) -> str:
        """E.g. "241 of 398 schools met 4 Mbit/s in every test; 12 never did; 20 were not tested"."""
        noun = kind_noun(self.kind, self.sites)
        target = (_("{mbps} Mbit/s").format(mbps=say_mbps(self.targets_bits_per_second[0]))
                  if len(self.targets_bits_per_second) == 1 else _("their target"))
        where = _(" in {district}").format(district=self.district) if self.district is not None else ""
        parts = [_("{met} of {sites} {noun}{where} met {target} in every test").format(
                     met=self.met, sites=self.sites, noun=noun, where=where, target=target),
                 _("{never} never did").format(never=self.never)]
        if self.partly:
            parts.append(_("{partly} did in some tests").format(partly=self.partly))
        untested = self.untested + self.no_data
        if untested:
            parts.append(ngettext("{count} was not tested", "{count} were not tested", untested).format(count=untested))
        text = "; ".join(parts)
        if self.availability is not None:
            text += _(". Up {percent}% of cycles").format(percent=number(self.availability * 100, 2))
        if self.school is not None and self.school.availability is not None:  # issue 22
            text += _(", {percent}% in school hours").format(percent=number(self.school.availability * 100, 2))
        return text + "."


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    """An upstream node (issue 21) over the period: its own cycles, and the sites' time charged to it."""

    name: str
    kind: str  # router, pop, teleport, ...; "" for a node the sites name but the history has no record of
    cycles: int  # its own cycles run, by the sites' rule (maintenance and a cut-off centre left out)
    cycles_up: int
    down_seconds: float  # its own silent time that counts against it (down, or a node above it down)
    sites: int  # sites of the report with time charged to it
    site_seconds: float  # the site-hours behind it: the sum of those sites' time charged to it

    @property
    def availability(self) -> float | None:
        return self.cycles_up / self.cycles if self.cycles else None


@dataclass(frozen=True, slots=True)
class Report:
    period: Period
    kind: str | None
    district: str | None
    sites: tuple[SiteRow, ...]
    by_kind: tuple[GroupSummary, ...] = ()
    by_district: tuple[GroupSummary, ...] = ()
    generated_at: float = field(default=0.0)
    kpis: KpiReport | None = None  # the ministry's KPIs (issue 11), see monitor.report.kpis
    rollout: Rollout | None = None  # only when some site is planned, retired or has a planned date
    upstreams: tuple[UpstreamRow, ...] = ()  # only when the history has upstream nodes (issue 21)
    school_hours: bool = False  # availability in school hours too: the config declares a calendar (issue 22)

    @property
    def power_gaps(self) -> bool:
        """True when some site had hours without power: then, and only then, the column is shown."""
        return any(r.power_off_seconds > 0 for r in self.sites)

    @property
    def monitor_cut_off(self) -> bool:
        """True when the monitor was cut off from some site in the period: then, and only then, the column is shown."""
        return any(r.monitor_cut_off_seconds > 0 for r in self.sites)

    @property
    def upstream_down(self) -> bool:
        """True when some site had time charged to an upstream node: then, and only then, its columns are shown."""
        return any(r.upstream_down_seconds for r in self.sites)

    @property
    def maintenance(self) -> bool:
        """True when some site was silent in maintenance: then, and only then, the column is shown."""
        return any(r.maintenance_seconds > 0 for r in self.sites)

    @property
    def by_cause(self) -> bool:
        """True when some site had silent time that was not its own: then the site's own hours are shown too."""
        return any(r.downtime.beyond_the_site for r in self.sites)

    @property
    def latency_under_load(self) -> bool:
        """True when some site had a test with latency samples (issue 20): then its column and line are shown."""
        return any(r.added_latency_median_seconds is not None for r in self.sites)

    @property
    def latency_sites(self) -> tuple[int, int]:
        """(sites whose median added latency under load exceeds their limit, sites with a verdict)."""
        judged = [r.latency_exceeded for r in self.sites if r.latency_exceeded is not None]
        return sum(judged), len(judged)

    @property
    def pep_sites(self) -> tuple[str, ...]:
        """Sites whose TCP is terminated before the site (a PEP, issue 20), in the report's order."""
        return tuple(r.name for r in self.sites if r.pep_detected)

    def pep_sentence(self) -> str:
        return f"{_(PEP_NOTE)}: {', '.join(self.pep_sites)}."

    def latency_sentence(self) -> str:
        """The KPI line of issue 20: "Sites whose added latency under load exceeds their max_added_latency ..."."""
        over, judged = self.latency_sites
        return _("Sites whose added latency under load exceeds their max_added_latency (the median of their tests): "
                 "{over} of {judged} with sampled tests.").format(over=over, judged=judged)


def nearest_rank(sorted_values: Sequence[float], share: float) -> float:
    """The value at rank ceil(share × n): always one that was measured (no interpolation)."""
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]


def site_row(store: HistoryStore, endpoint: EndpointRecord, period: Period,
             maintenance: MaintenanceWindows | None = None, calendar: SchoolCalendar | None = None) -> SiteRow:
    """One site's figures; ``maintenance``: its declared windows (left out of availability, as in the KPIs);
    ``calendar``: its school hours, to count availability in them too (issue 22; None: not asked for)."""
    echoes = replies = 0
    rtts: list[float] = []
    gaps = GapAccount.of(store, endpoint.name, period.start, period.end)
    ledger = CycleLedger(gaps, maintenance)
    school = SchoolHoursLedger(gaps, maintenance, calendar) if calendar is not None else None
    for cycle in store.icmp_cycles(endpoint.name, period.start, period.end):
        if school is not None:
            school.add(cycle)
        if ledger.add(cycle) not in ("up", "site", "upstream"):
            continue  # maintenance, no power, a cut-off centre: neither up nor run, nor in the loss
        got = [r for r in cycle.rtts_seconds if r is not None]
        echoes += cycle.attempted
        replies += len(got)
        rtts.extend(got)
    missing = ledger.missing_cycles()
    cycles = ledger.cycles + missing
    down = ledger.downtime()
    rtts.sort()
    tests = met = failed = 0
    downloads: list[float] = []
    added: list[float] = []  # issue 20: each sampled test's worst added latency, and its margin over the limit
    margins: list[float] = []
    pep = False
    for test in store.throughput_tests(endpoint.name, period.start, period.end):
        if test.error == "budget":  # skipped on purpose, not a failure: no test ran
            continue
        if test.pep_detected is not None:  # the last test that could tell decides
            pep = test.pep_detected
        worst = test.max_added_latency_measured_seconds
        if worst is not None:
            added.append(worst)
            if test.max_added_latency_seconds is not None:
                margins.append(worst - test.max_added_latency_seconds)
        rate = test.direction_rate("download")
        if rate is not None:  # the download figures keep every measured download
            downloads.append(rate)
        if test.target_met is None:  # no verdict: a checked direction failed (counted apart), or none was checked
            failed += 1 if test.error is not None else 0
            continue
        tests += 1
        met += 1 if test.target_met else 0
    return SiteRow(endpoint.name, endpoint.kind, endpoint.district, endpoint.link, endpoint.target_bits_per_second,
                   cycles, ledger.cycles_up, echoes, replies,
                   statistics.median(rtts) if rtts else None, nearest_rank(rtts, 0.95) if rtts else None,
                   tests, met, failed, statistics.median(downloads) if downloads else None,
                   min(downloads) if downloads else None, missing, down.power_seconds,
                   down.monitor_cut_off_seconds, down.site_seconds, down.upstream_seconds, down.maintenance_seconds,
                   statistics.median(added) if added else None, statistics.median(margins) if margins else None,
                   pep, school.count() if school is not None else None)


def upstream_rows(store: HistoryStore, nodes: Mapping[str, EndpointRecord], rows: Sequence[SiteRow],
                  period: Period) -> tuple[UpstreamRow, ...]:
    """The upstream section: every node of the history with cycles in the period or sites' time charged to it.

    Most site-hours behind first, then most own downtime, then by name.
    """
    behind: dict[str, list[float]] = {}
    for row in rows:
        for name, seconds in row.upstream_down_seconds:
            behind.setdefault(name, []).append(seconds)
    out: list[UpstreamRow] = []
    for name in sorted(set(nodes) | set(behind)):
        node = nodes.get(name)
        ledger = CycleLedger(GapAccount(period.start, period.end))
        if node is not None:
            for cycle in store.icmp_cycles(name, period.start, period.end):
                ledger.add(cycle)
        if not ledger.cycles and not ledger.cycles_in_maintenance and not ledger.cycles_monitor_cut_off \
                and name not in behind:
            continue  # a node of the history with nothing in the period: not part of this report
        own = ledger.downtime()
        out.append(UpstreamRow(name, node.kind if node is not None else "", ledger.cycles, ledger.cycles_up,
                               own.site_seconds + own.upstream_total_seconds, len(behind.get(name, ())),
                               sum(behind.get(name, ()))))
    out.sort(key=lambda u: (-u.site_seconds, -u.down_seconds, u.name))
    return tuple(out)


def summarise(rows: Sequence[SiteRow], kind: str, district: str | None) -> GroupSummary:
    schooled = [r.school for r in rows if r.school is not None]
    counts = dict.fromkeys(_VERDICT_ORDER, 0)
    for row in rows:
        counts[row.verdict] += 1
    cycles = sum(r.cycles for r in rows)
    medians = [r.download_median_bits_per_second for r in rows if r.download_median_bits_per_second is not None]
    return GroupSummary(kind, district, len(rows), counts["met"], counts["never"], counts["partly"],
                        counts["untested"], counts["no_data"],
                        sum(r.cycles_up for r in rows) / cycles if cycles else None,
                        tuple(sorted({r.target_bits_per_second for r in rows})),
                        statistics.median(medians) if medians else None, Downtime.total(r.downtime for r in rows),
                        sum(schooled, SchoolHoursCount()) if schooled else None)


def build_report(store: HistoryStore, period: Period, *, kind: str | None = None, district: str | None = None,
                 configured: Sequence[EndpointRecord] = (), now: float = 0.0,
                 maintenance: Mapping[str, MaintenanceWindows] | None = None,
                 thresholds: Thresholds = DEFAULT_THRESHOLDS,
                 calendars: Mapping[str, SchoolCalendar] | None = None) -> Report:
    """The report over ``period`` for the sites of the history (plus ``configured`` ones it lacks).

    Sites are listed worst first (never, partly, untested, no data, met), then by kind, district
    and name, so the first page is the one to act on. Sites of the history with no result in the
    period are left out unless ``configured`` names them (they were removed from the config).
    Upstream nodes (group ``monitor.upstreams``) are not sites: they go to :attr:`Report.upstreams`.
    ``calendars``: each site's school calendar (issue 22, :func:`monitor.report.school_hours.calendars_of`);
    given, availability is also counted in school hours (a site it lacks follows Giga's hours in the
    period's zone); None: around the clock only.
    """
    known = {e.name: e for e in store.endpoints()}
    for endpoint in configured:  # the config's labels are the current ones; sites without data still appear
        known[endpoint.name] = endpoint
    nodes = {name: e for name, e in known.items() if e.group == UPSTREAM_GROUP}
    known = {name: e for name, e in known.items() if e.group != UPSTREAM_GROUP}
    configured = [e for e in configured if e.group != UPSTREAM_GROUP]
    declared = with_stored_windows(maintenance, store, period.start, period.end)  # the API's too (issue 21)
    windows = declared or {}
    selected = [e for e in known.values()
                if (kind is None or e.kind == kind) and (district is None or e.district == district)]
    chosen = [e for e in selected if e.status != "planned"]  # nothing is measured at a planned site
    wanted = {e.name for e in configured if e.status == "connected"}  # retired ones only with results
    def calendar(name: str) -> SchoolCalendar | None:
        return None if calendars is None else calendar_for(calendars, name, period.timezone)

    rows = [row for row in (site_row(store, e, period, windows.get(e.name), calendar(e.name)) for e in chosen)
            # a site long gone from the config, with nothing in the period, is not part of this report
            if row.cycles or row.tests or row.tests_failed or row.download_median_bits_per_second is not None
            or row.downtime.beyond_the_site or row.name in wanted]
    rows.sort(key=lambda r: (_VERDICT_ORDER[r.verdict], r.kind, r.district, r.name))
    kinds = sorted({r.kind for r in rows})
    by_kind = tuple(summarise([r for r in rows if r.kind == k], k, None) for k in kinds)
    by_district = tuple(summarise([r for r in rows if r.kind == k and r.district == d], k, d)
                        for k in kinds for d in sorted({r.district for r in rows if r.kind == k}))
    counted = selected
    if configured:  # the config is the roll-out's truth; the history also remembers sites removed from it
        names = {e.name for e in configured}
        counted = [e for e in selected if e.name in names]
    return Report(period, kind, district, tuple(rows), by_kind, by_district, now,
                  period_kpis(store, [known[r.name] for r in rows], period, declared, thresholds, calendars),
                  rollout(store, counted, period.first, period.last, period.timezone)
                  if has_rollout(known.values()) else None,
                  upstream_rows(store, nodes, rows, period), school_hours=calendars is not None)


def period_kpis(store: HistoryStore, endpoints: Sequence[EndpointRecord], period: Period,
                maintenance: Mapping[str, MaintenanceWindows] | None, thresholds: Thresholds,
                calendars: Mapping[str, SchoolCalendar] | None = None) -> KpiReport:
    """The KPIs of ``endpoints`` over ``period`` and the period of equal length before it (whole local days)."""
    before = period.previous
    return compute_kpis(store, endpoints, Span(period.start, period.end), maintenance=maintenance,
                        thresholds=thresholds, previous_span=Span(before.start, before.end), calendars=calendars,
                        timezone=period.timezone)
