"""The centre's own path in ``/metrics`` (issue 21): is the monitor cut off, and does each uplink check answer.

A scrape-time renderer (:class:`~monitor.exposition.scrape.ScrapeRenderer`) the daemon hands to the
metrics sink, reading the :class:`~monitor.centre_path.CentrePath` it also hands to the scheduler, so
the figures are those of the last uplink run or cycle. ``connmon_monitor_cut_off`` is there from
start-up (0 until the centre is found cut off); a check's ``connmon_uplink_up`` appears after its
first run. Sample lines::

    connmon_monitor_cut_off 1
    connmon_uplink_up{check="gateway"} 0
"""

from __future__ import annotations

from collections.abc import Mapping

from monitor.centre_path import CentrePath
from monitor.exposition.families import ShardLabels, label_pairs
from monitor.exposition.scrape import Labelled


class CentrePathExposition:
    """Renders ``connmon_monitor_cut_off`` and ``connmon_uplink_up`` from the centre path's verdict."""

    def __init__(self, centre_path: CentrePath) -> None:
        self._centre_path = centre_path

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        path = self._centre_path
        out = ["# HELP connmon_monitor_cut_off 1 while the centre itself is cut off (every uplink check failed, or "
               "the resolver failed for every name): sites that do not answer then are monitor_cut_off, not down.\n"
               f"# TYPE connmon_monitor_cut_off gauge\nconnmon_monitor_cut_off{shard.braces()} {int(path.cut_off)}\n"]
        uplink = path.uplink
        if uplink:
            out.append("# HELP connmon_uplink_up 1 if the centre's uplink check answered at least one echo in its "
                       "last run.\n# TYPE connmon_uplink_up gauge\n")
            out.extend(f"connmon_uplink_up{shard.braces(label_pairs((('check', name),)))} {int(result.up)}\n"
                       for name, result in uplink.items())
        return "".join(out).encode("utf-8")
