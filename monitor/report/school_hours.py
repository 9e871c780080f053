"""Availability in school hours (issue 22): the one rule, for reports, KPIs and the API's summary.

Availability *around the clock* is ICMP cycles up / cycles run over the whole period, by the rule
of :class:`monitor.report.gaps.CycleLedger`. Availability *in school hours* is the same quotient
over the cycles that **started** in the site's school hours (:class:`~monitor.config.calendar.SchoolCalendar`:
its weekly stretches in local time, a stretch's start inside and its end outside, on days that are
not a holiday or in a term break), with the same rule for everything else:

* maintenance (declared or opened through the API), power gaps of agent sites ("while the device is
  on", Giga's words) and a cut-off monitor are left out of both counts;
* the site's own silence and its upstream nodes' count as run and down;
* cycles due in an agent site's ``link`` or ``unknown`` gap without a row count as run and down when
  they were due in school hours.

So a cycle counted in school hours is also counted around the clock, never the other way round.
The calendar a site follows comes from the config (:func:`calendars_of`); a site whose config names
none follows Giga's hours, Monday to Friday 08:00-20:00, in the region's zone (``monitor.timezone``).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from monitor.config import Config
from monitor.config.calendar import SchoolCalendar
from monitor.config.windows import MaintenanceWindows
from monitor.history.store import StoredCycle
from monitor.report.gaps import CycleLedger, GapAccount


@dataclass(frozen=True, slots=True)
class SchoolHoursCount:
    """A site's (or several sites') cycles in school hours: run (missing due cycles included) and up."""

    cycles: int = 0
    cycles_up: int = 0

    @property
    def availability(self) -> float | None:
        return self.cycles_up / self.cycles if self.cycles else None

    def __add__(self, other: SchoolHoursCount) -> SchoolHoursCount:
        return SchoolHoursCount(self.cycles + other.cycles, self.cycles_up + other.cycles_up)


@dataclass(slots=True)
class SchoolHoursLedger:
    """Sorts one site's cycles over one span by the ledger's rule, keeping those that started in school hours.

    Feed it every cycle of the span, oldest first (:meth:`add`), beside the around-the-clock ledger;
    then read :meth:`count`.
    """

    gaps: GapAccount
    maintenance: MaintenanceWindows | None
    calendar: SchoolCalendar
    _ledger: CycleLedger = field(init=False)
    _starts: list[float] = field(init=False)  # the school-hour stretches of the span, as two sorted lists
    _ends: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self._ledger = CycleLedger(self.gaps, self.maintenance)
        spans = self.calendar.spans(self.gaps.start, self.gaps.end)
        self._starts, self._ends = [a for a, _ in spans], [b for _, b in spans]

    def in_hours(self, t: float) -> bool:
        """:meth:`SchoolCalendar.covers`, by bisection over the span's stretches (a stretch's end is outside)."""
        i = bisect.bisect_right(self._starts, t) - 1
        return i >= 0 and t < self._ends[i]

    def add(self, cycle: StoredCycle) -> None:
        if self.in_hours(cycle.started_at):
            self._ledger.add(cycle)

    def _left_out(self, t: float) -> bool:
        """A due cycle not counted in school hours: outside them, or in maintenance."""
        return not self.in_hours(t) or (self.maintenance is not None and self.maintenance.covers(t))

    def count(self) -> SchoolHoursCount:
        missing = self.gaps.missing_cycles(self._ledger.counted, self._left_out)
        return SchoolHoursCount(self._ledger.cycles + missing, self._ledger.cycles_up)


def default_calendar(timezone: str) -> SchoolCalendar:
    """Giga's hours (Monday to Friday, 08:00-20:00, no holidays) in ``timezone``."""
    return SchoolCalendar(timezone=timezone)


def calendars_of(config: Config) -> dict[str, SchoolCalendar]:
    """Each endpoint's calendar: its own ``calendar:``, else its group's, else the defaults', else Giga's hours.

    Giga's hours are in the region's zone (``monitor.timezone``, else UTC).
    """
    declared = {c.name: c for c in config.calendars}
    fallback = default_calendar(config.monitor.zone)
    out: dict[str, SchoolCalendar] = {}
    for group in config.groups:
        for endpoint in group.endpoints:
            name = endpoint.calendar or group.calendar or config.defaults.calendar
            out[endpoint.name] = declared.get(name, fallback) if name is not None else fallback
    return out


def calendar_for(calendars: Mapping[str, SchoolCalendar], name: str, timezone: str) -> SchoolCalendar:
    """The site's calendar, else Giga's hours in ``timezone`` (a site the config does not list, or no config)."""
    found = calendars.get(name)
    return found if found is not None else default_calendar(timezone)
