"""The KPIs ministries report (issue 11), per kind, per district and for the whole selection.

Pure functions over a :class:`~monitor.history.store.HistoryStore`, so ``connmon report`` and the JSON
API's summary compute the same figures. Each figure is defined here, once:

* **median met target** = sites whose median download over the period is ≥ their target /
  sites with at least one measured download in the period (sites never measured are not in the
  denominator; their number is given as ``sites_measured``);
* **≥ 80% of contract** = sites whose median download is ≥ 0.8 × the contracted rate / the same
  denominator. The contracted rate comes from :func:`contracted_bits_per_second` only;
* **availability** = ICMP cycles up / ICMP cycles, over every site's cycles of the period, leaving
  out (from both) the cycles that *started* inside a declared maintenance window of the site
  (a window's start is inside, its end is not). For agent sites (issue 10) the same rule as the
  report's (:mod:`monitor.report.gaps`): cycles that started in a ``power`` gap are left out of both, and
  cycles due in a ``link`` or ``unknown`` gap without a row count as run and down (unless they
  fall in maintenance). Cycles probed while the centre was cut off itself (error
  ``monitor_cut_off``, issue 21) are left out of both too, with their time stated as the report's
  (:func:`monitor.report.gaps.cut_off_seconds`; maintenance first: a cut-off cycle in a window is
  counted as in maintenance). Cycles whose error is ``maintenance`` (a window opened through the API,
  issue 21) are in maintenance too, with or without a config. This is the one rule of
  :class:`monitor.report.gaps.CycleLedger`: **the site's own downtime and its upstream nodes' count
  against it; maintenance, power cuts and a cut-off monitor are left out**, and their hours stated
  (``site_down_seconds``, ``upstream_down_seconds`` by node, ``maintenance_seconds``, beside the
  power and cut-off seconds);
* **availability in school hours** (issue 22): the same quotient over the cycles that started in the
  site's school hours (its calendar: weekly hours, less holidays and term breaks), as Giga counts uptime
  from 08:00 to 20:00 while the device is on (:mod:`monitor.report.school_hours`); computed only when
  calendars are given (a config that declares ``calendars:``);
* **live / at risk / dropped**: the age of a site's last success (an ICMP cycle with a reply, or
  a throughput test that measured a rate) at the period's end. ``age < at_risk_days`` is live,
  ``at_risk_days ≤ age < dropped_days`` at risk, ``age ≥ dropped_days`` (or no success within
  ``dropped_days``) dropped. So 20.99 days is live, exactly 21 at risk, exactly 28 dropped;
* **change** = the figure minus the same figure over the period of equal length just before,
  in percentage points for shares.

Rendering is :mod:`monitor.report.render`'s job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from monitor.config import Config
from monitor.config.calendar import SchoolCalendar
from monitor.config.windows import MaintenanceWindows
from monitor.history.store import EndpointRecord, HistoryStore
from monitor.report.gaps import CycleLedger, Downtime, GapAccount
from monitor.report.school_hours import SchoolHoursCount, SchoolHoursLedger, calendar_for

DAY_SECONDS = 86400.0
CONTRACT_SHARE = 0.8  # sites receiving at least 80% of the contracted speed
SiteStatus = str  # "live" | "at_risk" | "dropped"
STATUSES: tuple[SiteStatus, ...] = ("live", "at_risk", "dropped")



@dataclass(frozen=True, slots=True)
class Thresholds:
    """Days without a success at the period's end before a site is at risk / dropped."""

    at_risk_days: float = 21.0
    dropped_days: float = 28.0


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class Span:
    """A half-open span of Unix time [start, end)."""

    start: float
    end: float

    @property
    def previous(self) -> Span:
        """The span of equal length just before this one."""
        return Span(2 * self.start - self.end, self.start)


def contracted_bits_per_second(endpoint: EndpointRecord) -> float:
    """The site's contracted download rate: the one place that decides it.

    The site's ``contracted_mbps`` (kept in the history's endpoint record, issue 11) when set; otherwise
    the target is the contract.
    """
    contracted = endpoint.contracted_bits_per_second
    if contracted is not None and contracted > 0:
        return contracted
    return endpoint.target_bits_per_second


