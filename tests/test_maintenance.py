"""Maintenance windows (issue 21, point 6): the book that merges the config's and the API's windows, the
pipeline's stage that records silent cycles as ``maintenance``, the plan that starts no test, the sinks that
show the state, and the API's parsing of a window (the running daemon's answers are tests/test_maintenance_api.py's)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import pytest

from monitor.config.windows import MaintenanceWindows, parse_window
from monitor.errors import ProbeErrorReason
from monitor.exposition.sink import MetricsSink
from monitor.history.store import StoredWindow
from monitor.logs import EventLogSink
from monitor.maintenance import MAINTENANCE_DETAIL, MaintenanceBook, window_text
from monitor.maintenance_exposition import MaintenanceExposition
from monitor.pipeline import ResultPipeline
from monitor.results import Cycle, IcmpResult
from monitor.site_states import MaintenanceWatch
from monitor.throughput_plan import ThroughputPlan
from monitor.web.maintenance_api import MAX_REASON_LENGTH, FieldError, parse_request, parse_time
from monitor.web.site_state import SiteStateSink
from tests.factories import Clock, Recorder, agent_target, icmp, located_target, throughput_target
from tests.running import samples, value

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC).timestamp()  # a Sunday, noon UTC
HOUR = 3600.0
NODES = [located_target("isp", group="monitor.upstreams"),
         located_target("agg", group="monitor.upstreams", upstream="isp")]


def window(target: str, start: float, end: float, *, kind: str = "site", id_: int = 1,
           closed_at: float | None = None) -> StoredWindow:
    return StoredWindow(id_, target, kind, start, end, "fibre splicing", start - 60, closed_at)


def book_of(*sites: object, nodes: list | None = None, clock: Clock | None = None) -> MaintenanceBook:
    book = MaintenanceBook(clock or Clock(NOW))
    book.set_targets(list(sites), nodes or [])  # type: ignore[arg-type]
    return book


def silent(name: str, at: float, error: ProbeErrorReason | None = None, **fields: object) -> IcmpResult:
    return icmp(located_target(name, **fields), at, None, None, error=error)


def test_a_run_time_window_holds_its_site_from_start_to_end_and_names_itself() -> None:
    """A site window covers [start, end): before and at its end the site is free; its text names id, end, reason."""
    book = book_of(located_target("a"), located_target("b"))
    book.opened(window("a", NOW + 30, NOW + HOUR))
    assert book.window("a", NOW) is None
    text = book.window("a", NOW + 30)
    assert text == "#1 until 2026-12-06 13:00 UTC: fibre splicing" == window_text(window("a", NOW + 30, NOW + HOUR))
    assert book.window("b", NOW + 30) is None
    assert book.window("a", NOW + HOUR) is None


def test_a_window_on_an_upstream_node_holds_every_site_and_node_behind_it() -> None:
    """A window on ``isp`` holds ``agg`` below it and the sites behind either; a site beside both stays free."""
    behind_agg = located_target("behind-agg", upstream="agg")
    behind_isp = located_target("behind-isp", upstream="isp")
    beside = located_target("beside")
    book = book_of(behind_agg, behind_isp, beside, nodes=NODES)
    book.opened(window("isp", NOW - 60, NOW + HOUR, kind="upstream"))
    held = book.open_now(NOW)
    assert set(held) == {"behind-agg", "behind-isp"}
    assert held["behind-agg"].startswith("#1 on upstream isp until ")
    assert book.node_window("agg") == book.node_window("isp") == held["behind-agg"]
    book.opened(window("agg", NOW - 60, NOW + HOUR, kind="upstream", id_=2))
    assert book.knows("upstream", "agg") and not book.knows("site", "agg") and book.knows("site", "beside")


def test_a_window_closed_early_ends_where_it_was_closed() -> None:
    """Closed at 12:10, the window no longer holds the site at 12:10; a window closed before it began never does."""
    book = book_of(located_target("a"))
    book.opened(window("a", NOW - 60, NOW + HOUR))
    assert book.window("a", NOW) is not None
    book.closed(window("a", NOW - 60, NOW + HOUR, closed_at=NOW + 600))
    assert book.window("a", NOW + 599) is not None and book.window("a", NOW + 600) is None
    assert book.windows(NOW + 600) == []
    book.opened(window("a", NOW + HOUR, NOW + 2 * HOUR, id_=2, closed_at=NOW))
    assert [w.id for w in book.windows(NOW)] == [1] and book.window("a", NOW + HOUR) is None


def test_the_book_answers_once_a_minute_and_at_a_windows_edges() -> None:
    """Within a minute the same mapping comes back (sinks compare it by identity); a run-time window that starts at
    second 30 is seen at second 30, not at the next minute."""
    declared = MaintenanceWindows("UTC", weekly=(parse_window("Sun 12:00-13:00"),))
    book = book_of(located_target("a", maintenance=declared), located_target("b"))
    first = book.open_now(NOW + 1)
    assert dict(first) == {"a": "Sun 12:00-13:00 UTC"}
    assert book.open_now(NOW + 20) is first
    book.opened(window("b", NOW + 30, NOW + 90))
    assert book.open_now(NOW + 29) is first  # the same content: the same object
    at_30 = book.open_now(NOW + 30)
    assert set(at_30) == {"a", "b"} and book.open_now(NOW + 59) is at_30
    assert set(book.open_now(NOW + 90)) == {"a"}


def test_the_store_read_again_brings_another_instances_windows_and_closes(caplog: pytest.LogCaptureFixture) -> None:
    """What another instance opened in a shared store comes in; one no longer open in the store ends here too; a
    read older than this instance's own edit is not used (it could lack the window just opened)."""
    caplog.set_level(logging.INFO, logger="monitor.events")
    book = book_of(located_target("a"), located_target("b"))
    mine = window("a", NOW - 60, NOW + HOUR)
    book.opened(mine)
    theirs = window("b", NOW - 60, NOW + HOUR, id_=2)
    book.sync([mine, theirs], NOW, book.edits)
    assert set(book.open_now(NOW)) == {"a", "b"}
    assert any("by another instance" in r.getMessage() and "site b" in r.getMessage() for r in caplog.records)
    edits = book.edits
    book.opened(window("a", NOW, NOW + 2 * HOUR, id_=3))
    book.sync([mine, theirs], NOW + 10, edits)  # read before window 3 was stored: not used
    assert [w.id for w in book.windows(NOW + 10)] == [1, 2, 3]
    book.sync([mine, window("a", NOW, NOW + 2 * HOUR, id_=3)], NOW + 20, book.edits)  # 2 was closed elsewhere
    assert [w.id for w in book.windows(NOW + 20)] == [1, 3] and book.window("b", NOW + 20) is None


