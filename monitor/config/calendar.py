"""School calendars (issue 22): when a site is expected to be in use, declared once, read here.

Ministries and UNICEF Giga count a school's connectivity in school hours on school days, not around
the clock: Giga counts uptime from 08:00 to 20:00 while the device is on. A calendar says when that
is, in local time::

    calendars:
      kz-schools:
        hours: ["Mon-Fri 08:00-20:00"]          # the default: Giga's definition
        holidays: ["2026-12-16", "2026-12-17"]   # a date, or a range written FIRST..LAST (inclusive)
        breaks: ["2026-12-29..2027-01-10"]       # term breaks: the same form
        timezone: Asia/Aqtobe                    # default: monitor.timezone, else UTC

``calendar: kz-schools`` then cascades like the other keys (defaults → group → endpoint). A site
whose config names none gets :data:`GIGA_HOURS` (weekdays 08:00-20:00, no holidays) in the region's zone.

This module holds the value (:class:`SchoolCalendar`, pure: "is this instant in school hours?"); the
reader of the ``calendars:`` block is :mod:`monitor.config.calendar_reader`, and counting availability
in those hours is :mod:`monitor.report.school_hours`' job.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

from monitor.config.windows import TimeWindow, current_or_next, is_allowed, parse_window

GIGA_HOURS: tuple[TimeWindow, ...] = (parse_window("Mon-Fri 08:00-20:00"),)
"""School hours when a calendar does not say: Monday to Friday, 08:00 to 20:00 local time (Giga's definition)."""
DEFAULT_CALENDAR = "giga"  # the name reports give a site that no calendar: names
_DATE = r"\d{4}-\d{2}-\d{2}"
_DATES = re.compile(rf"^\s*(?P<first>{_DATE})\s*(?:\.\.\s*(?P<last>{_DATE})\s*)?$")


@dataclass(frozen=True, slots=True)
class SchoolCalendar:
    """School hours of a site: weekly stretches of local time, less the closed days (holidays, breaks).

    A cycle is *in school hours* when it starts inside a stretch (start inclusive, end exclusive) on a
    day that is not closed; days are local days in ``timezone``, so a DST change moves the hours in
    UTC, not in local time.
    """

    name: str = DEFAULT_CALENDAR
    hours: tuple[TimeWindow, ...] = GIGA_HOURS
    closed: tuple[tuple[dt.date, dt.date], ...] = ()  # holidays and term breaks, first and last day inclusive
    timezone: str = "UTC"

    def is_closed(self, day: dt.date) -> bool:
        """True on a holiday or a day of a term break."""
        return any(first <= day <= last for first, last in self.closed)

    def covers(self, t: float) -> bool:
        """True when Unix time ``t`` is in school hours (the method name matches maintenance windows')."""
        if self.closed and self.is_closed(dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(self.timezone)).date()):
            return False
        return is_allowed(t, self.hours, self.timezone)

    def spans(self, start: float, end: float) -> tuple[tuple[float, float], ...]:
        """School hours within [start, end) as absolute (start, end) stretches, oldest first, closed days cut out.

        What :meth:`covers` answers, computed once for a report's period: a month of cycles asks
        thousands of times per site, and a sorted list answers each with a bisection.
        """
        zone = zoneinfo.ZoneInfo(self.timezone)
        open_: list[tuple[float, float]] = []
        t = start
        while t < end:
            a, b = current_or_next(t, self.hours, self.timezone)
            if a >= end:
                break
            open_.append((a, min(b, end)))
            t = b
        for first, last in self.closed:  # whole local days, from the first's midnight to the one after the last
            low = dt.datetime.combine(first, dt.time(), zone).timestamp()
            high = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), zone).timestamp()
            open_ = [piece for a, b in open_ for piece in ((a, min(b, low)), (max(a, high), b)) if piece[0] < piece[1]]
        return tuple(sorted(open_))


def parse_dates(text: str) -> tuple[dt.date, dt.date]:
    """``"2026-12-16"`` (one day) or ``"2026-12-29..2027-01-10"`` (first and last day, inclusive).

    Raises:
        ValueError: with a message fit for an operator.
    """
    found = _DATES.match(text)
    if found is None:
        raise ValueError(f"'{text}' is not a date or a range of dates; write e.g. '2026-12-16' or "
                         "'2026-12-29..2027-01-10'")
    try:
        first = dt.date.fromisoformat(found["first"])
        last = dt.date.fromisoformat(found["last"]) if found["last"] else first
    except ValueError as err:
        raise ValueError(f"'{text}': {err}") from None
    if last < first:
        raise ValueError(f"'{text}': the range ends before it starts")
    return first, last
