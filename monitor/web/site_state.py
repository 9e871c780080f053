"""Current state per site, for the JSON API (issue 11): the last results, kept as they came.

A result-pipeline sink like :class:`~monitor.exposition.sink.MetricsSink`, but it derives nothing per
cycle: it keeps references to the last :class:`IcmpResult` and the last measured
:class:`ThroughputResult` of each endpoint (a dict assignment per result, cheap at 10,000 sites)
and builds JSON only when asked (:func:`site_json`). What a site's figures mean is defined by
the result properties (:mod:`monitor.results`), so the API and /metrics cannot disagree.

Each site's ``state`` and ``cause`` (issue 21) are derived when asked, by the one function the
exposition and the event log use too (:func:`monitor.site_states.site_state`), from the last ICMP
result, the site's declared maintenance windows at the sink's clock, and an agent site's last
silence (its :class:`~monitor.results.Gap`, which the cycles carry).

Conventions of the JSON (documented in ``monitor/web/openapi.yaml``): numbers in base units
(seconds, bits per second, ratios 0..1), times as Unix seconds (floats, UTC by definition), null
where nothing is known yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from monitor.errors import AGENT_REASONS, ICMP_REASONS, ProbeErrorReason
from monitor.results import PEP_NOTE, Cycle, GapCause, IcmpResult, ThroughputResult, Trace
from monitor.site_states import MaintenanceWatch, SiteState, site_state
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.maintenance import MaintenanceBook

SiteJson = dict[str, Any]

SITE_ICMP_REASONS: tuple[ProbeErrorReason, ...] = tuple(dict.fromkeys((*ICMP_REASONS, *AGENT_REASONS)))
"""What a site's ``icmp.error`` can say: the ICMP reasons (``monitor_cut_off`` included) and an agent site's
``agent_silent`` (``openapi.yaml`` lists the same, in this order)."""


def site_status(target: Target) -> str:
    """The site's roll-out status from the config: planned, connected or retired (only connected ones are probed)."""
    return target.status


class SiteStateSink:
    """Keeps each configured endpoint's last ICMP result and last measured throughput test.

    ``clock`` is now, for the maintenance windows of the sites' states; ``last_trace`` gives a site's
    last trace by name (issue 21, :meth:`monitor.tracer.Tracer.last_trace`), for its ``last_trace``.
    """

    def __init__(self, clock: Callable[[], float] = time.time, maintenance: MaintenanceBook | None = None,
                 last_trace: Callable[[str], Trace | None] = lambda _name: None) -> None:
        self.last_trace = last_trace
        self.targets: dict[str, Target] = {}
        self.icmp: dict[str, IcmpResult] = {}
        self.throughput: dict[str, ThroughputResult] = {}
        self.last_reply_at: dict[str, float] = {}  # a site down now was last seen at its last answered cycle
        self.gap_cause: dict[str, GapCause] = {}  # an agent site's current or last silence's cause
        self.clock = clock
        self._maintenance = MaintenanceWatch(maintenance)  # the daemon's book: the API's windows too

    def set_targets(self, targets: Sequence[Target]) -> None:
        self.targets = {t.name: t for t in targets}
        for kept in (self.icmp, self.throughput, self.last_reply_at, self.gap_cause):
            for name in [n for n in kept if n not in self.targets]:
                del kept[name]
        self._maintenance.watch(targets)

    def consume(self, cycle: Cycle) -> None:
        for gap in cycle.gaps:
            self.gap_cause[gap.target.name] = gap.cause
        for result in cycle.results:
            if isinstance(result, IcmpResult):
                self.icmp[result.target.name] = result
                if result.received:
                    self.last_reply_at[result.target.name] = result.started_at
            elif result.measured:  # a failed test leaves the last measured rate, as /metrics does
                self.throughput[result.target.name] = result

    def cycle_skipped(self, probe: str, group: str) -> None:
        """A skipped cycle changes no site's last result."""

    def restore(self, results: Iterable[ThroughputResult]) -> None:
        """The last measured tests read back from the history: at start-up (a restart shows them at once), and
        with replicas those the other replicas ran (issue 19); an older one never replaces a newer one."""
        for result in results:
            name = result.target.name
            kept = self.throughput.get(name)
            if name in self.targets and (kept is None or kept.started_at < result.started_at):
                self.throughput[name] = result

    def state(self, target: Target, now: float) -> SiteState:
        """The site's state now and its cause (issue 21)."""
        name = target.name
        return site_state(target, self.icmp.get(name), now, self.gap_cause.get(name), watch=self._maintenance)

    def site(self, name: str) -> SiteJson | None:
        target = self.targets.get(name)
        return None if target is None else site_json(target, self.icmp.get(name), self.throughput.get(name),
                                                     self.last_reply_at.get(name), self.state(target, self.clock()),
                                                     self.last_trace(name))

    def sites(self, targets: Iterable[Target] | None = None) -> list[SiteJson]:
        """The state of ``targets`` (default every configured site, in config order)."""
        icmp, throughput, replied = self.icmp, self.throughput, self.last_reply_at
        chosen = self.targets.values() if targets is None else targets
        now = self.clock()
        last_trace = self.last_trace
        return [site_json(t, icmp.get(t.name), throughput.get(t.name), replied.get(t.name), self.state(t, now),
                          last_trace(t.name)) for t in chosen]


