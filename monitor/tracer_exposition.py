"""The tracer in ``/metrics`` (issue 21): traces taken and skipped, and the common faults that hold.

A scrape-time renderer (:class:`~monitor.exposition.scrape.ScrapeRenderer`) the daemon hands to the
metrics sink, reading the :class:`~monitor.tracer.Tracer` it also puts in the result pipeline. The
counters are there from start-up; a fault's series exist only while it holds (a handful of series
during an outage, none otherwise). Sample lines::

    connmon_traces_total{outcome="skipped_budget"} 0
    connmon_common_fault{hop="10.77.240.2"} 3
    connmon_common_fault_site{hop="10.77.240.2",endpoint="agg-1"} 1
"""

from __future__ import annotations

from collections.abc import Mapping

from monitor.exposition.families import ShardLabels, label_pairs
from monitor.exposition.scrape import Labelled
from monitor.tracer import TRACE_OUTCOMES, Tracer


class TraceExposition:
    """Renders the tracer's counters and the common faults that hold (see the module doc for sample lines)."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        tracer = self._tracer
        out = ["# HELP connmon_traces_total Traces of the path to a site or upstream node that went down, by "
               "outcome (taken; skipped_budget: monitor.traces_per_minute spent; failed).\n"
               "# TYPE connmon_traces_total counter\n"]
        out.extend(f"connmon_traces_total{shard.braces(label_pairs((('outcome', o),)))} {tracer.counts[o]}\n"
                   for o in TRACE_OUTCOMES)
        faults = tracer.faults
        out.append("# HELP connmon_common_fault Sites that went down together and whose traces end at this hop "
                   "(no upstream declared for them); present while the fault holds.\n"
                   "# TYPE connmon_common_fault gauge\n")
        out.extend(f"connmon_common_fault{shard.braces(label_pairs((('hop', f.hop),)))} {len(f.sites)}\n"
                   for f in faults)
        out.append("# HELP connmon_common_fault_site 1 for each site of a common fault (connmon_common_fault), "
                   "for the alert to name them.\n# TYPE connmon_common_fault_site gauge\n")
        out.extend(f"connmon_common_fault_site{shard.braces(label_pairs((('hop', f.hop), ('endpoint', s))))} 1\n"
                   for f in faults for s in f.sites)
        return "".join(out).encode("utf-8")