def test_a_window_opened_ahead_says_when_it_begins_and_ends(caplog: pytest.LogCaptureFixture) -> None:
    """The event log says a run-time window's opening, its beginning (when it was opened ahead) and its end."""
    caplog.set_level(logging.INFO, logger="monitor.events")
    book = book_of(located_target("a"))
    book.opened(window("a", NOW + 600, NOW + 1200))
    for t in (NOW, NOW + 600, NOW + 900, NOW + 1200, NOW + 1300):
        book.open_now(t)
    said = [r.getMessage().split(" UTC: ")[0] for r in caplog.records]
    assert said == ["maintenance window opened on site a from 2026-12-06 12:10:00",
                    "maintenance window began on site a: #1 until 2026-12-06 12:20",
                    "maintenance window ended on site a: #1 until 2026-12-06 12:20"]


def test_the_pipeline_records_silent_cycles_in_a_window_as_maintenance() -> None:
    """Every silent result of a site in a window, whatever reason it had, gets ``maintenance`` and a detail naming the
    window and what the probe said; an answering site stays up; an agent's silence stays ``agent_silent``; an
    agent's spooled result from an ended window is judged by when it was measured."""
    behind = located_target("behind", upstream="agg")
    vsat = agent_target("vsat")
    book = book_of(located_target("a"), located_target("b"), behind, vsat, nodes=NODES)
    book.opened(window("a", NOW - HOUR, NOW + HOUR))
    book.opened(window("agg", NOW - HOUR, NOW + HOUR, kind="upstream", id_=2))
    book.opened(window("vsat", NOW - 3 * HOUR, NOW - 2 * HOUR, id_=3))
    recorder = Recorder()
    pipeline = ResultPipeline([recorder], stages=(book.classify,))
    results = (silent("a", NOW, ProbeErrorReason.UNREACHABLE), icmp(located_target("a"), NOW, 0.01),
               silent("b", NOW), silent("behind", NOW, ProbeErrorReason.UPSTREAM_DOWN, upstream="agg"),
               silent("a", NOW, ProbeErrorReason.MONITOR_CUT_OFF))
    pipeline.publish(Cycle("icmp", "g", NOW, 1.0, results))
    got = recorder.results
    assert [r.error for r in got] == [ProbeErrorReason.MAINTENANCE, None, None, ProbeErrorReason.MAINTENANCE,
                                      ProbeErrorReason.MAINTENANCE]
    assert got[0].error_detail == f"{MAINTENANCE_DETAIL}#1 until 2026-12-06 13:00 UTC: fibre splicing; " \
                                  "the probe said unreachable"
    assert "#2 on upstream agg" in got[3].error_detail and got[3].rtts_seconds == (None, None)
    spooled = icmp(vsat, NOW - 2.5 * HOUR, None)
    agent_silent = IcmpResult(vsat, NOW - 2.5 * HOUR, None, 0, (), ProbeErrorReason.AGENT_SILENT, "nothing")
    pipeline.publish(Cycle("agent", "vsat", NOW, 0.0, (spooled, agent_silent, icmp(vsat, NOW, None))))
    assert [r.error for r in recorder.cycles[-1].results] == [ProbeErrorReason.MAINTENANCE,
                                                              ProbeErrorReason.AGENT_SILENT, None]
    untouched = Cycle("icmp", "g", NOW, 1.0, (silent("b", NOW),))
    pipeline.publish(untouched)
    assert recorder.cycles[-1] is untouched