def status_of(age_seconds: float | None, thresholds: Thresholds) -> SiteStatus:
    """live / at_risk / dropped for the age of the last success (None: none found)."""
    if age_seconds is None or age_seconds >= thresholds.dropped_days * DAY_SECONDS:
        return "dropped"
    if age_seconds >= thresholds.at_risk_days * DAY_SECONDS:
        return "at_risk"
    return "live"


@dataclass(frozen=True, slots=True)
class SiteKpi:
    """One site's inputs to the KPIs over one span."""

    name: str
    kind: str
    district: str
    target_bits_per_second: float
    contracted_bits_per_second: float
    download_median_bits_per_second: float | None
    cycles: int  # outside maintenance
    cycles_up: int
    cycles_in_maintenance: int
    last_success_at: float | None
    status: SiteStatus
    power_off_seconds: float = 0.0  # time in power gaps (agent sites): left out of availability
    cycles_missing: int = 0  # of ``cycles``: due in a link/unknown gap, no row (down)
    monitor_cut_off_seconds: float = 0.0  # time the centre was cut off itself (issue 21): left out of availability
    site_down_seconds: float = 0.0  # the site's own silent time (issue 21): counts against it
    upstream_down_seconds: tuple[tuple[str, float], ...] = ()  # silent time charged to upstream nodes: counts too
    maintenance_seconds: float = 0.0  # silent time in maintenance: left out
    school: SchoolHoursCount | None = None  # cycles in school hours (issue 22); None: no calendars given

    @property
    def downtime(self) -> Downtime:
        return Downtime(self.site_down_seconds, self.upstream_down_seconds, self.monitor_cut_off_seconds,
                        self.power_off_seconds, self.maintenance_seconds)

    @property
    def median_met_target(self) -> bool | None:
        m = self.download_median_bits_per_second
        return None if m is None else m >= self.target_bits_per_second

    @property
    def at_contract_share(self) -> bool | None:
        m = self.download_median_bits_per_second
        # m ≥ 0.8 × contract, written m × 5 ≥ contract × 4 so that exactly 80% is not lost to 0.8's rounding
        return None if m is None else m * 5 >= self.contracted_bits_per_second * 4


def site_kpi(store: HistoryStore, endpoint: EndpointRecord, span: Span, maintenance: MaintenanceWindows | None,
             thresholds: Thresholds, calendar: SchoolCalendar | None = None) -> SiteKpi:
    """The site's KPI inputs over ``span``; its last success is looked for up to ``dropped_days`` back.

    ``calendar``: its school hours, to count availability in them too (issue 22; None: not asked for).
    """
    last: float | None = None
    look_from = min(span.start, span.end - thresholds.dropped_days * DAY_SECONDS)
    gaps = GapAccount.of(store, endpoint.name, span.start, span.end)
    ledger = CycleLedger(gaps, maintenance)
    school = SchoolHoursLedger(gaps, maintenance, calendar) if calendar is not None else None
    for cycle in store.icmp_cycles(endpoint.name, look_from, span.end):
        if cycle.received > 0:
            last = cycle.started_at
        if cycle.started_at >= span.start:
            ledger.add(cycle)  # the one rule, as in the report
            if school is not None:
                school.add(cycle)
    missing = ledger.missing_cycles()
    down = ledger.downtime()
    downloads: list[float] = []
    for test in store.throughput_tests(endpoint.name, look_from, span.end):
        measured = [d.bits_per_second for d in test.directions if d.bits_per_second is not None]
        if measured:
            last = test.started_at if last is None else max(last, test.started_at)
        rate = test.direction_rate("download")
        if rate is not None and test.started_at >= span.start and test.error != "budget":
            downloads.append(rate)
    age = None if last is None else span.end - last
    return SiteKpi(endpoint.name, endpoint.kind, endpoint.district, endpoint.target_bits_per_second,
                   contracted_bits_per_second(endpoint), statistics.median(downloads) if downloads else None,
                   ledger.cycles + missing, ledger.cycles_up, ledger.cycles_in_maintenance, last,
                   status_of(age, thresholds), down.power_seconds, missing, down.monitor_cut_off_seconds,
                   down.site_seconds, down.upstream_seconds, down.maintenance_seconds,
                   school.count() if school is not None else None)


