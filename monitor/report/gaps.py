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

**Downtime by cause** (issue 21, :class:`CycleLedger`, the one place reports and KPIs sort a cycle):
every cycle a site did not answer is charged to one cause, the first that holds, in the order of
the site states' precedence:

1. **maintenance**: its error is ``maintenance`` (a window opened at run time through the API), or
   it started inside a window declared in the config. Left out of availability (a declared window
   leaves out the answered cycles in it too, as the KPIs always did);
2. **power**: it started in a power gap (above). Left out; the hours are the gap's time;
3. **monitor cut off**: its error is ``monitor_cut_off``. Left out;
4. **upstream**: its error is ``upstream_down``; the node is the one its detail names
   (:func:`monitor.upstreams.upstream_of`). Counts against the site: run and not up;
5. **site**: any other silence (``timeout``, ``dns``, ``unreachable``, no error, ...), and the
   cycles due in a link or unknown gap without a row. Counts against the site.

Each silent cycle's time is measured as the cut-off cycles' are (the time to its nearer neighbour,
never past the span's end), and a cycle in a declared window never past the window's end; a due
cycle without a row stands for its gap's interval. Answered cycles are up time whatever their window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

from monitor.config.windows import MaintenanceWindows, current_or_next
from monitor.errors import ProbeErrorReason
from monitor.history.store import HistoryStore, StoredCycle, StoredGap
from monitor.upstreams import upstream_of

MONITOR_CUT_OFF: str = ProbeErrorReason.MONITOR_CUT_OFF.value  # a stored cycle's error when the centre was cut off
MAINTENANCE: str = ProbeErrorReason.MAINTENANCE.value  # ... when a window opened through the API was open (issue 21)
CycleCause = Literal["up", "site", "upstream", "monitor_cut_off", "power", "maintenance"]


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
        return sum(count for _gap, count in self.missing_by_gap(recorded, leave_out))

    def missing_seconds(self, recorded: Sequence[float], leave_out: Callable[[float], bool] | None = None) -> float:
        """The time of :meth:`missing_cycles`: each due cycle without a row stands for its gap's interval."""
        return sum(count * gap.interval_seconds for gap, count in self.missing_by_gap(recorded, leave_out))

    def missing_by_gap(self, recorded: Sequence[float],
                       leave_out: Callable[[float], bool] | None = None) -> list[tuple[StoredGap, int]]:
        """:meth:`missing_cycles` per link/unknown gap."""
        out: list[tuple[StoredGap, int]] = []
        for gap in self.down:
            # the gap starts with the last cycle heard: a row at its very start is that one, not a due one
            rows = sum(1 for t in recorded if gap.started_at < t < gap.ended_at and self.start <= t < self.end
                       and (leave_out is None or not leave_out(t)))
            if leave_out is None:
                due = due_cycles(gap, self.start, self.end)
            else:
                due = sum(1 for t in due_times(gap, self.start, self.end) if not leave_out(t))
            out.append((gap, max(0, due - rows)))
        return out


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
    durations = cycle_seconds(starts, end)
    return sum(durations[i] for i in cut_off)


def cycle_seconds(starts: Sequence[float], end: float) -> list[float]:
    """The time each cycle stands for: to its nearer neighbour, never past ``end`` (0.0 without a neighbour).

    Args:
        starts: the start times of every cycle of one site in a span, oldest first.
        end: the span's end.
    """
    out: list[float] = []
    last = len(starts) - 1
    for i, t in enumerate(starts):
        spacings: list[float] = []
        if i < last:
            spacings.append(starts[i + 1] - t)
        if i > 0:
            spacings.append(t - starts[i - 1])
        out.append(max(0.0, min(min(spacings), end - t)) if spacings else 0.0)
    return out


def window_end(windows: MaintenanceWindows, t: float) -> float:
    """The end of the declared window that covers ``t`` (the latest, when several do); ``t`` when none does."""
    zone = ZoneInfo(windows.timezone)
    ends = [b.replace(tzinfo=zone).timestamp() for a, b in windows.once
            if a.replace(tzinfo=zone).timestamp() <= t < b.replace(tzinfo=zone).timestamp()]
    if windows.weekly:
        start, stop = current_or_next(t, windows.weekly, windows.timezone)
        if start <= t:
            ends.append(stop)
    return max(ends, default=t)


@dataclass(frozen=True, slots=True)
class Downtime:
    """Silent time over a span by cause, in seconds (of one site, or summed over several): see the module doc.

    ``site_seconds`` and ``upstream_seconds`` count against availability; the other three are left out of it.
    """

    site_seconds: float = 0.0
    upstream_seconds: tuple[tuple[str, float], ...] = ()  # per upstream node, by name
    monitor_cut_off_seconds: float = 0.0
    power_seconds: float = 0.0
    maintenance_seconds: float = 0.0

    @property
    def upstream_total_seconds(self) -> float:
        return sum(seconds for _node, seconds in self.upstream_seconds)

    def upstream(self, node: str) -> float:
        """The time charged to upstream node ``node``."""
        return sum(seconds for name, seconds in self.upstream_seconds if name == node)

    @property
    def beyond_the_site(self) -> bool:
        """True when some of the time is not the site's own (a cause other than the site)."""
        return bool(self.upstream_seconds or self.monitor_cut_off_seconds or self.power_seconds
                    or self.maintenance_seconds)

    def __add__(self, other: Downtime) -> Downtime:
        nodes = dict(self.upstream_seconds)
        for name, seconds in other.upstream_seconds:
            nodes[name] = nodes.get(name, 0.0) + seconds
        return Downtime(self.site_seconds + other.site_seconds, tuple(sorted(nodes.items())),
                        self.monitor_cut_off_seconds + other.monitor_cut_off_seconds,
                        self.power_seconds + other.power_seconds,
                        self.maintenance_seconds + other.maintenance_seconds)

    @classmethod
    def total(cls, parts: Iterable[Downtime]) -> Downtime:
        out = cls()
        for part in parts:
            out += part
        return out


@dataclass(slots=True)
class CycleLedger:
    """One site's cycles over one span, each sorted by the one rule (the module doc): availability and downtime.

    Feed it the site's cycles inside the span, oldest first (:meth:`add`), then read the counts,
    :meth:`missing_cycles` and :meth:`downtime`.

    Args:
        gaps: the site's gaps over the span.
        maintenance: the site's declared windows (None: none declared, or no config given).
    """

    gaps: GapAccount
    maintenance: MaintenanceWindows | None = None
    cycles: int = 0  # run: counted in availability (without the missing cycles of link/unknown gaps)
    cycles_up: int = 0
    cycles_in_maintenance: int = 0
    cycles_monitor_cut_off: int = 0
    counted: list[float] = field(default_factory=list)  # start times of the cycles run
    _starts: list[float] = field(default_factory=list)
    _silent: list[tuple[int, CycleCause, str]] = field(default_factory=list)  # index in _starts, cause, node

    def in_window(self, t: float) -> bool:
        """True when ``t`` falls in a declared maintenance window of the site."""
        return self.maintenance is not None and self.maintenance.covers(t)

    def add(self, cycle: StoredCycle) -> CycleCause:
        """Sort one cycle: ``up`` and ``site``/``upstream`` are run; the other causes are left out."""
        t = cycle.started_at
        index = len(self._starts)
        self._starts.append(t)
        answered = cycle.received > 0
        cause: CycleCause
        if cycle.error == MAINTENANCE or self.in_window(t):
            self.cycles_in_maintenance += 1
            cause = "maintenance"
        elif self.gaps.without_power(t):
            return "power"  # its time is the gap's
        elif cycle.error == MONITOR_CUT_OFF:
            self.cycles_monitor_cut_off += 1
            cause = "monitor_cut_off"
        else:
            self.counted.append(t)
            self.cycles += 1
            if answered:
                self.cycles_up += 1
                return "up"
            node = upstream_of(cycle.error, cycle.error_detail)
            if node is not None:
                self._silent.append((index, "upstream", node))
                return "upstream"
            cause = "site"
        if not answered or cause == "monitor_cut_off":
            self._silent.append((index, cause, ""))
        return cause

    def missing_cycles(self) -> int:
        """Cycles due in the site's link/unknown gaps with no row, outside maintenance: run and down."""
        return self.gaps.missing_cycles(self.counted, self.in_window if self.maintenance is not None else None)

    def downtime(self) -> Downtime:
        """The site's silent time in the span, by cause."""
        durations = cycle_seconds(self._starts, self.gaps.end)
        by: dict[CycleCause, float] = {"site": 0.0, "monitor_cut_off": 0.0, "maintenance": 0.0}
        nodes: dict[str, float] = {}
        for index, cause, node in self._silent:
            seconds = durations[index]
            if cause == "upstream":
                nodes[node] = nodes.get(node, 0.0) + seconds
                continue
            if cause == "maintenance" and self.maintenance is not None:
                t = self._starts[index]
                seconds = min(seconds, window_end(self.maintenance, t) - t) if self.in_window(t) else seconds
            by[cause] += seconds
        leave_out = self.in_window if self.maintenance is not None else None
        by["site"] += self.gaps.missing_seconds(self.counted, leave_out)
        if self.maintenance is not None:  # due cycles of a link/unknown gap inside a window, without a row
            in_window = [t for t in self._starts if self.in_window(t)]
            by["maintenance"] += self.gaps.missing_seconds(in_window, lambda t: not self.in_window(t))
        return Downtime(by["site"], tuple(sorted(nodes.items())), by["monitor_cut_off"], self.gaps.power_seconds,
                        by["maintenance"])
