"""The history store's health in ``/metrics``: written, waiting, dropped, set aside and failed.

A scrape-time renderer (:class:`~monitor.exposition.scrape.ScrapeRenderer`) the daemon hands to the
metrics sink: the counters are the writer's (:class:`~monitor.history.store.StoreStats`), read at
every scrape so they are current. Sample lines::

    connmon_store_results_written_total 1234567
    connmon_store_corrupt_files_total 1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from monitor.exposition.families import ShardLabels, floatToGoString, label_pairs
from monitor.exposition.scrape import Labelled
from monitor.history.store import StoreStats


class StoreExposition:
    """Renders the ``connmon_store_*`` families from the writer's current counters."""

    def __init__(self, stats: Callable[[], StoreStats]) -> None:
        self._stats = stats

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        stats = self._stats()
        braces = shard.braces()
        errors = "".join(f"connmon_store_errors_total{shard.braces(label_pairs((('operation', op),)))} {n}\n"
                         for op, n in stats.errors.items())
        return (
            "# HELP connmon_store_errors_total History store operations that failed (read-only or full disk, ...).\n"
            f"# TYPE connmon_store_errors_total counter\n{errors}"
            "# HELP connmon_store_results_written_total Results written to the history store.\n"
            f"# TYPE connmon_store_results_written_total counter\nconnmon_store_results_written_total{braces} "
            f"{stats.written}\n"
            "# HELP connmon_store_results_dropped_total Results never written: the store failed for so long that "
            "the backlog overflowed.\n"
            f"# TYPE connmon_store_results_dropped_total counter\nconnmon_store_results_dropped_total{braces} "
            f"{stats.dropped}\n"
            "# HELP connmon_store_results_set_aside_total Results the store could not write for a reason in the row "
            "itself; kept in the set-aside file.\n"
            f"# TYPE connmon_store_results_set_aside_total counter\nconnmon_store_results_set_aside_total{braces} "
            f"{stats.set_aside}\n"
            "# HELP connmon_store_results_set_aside_lost_total Results set aside that the set-aside file could not "
            "keep (full or unwritable).\n"
            "# TYPE connmon_store_results_set_aside_lost_total counter\n"
            f"connmon_store_results_set_aside_lost_total{braces} {stats.set_aside_lost}\n"
            "# HELP connmon_store_corrupt_files_total Corrupt history files (SQLite) moved aside at open, a fresh one "
            "started in their place.\n"
            f"# TYPE connmon_store_corrupt_files_total counter\nconnmon_store_corrupt_files_total{braces} "
            f"{stats.corrupt_files}\n"
            "# HELP connmon_store_pending_results Results waiting to be written.\n"
            f"# TYPE connmon_store_pending_results gauge\nconnmon_store_pending_results{braces} {stats.pending}\n"
            "# HELP connmon_store_rows_pruned_total Rows deleted from the history because they outlived retention.\n"
            f"# TYPE connmon_store_rows_pruned_total counter\nconnmon_store_rows_pruned_total{braces} "
            f"{stats.pruned}\n"
            "# HELP connmon_store_last_write_timestamp_seconds Unix time of the last successful write.\n"
            "# TYPE connmon_store_last_write_timestamp_seconds gauge\n"
            f"connmon_store_last_write_timestamp_seconds{braces} {floatToGoString(stats.last_write_at)}\n"
        ).encode()