@dataclass(frozen=True, slots=True)
class KpiFigures:
    """The KPIs of a set of sites over one span (shares None when their denominator is 0)."""

    sites: int
    sites_measured: int
    median_met_target: int
    at_contract_share: int
    cycles: int
    cycles_up: int
    cycles_in_maintenance: int
    live: int
    at_risk: int
    dropped: int
    power_off_seconds: float = 0.0  # the sites' time in power gaps, left out of availability
    monitor_cut_off_seconds: float = 0.0  # the sites' time the centre was cut off itself, left out likewise
    downtime: Downtime = Downtime()  # the sites' silent time by cause, summed (issue 21)
    school: SchoolHoursCount | None = None  # the sites' cycles in school hours, summed (issue 22)

    @property
    def school_availability(self) -> float | None:
        """Availability in school hours (issue 22); None when not computed or without cycles."""
        return None if self.school is None else self.school.availability

    @property
    def median_met_target_share(self) -> float | None:
        return self.median_met_target / self.sites_measured if self.sites_measured else None

    @property
    def at_contract_share_share(self) -> float | None:
        return self.at_contract_share / self.sites_measured if self.sites_measured else None

    @property
    def availability(self) -> float | None:
        return self.cycles_up / self.cycles if self.cycles else None

    def shares(self) -> dict[str, float | None]:
        """The shares that have a change in percentage points, by stable name."""
        return {"median_met_target": self.median_met_target_share,
                "at_80_percent_of_contract": self.at_contract_share_share,
                "availability": self.availability,
                "live": self.live / self.sites if self.sites else None,
                "at_risk": self.at_risk / self.sites if self.sites else None,
                "dropped": self.dropped / self.sites if self.sites else None,
                # issue 22: only when computed, so documents without calendars stay as they were
                **({"availability_school_hours": self.school_availability} if self.school is not None else {})}


def figures(sites: Sequence[SiteKpi], school_hours: bool = False) -> KpiFigures:
    """The KPIs of ``sites``; ``school_hours``: count availability in school hours too (issue 22)."""
    measured = [s for s in sites if s.download_median_bits_per_second is not None]
    school = sum((s.school for s in sites if s.school is not None), SchoolHoursCount()) if school_hours else None
    return KpiFigures(
        len(sites), len(measured), sum(1 for s in measured if s.median_met_target),
        sum(1 for s in measured if s.at_contract_share), sum(s.cycles for s in sites),
        sum(s.cycles_up for s in sites), sum(s.cycles_in_maintenance for s in sites),
        sum(1 for s in sites if s.status == "live"), sum(1 for s in sites if s.status == "at_risk"),
        sum(1 for s in sites if s.status == "dropped"), sum(s.power_off_seconds for s in sites),
        sum(s.monitor_cut_off_seconds for s in sites), Downtime.total(s.downtime for s in sites), school)


def change_points(current: float | None, previous: float | None) -> float | None:
    """Difference of two shares in percentage points (None when either is missing).

    Rounded to 10 decimals so that 0.4 − 0.5 reads −10, not −9.999999999999998, in a stable document.
    """
    return None if current is None or previous is None else round((current - previous) * 100.0, 10)


@dataclass(frozen=True, slots=True)
class KpiGroup:
    """One line of the KPI table: ``scope`` is "all", "kind" or "district"."""

    scope: str
    kind: str | None
    district: str | None
    current: KpiFigures
    previous: KpiFigures

    @property
    def label(self) -> str:
        if self.scope == "all":
            return "all sites"
        return f"{self.kind} · {self.district}" if self.scope == "district" else str(self.kind)

    def changes(self) -> dict[str, float | None]:
        before = self.previous.shares()
        return {key: change_points(value, before[key]) for key, value in self.current.shares().items()}


@dataclass(frozen=True, slots=True)
class KpiReport:
    """The KPIs of a selection over a span and the span before it."""

    span: Span
    previous_span: Span
    thresholds: Thresholds
    maintenance_considered: bool  # False: no config given, nothing was left out
    groups: tuple[KpiGroup, ...]
    sites: tuple[SiteKpi, ...]
    school_hours: bool = False  # availability in school hours too (issue 22): calendars were given

    @property
    def power_gaps(self) -> bool:
        """True when some site had time without power in the span: then, and only then, documents show it."""
        return any(s.power_off_seconds > 0 for s in self.sites)

    @property
    def monitor_cut_off(self) -> bool:
        """True when the monitor was cut off from some site in the span: then, and only then, documents show it."""
        return any(s.monitor_cut_off_seconds > 0 for s in self.sites)

    @property
    def upstream_down(self) -> bool:
        """True when some site had time charged to an upstream node in the span (issue 21)."""
        return any(s.upstream_down_seconds for s in self.sites)

    @property
    def maintenance(self) -> bool:
        """True when some site was silent in maintenance in the span (issue 21)."""
        return any(s.maintenance_seconds > 0 for s in self.sites)

    @property
    def by_cause(self) -> bool:
        """True when some site had silent time that was not its own: then documents show the hours by cause."""
        return any(s.downtime.beyond_the_site for s in self.sites)


