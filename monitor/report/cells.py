"""The report's cells: figures rounded and written in the report's language, headers translated.

Shared by the site tables (:mod:`monitor.report.render`) and the report's sections
(:mod:`monitor.report.sections`), so that a figure is written one way wherever it appears.
"""

from __future__ import annotations

from monitor.report.gaps import Downtime
from monitor.report.i18n import N_, number
from monitor.report.i18n import gettext as _

# after availability (and the power columns), only when the monitor was cut off from some site (issue 21)
CUT_OFF_HEADER = N_("hours monitor cut off")
CUT_OFF_CSV_HEADERS = ("hours_monitor_cut_off",)
# downtime by cause (issue 21), after those: the site's own hours when some site had time of another cause,
# the upstream hours (total, then per node) when some site had any, the hours in maintenance likewise
SITE_DOWN_HEADER, SITE_DOWN_CSV_HEADER = N_("hours site down"), "hours_site_down"
UPSTREAM_HEADERS = (N_("hours upstream down"), N_("upstream nodes (hours)"))
UPSTREAM_CSV_HEADERS = ("hours_upstream_down", "upstream_down_hours_by_node")
MAINTENANCE_HEADER, MAINTENANCE_CSV_HEADER = N_("hours in maintenance"), "hours_maintenance"


def fixed(value: float | None, digits: int, scale: float = 1.0) -> str:
    """A figure rounded to ``digits``, written in the report's language ("99.50", "99,50"; CSV: always the first)."""
    return "" if value is None else number(value * scale, digits)


def hours(seconds: float, digits: int) -> str:
    return number(seconds / 3600.0, digits)


def translated(headers: tuple[str, ...]) -> tuple[str, ...]:
    """Headers in the report's language: the constants are the English message ids, compared as such."""
    return tuple(_(h) for h in headers)


def by_node(d: Downtime, digits: int, between: str = " ", separator: str = ", ") -> str:
    """The hours charged to each upstream node: "agg 1.50, isp 0.50" (CSV: "agg=1.5000;isp=0.5000")."""
    return separator.join(f"{name}{between}{hours(seconds, digits)}" for name, seconds in d.upstream_seconds)


def signed(value: float | None, digits: int) -> str:
    return "" if value is None else number(value, digits, signed=True)
