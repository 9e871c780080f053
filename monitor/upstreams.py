"""Upstream nodes (issue 21): the routers, points of presence and teleports that sites hang from.

When a district's aggregation router fails, every school behind it stops answering. Without the
tree, each would be recorded ``down`` and paged on; with it, they are ``upstream_down`` and name the
router, and one alert (``ConnmonUpstreamDown``) pages for the router.

The config's top-level ``upstreams:`` list is a forest: each node names its parent (``upstream:``),
groups and endpoints name the nearest node they hang from (``upstream:``, cascading). The daemon
builds the nodes as targets (:func:`node_targets`) and the scheduler pings them every cycle of the
fastest group, like the centre's uplink checks, and also at once when a site cycle has silent sites
whose chain holds a node not checked since the cycle began (:meth:`UpstreamTree.stale_nodes`): the
verdict on a silent site then rests on the same minute of the network, not on a node run from
before the cut.

A node's state, the first that holds:

    maintenance      a maintenance window of the node is open (see ``in_maintenance``)
    monitor_cut_off  the centre itself is cut off (:mod:`monitor.centre_path`) and the node did not answer
    upstream_down    a node above it is down
    down             it did not answer in its last run
    up               it answered
    unknown          not run yet

:meth:`UpstreamTree.classify` rewrites each silent, centre-probed site result of a cycle whose chain
holds a down node to the error ``upstream_down``; its detail names the *highest* node that is down
(:func:`upstream_of` reads it back, from the history too), so the one router at fault is named, not
the nodes below it that merely cannot be reached. The probe's raw facts are kept: ``connmon_up``
stays 0. The centre path classifies after this one, so ``monitor_cut_off`` wins over
``upstream_down``, as the precedence says.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from monitor.config import Config, merge_icmp
from monitor.config.hosts import normalize_ip
from monitor.errors import ProbeErrorReason
from monitor.pipeline import rewrite_icmp
from monitor.results import Cycle, IcmpResult
from monitor.targets import Target, build_targets

log = logging.getLogger("monitor.events")

UPSTREAM_GROUP = "monitor.upstreams"  # the group of the nodes' targets; the history keeps their rows under it
UPSTREAM_DETAIL = "no reply while upstream node "  # a rewritten result's detail: f"{UPSTREAM_DETAIL}{name} was down"
_DETAIL_END = " was down"


class NodeStateName(enum.StrEnum):
    """An upstream node's state (label values of ``connmon_upstream_state``), in exposition order."""

    UP = "up"
    DOWN = "down"
    UPSTREAM_DOWN = "upstream_down"
    MONITOR_CUT_OFF = "monitor_cut_off"
    MAINTENANCE = "maintenance"
    UNKNOWN = "unknown"


NODE_STATES: tuple[NodeStateName, ...] = tuple(NodeStateName)


def upstream_detail(node: str) -> str:
    """The detail of a site result rewritten because ``node`` (the highest node down) was down."""
    return f"{UPSTREAM_DETAIL}{node}{_DETAIL_END}"


def upstream_of(error: ProbeErrorReason | str | None, detail: str | None) -> str | None:
    """The node a stored or live result was charged to (its error ``upstream_down``), else None."""
    if error != ProbeErrorReason.UPSTREAM_DOWN or not detail or not detail.startswith(UPSTREAM_DETAIL):
        return None
    rest = detail[len(UPSTREAM_DETAIL):]
    end = rest.find(_DETAIL_END)
    return rest[:end] if end >= 0 else rest


def node_targets(config: Config, sites: Sequence[Target] | None = None) -> tuple[Target, ...]:
    """The config's upstream nodes as targets: pinged at the fastest ICMP interval of the centre's sites.

    With that site's count, spacing and timeout (which the config check made fit the interval), in
    the address family of the defaults; without such a site, with the defaults. A node's
    :attr:`Target.upstream` is its parent, its :attr:`Target.kind` the node's kind.

    Args:
        config: the whole config.
        sites: its targets, when already built (every shard's: all instances check the nodes alike).
    """
    if not config.upstreams:
        return ()
    defaults = merge_icmp(config.defaults.icmp)
    probed_sites = [t for t in (build_targets(config) if sites is None else sites) if t.probed_by_centre]
    fastest = min((t.icmp for t in probed_sites), key=lambda s: s.interval_seconds, default=defaults)
    settings = dataclasses.replace(fastest, family=defaults.family, payload_bytes=defaults.payload_bytes)
    return tuple(Target(name=n.name, host=n.host, address=normalize_ip(n.host), group=UPSTREAM_GROUP, kind=n.kind,
                        district="", link="", lat=None, lon=None, target_bits_per_second=0.0, icmp=settings,
                        upstream=n.upstream)
                 for n in config.upstreams)


