"""One state per site (issue 21): what a site's silence is charged to, derived once for every sink.

A site's raw facts are its last ICMP result (``connmon_up`` stays that raw truth); its *state* says
which cause explains the site's silence, the most outward one first::

    maintenance       a maintenance window of the site, or of a node above it, is open now (the config's
                      ``maintenance:``, or one opened through the API: :mod:`monitor.maintenance`)
    monitor_cut_off   its last result was given that reason: no reply while the centre itself was cut off
    upstream_down     its last result was given that reason: no reply while a node of its upstream chain was down
    power             an agent site whose agent is silent, and whose silence was classified as a power cut
    down              its last result got no reply
    up                its last result got one
    unknown           no result yet

:func:`derive` is the precedence, written once; :func:`site_state` adds the cause that names what is
at fault (``{"monitor": "uplink"}``, ``{"maintenance": "Sun 02:00-04:00 Asia/Almaty"}``). The
exposition (``connmon_site_state``, ``connmon_maintenance``), the API's site JSON and the event log
all call them, so they cannot disagree. Whether a window is open is asked through a
:class:`MaintenanceWatch`, at most once a minute (windows start and end on whole minutes), so a
sink can tell that a window opened or closed without waiting for the site's next result.

What a site's silence means for availability is the report's (:mod:`monitor.report`); why the centre
is cut off is :mod:`monitor.centre_path`'s, which writes the ``monitor_cut_off`` reason this reads.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from monitor.centre_path import cut_off_cause
from monitor.config.windows import MaintenanceWindows, open_window
from monitor.errors import ProbeErrorReason
from monitor.results import GapCause, IcmpResult
from monitor.targets import Target
from monitor.upstreams import upstream_of

if TYPE_CHECKING:
    from monitor.maintenance import MaintenanceBook


class SiteStateName(enum.StrEnum):
    """A site's state, a closed set (label values of ``connmon_site_state``), in exposition order."""

    UP = "up"
    DOWN = "down"
    UPSTREAM_DOWN = "upstream_down"
    MONITOR_CUT_OFF = "monitor_cut_off"
    MAINTENANCE = "maintenance"
    POWER = "power"
    UNKNOWN = "unknown"


SITE_STATES: tuple[SiteStateName, ...] = tuple(SiteStateName)
"""Every state, in the order ``connmon_site_state`` lists them (each exists as a series, one at 1)."""

CAUSE_STATES = frozenset({SiteStateName.MAINTENANCE, SiteStateName.MONITOR_CUT_OFF, SiteStateName.UPSTREAM_DOWN,
                          SiteStateName.POWER})
"""The states that name a cause outside the site's own link (their ``cause`` is not null)."""


@dataclass(frozen=True, slots=True)
class SiteState:
    """A site's state and what it is charged to: ``cause`` names it (None for up, down and unknown).

    The cause's one key says what kind of thing is at fault and its value which one, as the API shows it::

        {"state": "monitor_cut_off", "cause": {"monitor": "uplink"}}
        {"state": "maintenance", "cause": {"maintenance": "Sun 02:00-04:00 Asia/Almaty"}}
        {"state": "power", "cause": {"power": "site"}}
        {"state": "upstream_down", "cause": {"upstream": "khromtau-agg"}}
    """

    state: SiteStateName
    cause: Mapping[str, str] | None = None

    def as_json(self) -> dict[str, object]:
        """``{"state": ..., "cause": ...}``, the two fields of the API's site JSON."""
        return {"state": self.state.value, "cause": None if self.cause is None else dict(self.cause)}


def derive(last: IcmpResult | None, window: str | None, last_gap_cause: GapCause | None = None) -> SiteStateName:
    """The precedence: the most outward cause that explains the site's last result wins.

    Args:
        last: the site's last ICMP result, None before the first.
        window: the declared maintenance window open now (:func:`~monitor.config.windows.open_window`); None: none is.
        last_gap_cause: for an agent site, the cause of its current or last silence (None: never silent).
    """
    if window is not None:
        return SiteStateName.MAINTENANCE
    if last is None:
        return SiteStateName.UNKNOWN
    error = last.error
    if error is ProbeErrorReason.MONITOR_CUT_OFF:
        return SiteStateName.MONITOR_CUT_OFF
    if error is ProbeErrorReason.UPSTREAM_DOWN:
        return SiteStateName.UPSTREAM_DOWN
    if error is ProbeErrorReason.AGENT_SILENT and last_gap_cause == "power":
        return SiteStateName.POWER
    return SiteStateName.UP if last.up else SiteStateName.DOWN


