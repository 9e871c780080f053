"""The start-up restore: what a restart must not forget, read back from the history.

A restarted daemon must not test every site at once, nor forget a month's spent budget or how
many tests in a row missed their target. :func:`read_restored` reads it from any
:class:`~monitor.history.store.HistoryStore` into a :class:`RestoredState`; the writer
(:class:`~monitor.history.writer.HistorySink`) runs it on the event loop for a store that answers at
once (SQLite) or in its thread once a store that may be away answers (PostgreSQL), and the daemon
hands the state to the plan, the metrics, the site state and the maintenance book (the run-time
windows still open or to come, issue 21). The calendar month is
:mod:`monitor.months`' (the plan's too), so both count a site's bytes from the same instant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from monitor.history.store import HistoryStore, StoredWindow
from monitor.months import month_start
from monitor.results import ThroughputResult, Trace
from monitor.targets import Target

MISSED_IN_A_ROW_LOOKBACK = 100  # tests read back to count misses in a row (alerts fire at a few)


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What :meth:`~monitor.history.writer.HistorySink.restore` found, keyed by endpoint name."""

    results: Mapping[str, ThroughputResult] = dataclasses.field(default_factory=dict)
    last_tried: Mapping[str, float] = dataclasses.field(default_factory=dict)
    used_bytes: Mapping[str, tuple[float, int]] = dataclasses.field(default_factory=dict)  # (month start, bytes)
    missed_in_a_row: Mapping[str, int] = dataclasses.field(default_factory=dict)  # tests below target, newest back
    verdicts: Mapping[str, bool] = dataclasses.field(default_factory=dict)  # the last verdict, as it was given
    last_test_bytes: Mapping[str, int] = dataclasses.field(default_factory=dict)  # a whole test's bytes (budget cap)
    # run-time maintenance windows open now or later (issue 21): a restart keeps them
    maintenance: tuple[StoredWindow, ...] = ()
    # each site's and upstream node's last trace (issue 21): the API shows it again after a restart
    traces: Mapping[str, Trace] = dataclasses.field(default_factory=dict)


def read_restored(store: HistoryStore, targets: Sequence[Target], now: float) -> RestoredState:
    """The restored state of ``targets`` (those with throughput tests) as ``store`` has it at ``now``."""
    windows = tuple(store.maintenance_windows(now, float("inf")))
    traces = store.last_traces()
    wanted = {t.name: t for t in targets if t.throughput.enabled}
    if not wanted:
        return RestoredState(maintenance=windows, traces=traces)
    measured = store.last_measured_tests()
    tried = store.last_tests()
    used: dict[str, tuple[float, int]] = {}
    missed: dict[str, int] = {}
    verdict: dict[str, bool] = {}
    for name, target in wanted.items():
        if name in measured:
            verdicts = store.recent_verdicts(name, MISSED_IN_A_ROW_LOOKBACK)
            missed[name] = next((i for i, met in enumerate(verdicts) if met), len(verdicts))
            if verdicts:
                verdict[name] = verdicts[0]
        if target.throughput.monthly_budget_bytes is not None and name in tried:
            since = month_start(now, target.throughput.timezone)
            used[name] = (since, store.bytes_since(name, since))
    return RestoredState(
        results={n: measured[n].as_result(wanted[n]) for n in wanted if n in measured},
        last_tried={n: tried[n].started_at for n in wanted if n in tried},
        used_bytes={n: used[n] for n in used}, missed_in_a_row=missed, verdicts=verdict,
        last_test_bytes={n: sum(d.bytes for d in measured[n].directions) for n in wanted
                         if n in measured and measured[n].error is None},
        maintenance=windows, traces=traces)