def test_an_upstream_nodes_silent_run_in_its_window_is_maintenance() -> None:
    """A node's own run (kept in the history apart from the pipeline) is judged by its window and its parents':
    a window on ``isp`` covers ``agg``'s silent run, now and for a run measured earlier inside the window."""
    book = book_of(located_target("s"), nodes=NODES)
    book.opened(window("isp", NOW - HOUR, NOW + HOUR, kind="upstream"))
    run = Cycle("icmp", "monitor.upstreams", NOW, 0.0, (icmp(NODES[1], NOW, None), icmp(NODES[0], NOW, 0.01),
                                                        icmp(NODES[1], NOW - 1800, None)))
    assert [r.error for r in book.classify(run).results] == [ProbeErrorReason.MAINTENANCE, None,
                                                             ProbeErrorReason.MAINTENANCE]


def test_a_failing_stage_publishes_the_cycle_as_it_was(caplog: pytest.LogCaptureFixture) -> None:
    """A bug in a stage loses no cycle."""
    recorder = Recorder()

    def broken(cycle: Cycle) -> Cycle:
        raise RuntimeError("bug")

    cycle = Cycle("icmp", "g", NOW, 1.0, (silent("a", NOW),))
    ResultPipeline([recorder], stages=(broken,)).publish(cycle)
    assert recorder.cycles == [cycle] and "stage failed" in caplog.text


def test_no_throughput_test_starts_and_no_grant_is_given_in_a_window() -> None:
    """A site due in its window is left for after it; an agent asking is refused with ``maintenance``."""
    a, vsat = throughput_target("a", every_seconds=600.0), agent_target("vsat", method="http", every_seconds=600.0)
    book = book_of(a, vsat)
    plan = ThroughputPlan(2, paused=book.window)
    plan.set_targets([a, vsat], NOW - 1000)
    for state in plan.sites.values():
        state.next_due = NOW - 1
    book.opened(window("a", NOW - 60, NOW + HOUR))
    book.opened(window("vsat", NOW - 60, NOW + HOUR, id_=2))
    assert plan.due(NOW, 2) == []
    grant = plan.grant("vsat", NOW)
    assert (grant.target, grant.reason) == (None, "maintenance") and 300 <= grant.retry_after_seconds < 600
    assert [s.target.name for s in plan.due(NOW + HOUR, 2)] == ["a"]
    assert plan.grant("vsat", NOW + HOUR).reason == "granted"


