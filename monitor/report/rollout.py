"""The report's roll-out section (issue 11): sites per district by status, and those connected in the period.

Planned sites are not in the site table or the KPIs (nothing is measured
there yet), and retired ones only when they have results in the period. The roll-out section
counts sites per district by status (``planned``, ``connected``, ``retired``) and lists those
**connected in the period**: sites whose status is ``connected`` and whose connection date falls
within the period's days. The connection date is the site's ``planned_date`` when it has one
(keep it when switching a site to connected: it records when the line was due and delivered),
else the day of the first result the history ever stored for it (in the report's time zone).
The section is there only when some site is planned or retired or has a ``planned_date``, so a
history without roll-out keys gives the report it always gave.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

from monitor.history.store import EndpointRecord, HistoryStore


@dataclass(frozen=True, slots=True)
class RolloutCounts:
    """Sites of one district (or of the whole selection, ``district`` None) by roll-out status."""

    district: str | None
    planned: int
    connected: int
    retired: int
    connected_in_period: int


@dataclass(frozen=True, slots=True)
class ConnectedSite:
    """A site connected in the period, with the day it counts from and where that day comes from."""

    name: str
    kind: str
    district: str
    connected_on: dt.date
    source: Literal["planned_date", "first_result"]


@dataclass(frozen=True, slots=True)
class Rollout:
    """The report's roll-out section: counts per district, the total, and the sites connected in the period."""

    districts: tuple[RolloutCounts, ...]
    total: RolloutCounts
    connected: tuple[ConnectedSite, ...]


def has_rollout(endpoints: Iterable[EndpointRecord]) -> bool:
    """True when some site uses the roll-out keys: then, and only then, reports show the roll-out."""
    return any(e.status != "connected" or e.planned_date is not None for e in endpoints)


def rollout(store: HistoryStore, endpoints: Sequence[EndpointRecord], first_day: dt.date, last_day: dt.date,
            timezone: str) -> Rollout:
    """Count ``endpoints`` per district by status, and find those connected from ``first_day`` to ``last_day``
    (inclusive, days in ``timezone``; see the module doc)."""
    first = store.first_results()
    zone = ZoneInfo(timezone)
    connected: list[ConnectedSite] = []
    for e in endpoints:
        if e.status != "connected":
            continue
        if e.planned_date is not None:
            site = ConnectedSite(e.name, e.kind, e.district, e.planned_date, "planned_date")
        elif e.name in first:
            site = ConnectedSite(e.name, e.kind, e.district, dt.datetime.fromtimestamp(first[e.name], zone).date(),
                                 "first_result")
        else:
            continue  # connected, but nothing measured yet and no date written: not known to be new
        if first_day <= site.connected_on <= last_day:
            connected.append(site)
    connected.sort(key=lambda c: (c.connected_on, c.district, c.name))
    new = {c.name for c in connected}

    def counts(district: str | None, members: Sequence[EndpointRecord]) -> RolloutCounts:
        statuses = [e.status for e in members]
        return RolloutCounts(district, statuses.count("planned"), statuses.count("connected"),
                             statuses.count("retired"), sum(1 for e in members if e.name in new))

    districts = sorted({e.district for e in endpoints})
    return Rollout(tuple(counts(d, [e for e in endpoints if e.district == d]) for d in districts),
                   counts(None, endpoints), tuple(connected))