class UpstreamTree:
    """The upstream nodes, their last results, and the verdict on sites and nodes behind them.

    Args:
        cut_off: whether the centre itself is cut off now (:attr:`monitor.centre_path.CentrePath.cut_off`).
        in_maintenance: the maintenance window open now for a node, by name, else None.
        went_down: told of each node that goes from up to down (a trace is taken of its path).
    """

    def __init__(self, cut_off: Callable[[], bool] = lambda: False,
                 in_maintenance: Callable[[str], str | None] = lambda _name: None,
                 went_down: Callable[[Target], object] | None = None) -> None:
        self._cut_off = cut_off
        self.in_maintenance = in_maintenance
        self.went_down = went_down
        self._nodes: dict[str, Target] = {}
        self._last: dict[str, IcmpResult] = {}
        # when each node last answered again after a silent run (the start of that run): a site cycle begun
        # before it may have sent its echoes while the node was still dead, so its silence is the node's
        self._back_at: dict[str, float] = {}
        self._sites_behind: dict[str, int] = {}
        self._logged: dict[str, NodeStateName] = {}

    # ------------------------------------------------------------------ the tree
    @property
    def nodes(self) -> tuple[Target, ...]:
        """The nodes configured now, in config order (the scheduler pings these)."""
        return tuple(self._nodes.values())

    def set_nodes(self, nodes: Sequence[Target], sites: Sequence[Target] = ()) -> None:
        """The nodes after a (re)load, and the sites hanging from them; a node that stays keeps its last result."""
        self._nodes = {n.name: n for n in nodes}
        self._last = {name: r for name, r in self._last.items() if name in self._nodes}
        self._back_at = {name: t for name, t in self._back_at.items() if name in self._nodes}
        self._logged = {name: s for name, s in self._logged.items() if name in self._nodes}
        behind = dict.fromkeys(self._nodes, 0)
        for site in sites:
            if site.probed_by_centre:  # agent sites are judged by their agents' silences, not by the tree
                for name in self.chain(site.upstream):
                    behind[name] += 1
        self._sites_behind = behind

    def chain(self, upstream: str | None) -> tuple[str, ...]:
        """The nodes from ``upstream`` (a site's or node's parent) up to its root, nearest first."""
        out: list[str] = []
        at = upstream
        while at is not None and at in self._nodes and at not in out:  # the config refuses cycles; stay finite anyway
            out.append(at)
            at = self._nodes[at].upstream
        return tuple(out)

    def sites_behind(self, name: str) -> int:
        """How many centre-probed sites hang from node ``name``, at any depth (the ones it makes upstream_down)."""
        return self._sites_behind.get(name, 0)

    # ------------------------------------------------------------------ facts in
    def record(self, results: Sequence[IcmpResult]) -> None:
        """One run of (some of) the nodes: the node states follow at once; a change is logged once."""
        for result in results:
            name = result.target.name
            if name not in self._nodes:  # a run begun before a reload may name a node that went
                continue
            kept = self._last.get(name)
            if kept is None or result.started_at >= kept.started_at:  # the job's run and an on-demand one may
                self._last[name] = result  # overlap: one begun earlier and ending later is the older news
                if result.up and kept is not None and not kept.up:
                    self._back_at[name] = result.started_at
        for name, target in self._nodes.items():
            state = self.node_state(name)
            was = self._logged.get(name, NodeStateName.UNKNOWN)
            if state is was:
                continue
            self._logged[name] = state
            if state is NodeStateName.DOWN:
                log.warning("upstream node %s (%s, %s) is down: %d sites behind it are upstream_down",
                            name, target.kind, target.host, self.sites_behind(name),
                            extra={"upstream": name, "state": state.value})
                if was is NodeStateName.UP and self.went_down is not None:
                    self.went_down(target)
            elif state is NodeStateName.UP and was is not NodeStateName.UNKNOWN:
                log.info("upstream node %s (%s, %s) is up again", name, target.kind, target.host,
                         extra={"upstream": name, "state": state.value})
            elif state is NodeStateName.UPSTREAM_DOWN:
                log.info("upstream node %s is upstream_down: %s above it is down", name,
                         self.highest_down(target.upstream), extra={"upstream": name, "state": state.value})

    # ------------------------------------------------------------------ verdicts out
    @property
    def last(self) -> Mapping[str, IcmpResult]:
        """Each node's result in its last run, in config order (a node not run yet is absent)."""
        return MappingProxyType({name: self._last[name] for name in self._nodes if name in self._last})

    def node_up(self, name: str) -> bool | None:
        """Whether node ``name`` answered in its last run; None before its first."""
        result = self._last.get(name)
        return None if result is None else result.up

    def highest_down(self, upstream: str | None) -> str | None:
        """The highest node of ``upstream``'s chain that did not answer in its last run, else None.

        The highest, not the nearest: when the ISP's point of presence is down, the district router
        behind it cannot be reached either, but the fault is the point of presence's.
        """
        down = None
        for name in self.chain(upstream):
            if self.node_up(name) is False:
                down = name
        return down

    def node_state(self, name: str) -> NodeStateName:
        """Node ``name``'s state now (see the module's precedence)."""
        target = self._nodes.get(name)
        if target is None:
            return NodeStateName.UNKNOWN
        if self.in_maintenance(name) is not None:
            return NodeStateName.MAINTENANCE
        up = self.node_up(name)
        if up is None:
            return NodeStateName.UNKNOWN
        if up:
            return NodeStateName.UP
        if self._cut_off():
            return NodeStateName.MONITOR_CUT_OFF
        if self.highest_down(target.upstream) is not None:
            return NodeStateName.UPSTREAM_DOWN
        return NodeStateName.DOWN

    def stale_nodes(self, cycle: Cycle) -> list[Target]:
        """The nodes above ``cycle``'s silent sites not run since the cycle began: to ping before classifying it."""
        if not self._nodes or cycle.probe != "icmp":
            return []
        wanted: dict[str, Target] = {}
        for r in cycle.results:
            if isinstance(r, IcmpResult) and not r.up and r.target.upstream is not None and r.target.probed_by_centre:
                for name in self.chain(r.target.upstream):
                    last = self._last.get(name)
                    if name not in wanted and (last is None or last.started_at < cycle.started_at):
                        wanted[name] = self._nodes[name]
        return list(wanted.values())

    def classify(self, cycle: Cycle) -> Cycle:
        """``cycle`` as the sinks must see it: a silent site with a down node above it is ``upstream_down``.

        Only ICMP results of sites the centre probes itself that got no reply are rewritten; the
        detail names the highest node down and keeps the probe's own reason. The same object is
        returned when nothing changed.
        """
        if cycle.probe != "icmp" or not self._nodes:
            return cycle
        return rewrite_icmp(cycle, self._rewritten)

    def _down_when_sent(self, result: IcmpResult) -> str | None:
        """The highest node of the site's chain that answered again only after ``result``'s cycle began, else None.

        Its run that answered began after the cycle's echoes left, and its run before that was silent:
        the echoes went while the node was down, so a silent site is charged to the node, as the
        centre's own path does for a cycle begun while the centre was cut off.
        """
        found = None
        for name in self.chain(result.target.upstream):
            back = self._back_at.get(name)
            if back is not None and back > result.started_at:
                found = name
        return found

    def _rewritten(self, result: IcmpResult) -> IcmpResult:
        if result.up or result.target.upstream is None or not result.target.probed_by_centre \
                or result.error in (ProbeErrorReason.MONITOR_CUT_OFF, ProbeErrorReason.UPSTREAM_DOWN):
            return result
        node = self.highest_down(result.target.upstream) or self._down_when_sent(result)
        if node is None:
            return result
        detail = upstream_detail(node)
        if result.error is not None:
            own = f"{result.error.value}: {result.error_detail}" if result.error_detail else result.error.value
            detail += f"; the probe said {own}"
        return dataclasses.replace(result, error=ProbeErrorReason.UPSTREAM_DOWN, error_detail=detail)