def test_every_sink_shows_a_run_time_window_from_the_shared_book(caplog: pytest.LogCaptureFixture) -> None:
    """/metrics (``connmon_maintenance``, ``connmon_site_state``, ``connmon_maintenance_windows``), the API's site
    JSON and the event log follow a window opened through the book, and its early close, at the next cycle."""
    caplog.set_level(logging.INFO, logger="monitor.events")
    clock = Clock(NOW)
    a, b = located_target("a"), located_target("b")
    book = book_of(a, b, clock=clock)
    metrics = MetricsSink(clock=clock, maintenance=book, scrape=[MaintenanceExposition(book, clock)])
    api, events = SiteStateSink(clock, maintenance=book), EventLogSink(clock, maintenance=book)
    for sink in (metrics, api, events):
        sink.set_targets([a, b])

    def feed(at: float, *results: IcmpResult) -> dict[str, float]:
        clock.now = at
        for sink in (metrics, api, events):
            sink.consume(Cycle("icmp", "g", at, 0.5, results))
        parsed = samples(b"".join(metrics.exposition()).decode("utf-8"))
        return {"a": value(parsed, "connmon_maintenance", endpoint="a"),
                "state": value(parsed, "connmon_site_state", endpoint="a", state="maintenance"),
                "windows": value(parsed, "connmon_maintenance_windows", kind="site"),
                "upstream": value(parsed, "connmon_maintenance_windows", kind="upstream")}

    assert feed(NOW, icmp(a, NOW, 0.01), icmp(b, NOW, 0.01)) == {"a": 0, "state": 0, "windows": 0, "upstream": 0}
    book.opened(window("a", NOW + 5, NOW + HOUR))
    assert feed(NOW + 10, icmp(b, NOW + 10, 0.01)) == {"a": 1, "state": 1, "windows": 1, "upstream": 0}
    assert api.site("a")["state"] == "maintenance"  # type: ignore[index]
    assert api.site("a")["cause"] == {"maintenance": "#1 until 2026-12-06 13:00 UTC: fibre splicing"}  # type: ignore
    assert any("state maintenance: " in r.getMessage() for r in caplog.records if getattr(r, "endpoint", "") == "a")
    assert any("maintenance window opened on site a" in r.getMessage() for r in caplog.records)
    book.closed(window("a", NOW + 5, NOW + HOUR, closed_at=NOW + 20))
    assert feed(NOW + 30, icmp(b, NOW + 30, 0.01))["a"] == 0
    assert api.site("a")["state"] == "up"  # type: ignore[index]
    assert any("closed early" in r.getMessage() for r in caplog.records)


def test_a_watch_without_a_book_keeps_the_declared_windows_alone() -> None:
    """The sinks' watch built without a book (tools, tests) asks the targets' declared windows, as before."""
    declared = MaintenanceWindows("UTC", weekly=(parse_window("Sun 12:00-13:00"),))
    watch = MaintenanceWatch()
    watch.watch([located_target("a", maintenance=declared), located_target("b")])
    assert watch.watching and watch.update(NOW) == ["a"] and watch.window("a") == "Sun 12:00-13:00 UTC"