def group_kpis(current: Sequence[SiteKpi], previous: Sequence[SiteKpi],
               school_hours: bool = False) -> tuple[KpiGroup, ...]:
    """All sites, then each kind, then each kind and district (sorted)."""
    def group(scope: str, kind: str | None, district: str | None) -> KpiGroup:
        def keep(r: SiteKpi) -> bool:
            return (kind is None or r.kind == kind) and (district is None or r.district == district)
        return KpiGroup(scope, kind, district, figures([r for r in current if keep(r)], school_hours),
                        figures([r for r in previous if keep(r)], school_hours))

    out = [group("all", None, None)]
    out += [group("kind", kind, None) for kind in sorted({s.kind for s in current})]
    out += [group("district", kind, district) for kind, district in sorted({(s.kind, s.district) for s in current})]
    return tuple(out)


def compute_kpis(store: HistoryStore, endpoints: Sequence[EndpointRecord], span: Span, *,
                 maintenance: Mapping[str, MaintenanceWindows] | None = None,
                 thresholds: Thresholds = DEFAULT_THRESHOLDS, previous_span: Span | None = None,
                 calendars: Mapping[str, SchoolCalendar] | None = None, timezone: str = "UTC") -> KpiReport:
    """The KPIs of ``endpoints`` over ``span`` and over the span of equal length before it.

    ``maintenance`` None means no config was given: nothing is left out of availability. ``calendars``
    (issue 22): each site's school calendar, to count availability in school hours too (a site it lacks
    follows Giga's hours in ``timezone``); None: around the clock only.
    """
    windows = maintenance or {}
    previous_span = previous_span or span.previous

    def calendar(name: str) -> SchoolCalendar | None:
        return None if calendars is None else calendar_for(calendars, name, timezone)

    current = tuple(site_kpi(store, e, span, windows.get(e.name), thresholds, calendar(e.name)) for e in endpoints)
    previous = tuple(site_kpi(store, e, previous_span, windows.get(e.name), thresholds, calendar(e.name))
                     for e in endpoints)
    school_hours = calendars is not None
    return KpiReport(span, previous_span, thresholds, maintenance is not None,
                     group_kpis(current, previous, school_hours), current, school_hours=school_hours)


def with_stored_windows(declared: Mapping[str, MaintenanceWindows] | None, store: HistoryStore, start: float,
                        end: float) -> dict[str, MaintenanceWindows] | None:
    """The declared windows plus the ones opened on a site through the API (issue 21), as dated windows.

    So a window opened at run time leaves out every cycle in it, as a declared one does, the answered
    ones too. A window on an upstream node is not added here: which sites it covered is the config's
    tree (their silent cycles are kept as ``maintenance`` in the history all the same). None when
    nothing is declared and no site window was opened (the KPIs then say no maintenance was considered).
    """
    out = dict(declared or {})
    added = False
    for window in store.maintenance_windows(start, end):
        if window.kind != "site" or window.until <= window.starts_at:
            continue
        kept = out.get(window.target, MaintenanceWindows())
        zone = ZoneInfo(kept.timezone)
        span = tuple(dt.datetime.fromtimestamp(t, zone).replace(tzinfo=None) for t in (window.starts_at, window.until))
        out[window.target] = dataclasses.replace(kept, once=(*kept.once, (span[0], span[1])))
        added = True
    return out if declared is not None or added else None


def maintenance_of(config: Config) -> dict[str, MaintenanceWindows]:
    """Each endpoint's declared maintenance: its own block, else its group's (no merging of the two)."""
    out: dict[str, MaintenanceWindows] = {}
    for group in config.groups:
        for endpoint in group.endpoints:
            chosen = endpoint.maintenance or group.maintenance
            if chosen is not None:
                out[endpoint.name] = chosen
    return out

