"""Run-time maintenance windows in ``/metrics`` (issue 21): how many are open now, by kind of target.

A scrape-time renderer (:class:`~monitor.exposition.scrape.ScrapeRenderer`) the daemon hands to the
metrics sink, reading the :class:`~monitor.maintenance.MaintenanceBook` it also hands to the sinks,
the plan and the API. Which sites a window holds is ``connmon_maintenance{endpoint}`` (the metrics
sink's own, from the same book). Both kinds are there from start-up, at 0::

    connmon_maintenance_windows{kind="site"} 1
    connmon_maintenance_windows{kind="upstream"} 0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from monitor.exposition.families import ShardLabels, label_pairs
from monitor.exposition.scrape import Labelled
from monitor.maintenance import KINDS, MaintenanceBook


class MaintenanceExposition:
    """Renders ``connmon_maintenance_windows{kind}`` from the book's run-time windows open at scrape time."""

    def __init__(self, book: MaintenanceBook, clock: Callable[[], float] = time.time) -> None:
        self._book = book
        self._clock = clock

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        now = self._clock()
        counts = dict.fromkeys(KINDS, 0)
        for window in self._book.windows(now):
            if window.covers(now):
                counts[window.kind] = counts.get(window.kind, 0) + 1
        out = ["# HELP connmon_maintenance_windows Maintenance windows opened through the API "
               "(POST /api/v1/maintenance) that are open now, by kind of target (site or upstream node).\n"
               "# TYPE connmon_maintenance_windows gauge\n"]
        out.extend(f"connmon_maintenance_windows{shard.braces(label_pairs((('kind', kind),)))} {count}\n"
                   for kind, count in counts.items())
        return "".join(out).encode("utf-8")
