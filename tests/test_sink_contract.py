"""The sink contract, held against every sink the result pipeline feeds (issue 23).

A sink is told the configured sites (``set_targets``, at start and at each reload), is handed every
finished cycle (``consume``) and every skipped one (``cycle_skipped``). None of the three may raise,
whether the cycle is empty (a group with nothing to probe) or full, and each sink shows a full cycle
where it should: the metrics sink in the endpoints' series, the site state in its sites, the history
in its rows once closed, the event log in its lines. The history sink writes to a real SQLite file
in a temporary directory. :func:`test_every_sink_is_under_the_contract` finds the sinks in the
source, so a new one cannot be left out; the stores behind the history have their own contract
(:mod:`tests.test_store_contract`).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from monitor.exposition.sink import MetricsSink
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.writer import HistorySink
from monitor.icmp.engine import HopAnswer
from monitor.logs import EventLogSink
from monitor.pipeline import ClosableSink, Sink
from monitor.results import Cycle
from monitor.tracer import Tracer
from monitor.web.site_state import SiteStateSink
from tests.factories import KEEP_ALL, SOME_TIME, icmp, iperf3_test, throughput_target
from tests.running import samples, value

MONITOR = Path(__file__).resolve().parent.parent / "monitor"
T = SOME_TIME
UP, DOWN = throughput_target("up"), throughput_target("down")
SOON = dataclasses.replace(throughput_target("soon"), host="", address=None, status="planned")
SITES = [UP, DOWN, SOON]

EMPTY_CYCLES = [Cycle("icmp", "g", T, 0.0, ()), Cycle("throughput", "g", T, 0.0, ())]
PINGED = Cycle("icmp", "g", T, 0.5, (icmp(UP, T, 0.010, 0.012), icmp(DOWN, T, None, None)))
TESTED = Cycle("throughput", "g", T + 60, 11.0, (iperf3_test(UP, T + 60, 5e6),))

class _NoPaths:
    """An engine whose traces find nothing (the tracer's own tests give paths)."""

    async def echo_hops(self, address: str, ttls: Sequence[int], timeout_seconds: float,
                        spacing_seconds: float = 0.0, payload_bytes: int = 56) -> list[HopAnswer]:
        return [HopAnswer(ttl, None, None) for ttl in ttls]


SINKS: dict[str, Callable[[Path], Sink]] = {
    "MetricsSink": lambda _state: MetricsSink(),
    "SiteStateSink": lambda _state: SiteStateSink(),
    "HistorySink": lambda state: HistorySink(lambda: SqliteStore(database_path(state)), KEEP_ALL),
    "EventLogSink": lambda _state: EventLogSink(),
    "Tracer": lambda _state: Tracer(_NoPaths()),
}


def sink_classes_in_the_source() -> set[str]:
    """Every class under monitor/ that has the three sink methods, the :class:`Sink` protocol itself aside."""
    found = set()
    for path in MONITOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not any(getattr(b, "id", "") == "Protocol" for b in node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if {"set_targets", "consume", "cycle_skipped"} <= methods:
                    found.add(node.name)
    return found


@pytest.fixture(params=sorted(SINKS))
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = SINKS[request.param](tmp_path)
    try:
        yield made
    finally:
        if isinstance(made, ClosableSink):
            made.close()


def feed(sink: Any, *cycles: Cycle) -> None:
    for cycle in cycles:
        sink.consume(cycle)


def test_every_sink_is_under_the_contract() -> None:
    """The sinks found in the source are exactly the ones this contract runs."""
    assert sink_classes_in_the_source() == set(SINKS)


def test_empty_cycles_and_skips_never_raise(sink: Any) -> None:
    """Sites set, empty cycles of each probe kind consumed, cycles skipped: nothing raises."""
    sink.set_targets(SITES)
    feed(sink, *EMPTY_CYCLES)
    sink.cycle_skipped("icmp", "g")
    sink.cycle_skipped("throughput", "g")


def test_full_cycles_a_reload_and_late_cycles_never_raise(sink: Any) -> None:
    """Full cycles, a reload that removes a site, and a cycle of the removed site finishing late: nothing raises."""
    sink.set_targets(SITES)
    feed(sink, PINGED, TESTED)
    sink.cycle_skipped("icmp", "g")
    sink.set_targets([UP])
    feed(sink, PINGED, TESTED, *EMPTY_CYCLES)
    sink.set_targets([])
    feed(sink, *EMPTY_CYCLES)


def test_the_metrics_sink_shows_the_cycle_in_the_endpoints_series() -> None:
    """/metrics: the answering site up with its loss and rate, the silent one down, the skip counted."""
    sink = MetricsSink()
    sink.set_targets(SITES)
    feed(sink, *EMPTY_CYCLES, PINGED, TESTED)
    sink.cycle_skipped("icmp", "g")
    parsed = samples(b"".join(sink.exposition()).decode("utf-8"))
    assert value(parsed, "connmon_up", endpoint="up") == 1
    assert value(parsed, "connmon_up", endpoint="down") == 0
    assert value(parsed, "connmon_icmp_loss_ratio", endpoint="down") == 1
    assert value(parsed, "connmon_throughput_bits_per_second", endpoint="up", direction="download") == 5e6
    assert value(parsed, "connmon_cycles_skipped_total", probe="icmp", group="g") == 1


def test_the_site_state_holds_the_sites_last_results() -> None:
    """The API's state: an empty cycle leaves a site unknown; a full one gives up, down and the last test."""
    sink = SiteStateSink()
    sink.set_targets(SITES)
    feed(sink, *EMPTY_CYCLES)
    assert [(s["name"], s["up"]) for s in sink.sites()] == [("up", None), ("down", None), ("soon", None)]
    feed(sink, PINGED, TESTED)
    sink.cycle_skipped("icmp", "g")
    up, down = sink.site("up"), sink.site("down")
    assert up is not None and down is not None
    assert (up["up"], down["up"]) == (True, False)
    assert up["last_seen_at"] == TESTED.results[0].ended_at and down["last_seen_at"] is None
    assert up["throughput"] is not None and down["throughput"] is None


def test_the_history_holds_the_rows_after_close(tmp_path: Path) -> None:
    """The history: every site's record, each result of the full cycles once; empty cycles add no row."""
    sink = HistorySink(lambda: SqliteStore(database_path(tmp_path)), KEEP_ALL)
    try:
        sink.set_targets(SITES)
        feed(sink, *EMPTY_CYCLES, PINGED, TESTED, *EMPTY_CYCLES)
        sink.cycle_skipped("icmp", "g")
    finally:
        sink.close()
    store = SqliteStore(database_path(tmp_path), read_only=True)
    try:
        assert sorted(e.name for e in store.endpoints()) == ["down", "soon", "up"]
        assert [(c.started_at, c.received) for c in store.icmp_cycles("up", 0, 1e12)] == [(T, 2)]
        assert [(c.started_at, c.received) for c in store.icmp_cycles("down", 0, 1e12)] == [(T, 0)]
        assert [t.direction_rate("download") for t in store.throughput_tests("up", 0, 1e12)] == [5e6]
        assert list(store.icmp_cycles("soon", 0, 1e12)) == []
    finally:
        store.close()


def test_the_event_log_tells_each_change_and_the_skip(caplog: pytest.LogCaptureFixture) -> None:
    """The event log: one line per site that came up or went down, one per test, one per skipped cycle."""
    caplog.set_level(logging.INFO, logger="monitor.events")
    sink = EventLogSink()
    sink.set_targets(SITES)
    feed(sink, *EMPTY_CYCLES)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    feed(sink, PINGED, TESTED)
    sink.cycle_skipped("icmp", "g")
    lines = [(getattr(r, "endpoint", None), r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert ("up", "up: 2/2 echoes answered, avg rtt 11.000 ms") in lines
    assert ("down", "down: no reply to 2 echoes") in lines
    assert any(name == "up" and "download 5.00 Mbit/s" in text for name, text in lines), lines
    assert (None, "cycle skipped: the previous one is still running") in lines


def test_the_tracer_traces_a_site_that_went_down() -> None:
    """The tracer (issue 21): a site that answered and then did not is traced once, its trace kept for the API."""
    async def run() -> None:
        sink = Tracer(_NoPaths(), lambda: T)
        sink.set_targets(SITES)
        feed(sink, *EMPTY_CYCLES, PINGED, TESTED)
        sink.cycle_skipped("icmp", "g")
        assert sink.last_trace("down") is None  # never seen up: nothing went down
        feed(sink, Cycle("icmp", "g", T + 60, 0.5, (icmp(UP, T + 60, None, None),)))
        while sink.running:
            await asyncio.sleep(0)
        taken = sink.last_trace("up")
        assert taken is not None and taken.at == T and taken.last_answering_hop is None
    asyncio.run(run())
