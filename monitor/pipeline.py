"""The one place finished cycles reach the sinks: the sinks' interface, the stages before them, the fan-out.

Why its own module: :mod:`monitor.results` holds values that every part reads; this is the one moving
part of that step, where a cycle from a probe or an agent passes the judgements (the centre path, the
upstream nodes, maintenance) and then every sink (the exposition, the history, the event log, the
current state), so that metrics, history and logs derive from results in one place and a failing sink
never costs the others a cycle.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from monitor.results import Cycle, IcmpResult
from monitor.targets import Target

log = logging.getLogger("monitor.results")  # the name it logged under before the split, kept for log shippers


class Sink(Protocol):
    """Anything that derives state from finished cycles (metrics, logs, history)."""

    def set_targets(self, targets: Sequence[Target]) -> None:
        """The endpoints now configured (at start and at each reload): forget the ones that went."""

    def consume(self, cycle: Cycle) -> None: ...

    def cycle_skipped(self, probe: str, group: str) -> None: ...


@runtime_checkable
class ClosableSink(Protocol):
    """A sink with something to write out at shutdown (history, later); ``close`` is optional for sinks."""

    def close(self) -> None:
        """Flush and release what the sink holds; called once, after the last cycle was published."""


def rewrite_icmp(cycle: Cycle, rewrite: Callable[[IcmpResult], IcmpResult]) -> Cycle:
    """``cycle`` with ``rewrite`` applied to each ICMP result; the very same object when no result changed.

    The one shape of every judgement that re-labels a cycle's silent sites (the centre path, the
    upstream nodes, maintenance): returning the same object lets the sinks skip what did not change.
    """
    results = tuple(rewrite(r) if isinstance(r, IcmpResult) else r for r in cycle.results)
    if all(new is old for new, old in zip(results, cycle.results, strict=True)):
        return cycle
    return dataclasses.replace(cycle, results=results)


Stage = Callable[[Cycle], Cycle]
"""A judgement every cycle passes before the sinks, the centre's and the agents' alike (issue 21: maintenance)."""


class ResultPipeline:
    """Fans every finished cycle out to the sinks; a failing sink never stops the others.

    ``stages`` run first, in order, on every published cycle (e.g.
    :meth:`monitor.maintenance.MaintenanceBook.classify`); a stage that fails leaves the cycle as it was.
    """

    def __init__(self, sinks: Sequence[Sink], stages: Sequence[Stage] = ()) -> None:
        self.sinks = list(sinks)
        self.stages = tuple(stages)

    def publish(self, cycle: Cycle) -> None:
        for stage in self.stages:
            try:
                cycle = stage(cycle)
            except Exception:  # a bug in a judgement must not lose the cycle
                log.exception("a stage failed on a %s cycle; publishing it as it was", cycle.probe)
        for sink in self.sinks:
            try:
                sink.consume(cycle)
            except Exception:  # a bug in one sink must not lose the cycle for the others
                log.exception("sink %s failed on a %s cycle", type(sink).__name__, cycle.probe)

    def cycle_skipped(self, probe: str, group: str) -> None:
        for sink in self.sinks:
            try:
                sink.cycle_skipped(probe, group)
            except Exception:
                log.exception("sink %s failed on a skipped cycle", type(sink).__name__)

    def close(self) -> None:
        """At shutdown, after the last cycle: let every sink that has ``close`` flush; one failing stops none."""
        for sink in self.sinks:
            if isinstance(sink, ClosableSink):
                try:
                    sink.close()
                except Exception:
                    log.exception("sink %s failed to close", type(sink).__name__)
