"""When to trace, and what traces say together (issue 21, "where the path ends").

:class:`Tracer` is a result-pipeline sink. When a site the centre probes goes from up to down (the
first silent cycle after an answered one, not every silent cycle), it traces the path to the
site's address once (:func:`monitor.icmp.trace.trace`, through the daemon's own ICMP engine); when
an upstream node goes down, :class:`~monitor.upstreams.UpstreamTree` calls :meth:`Tracer.node_went_down`
and the node's path is traced the same way. No trace is taken of a silence already explained by
an outer cause (``monitor_cut_off``, ``maintenance``, ``upstream_down``: the node's own trace says
where its path ends), and at most ``monitor.traces_per_minute`` traces start in any 60 seconds, so
a regional outage is not a storm of traces; the others are counted as skipped.

Each trace is said in one event-log line, kept as the site's ``last_trace`` for the API (read
through :meth:`Tracer.last_trace`) and handed to the history (``record``, given at assembly).

**ConnmonCommonFault.** Where no upstream is declared for the sites, the topology is learned: sites
that went down within one ICMP interval of each other, are still down, and whose traces end at
the same last answering hop (not reached) are one fault at that hop, as soon as there are two of
them. The fault holds while two of its sites are still silent, and clears when they answer
again. :class:`~monitor.tracer_exposition.TraceExposition` shows it in ``/metrics``::

    connmon_traces_total{outcome="taken"} 3
    connmon_common_fault{hop="10.77.240.2"} 3
    connmon_common_fault_site{hop="10.77.240.2",endpoint="agg-1"} 1

What it leaves to others: the probes' TTL handling (:meth:`monitor.icmp.engine.IcmpEngine.echo_hops`),
the node states (:mod:`monitor.upstreams`), storing (:mod:`monitor.history`), the alert
(``config/connmon.rules.yml``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from monitor.config.hosts import normalize_ip
from monitor.errors import ProbeErrorReason
from monitor.icmp.trace import HopProber, trace
from monitor.results import Cycle, IcmpResult, Trace
from monitor.targets import Target

log = logging.getLogger("monitor.events")

TRACE_OUTCOMES: tuple[str, ...] = ("taken", "skipped_budget", "failed")
"""``connmon_traces_total``'s outcomes: traced; not traced, the minute's budget spent; could not trace."""
BUDGET_WINDOW_SECONDS = 60.0
COMMON_FAULT_MIN_SITES = 2
# a silence explained by an outer cause is not traced: its own cause (or the node's trace) says where it ends
_EXPLAINED = (ProbeErrorReason.MONITOR_CUT_OFF, ProbeErrorReason.MAINTENANCE, ProbeErrorReason.UPSTREAM_DOWN)


@dataclass(frozen=True, slots=True)
class CommonFault:
    """Sites that went down together and whose traces end at ``hop``."""

    hop: str
    sites: tuple[str, ...]


@dataclass(slots=True)
class _Down:
    """A site down now, the time it went down, and the trace taken then (None until it is back)."""

    went_down_at: float
    interval_seconds: float
    trace: Trace | None = None


class Tracer:
    """Takes traces when sites and upstream nodes go down; finds the common faults among them.

    Args:
        prober: the ICMP engine (:meth:`~monitor.icmp.engine.IcmpEngine.echo_hops`).
        clock: Unix time now.
        traces_per_minute: the budget (0: no traces at all).
        record: told of each trace taken (the history), with the site or node it was taken for.
        max_hops, timeout_seconds: of each trace.
    """

    def __init__(self, prober: HopProber, clock: Callable[[], float] = time.time, *, traces_per_minute: int = 10,
                 record: Callable[[Target, Trace], object] | None = None, max_hops: int = 16,
                 timeout_seconds: float = 1.0) -> None:
        self._prober = prober
        self._clock = clock
        self.traces_per_minute = traces_per_minute
        self._record = record
        self._max_hops, self._timeout_seconds = max_hops, timeout_seconds
        self.counts: dict[str, int] = dict.fromkeys(TRACE_OUTCOMES, 0)
        self._started: collections.deque[float] = collections.deque()  # monotonic starts in the budget window
        self._tasks: set[asyncio.Task[None]] = set()
        self._targets: dict[str, Target] = {}
        self._up: dict[str, bool] = {}  # each centre-probed site's last verdict (up or not)
        self._last: dict[str, Trace] = {}  # per site or node, its last trace
        self._down: dict[str, _Down] = {}  # sites without a declared upstream, down now
        self._faults: dict[str, CommonFault] = {}  # by hop

    # ------------------------------------------------------------------ sink
    def set_targets(self, targets: Sequence[Target]) -> None:
        self._targets = {t.name: t for t in targets}
        for kept in (self._up, self._down):
            for name in [n for n in kept if n not in self._targets]:
                del kept[name]
        self._update_faults()

    def consume(self, cycle: Cycle) -> None:
        if cycle.probe != "icmp":
            return
        changed = False
        for result in cycle.results:
            if not isinstance(result, IcmpResult) or not result.target.probed_by_centre:
                continue
            name = result.target.name
            was_up = self._up.get(name)
            self._up[name] = result.up
            if result.up:
                changed |= self._down.pop(name, None) is not None
                continue
            if was_up is not True or result.error in _EXPLAINED:
                continue
            if result.target.upstream is None:
                self._down[name] = _Down(result.started_at, result.target.icmp.interval_seconds)
            self.request(result.target, result.address)
        if changed:
            self._update_faults()

    def cycle_skipped(self, probe: str, group: str) -> None:
        """A skipped cycle changes no site's verdict."""

    # ------------------------------------------------------------------ node transitions
    def node_went_down(self, node: Target) -> None:
        """An upstream node went from up to down (``UpstreamTree(went_down=...)``): trace its path."""
        self.request(node, node.address or normalize_ip(node.host))

    # ------------------------------------------------------------------ taking traces
    def request(self, target: Target, address: str | None) -> bool:
        """Trace the path to ``target`` now if the budget allows; False when skipped (counted)."""
        if self.traces_per_minute <= 0:
            return False
        now = time.monotonic()
        started = self._started
        while started and started[0] <= now - BUDGET_WINDOW_SECONDS:
            started.popleft()
        if len(started) >= self.traces_per_minute:
            self.counts["skipped_budget"] += 1
            log.info("trace of %s skipped: %d traces already taken in the last minute (monitor.traces_per_minute)",
                     target.name, len(started), extra={"endpoint": target.name, "probe": "trace"})
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # told outside the event loop (a test of the tree, say): nothing can run the trace
            self.counts["failed"] += 1
            return False
        started.append(now)
        task = loop.create_task(self._take(target, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _take(self, target: Target, address: str | None) -> None:
        try:
            if address is None:
                address = await _resolve(target.host)
            at = self._clock()
            taken = await trace(self._prober, address, at, max_hops=self._max_hops,
                                timeout_seconds=self._timeout_seconds)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a name that does not resolve, a socket error: the trace is lost, not the daemon
            self.counts["failed"] += 1
            log.warning("trace of %s failed: %s", target.name, err, extra={"endpoint": target.name, "probe": "trace"})
            return
        self.counts["taken"] += 1
        self._taken(target, taken)

    def _taken(self, target: Target, taken: Trace) -> None:
        name = target.name
        self._last[name] = taken
        path = " ".join(h.address or "*" for h in taken.hops) or "nothing answered"
        if taken.reached:
            log.info("trace to %s: reached in %d hops (%s)", taken.target, len(taken.hops), path,
                     extra={"endpoint": name, "probe": "trace", "address": taken.target})
        else:
            log.warning("trace to %s: the path ends at %s (%s)", taken.target, taken.last_answering_hop or "the centre",
                        path, extra={"endpoint": name, "probe": "trace", "address": taken.target})
        if self._record is not None:
            try:
                self._record(target, taken)
            except Exception:  # the history's trouble is the history's to say
                log.debug("trace of %s not recorded", name, exc_info=True)
        down = self._down.get(name)
        if down is not None and down.trace is None:
            down.trace = taken
            self._update_faults()

    async def stop(self, timeout_seconds: float = 1.0) -> None:
        """At shutdown: cancel the traces still running and wait for them to unwind."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_seconds)

    # ------------------------------------------------------------------ reading
    def last_trace(self, name: str) -> Trace | None:
        """The last trace taken for site or node ``name`` (restored from the history at start-up too)."""
        return self._last.get(name)

    def restore(self, traces: Mapping[str, Trace]) -> None:
        """The last traces read back from the history; a trace taken since start-up wins."""
        for name, kept in traces.items():
            self._last.setdefault(name, kept)

    @property
    def faults(self) -> tuple[CommonFault, ...]:
        """The common faults that hold now, by hop."""
        return tuple(self._faults[hop] for hop in sorted(self._faults))

    @property
    def running(self) -> int:
        return len(self._tasks)

    # ------------------------------------------------------------------ common faults
    def _update_faults(self) -> None:
        """Group the sites down now by where their traces end; two or more that went down within an
        interval of each other are a common fault. Log each fault raised, changed and cleared."""
        by_hop: dict[str, list[tuple[float, float, str]]] = {}
        for name, down in self._down.items():
            t = down.trace
            if t is not None and not t.reached and t.last_answering_hop is not None:
                by_hop.setdefault(t.last_answering_hop, []).append((down.went_down_at, down.interval_seconds, name))
        faults: dict[str, CommonFault] = {}
        for hop, members in by_hop.items():
            members.sort()
            best: list[str] = []
            run: list[str] = []
            previous: tuple[float, float] | None = None
            for at, interval, name in members:
                if previous is not None and at - previous[0] > max(interval, previous[1]):
                    run = []
                run.append(name)
                previous = (at, interval)
                if len(run) > len(best):
                    best = list(run)
            if len(best) >= COMMON_FAULT_MIN_SITES:
                faults[hop] = CommonFault(hop, tuple(sorted(best)))
        for hop, fault in faults.items():
            if self._faults.get(hop) != fault:
                log.warning("common fault at %s: %d sites went down together and their traces end there (%s)",
                            hop, len(fault.sites), ", ".join(fault.sites),
                            extra={"probe": "trace", "address": hop, "state": "common_fault"})
        for hop, fault in self._faults.items():
            if hop not in faults:
                log.info("common fault at %s cleared: its sites answer again (%s)", hop, ", ".join(fault.sites),
                         extra={"probe": "trace", "address": hop, "state": "common_fault_cleared"})
        self._faults = faults


async def _resolve(host: str) -> str:
    """A node's (or site's) host as an address: the literal itself, or its first address from the resolver."""
    literal = normalize_ip(host)
    if literal is not None:
        return literal
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_RAW)
    return str(infos[0][4][0])
