"""Time windows for throughput tests: "only 22:00–06:00", "Mon-Fri 08:00-15:00", in a site's time zone.

A throughput test moves megabytes; on a school's satellite link ops want it at night, or only
during school hours when someone is there to notice. This module is pure: it parses window text
at the config boundary and answers "is this instant allowed?" and "when does the next allowed
stretch begin and end?" for an absolute Unix time, so the scheduler and tests can use fixed times.

A window belongs to the day it starts on: ``Fri 22:00-06:00`` runs from Friday 22:00 to Saturday
06:00. Local times are converted with :mod:`zoneinfo`, so daylight-saving changes are honoured.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^\s*(?:(?P<days>[A-Za-z,\-]+)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A daily stretch of local time, on some weekdays (0 = Monday)."""

    start_minute: int  # minutes after local midnight, 0..1439
    end_minute: int  # equal to start: the whole day; smaller than start: ends the next day
    weekdays: frozenset[int] = frozenset(range(7))

    @property
    def length_minutes(self) -> int:
        span = (self.end_minute - self.start_minute) % 1440
        return span or 1440

    def __str__(self) -> str:
        days = "" if len(self.weekdays) == 7 else ",".join(DAY_NAMES[d].title() for d in sorted(self.weekdays)) + " "
        return (f"{days}{self.start_minute // 60:02d}:{self.start_minute % 60:02d}-"
                f"{self.end_minute // 60:02d}:{self.end_minute % 60:02d}")


def _minute(text: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours == 24 and minutes == 0:
        return 1440
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(f"'{text}' is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.lower().partition("-")
        if first[:3] not in DAY_NAMES or (last and last[:3] not in DAY_NAMES):
            raise ValueError(f"'{part}' is not a day or range of days (Mon, Tue, …, Sun; e.g. Mon-Fri)")
        a = DAY_NAMES.index(first[:3])
        b = DAY_NAMES.index(last[:3]) if last else a
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def parse_window(text: str) -> TimeWindow:
    """Parse ``"22:00-06:00"`` or ``"Mon-Fri 08:00-15:00"``.

    Raises:
        ValueError: with a message fit for an operator.
    """
    found = _WINDOW.match(text)
    if found is None:
        raise ValueError(f"'{text}' is not a time window; write e.g. '22:00-06:00' or 'Mon-Fri 08:00-15:00'")
    start, end = _minute(found["start"]), _minute(found["end"])
    if start == 1440:
        raise ValueError(f"'{text}': a window cannot start at 24:00")
    weekdays = _days(found["days"]) if found["days"] else frozenset(range(7))
    return TimeWindow(start, end % 1440, weekdays)


def _stretches(day: dt.date, windows: Sequence[TimeWindow], zone: ZoneInfo) -> list[tuple[float, float]]:
    """The absolute (start, end) Unix times of the windows that start on local ``day``."""
    out = []
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=zone)
    for window in windows:
        if day.weekday() not in window.weekdays:
            continue
        start = midnight + dt.timedelta(minutes=window.start_minute)
        end = start + dt.timedelta(minutes=window.length_minutes)
        # Aware arithmetic is wall-clock arithmetic: "22:00-06:00" ends at 06:00 local even on a DST night.
        out.append((start.timestamp(), end.timestamp()))
    return out


def current_or_next(now: float, windows: Sequence[TimeWindow], timezone: str) -> tuple[float, float]:
    """The allowed stretch containing ``now``, or else the next one, as absolute (start, end).

    With no windows every instant is allowed: the stretch is (now, +inf). Overlapping windows
    are merged so that the end returned is where testing really has to stop.
    """
    if not windows:
        return now, float("inf")
    zone = ZoneInfo(timezone)
    today = dt.datetime.fromtimestamp(now, zone).date()
    stretches = sorted(s for offset in range(-2, 9)
                       for s in _stretches(today + dt.timedelta(days=offset), windows, zone))
    merged: list[list[float]] = []
    for start, end in stretches:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        if end > now:
            return max(start, now), end
    raise ValueError("no window in the coming week")  # pragma: no cover - every window recurs weekly


def is_allowed(now: float, windows: Sequence[TimeWindow], timezone: str) -> bool:
    start, _end = current_or_next(now, windows, timezone)
    return start <= now


# ----------------------------------------------------------------------------- maintenance (issue 11)

_ONE_OFF = re.compile(r"^\s*(?P<d1>\d{4}-\d{2}-\d{2})[ T](?P<t1>\d{1,2}:\d{2})\s*-\s*"
                      r"(?P<d2>\d{4}-\d{2}-\d{2})[ T](?P<t2>\d{1,2}:\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class MaintenanceWindows:
    """Declared maintenance of a site: weekly windows and one-off dated ones, in ``timezone``.

    ``once`` holds local (start, end) datetimes without a zone; they are placed in ``timezone`` when asked.
    """

    timezone: str = "UTC"
    weekly: tuple[TimeWindow, ...] = ()
    once: tuple[tuple[dt.datetime, dt.datetime], ...] = ()

    def covers(self, t: float) -> bool:
        """True when Unix time ``t`` falls in a window: start inclusive, end exclusive."""
        zone = ZoneInfo(self.timezone)
        for start, end in self.once:
            if start.replace(tzinfo=zone).timestamp() <= t < end.replace(tzinfo=zone).timestamp():
                return True
        if not self.weekly:
            return False
        day = dt.datetime.fromtimestamp(t, zone).date()
        # a weekly window lasts at most a day and belongs to the day it starts on: yesterday's may reach today
        return any(a <= t < b for offset in (-1, 0)
                   for a, b in _stretches(day + dt.timedelta(days=offset), self.weekly, zone))


def parse_maintenance_window(text: str) -> TimeWindow | tuple[dt.datetime, dt.datetime]:
    """``"Sun 02:00-04:00"`` (weekly, as :func:`parse_window`) or ``"2026-11-14 08:00-2026-11-14 12:00"``.

    Raises:
        ValueError: with a message fit for an operator.
    """
    found = _ONE_OFF.match(text)
    if found is None:
        if re.match(r"^\s*\d{4}-", text):
            raise ValueError(f"'{text}' is not a dated window; write e.g. '2026-11-14 08:00-2026-11-14 12:00'")
        return parse_window(text)
    try:
        start = dt.datetime.fromisoformat(f"{found['d1']} {found['t1']:0>5}")
        end = dt.datetime.fromisoformat(f"{found['d2']} {found['t2']:0>5}")
    except ValueError as err:
        raise ValueError(f"'{text}': {err}") from None
    if end <= start:
        raise ValueError(f"'{text}': the window ends before it starts")
    return start, end


def open_window(windows: MaintenanceWindows | None, t: float) -> str | None:
    """The declared window of ``windows`` open at Unix time ``t``, as written with its time zone, else None.

    ``"Sun 02:00-04:00 Asia/Almaty"`` for a weekly one, ``"2026-11-14 08:00-2026-11-14 12:00 UTC"`` for a
    dated one; the first that covers ``t`` when several do.
    """
    if windows is None or not windows.covers(t):
        return None
    zone = windows.timezone
    for start, end in windows.once:
        if MaintenanceWindows(zone, once=((start, end),)).covers(t):
            return f"{start:%Y-%m-%d %H:%M}-{end:%Y-%m-%d %H:%M} {zone}"
    for weekly in windows.weekly:
        if MaintenanceWindows(zone, weekly=(weekly,)).covers(t):
            return f"{weekly} {zone}"
    return f"maintenance {zone}"  # pragma: no cover - covers() found one of the above
