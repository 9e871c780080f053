"""The throughput plan: tests spread over `every`, inside windows, with busy backoff and monthly budgets."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

from monitor.config import ThroughputSettings
from monitor.config.windows import is_allowed, parse_window
from monitor.errors import ProbeErrorReason
from monitor.results import DirectionResult, ThroughputResult
from monitor.targets import Target
from monitor.throughput_plan import ThroughputPlan, allowed_start, phase
from tests.factories import throughput_target

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC).timestamp()


def test_first_tests_are_spread_over_the_interval() -> None:
    """500 sites' first tests fall across the whole 6 h, no more than a few in any 10-minute slice."""
    plan = ThroughputPlan()
    plan.set_targets([throughput_target(f"school-{i:03d}", district="d") for i in range(500)], NOW)
    offsets = sorted(s.next_due - NOW for s in plan.sites.values())
    assert offsets[0] >= 0 and offsets[-1] < 6 * 3600
    slices = [0] * 36
    for offset in offsets:
        slices[int(offset // 600)] += 1
    assert max(slices) < 30  # 500/36 ≈ 14 on average; all at once would be 500
    assert phase("school-001") == phase("school-001")  # stable across calls (and processes: blake2b)


def test_due_respects_the_limit_and_marks_running() -> None:
    """due() hands out at most `limit` sites and never one that is already running."""
    plan = ThroughputPlan()
    plan.set_targets([throughput_target(f"s{i}", district="d", every_seconds=60.0) for i in range(5)], NOW)
    later = NOW + 120
    first = plan.due(later, 2)
    assert len(first) == 2 and plan.running == 2
    second = plan.due(later, 5 - plan.running)
    assert len(second) == 3 and not {s.target.name for s in first} & {s.target.name for s in second}
    assert plan.due(later, 5) == []


def test_window_is_honoured_and_deferred_tests_spread_inside_it() -> None:
    """With '22:00-06:00' Almaty time, every planned start is inside the window, with room to finish."""
    settings = ThroughputSettings(method="iperf3", windows=(parse_window("22:00-06:00"),), timezone="Asia/Almaty",
                                  every_seconds=24 * 3600.0)
    starts = [allowed_start(NOW, f"site-{i}", settings) for i in range(200)]
    for start in starts:
        assert is_allowed(start, settings.windows, settings.timezone)
        assert is_allowed(start + 2 * settings.test_bound_seconds - 1, settings.windows, settings.timezone)
    local_hours = {dt.datetime.fromtimestamp(s, ZoneInfo("Asia/Almaty")).hour for s in starts}
    assert len(local_hours) >= 5  # spread over the night, not piled at 22:00


def _result(t: Target, started: float, error: ProbeErrorReason | None = None, moved: int = 0) -> ThroughputResult:
    d = DirectionResult("download", started, started + 10, None if error else 5e6, moved, 10.0, None, error)
    return ThroughputResult(t, "iperf3", started, started + 10, "192.0.2.1", (d,), error)


def test_busy_server_is_retried_with_backoff_then_waits_for_the_next_slot() -> None:
    """Busy: retries after 30 s, 60 s, 120 s, …; after five, the next regular test is `every` later."""
    t = throughput_target("s", district="d", every_seconds=6 * 3600.0)
    plan = ThroughputPlan()
    plan.set_targets([t], NOW)
    now = NOW
    delays = []
    for _ in range(6):
        state = plan.sites["s"]
        now = state.next_due
        assert plan.due(now, 1) == [state]
        plan.finished("s", _result(t, now, ProbeErrorReason.BUSY), now)
        delays.append(plan.sites["s"].next_due - now)
    assert delays == [30, 60, 120, 240, 480, 6 * 3600 - 0]


def test_budget_caps_then_skips() -> None:
    """A site with 100 MB a month: tests are capped to what is left, then skipped (None) until next month."""
    t = throughput_target("sat", district="d", method="http", url="http://192.0.2.1/blob",
                          monthly_budget_bytes=100_000_000, directions=("upload",))
    plan = ThroughputPlan()
    plan.set_targets([t], NOW)
    state = plan.sites["sat"]
    capped = plan.test_target(state, NOW)
    assert capped is not None and capped.throughput.max_bytes == 100_000_000
    plan.finished("sat", _result(t, NOW, moved=70_000_000), NOW)
    capped = plan.test_target(plan.sites["sat"], NOW + 1)
    assert capped is not None and capped.throughput.max_bytes == 30_000_000
    plan.finished("sat", _result(t, NOW + 1, moved=30_000_000), NOW + 1)
    assert plan.remaining_after("sat", NOW + 2) == 0
    assert plan.test_target(plan.sites["sat"], NOW + 2) is None
    next_month = dt.datetime(2026, 12, 1, 0, 1, tzinfo=dt.UTC).timestamp()
    assert plan.remaining_after("sat", next_month) == 100_000_000


def test_reload_keeps_due_times_and_spending() -> None:
    """A reload that leaves a site's settings alone keeps its due time and its month's spending."""
    t = throughput_target("s", district="d", monthly_budget_bytes=10**9)
    plan = ThroughputPlan()
    plan.set_targets([t], NOW)
    plan.finished("s", _result(t, NOW, moved=5_000), NOW)
    due = plan.sites["s"].next_due
    plan.set_targets([dataclasses.replace(t, district="other"), throughput_target("new", district="d")], NOW + 5)
    assert plan.sites["s"].next_due == due and plan.sites["s"].used_bytes == 5_000
    plan.set_targets([throughput_target("new", district="d")], NOW + 6)
    assert set(plan.sites) == {"new"}


def test_a_restart_continues_from_the_history() -> None:
    """After a day down, the 500 overdue sites are spread over `every`, not fired at once; a site tested
    an hour before the restart waits for its regular slot; the month's bytes count against the budget."""
    plan = ThroughputPlan()
    sites = [throughput_target(f"school-{i:03d}", district="d", monthly_budget_bytes=100_000_000) for i in range(500)]
    plan.set_targets(sites, NOW)
    last = {t.name: NOW - 86400 for t in sites}
    last["school-007"] = NOW - 3600
    month_start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    plan.restore(last, {"school-007": (month_start, 99_000_000)}, NOW, {"school-007": 25_000_000})
    assert plan.sites["school-007"].next_due == NOW - 3600 + 6 * 3600
    overdue = sorted(s.next_due - NOW for n, s in plan.sites.items() if n != "school-007")
    assert overdue[0] >= 0 and overdue[-1] < 6 * 3600
    assert len(plan.due(NOW + 60, 1000)) < 20  # in the first minute, a handful, not 499
    assert plan.sites["school-007"].remaining(NOW) == 1_000_000
    capped = plan.test_target(plan.sites["school-007"], NOW)  # a whole test (25 MB) would overspend the 1 MB left
    assert capped is not None and capped.throughput.max_bytes is not None and capped.throughput.max_bytes <= 1_000_000
    assert plan.sites["school-008"].remaining(NOW) == 100_000_000


def test_a_late_restore_adds_to_what_this_process_counted() -> None:
    """The history answers after this process tested a site (PostgreSQL was away): the site keeps the due
    time its own test gave, and the month's bytes read back add to its own; an untested site is restored."""
    plan = ThroughputPlan()
    tested, untested = (throughput_target(n, district="d", monthly_budget_bytes=100_000_000)
                        for n in ("tested", "untested"))
    plan.set_targets([tested, untested], NOW)
    down = DirectionResult("download", NOW, NOW + 10, 5e6, 2_000_000, 10.0)
    plan.finished("tested", ThroughputResult(tested, "iperf3", NOW, NOW + 11, "192.0.2.1", (down,)), NOW + 11)
    due = plan.sites["tested"].next_due
    month_start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    plan.restore({"tested": NOW - 3600, "untested": NOW - 3600},
                 {"tested": (month_start, 50_000_000), "untested": (month_start, 10_000_000)}, NOW + 20)
    assert plan.sites["tested"].next_due == due
    assert plan.sites["tested"].remaining(NOW + 20) == 100_000_000 - 52_000_000
    assert plan.sites["untested"].next_due == NOW - 3600 + 6 * 3600
    assert plan.sites["untested"].remaining(NOW + 20) == 90_000_000


def test_a_test_booked_elsewhere_moves_the_next_due_a_period_on_inside_the_window() -> None:
    """issue 19: a test another instance booked (begun at ``started``) makes the site due a period after it, at the
    first start the window allows; a test older than a period changes nothing; an unknown site, nothing."""
    window = (parse_window("22:00-06:00"),)
    t = throughput_target("agent-1", district="d", every_seconds=6 * 3600.0, windows=window, timezone="Asia/Almaty")
    plan = ThroughputPlan()
    plan.set_targets([t], NOW)
    plan.sites["agent-1"].next_due = NOW  # due here: the grant path asks only then
    started = NOW - 3600.0
    due = plan.region_tested("agent-1", started, NOW)
    assert due is not None and due == plan.sites["agent-1"].next_due
    assert due == allowed_start(started + 6 * 3600.0, "agent-1", t.throughput) and due >= started + 6 * 3600.0
    assert is_allowed(due, window, "Asia/Almaty")
    assert plan.grant("agent-1", NOW).reason == "not_due"
    assert plan.region_tested("agent-1", NOW - 7 * 24 * 3600.0, NOW) is None  # older than a period
    assert plan.sites["agent-1"].next_due == due  # and it never moves the due time back
    assert plan.region_tested("nobody", started, NOW) is None
