"""The monitor-wide series at the end of the cached body: configured sites, cycle durations and skips,
throughput tools, build info and the config's last reload.

They change with a cycle, a skip, a reload: the sink renders them again at each change of the body
(:meth:`MonitorWide.render`), not per scrape. Sample lines::

    connmon_sites{kind="school",district="Aktobe",link="fibre",status="connected"} 412
    connmon_cycle_duration_seconds_bucket{probe="icmp",group="aktobe",le="2.5"} 118
"""

from __future__ import annotations

import collections
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from monitor import __version__
from monitor.exposition.families import CYCLE_BUCKETS_SECONDS, CYCLE_LE, ShardLabels, floatToGoString, label_pairs
from monitor.results import Cycle
from monitor.targets import Target


@dataclass(slots=True)
class CycleStats:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(CYCLE_BUCKETS_SECONDS) + 1))
    total_seconds: float = 0.0
    skipped: int = 0


class MonitorWide:
    """Counts cycles and reloads, and renders the monitor-wide series (``shard`` on each, if set)."""

    def __init__(self, shard: ShardLabels, clock: Callable[[], float], tools: Mapping[str, bool]) -> None:
        self._shard = shard
        self._clock = clock
        self._tools = dict(tools)
        self._cycles: dict[tuple[str, str], CycleStats] = {}
        self._reload_ok = 1
        self._reload_success_at = 0.0
        self._sites = ""  # connmon_sites lines, rendered at set_targets

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Count the configured sites; keep the cycle statistics of the groups that stay."""
        cycle_groups = {("icmp", t.group) for t in targets if t.probed} | {
            ("throughput", t.group) for t in targets if t.probed and t.throughput.enabled}
        self._sites = self._render_sites(targets)
        self._cycles = {key: self._cycles.get(key) or CycleStats() for key in sorted(cycle_groups)}

    def config_loaded(self, success: bool) -> None:
        self._reload_ok = 1 if success else 0
        if success:
            self._reload_success_at = self._clock()

    def count_cycle(self, cycle: Cycle) -> None:
        stats = self._cycles.get((cycle.probe, cycle.group))  # None: its group went at a reload
        if stats is not None:
            stats.total_seconds += cycle.duration_seconds
            for index, bound in enumerate(CYCLE_BUCKETS_SECONDS):
                if cycle.duration_seconds <= bound:
                    stats.buckets[index] += 1
                    break
            else:
                stats.buckets[-1] += 1

    def cycle_skipped(self, probe: str, group: str) -> bool:
        """Count a skipped cycle; False if its group is not configured (nothing changed)."""
        stats = self._cycles.get((probe, group))
        if stats is None:
            return False
        stats.skipped += 1
        return True

    def _render_sites(self, targets: Sequence[Target]) -> str:
        """``connmon_sites``: configured sites by kind, district, link and roll-out status (issue 11)."""
        counts = collections.Counter((t.kind, t.district, t.link, t.status) for t in targets)
        names = ("kind", "district", "link", "status")
        braces = self._shard.braces
        return ("# HELP connmon_sites Configured sites by kind, district, link and roll-out status "
                "(planned, connected, retired).\n# TYPE connmon_sites gauge\n"
                + "".join(f"connmon_sites{braces(label_pairs(zip(names, key, strict=True)))} {n}\n"
                          for key, n in sorted(counts.items())))

    def render(self) -> str:
        braces = self._shard.braces
        build = label_pairs((("version", __version__), ("python_version", platform.python_version())))
        return "".join((
            self._sites,
            self._render_cycles(),
            self._render_tools(),
            "# HELP connmon_build_info Version of connmon and of the Python running it (value 1).\n"
            "# TYPE connmon_build_info gauge\n"
            "connmon_build_info"
            f"{braces(build)} 1\n"
            "# HELP connmon_config_last_reload_successful 1 if the last config load or reload succeeded.\n"
            "# TYPE connmon_config_last_reload_successful gauge\n"
            f"connmon_config_last_reload_successful{braces()} {self._reload_ok}\n"
            "# HELP connmon_config_last_reload_success_timestamp_seconds Unix time of the last good load.\n"
            "# TYPE connmon_config_last_reload_success_timestamp_seconds gauge\n"
            f"connmon_config_last_reload_success_timestamp_seconds{braces()} "
            f"{floatToGoString(self._reload_success_at)}\n"))

    def _render_tools(self) -> str:
        if not self._tools:
            return ""
        braces = self._shard.braces
        return ("# HELP connmon_throughput_tool_available 1 if the tool a throughput method runs is installed "
                "(iperf3 tests report tool_missing otherwise).\n# TYPE connmon_throughput_tool_available gauge\n"
                + "".join(f'connmon_throughput_tool_available{braces(label_pairs((("tool", tool),)))} {int(ok)}\n'
                          for tool, ok in sorted(self._tools.items())))

    def _render_cycles(self) -> str:
        lines = ["# HELP connmon_cycle_duration_seconds Wall time of each probe cycle, by probe and group.\n"
                 "# TYPE connmon_cycle_duration_seconds histogram\n"]
        skipped = ["# HELP connmon_cycles_skipped_total Cycles not started because the previous one "
                   "of the same group was still running.\n# TYPE connmon_cycles_skipped_total counter\n"]
        for (probe, group), stats in self._cycles.items():
            lb = label_pairs((("probe", probe), ("group", group), *self._shard.pairs))
            cumulative = 0
            for le, count in zip(CYCLE_LE, stats.buckets, strict=True):
                cumulative += count
                lines.append(f'connmon_cycle_duration_seconds_bucket{{{lb},le="{le}"}} {cumulative}\n')
            lines.append(f"connmon_cycle_duration_seconds_sum{{{lb}}} {floatToGoString(stats.total_seconds)}\n")
            lines.append(f"connmon_cycle_duration_seconds_count{{{lb}}} {cumulative}\n")
            skipped.append(f"connmon_cycles_skipped_total{{{lb}}} {stats.skipped}\n")
        return "".join(lines + skipped)
