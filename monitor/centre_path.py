"""The centre's own path (issue 21): is the monitor itself cut off, and the verdict on its sites' silence.

When the centre's own uplink fails, every site stops answering at once; without this, each of them
would be recorded ``down`` and charged to its provider. :class:`CentrePath` keeps the facts that tell
the centre's fault from theirs and rewrites an ICMP cycle before any sink sees it.

The centre is **cut off** when

- every uplink check (``monitor: {uplink: [...]}`` in the config; the daemon builds them as targets
  with :func:`monitor.targets.uplink_targets`) failed in its last run, when at least one is
  configured; or
- the resolver failed for every DNS name of an ICMP cycle: every DNS-named site of the cycle has
  error ``dns``, and there are at least two of them. That verdict stands until a later cycle sees a
  name resolve, or until no cycle with names has confirmed it for two of its intervals (a reload may
  take the names away).

While it is cut off, and for a cycle that began before the centre was found back (its echoes were
lost while it was still cut off), :meth:`CentrePath.classify` rewrites the ``error`` of each centre-probed site
that did not answer to ``monitor_cut_off``, its ``error_detail`` saying why; a site that answered
stays as it is, and so does everything an agent posts (agents never go through here). The probe's
raw facts (sent, RTTs: ``connmon_up``) are kept. The event log gets one line when the centre becomes
cut off and one when it is back, never one per cycle.

What it leaves to others: the scheduler runs the uplink checks (their own job, at the fastest ICMP
interval) and hands their results to :meth:`CentrePath.record`, and passes every site cycle through
:meth:`CentrePath.classify` before publishing it; the series (``connmon_monitor_cut_off``,
``connmon_uplink_up``) are rendered at scrape time by
:class:`monitor.centre_path_exposition.CentrePathExposition`; a site's state is derived from its
last result elsewhere (:func:`cut_off_cause` tells which rule a rewritten result came from).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from monitor.errors import ProbeErrorReason
from monitor.pipeline import rewrite_icmp
from monitor.results import Cycle, IcmpResult
from monitor.targets import Target

# The event log's logger: the centre being cut off is an event, like a site going down.
log = logging.getLogger("monitor.events")

CutOffCause = Literal["uplink", "resolver"]

# A rewritten result's error_detail starts with one of these; cut_off_cause() reads them back (from the
# history too, whose detail column keeps the start of the text).
UPLINK_DETAIL = "no reply while the centre's uplink checks all failed"
RESOLVER_DETAIL = "no reply while the centre's resolver failed for every name"

MIN_RESOLVER_NAMES = 2  # one name failing may be that name's own fault; two or more all failing is the resolver
RESOLVER_HOLD_INTERVALS = 2  # a resolver verdict not confirmed for this many intervals of its cycle lapses


def cut_off_cause(result: IcmpResult) -> CutOffCause | None:
    """Which rule made ``result`` ``monitor_cut_off``: the uplink checks or the resolver; None if it is not."""
    if result.error is not ProbeErrorReason.MONITOR_CUT_OFF:
        return None
    return "resolver" if result.error_detail.startswith(RESOLVER_DETAIL) else "uplink"


@dataclass(frozen=True, slots=True)
class _ResolverFailure:
    """The last cycle in which every name failed to resolve: how many names, which group, until when it stands."""

    names: int
    group: str
    until: float


class CentrePath:
    """Whether the centre itself is cut off, from its uplink checks and its resolver; rewrites cycles accordingly.

    Args:
        checks: the uplink checks as targets (:func:`monitor.targets.uplink_targets`); none: only the
            resolver rule applies.
        clock: Unix time now (injected so tests can pin it).
    """

    def __init__(self, checks: Sequence[Target] = (), clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._checks: tuple[Target, ...] = tuple(checks)
        self._last: dict[str, IcmpResult] = {}  # each check's result in its last run, by name
        self._resolver: _ResolverFailure | None = None
        self._cause: CutOffCause | None = None
        self._why = ""
        # when the centre was last found back (the start of the run that answered, or the resolver verdict's
        # lapse), and why it had been cut off: a silent cycle that began before then overlapped the cut
        self._back_at: float | None = None
        self._was_why = ""
        self._previous_why = ""

    # ------------------------------------------------------------------ facts in
    @property
    def checks(self) -> tuple[Target, ...]:
        """The uplink checks configured now, in config order (the scheduler probes these)."""
        return self._checks

    def set_checks(self, checks: Sequence[Target]) -> None:
        """The uplink checks after a reload: a check that stays keeps its last result, one that went is forgotten."""
        self._checks = tuple(checks)
        names = {c.name for c in self._checks}
        self._last = {name: result for name, result in self._last.items() if name in names}
        self._update()

    def record(self, results: Sequence[IcmpResult]) -> None:
        """One run of the uplink checks (from the scheduler's uplink job): the verdict follows at once."""
        names = {c.name for c in self._checks}
        for result in results:
            if result.target.name in names:  # a run begun before a reload may still name a check that went
                self._last[result.target.name] = result
        self._update()

    # ------------------------------------------------------------------ verdicts out
    @property
    def cut_off(self) -> bool:
        """True while the centre is cut off (by either rule), as of the last run, cycle or reload."""
        return self._cause is not None

    @property
    def why(self) -> str:
        """Why the centre is cut off, in ops' words ("the centre's uplink checks all failed (gateway, isp-1)"); ""."""
        return self._why

    @property
    def cause(self) -> CutOffCause | None:
        """Which rule holds: ``uplink`` (first, when both do), ``resolver``, or None when not cut off."""
        return self._cause

    @property
    def uplink(self) -> Mapping[str, IcmpResult]:
        """Each configured check's result in its last run, in config order (a check not run yet is absent)."""
        return {c.name: self._last[c.name] for c in self._checks if c.name in self._last}

    def classify(self, cycle: Cycle) -> Cycle:
        """``cycle`` as the sinks must see it: while the centre is cut off, its silent sites are ``monitor_cut_off``.

        The cycle's own names first update the resolver verdict. Only ICMP results of sites the centre
        probes itself are rewritten, and only those that got no reply; the rest, and every cycle while
        the centre is not cut off, are returned as they are (the same object when nothing changed).
        """
        if cycle.probe != "icmp":
            return cycle
        self.judge(cycle)
        return self.rewrite(cycle)

    def judge(self, cycle: Cycle) -> None:
        """Let the cycle's own names update the resolver verdict: done on the cycle *as measured*.

        The scheduler calls it before another judgement rewrites the cycle (the upstream nodes turn a
        ``dns`` error into ``upstream_down``), so that a failing resolver is still seen as the centre's.
        """
        if cycle.probe == "icmp":
            self._judge_resolver(cycle)
            self._update()

    def rewrite(self, cycle: Cycle) -> Cycle:
        """The cycle's silent, centre-probed sites as ``monitor_cut_off`` while cut off (the verdict as it stands)."""
        if cycle.probe != "icmp":
            return cycle
        why = self._why
        if self._cause is None:
            if self._back_at is None or cycle.started_at >= self._back_at:
                return cycle
            why = self._was_why  # the cycle began while the centre was still cut off: its silence is that
        return rewrite_icmp(cycle, lambda r: _rewritten(r, why) if not r.up and r.target.probed_by_centre
                            and r.error is not ProbeErrorReason.MONITOR_CUT_OFF else r)

    # ------------------------------------------------------------------ the rules
    def _uplink_failed(self) -> bool:
        last = self._last
        return bool(self._checks) and all(c.name in last and not last[c.name].up for c in self._checks)

    def _judge_resolver(self, cycle: Cycle) -> None:
        named = [r for r in cycle.results if isinstance(r, IcmpResult) and r.target.address is None
                 and r.target.host and r.target.probed_by_centre]
        if not named:
            return
        if any(r.error is not ProbeErrorReason.DNS for r in named):
            self._resolver = None  # a name resolved (or failed for another reason): the resolver answers
        elif len(named) >= MIN_RESOLVER_NAMES:
            interval = max(r.target.icmp.interval_seconds for r in named)
            self._resolver = _ResolverFailure(len(named), cycle.group,
                                              self._clock() + RESOLVER_HOLD_INTERVALS * interval)

    def _update(self) -> None:
        """Recompute the verdict; log a line when the centre becomes cut off or is back."""
        resolver = self._resolver
        lapsed = resolver is not None and self._clock() >= resolver.until
        if lapsed:
            self._resolver = resolver = None
        cause: CutOffCause | None
        if self._uplink_failed():
            cause, why = "uplink", f"the centre's uplink checks all failed ({', '.join(c.name for c in self._checks)})"
        elif resolver is not None:
            cause, why = "resolver", (f"the centre's resolver failed for every name ({resolver.names} names in a "
                                      f"cycle of group {resolver.group})")
        else:
            cause, why = None, ""
        was = self._cause
        self._previous_why = self._why
        self._cause, self._why = cause, why
        if cause is not None and was is None:
            log.warning("the centre is cut off: %s; sites that do not answer are recorded as monitor_cut_off, "
                        "not down", why)
        elif cause is None and was is not None:
            self._was_why = self._previous_why
            answered = [r.started_at for r in self._last.values() if r.up]
            # the uplink rule knows when the way out answered again; the resolver rule does not (a lapse)
            self._back_at = max(answered) if was == "uplink" and answered else None
            log.info("the centre is no longer cut off: %s; sites that do not answer are down again",
                     self._back(was, lapsed))

    def _back(self, was: CutOffCause, lapsed: bool) -> str:
        """Why the centre is no longer cut off, for the event log."""
        if was == "resolver":
            return ("no cycle saw the resolver fail for two of its intervals" if lapsed
                    else "a name resolves again")
        answering = [name for name, r in self.uplink.items() if r.up]
        return (f"uplink checks answer ({', '.join(answering)})" if answering
                else "the uplink checks changed at a reload")


def _rewritten(result: IcmpResult, why: str) -> IcmpResult:
    """``result`` (no reply) as ``monitor_cut_off``; the probe's own reason, if it had one, kept in the detail."""
    detail = f"no reply while {why}"  # starts with UPLINK_DETAIL or RESOLVER_DETAIL, as why is written
    if result.error is not None:
        own = f"{result.error.value}: {result.error_detail}" if result.error_detail else result.error.value
        detail += f"; the probe said {own}"
    return dataclasses.replace(result, error=ProbeErrorReason.MONITOR_CUT_OFF, error_detail=detail)
