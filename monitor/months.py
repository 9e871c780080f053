"""Calendar months in a site's time zone: the one definition the throughput budget and the restore share.

A site's monthly budget is spent per calendar month where the site is (``throughput.timezone``).
The plan (:mod:`monitor.throughput_plan`) keeps the month a site's bytes belong to; the history's
restore (:mod:`monitor.history.restore`) reads back the bytes moved since the month began. Both
ask this module, so they agree on where a month starts (issue 23: each had its own computation).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def _local(t: float, timezone: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, ZoneInfo(timezone))


def month_of(t: float, timezone: str) -> str:
    """``t``'s calendar month in ``timezone``, as ``YYYY-MM`` (the key a site's spent bytes are kept under)."""
    return _local(t, timezone).strftime("%Y-%m")


def month_start(t: float, timezone: str) -> float:
    """Unix time of the start of ``t``'s calendar month in ``timezone`` (budgets are per month there)."""
    return _local(t, timezone).replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