def site_state(target: Target, last: IcmpResult | None, now: float, last_gap_cause: GapCause | None = None,
               *, watch: MaintenanceWatch | None = None) -> SiteState:
    """The site's state now, and its cause.

    Args:
        target: the site (its declared maintenance windows are :attr:`Target.maintenance`).
        last: its last ICMP result, None before the first.
        now: Unix time, for the maintenance windows.
        last_gap_cause: an agent site's current or last silence's cause, None if it was never silent.
        watch: asks whether a window is open once a minute instead of at every call (many sites, many
            calls); it is updated here, so a caller that wants the sites whose window changed updates it first.
    """
    if watch is not None:
        watch.update(now)
        window = watch.window(target.name)
    else:
        window = open_window(target.maintenance, now)
    state = derive(last, window, last_gap_cause)
    if state is SiteStateName.MAINTENANCE:
        return SiteState(state, MappingProxyType({"maintenance": window or ""}))
    if state is SiteStateName.MONITOR_CUT_OFF and last is not None:
        return SiteState(state, MappingProxyType({"monitor": cut_off_cause(last) or "uplink"}))
    if state is SiteStateName.UPSTREAM_DOWN and last is not None:
        return SiteState(state, MappingProxyType({"upstream": upstream_of(last.error, last.error_detail) or ""}))
    if state is SiteStateName.POWER:
        return SiteState(state, MappingProxyType({"power": "site"}))
    return SiteState(state, None)


def describe(state: SiteStateName, last: IcmpResult | None, window: str | None) -> str:
    """What a change into ``state`` means, for the event log's one line (a cause state's words)."""
    if state is SiteStateName.MAINTENANCE:
        return f"the declared maintenance window {window} is open"
    if state is SiteStateName.MONITOR_CUT_OFF:
        detail = last.error_detail if last is not None else ""
        return detail or "no reply while the centre itself was cut off"
    if state is SiteStateName.POWER:
        return "the site's agent was silent because the site had no power (its machine booted again)"
    if state is SiteStateName.UPSTREAM_DOWN:
        node = upstream_of(last.error, last.error_detail) if last is not None else None
        return f"upstream node {node} is down" if node else "an upstream node of the site is down"
    return state.value


# ----------------------------------------------------------------------------- maintenance windows open now

class MaintenanceWatch:
    """Which sites have a maintenance window open, asked again when the minute changes.

    A declared window starts and ends on a whole minute of local time, which is a whole minute of Unix
    time in every time zone in use, so the answer holds for the rest of the minute it was asked in.
    Sites that share their windows (a group's block) are asked once. Cost: nothing within a minute;
    once a minute, one :meth:`MaintenanceWindows.covers` per distinct set of windows.

    With a :class:`~monitor.maintenance.MaintenanceBook` handed in (the daemon's: the config's windows
    and those opened through the API, on sites and upstream nodes), the book answers, at most once a
    minute and at a run-time window's start or end; the watch only tells which of its sites changed.
    """

    def __init__(self, book: MaintenanceBook | None = None) -> None:
        self._book = book
        self._names: frozenset[str] = frozenset()  # with a book: the sites watched
        self._seen: Mapping[str, str] | None = None  # with a book: its answer last compared
        self._windows: dict[str, MaintenanceWindows] = {}  # the sites that declare any, in config order
        self._open: dict[str, str] = {}  # site → its window open now
        self._minute: float | None = None

    def watch(self, targets: Iterable[Target]) -> None:
        """Watch these sites' windows (at start and at each reload); they are asked again at the next update."""
        targets = list(targets)
        self._names = frozenset(t.name for t in targets)
        self._windows = {t.name: t.maintenance for t in targets if t.maintenance is not None}
        keep = self._names if self._book is not None else self._windows
        self._open = {name: window for name, window in self._open.items() if name in keep}
        self._minute, self._seen = None, None

    @property
    def watching(self) -> bool:
        """Whether any site declares a window, or one was opened (without, a sink need not even read its clock)."""
        return self._book.active if self._book is not None else bool(self._windows)

    def update(self, now: float) -> list[str]:
        """Ask the windows at ``now`` if the minute changed since the last time; the sites whose open window changed."""
        if self._book is not None:
            return self._from_book(self._book, now)
        minute = now // 60
        if minute == self._minute:
            return []
        self._minute = minute
        asked: dict[MaintenanceWindows, str | None] = {}
        opened: dict[str, str] = {}
        for name, windows in self._windows.items():
            if windows not in asked:
                asked[windows] = open_window(windows, now)
            window = asked[windows]
            if window is not None:
                opened[name] = window
        changed = [name for name in self._windows if opened.get(name) != self._open.get(name)]
        self._open = opened
        return changed

    def _from_book(self, book: MaintenanceBook, now: float) -> list[str]:
        found = book.open_now(now)
        if found is self._seen:  # the book's answer has not changed (the same object)
            return []
        self._seen = found
        names = self._names
        opened = {name: window for name, window in found.items() if name in names}
        changed = [name for name in opened if opened[name] != self._open.get(name)]
        changed += [name for name in self._open if name not in opened]
        self._open = opened
        return changed

    def window(self, name: str) -> str | None:
        """The window open for site ``name`` as of the last update, else None."""
        return self._open.get(name)