def site_json(target: Target, icmp: IcmpResult | None, test: ThroughputResult | None,
              last_reply: float | None = None, state: SiteState | None = None,
              last_trace: Trace | None = None) -> SiteJson:
    """One site's current state as the API's ``Site`` object (see ``monitor/web/openapi.yaml``).

    ``last_seen_at`` is the later of the last cycle that got a reply and the last measured test;
    ``state`` as :func:`monitor.site_states.site_state` gives it (default: from ``icmp`` and the
    site's windows now, no silence known). ``last_trace``: the path's last trace (issue 21), if any.
    """
    last_test = test.ended_at if test is not None else None
    seen = [t for t in (last_reply, last_test) if t is not None]
    if state is None:
        state = site_state(target, icmp, time.time())
    return {
        "name": target.name,
        "labels": {"kind": target.kind, "district": target.district, "link": target.link, "group": target.group},
        "host": target.host,
        "lat": target.lat,
        "lon": target.lon,
        "status": site_status(target),
        "up": None if icmp is None else icmp.up,
        "icmp": None if icmp is None else {
            "cycle_started_at": icmp.started_at,
            "address": icmp.address,
            "address_from_cache": icmp.address_from_cache,  # issue 22: a failed look-up, the last good address
            "sent": icmp.sent,
            "received": icmp.received,
            "rtt_avg_seconds": icmp.rtt_avg_seconds,
            "loss_ratio": icmp.loss_ratio,
            "jitter_seconds": icmp.jitter_seconds,
            "error": None if icmp.error is None else str(icmp.error),
        },
        "throughput": None if test is None else {
            "tested_at": test.started_at,
            "method": test.method,
            "download_bits_per_second": test.download_bits_per_second,
            "upload_bits_per_second": test.upload_bits_per_second,
            "target_met": test.target_met,
            # issue 20: latency under load, the verdict and each sampled direction's figures
            "latency_under_load_ok": test.latency_under_load_ok,
            "max_added_latency_seconds": target.max_added_latency_seconds,
            "latency": [{"direction": d.direction, **d.latency_figures()} for d in test.directions],
            "pep_detected": test.pep_detected,
            "pep_note": PEP_NOTE if test.pep_detected else None,
        },
        "target_bits_per_second": target.target_bits_per_second,
        "target_upload_bits_per_second": target.target_upload_bits_per_second,
        "last_seen_at": max(seen) if seen else None,
        "last_trace": None if last_trace is None else {
            "at": last_trace.at,
            "hops": last_trace.hops_json(),
            "last_answering_hop": last_trace.last_answering_hop,
        },
        **state.as_json(),
    }
