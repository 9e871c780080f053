"""The ``calendars:`` block of a site config (issue 22), read into :class:`~monitor.config.calendar.SchoolCalendar`
values, and the ``calendar:`` key that names one; every problem is reported on the walker with its place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from yaml.nodes import Node

from monitor.config.calendar import GIGA_HOURS, SchoolCalendar, parse_dates
from monitor.config.settings import timezone
from monitor.config.walker import Walker
from monitor.config.windows import TimeWindow, parse_window

CALENDAR_KEYS = ("hours", "holidays", "breaks", "timezone")


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