@pytest.mark.parametrize(("body", "parameter"), [
    ([], None), ({"target": "a", "ends_at": NOW + 60, "reason": "x", "why": 1}, "why"),
    ({"ends_at": NOW + 60, "reason": "x"}, "target"), ({"target": "a", "reason": "x"}, "ends_at"),
    ({"target": "a", "ends_at": NOW + 60}, "reason"),
    ({"target": "", "ends_at": NOW + 60, "reason": "x"}, "target"),
    ({"target": "a" * 201, "ends_at": NOW + 60, "reason": "x"}, "target"),
    ({"target": "a\u202eb", "ends_at": NOW + 60, "reason": "x"}, "target"),
    ({"target": "a\ud800", "ends_at": NOW + 60, "reason": "x"}, "target"),
    ({"target": 5, "ends_at": NOW + 60, "reason": "x"}, "target"),
    ({"target": "a", "kind": "router", "ends_at": NOW + 60, "reason": "x"}, "kind"),
    ({"target": "a", "ends_at": NOW + 60, "reason": ""}, "reason"),
    ({"target": "a", "ends_at": NOW + 60, "reason": "x" * (MAX_REASON_LENGTH + 1)}, "reason"),
    ({"target": "a", "ends_at": NOW + 60, "reason": "line\nbreak"}, "reason"),
    ({"target": "a", "ends_at": NOW + 60, "reason": "\udfff"}, "reason"),
    ({"target": "a", "ends_at": True, "reason": "x"}, "ends_at"),
    ({"target": "a", "ends_at": "tomorrow", "reason": "x"}, "ends_at"),
    ({"target": "a", "ends_at": "2026-12-06T14:00:00", "reason": "x"}, "ends_at"),  # no zone: ambiguous
    ({"target": "a", "ends_at": "2027-02-30T14:00:00Z", "reason": "x"}, "ends_at"),
    ({"target": "a", "ends_at": 1e300, "reason": "x"}, "ends_at"),
    ({"target": "a", "ends_at": 10 ** 400, "reason": "x"}, "ends_at"),  # too large for a float: no OverflowError
    ({"target": "a", "starts_at": -(10 ** 400), "ends_at": NOW + 60, "reason": "x"}, "starts_at"),
    ({"target": "a", "starts_at": NOW + 120, "ends_at": NOW + 60, "reason": "x"}, "ends_at"),
    ({"target": "a", "starts_at": NOW - 120, "ends_at": NOW - 60, "reason": "x"}, "ends_at"),
    ({"target": "a", "ends_at": NOW + 400 * 86400, "reason": "x"}, "ends_at"),
    ({"target": "a", "starts_at": -1, "ends_at": NOW + 60, "reason": "x"}, "starts_at"),
])
def test_a_wrong_field_is_refused_by_name(body: object, parameter: str | None) -> None:
    """Each wrong field (a missing one, an odd character, a time that is no time, an end before the start or in the
    past, a window over 366 days) is a 400 naming it; the body as a whole is named None."""
    with pytest.raises(FieldError) as err:
        parse_request(body, NOW)
    assert err.value.parameter == parameter, str(err.value)


def test_a_window_is_taken_in_unix_seconds_or_rfc_3339_with_a_zone() -> None:
    """Both forms name the same instant; ``kind`` defaults to site and ``starts_at`` to now; a reason may be in
    any script, with bidirectional marks."""
    assert parse_time("2026-12-06T19:00:00+05:00", "ends_at") == parse_time("2026-12-06T14:00:00Z", "ends_at") \
        == NOW + 2 * HOUR
    assert parse_time("2026-12-06T14:00:00.250Z", "ends_at") == NOW + 2 * HOUR + 0.25
    reason = "ремонт \u200fشبكة\u200f"
    assert parse_request({"target": "Школа №1", "ends_at": "2026-12-06T14:00:00Z", "reason": reason}, NOW) == (
        "Школа №1", "site", NOW, NOW + 2 * HOUR, reason)
    assert parse_request({"target": "agg", "kind": "upstream", "starts_at": NOW + 60, "ends_at": NOW + 120,
                          "reason": "x"}, NOW)[1:4] == ("upstream", NOW + 60, NOW + 120)


def test_a_windows_text_keeps_one_printable_line() -> None:
    """A long reason is cut in the window's one-line text; a control character cannot forge a log line."""
    text = window_text(dataclasses.replace(window("a", NOW, NOW + HOUR), reason="x" * 300))
    assert len(text) < 140 and text.endswith("…")
    assert "\n" not in window_text(dataclasses.replace(window("a", NOW, NOW + HOUR), reason="a\tb"))
