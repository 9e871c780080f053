"""How silences that are not the site's count in availability: the one rule, for reports and KPIs.

Two kinds: an agent site's classified silences (issue 10, below), and the cycles the centre
probed while it was cut off itself (issue 21, :func:`cut_off_seconds`).

Availability is ICMP cycles up / cycles run. For a site probed from the centre every cycle
leaves a row, answered or not. An agent site's silence may leave none: the centre hears
nothing, and only what the agent spooled arrives later. The history keeps each classified
silence (:class:`~monitor.history.store.StoredGap`), and this module makes the quotient true for it:

* **power** gap, [start, end): the site had no power. Cycles that started in it are left out of
  both counts (neither up nor run), as ministries ask (Giga counts uptime only while the device is
  powered), exactly as KPIs leave out declared maintenance. The report shows these hours per site.
* **link** and **unknown** gaps: the link was down, or nobody knows, so the time counts as down.
  A cycle was due every ``interval_seconds`` after the gap's start (the last post heard), up to
  its end: start + k × interval for k ≥ 1, before the end. The cycles that arrived from the
  agent's spool for that time (rows after the gap's start, before its end) count as themselves
  (the agent measured, mostly unanswered); as many of the due cycles as have no row count as
  run and not up.

Only the part of a gap inside the span asked for counts, so a gap across a period's border is
split between the two periods. A silence still going on is stored as an ``unknown`` gap up to its
last refresh (:mod:`monitor.agent.centre.registry`), so it counts as down until the agent tells otherwise.

**Monitor cut off** (issue 21): a cycle of a site probed from the centre whose error is
``monitor_cut_off`` went unanswered while the centre's own way out was down (every uplink check
failed, or the resolver failed for every name). It says nothing of the site, so it is left out of
both counts, as a power gap's cycles are. The history keeps such cycles, not a gap with a start and
an end, so their time is measured from the cycles themselves: each stands for the time until the
site's next cycle, or the time since its previous one when that is shorter (so a monitor stopped
or restarted next to it does not add its downtime), never past the span's end. A site's only
cycle in the span has no neighbour to go by and adds no time (it is still left out). At a steady
interval this is the number of such cycles × the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.errors import ProbeErrorReason
from monitor.history.store import HistoryStore, StoredGap

MONITOR_CUT_OFF: str = ProbeErrorReason.MONITOR_CUT_OFF.value  # a stored cycle's error when the centre was cut off


def due_cycles(gap: StoredGap, start: float, end: float) -> int:
    """Cycles due in ``gap`` within [start, end): at gap start + k × interval, k ≥ 1, before the gap's end."""
    low, high = max(start, gap.started_at), min(end, gap.ended_at)
    if high <= low or gap.interval_seconds <= 0:
        return 0
    first = max(1, math.ceil((low - gap.started_at) / gap.interval_seconds))
    last = math.ceil((high - gap.started_at) / gap.interval_seconds) - 1
    return max(0, last - first + 1)


def due_times(gap: StoredGap, start: float, end: float) -> list[float]:
    """The start times of the cycles :func:`due_cycles` counts (for leaving some out, e.g. maintenance)."""
    count = due_cycles(gap, start, end)
    if not count:
        return []
    low = max(start, gap.started_at)
    first = max(1, math.ceil((low - gap.started_at) / gap.interval_seconds))
    return [gap.started_at + (first + k) * gap.interval_seconds for k in range(count)]


@dataclass(frozen=True, slots=True)
class GapAccount:
    """One site's gaps over one span [start, end), ready to apply to its ICMP cycles."""

    start: float
    end: float
    power: tuple[StoredGap, ...] = ()
    down: tuple[StoredGap, ...] = ()  # link and unknown

    @classmethod
    def of(cls, store: HistoryStore, endpoint: str, start: float, end: float) -> GapAccount:
        gaps = store.gaps(endpoint, start, end)
        return cls(start, end, tuple(g for g in gaps if g.cause == "power"),
                   tuple(g for g in gaps if g.cause != "power"))

    def without_power(self, t: float) -> bool:
        """True when a cycle starting at ``t`` fell in a power gap: it is left out of availability."""
        return any(g.started_at <= t < g.ended_at for g in self.power)

    @property
    def power_seconds(self) -> float:
        """Time without power inside the span (gaps of one site do not overlap: the registry makes one at a time)."""
        return sum(max(0.0, min(self.end, g.ended_at) - max(self.start, g.started_at)) for g in self.power)

    def missing_cycles(self, recorded: Sequence[float], leave_out: Callable[[float], bool] | None = None) -> int:
        """Cycles due in the link/unknown gaps with no row: they count as run and down.

        ``recorded`` holds the start times of the rows counted (inside the span); ``leave_out``
        drops due cycles and rows alike (declared maintenance in the KPIs).
        """
        missing = 0
        for gap in self.down:
            # the gap starts with the last cycle heard: a row at its very start is that one, not a due one
            rows = sum(1 for t in recorded if gap.started_at < t < gap.ended_at and self.start <= t < self.end
                       and (leave_out is None or not leave_out(t)))
            if leave_out is None:
                due = due_cycles(gap, self.start, self.end)
            else:
                due = sum(1 for t in due_times(gap, self.start, self.end) if not leave_out(t))
            missing += max(0, due - rows)
        return missing


def cut_off_seconds(starts: Sequence[float], cut_off: Sequence[int], end: float) -> float:
    """The time the monitor was cut off from one site, from its cycles in a span (see the module doc).

    Args:
        starts: the start times of every cycle of the site in the span, oldest first (left out or
            not: a neighbour is a neighbour).
        cut_off: the indices in ``starts`` of the cycles whose error is ``monitor_cut_off``.
        end: the span's end.

    Returns:
        Seconds; 0.0 without such cycles.
    """
    total = 0.0
    last = len(starts) - 1
    for i in cut_off:
        spacings: list[float] = []
        if i < last:
            spacings.append(starts[i + 1] - starts[i])
        if i > 0:
            spacings.append(starts[i] - starts[i - 1])
        if spacings:
            total += max(0.0, min(min(spacings), end - starts[i]))
    return total
