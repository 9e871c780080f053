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

This module holds the value (:class:`SchoolCalendar`, pure: "is this instant in school hours?") and
the reader of the ``calendars:`` block; counting availability in those hours is
:mod:`monitor.report.school_hours`' job.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yaml.nodes import Node

from monitor.config.windows import TimeWindow, current_or_next, is_allowed, parse_window

if TYPE_CHECKING:  # the walker imports the model, which imports this module
    from monitor.config.walker import Walker

GIGA_HOURS: tuple[TimeWindow, ...] = (parse_window("Mon-Fri 08:00-20:00"),)
"""School hours when a calendar does not say: Monday to Friday, 08:00 to 20:00 local time (Giga's definition)."""
DEFAULT_CALENDAR = "giga"  # the name reports give a site that no calendar: names
CALENDAR_KEYS = ("hours", "holidays", "breaks", "timezone")
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


def read_calendars(w: Walker, node: Node, region_zone: str) -> dict[str, SchoolCalendar]:
    """The ``calendars:`` block: name → calendar; every problem is reported on ``w``.

    A calendar whose entries have problems is still returned (so ``calendar:`` keys naming it are not
    reported too); the file is refused anyway.
    """
    out: dict[str, SchoolCalendar] = {}
    entries = w.mapping(node, "calendars", None)
    for name, value in (entries or {}).items():
        path = f"calendars.{name}"
        out[name] = _calendar(w, value, path, name, region_zone)
    return out


def _calendar(w: Walker, node: Node, path: str, name: str, region_zone: str) -> SchoolCalendar:
    values = w.mapping(node, path, CALENDAR_KEYS) or {}
    read: dict[str, Any] = w.fields(values, path, {
        "hours": lambda n, p: _hours(w, n, p),
        "holidays": lambda n, p: _closed(w, n, p),
        "breaks": lambda n, p: _closed(w, n, p),
        "timezone": lambda n, p: _zone(w, n, p),
    })
    return SchoolCalendar(name, read.get("hours", GIGA_HOURS), (*read.get("holidays", ()), *read.get("breaks", ())),
                          read.get("timezone", region_zone))


def _hours(w: Walker, node: Node, path: str) -> tuple[TimeWindow, ...] | None:
    items = [node] if node.tag.endswith(":str") else w.sequence(node, path)  # one window may be written bare
    if items is None:
        return None
    out: list[TimeWindow] = []
    for index, item in enumerate(items):
        where = path if item is node else f"{path}[{index}]"
        text = w.string(item, where)
        if text is None:
            continue
        try:
            out.append(parse_window(text))
        except ValueError as err:
            w.problem(item, where, str(err))
    if not items:
        w.problem(node, path, "must name at least one stretch, e.g. 'Mon-Fri 08:00-20:00'")
        return None
    return tuple(out) if len(out) == len(items) else None


def _closed(w: Walker, node: Node, path: str) -> tuple[tuple[dt.date, dt.date], ...] | None:
    items = w.sequence(node, path)
    if items is None:
        return None
    out: list[tuple[dt.date, dt.date]] = []
    for index, item in enumerate(items):
        # an unquoted 2026-12-16 is a YAML timestamp: its text is the date all the same
        scalar = w.scalar(item, f"{path}[{index}]", ("str", "timestamp"),
                          "a date or a range like 2026-12-29..2027-01-10")
        if scalar is None:
            continue
        try:
            out.append(parse_dates(str(scalar.value)))
        except ValueError as err:
            w.problem(item, f"{path}[{index}]", str(err))
    return tuple(out) if len(out) == len(items) else None


def _zone(w: Walker, node: Node, path: str) -> str | None:
    from monitor.config.settings import timezone  # settings imports the model, which imports this module

    return timezone(w, node, path)


def calendar_name(w: Walker, node: Node, path: str, declared: Mapping[str, SchoolCalendar]) -> str | None:
    """A ``calendar:`` key: the name of a calendar of ``calendars:``."""
    name = w.string(node, path)
    if name is None:
        return None
    if name not in declared:
        known = ", ".join(sorted(declared)) if declared else "none: the file has no 'calendars:' block"
        w.problem(node, path, f"unknown calendar '{name}' (the calendars are: {known})")
        return None
    return name
