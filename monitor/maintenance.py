"""Maintenance windows (issue 21, point 6): the config's and the API's, in one book that everyone asks.

Two sources of windows:

* declared in the config (``maintenance:`` on a group or an endpoint, :class:`MaintenanceWindows`),
  weekly or dated, in a time zone;
* opened at run time through ``POST /api/v1/maintenance`` on a site or an upstream node
  (:mod:`monitor.web.maintenance_api`), kept in the history store (:class:`StoredWindow`, schema
  version 4), read back at start-up with the restore (a restart keeps them) and closed early with
  ``DELETE /api/v1/maintenance/{id}``.

A window on an upstream node covers the node, the nodes below it and every site behind it.
:class:`MaintenanceBook` merges both sources; it is built first by the daemon and handed to every
part that must honour a window:

* the sinks' :class:`~monitor.site_states.MaintenanceWatch` (site state ``maintenance``,
  ``connmon_maintenance``, the event log, the API's site JSON);
* the upstream tree (a node in maintenance is ``maintenance``, not ``down``);
* the throughput plan (no test starts, the agents' grants are refused with ``maintenance``);
* the result pipeline, through :meth:`MaintenanceBook.classify`: a silent site result inside a
  window becomes error ``maintenance`` (detail naming the window), for the centre's cycles and the
  agents' alike, after the centre path and the upstream tree have judged it (maintenance has the
  top precedence). A site that answers stays up.

Cost: :meth:`MaintenanceBook.open_now` is computed at most once a minute, and again only at the
start or end of a run-time window or when the book changes (a window opened or closed, a reload);
between those every caller gets the same mapping (sinks tell a change by its identity). Reports
read run-time windows with :func:`stored_windows`; the rows a window silenced carry the error
``maintenance`` (:data:`MAINTENANCE_ERROR`) too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

from monitor.config.windows import MaintenanceWindows, open_window
from monitor.errors import ProbeErrorReason
from monitor.history.store import HistoryStore, StoredWindow
from monitor.pipeline import rewrite_icmp
from monitor.results import Cycle, IcmpResult
from monitor.targets import Target
from monitor.text import printable

log = logging.getLogger("monitor.events")

KINDS = ("site", "upstream")
MAINTENANCE_ERROR = ProbeErrorReason.MAINTENANCE.value  # a stored cycle silenced by a window carries this error
MAINTENANCE_DETAIL = "no reply during maintenance window "  # f"{MAINTENANCE_DETAIL}{window}", the probe's own after
KEEP_ENDED_SECONDS = 8 * 86400.0  # an ended window is kept this long: an agent's spooled results may still fall in it
_REASON_IN_TEXT = 80  # a window's reason in its one-line text (log, cause, history detail) is cut to this
_EMPTY: Mapping[str, str] = MappingProxyType({})


def window_text(window: StoredWindow) -> str:
    """A run-time window in one line, as a site's cause and the history's detail name it.

    ``#7 until 2026-12-06 16:00 UTC: core switch swap`` on a site; ``#8 on upstream agg until ...``
    on a node.
    """
    until = dt.datetime.fromtimestamp(window.until, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    on = f" on upstream {window.target}" if window.kind == "upstream" else ""
    reason = printable(window.reason)
    if len(reason) > _REASON_IN_TEXT:
        reason = reason[:_REASON_IN_TEXT - 1] + "…"
    return f"#{window.id}{on} until {until}" + (f": {reason}" if reason else "")


def maintenance_detail(window: str, result: IcmpResult) -> str:
    """The detail of a silent result rewritten to ``maintenance``: the window, then what the probe said."""
    detail = f"{MAINTENANCE_DETAIL}{window}"
    if result.error is not None:
        own = f"{result.error.value}: {result.error_detail}" if result.error_detail else result.error.value
        detail += f"; the probe said {own}"
    return detail


def stored_windows(store: HistoryStore, start: float, end: float) -> list[StoredWindow]:
    """The run-time windows of ``store`` that overlap [start, end), for reports (closed ones by their real end).

    A history older than schema version 4 has none. Which sites a window on an upstream node
    covered is the config's business (its ``upstreams:`` and the sites' ``upstream:`` keys).
    """
    return store.maintenance_windows(start, end)


class MaintenanceBook:
    """Every maintenance window that applies to this instance: the config's and the API's.

    Args:
        clock: now, as Unix time (for :meth:`node_window`, asked by the upstream tree without a time).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._declared: dict[str, MaintenanceWindows] = {}  # site → its declared windows
        self._sites: set[str] = set()
        self._parents: dict[str, str | None] = {}  # upstream node → its parent
        self._site_chains: dict[str, tuple[str, ...]] = {}  # site → its nodes, nearest first
        self._behind: dict[str, list[str]] = {}  # node → the sites behind it, at any depth
        self._below: dict[str, list[str]] = {}  # node → itself and the nodes below it
        self._windows: dict[int, StoredWindow] = {}  # run-time windows, ended ones kept a while
        self.edits = 0  # windows opened or closed by this instance (so a store read older than one is not used)
        self._announced: dict[int, str] = {}  # window → "began" / "ended", once said in the event log
        self._sites_open: Mapping[str, str] = _EMPTY
        self._nodes_open: Mapping[str, str] = _EMPTY
        self._valid_from = 0.0
        self._valid_until = float("-inf")  # the span [from, until) in which the two mappings hold

    # ------------------------------------------------------------------ what is configured
    def set_targets(self, targets: Sequence[Target], nodes: Sequence[Target] = ()) -> None:
        """The sites (their declared windows and upstream chains) and the upstream nodes, at start and each reload."""
        self._declared = {t.name: t.maintenance for t in targets if t.maintenance is not None}
        self._sites = {t.name for t in targets}
        self._parents = {n.name: n.upstream for n in nodes}
        self._site_chains = {t.name: self._chain(t.upstream) for t in targets if t.upstream is not None}
        behind: dict[str, list[str]] = {name: [] for name in self._parents}
        for site, chain in self._site_chains.items():
            for node in chain:
                behind[node].append(site)
        self._behind = behind
        below: dict[str, list[str]] = {name: [] for name in self._parents}
        for name in self._parents:
            for node in (name, *self._chain(self._parents[name])):
                below[node].append(name)
        self._below = below
        self._changed()

    def _chain(self, upstream: str | None) -> tuple[str, ...]:
        out: list[str] = []
        while upstream is not None and upstream in self._parents and upstream not in out:
            out.append(upstream)
            upstream = self._parents[upstream]
        return tuple(out)

    def knows(self, kind: str, name: str) -> bool:
        """Whether ``name`` is a configured site (``kind`` site) or upstream node (``upstream``) of this instance."""
        return name in (self._sites if kind == "site" else self._parents)

    # ------------------------------------------------------------------ run-time windows
    def load(self, windows: Iterable[StoredWindow]) -> None:
        """The stored run-time windows open now or later, read back at start-up (and when a late store answers)."""
        windows = tuple(windows)
        for window in windows:
            self._windows[window.id] = window
        self._changed()
        for window in windows:
            log.info("maintenance window %s on %s %s is kept from before the restart", window_text(window),
                     window.kind, printable(window.target), extra=_extra(window))

    def opened(self, window: StoredWindow) -> None:
        """A window the API has just stored: it applies from now on (from its start)."""
        self._windows[window.id] = window
        self.edits += 1
        self._changed()
        log.info("maintenance window opened on %s %s from %s: %s", window.kind, printable(window.target),
                 _utc(window.starts_at), window_text(window), extra=_extra(window))

    def closed(self, window: StoredWindow) -> None:
        """A window the API has just closed in the store (early, or before it began)."""
        self._windows[window.id] = window
        self._announced[window.id] = "ended"  # this line says it
        self.edits += 1
        self._changed()
        log.info("maintenance window closed early on %s %s at %s: %s", window.kind, printable(window.target),
                 _utc(window.until), window_text(window), extra=_extra(window))

    def sync(self, windows: Iterable[StoredWindow], now: float, edits: int) -> None:
        """The store's run-time windows open at ``now`` or later, read again every minute (see the daemon).

        Windows opened by another instance that shares the store (PostgreSQL, ``--shard``) come in, and
        one closed elsewhere ends here too. ``edits`` is :attr:`edits` from before the read: if this
        instance opened or closed a window meanwhile, the read may predate it and is not used.
        """
        if edits != self.edits:
            return
        fetched = {w.id: w for w in windows}
        changed = False
        for window in fetched.values():
            known = self._windows.get(window.id)
            if known == window:
                continue
            self._windows[window.id], changed = window, True
            if known is None:
                log.info("maintenance window opened on %s %s (by another instance) from %s: %s", window.kind,
                         printable(window.target), _utc(window.starts_at), window_text(window), extra=_extra(window))
        for window_id, window in list(self._windows.items()):
            if window_id not in fetched and window.until > now:  # no longer open in the store: closed elsewhere
                self._windows[window_id], changed = dataclasses.replace(window, closed_at=now), True
                log.info("maintenance window closed early on %s %s (by another instance): %s", window.kind,
                         printable(window.target), window_text(window), extra=_extra(window))
        if changed:
            self._changed()

    def windows(self, now: float) -> list[StoredWindow]:
        """The run-time windows open at ``now`` or to come, by start."""
        return sorted((w for w in self._windows.values() if w.until > now and w.until > w.starts_at),
                      key=lambda w: (w.starts_at, w.id))

    def window_of(self, window_id: int) -> StoredWindow | None:
        return self._windows.get(window_id)

    @property
    def active(self) -> bool:
        """Whether any window is declared or was opened (without, nobody need even read the clock)."""
        return bool(self._declared or self._windows)

    def _changed(self) -> None:
        self._valid_until = float("-inf")

    # ------------------------------------------------------------------ what is open
    def open_now(self, now: float) -> Mapping[str, str]:
        """Site → the window that holds it in maintenance at ``now`` (its text); the same object until it changes.

        Recomputed when the minute changes (declared windows start and end on whole minutes), when a
        run-time window starts or ends, and after any change to the book.
        """
        if not self._valid_from <= now < self._valid_until:
            self._compute(now)
        return self._sites_open

    def window(self, name: str, now: float) -> str | None:
        """The window holding site ``name`` in maintenance at ``now``, else None."""
        return self.open_now(now).get(name)

    def node_window(self, name: str) -> str | None:
        """The window holding upstream node ``name`` in maintenance now (its own or a node's above it), else None."""
        self.open_now(self._clock())
        return self._nodes_open.get(name)

    def window_at(self, name: str, t: float) -> str | None:
        """The window that held site or upstream node ``name`` at ``t``, also in the past (late agent results)."""
        node = name in self._parents
        if self._valid_from <= t < self._valid_until:
            return (self._nodes_open if node else self._sites_open).get(name)
        if node:
            above = (name, *self._chain(self._parents[name]))
            return next((window_text(w) for w in self._windows.values()
                         if w.kind == "upstream" and w.target in above and w.covers(t)), None)
        declared = self._declared.get(name)
        found = open_window(declared, t) if declared is not None else None
        if found is not None:
            return found
        chain = self._site_chains.get(name, ())
        for window in self._windows.values():
            if window.covers(t) and (window.target == name if window.kind == "site" else window.target in chain):
                return window_text(window)
        return None

    def _compute(self, now: float) -> None:
        minute = now // 60 * 60
        until = minute + 60
        self._windows = {i: w for i, w in self._windows.items() if w.until > now - KEEP_ENDED_SECONDS}
        self._announced = {i: said for i, said in self._announced.items() if i in self._windows}
        sites: dict[str, str] = {}
        asked: dict[MaintenanceWindows, str | None] = {}
        for name, declared in self._declared.items():
            if declared not in asked:
                asked[declared] = open_window(declared, now)
            found = asked[declared]
            if found is not None:
                sites[name] = found
        nodes: dict[str, str] = {}
        start = minute
        for window in sorted(self._windows.values(), key=lambda w: w.id):
            for edge in (window.starts_at, window.until):
                if edge > now:
                    until = min(until, edge)
                elif edge > start:
                    start = edge
            self._announce(window, now)
            if not window.covers(now):
                continue
            text = window_text(window)
            if window.kind == "site":
                sites.setdefault(window.target, text)
                continue
            for node in self._below.get(window.target, ()):
                nodes.setdefault(node, text)
            for site in self._behind.get(window.target, ()):
                sites.setdefault(site, text)
        if sites != self._sites_open:
            self._sites_open = MappingProxyType(sites)
        self._nodes_open = MappingProxyType(nodes)
        self._valid_from, self._valid_until = start, until

    def _announce(self, window: StoredWindow, now: float) -> None:
        """One event-log line when a run-time window begins (if it was opened ahead) and when it ends."""
        said = self._announced.get(window.id)
        if said != "ended" and window.until <= now:
            self._announced[window.id] = "ended"
            if now - window.until < 2 * 60:  # not for a window that ended long before (read back at start-up)
                log.info("maintenance window ended on %s %s: %s", window.kind, printable(window.target),
                         window_text(window), extra=_extra(window))
        elif said is None and window.covers(now):
            self._announced[window.id] = "began"
            if window.starts_at > window.opened_at + 1 and now - window.starts_at < 2 * 60:
                log.info("maintenance window began on %s %s: %s", window.kind, printable(window.target),
                         window_text(window), extra=_extra(window))

    # ------------------------------------------------------------------ the pipeline's stage
    def classify(self, cycle: Cycle) -> Cycle:
        """``cycle`` as the sinks must see it: a silent site result inside a window has error ``maintenance``.

        Every ICMP result, the centre's and the agents', whatever reason it had (``monitor_cut_off``
        and ``upstream_down`` included: maintenance is the most outward cause); an agent site's
        ``agent_silent`` stays (its silence is the gap's, not a measurement). An upstream node's own
        run, which the history keeps apart from the pipeline, is judged by its windows the same way.
        The same object is returned when nothing changed.
        """
        if not self.active or cycle.probe not in ("icmp", "agent"):
            return cycle
        return rewrite_icmp(cycle, self._rewritten)

    def _rewritten(self, result: IcmpResult) -> IcmpResult:
        if result.up or result.error in (ProbeErrorReason.MAINTENANCE, ProbeErrorReason.AGENT_SILENT):
            return result
        window = self.window_at(result.target.name, result.started_at)
        if window is None:
            return result
        return dataclasses.replace(result, error=ProbeErrorReason.MAINTENANCE,
                                   error_detail=maintenance_detail(window, result))


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _extra(window: StoredWindow) -> dict[str, object]:
    return {"endpoint" if window.kind == "site" else "upstream": window.target}
