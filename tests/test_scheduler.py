"""The scheduler with real APScheduler: spread starts, one cycle at a time, skipped cycles counted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import probes
from monitor.exposition.sink import MetricsSink
from monitor.pipeline import ResultPipeline
from monitor.probes import ProbeContext
from monitor.results import IcmpResult
from monitor.scheduler import CycleScheduler, plan_jobs, start_offsets
from monitor.targets import Target
from tests.factories import scheduled_target


def test_start_offsets_spread_groups_over_their_interval() -> None:
    """n jobs start at 0, 1/n, 2/n … of their own interval, never all at once."""
    assert start_offsets([60.0, 60.0, 60.0, 60.0]) == [0.0, 15.0, 30.0, 45.0]
    assert start_offsets([10.0, 300.0]) == [0.0, 150.0]


def test_plan_jobs_batches_by_group_and_interval() -> None:
    """Endpoints of one group share a job unless an endpoint overrides the interval."""
    ts = [scheduled_target("a", "g1", 60), scheduled_target("b", "g1", 60), scheduled_target("c", "g1", 30),
          scheduled_target("d", "g2", 60)]
    plan = plan_jobs(ts)
    assert {k: [t.name for t in v] for k, v in plan.items()} == {
        ("g1", 60): ["a", "b"], ("g1", 30): ["c"], ("g2", 60): ["d"]}


def test_a_cycle_still_running_is_never_started_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """With cycles slower than the interval, runs never overlap and the skipped ones are counted."""
    starts: list[float] = []
    ends: list[float] = []

    async def slow_probe(targets: Sequence[Target], ctx: ProbeContext) -> list[IcmpResult]:
        loop = asyncio.get_running_loop()
        starts.append(loop.time())
        await asyncio.sleep(2.2)
        ends.append(loop.time())
        return [IcmpResult(t, 0.0, t.address, 1, (0.01,)) for t in targets]

    monkeypatch.setitem(probes.PROBES, "icmp", slow_probe)
    sink = MetricsSink()
    ts = [scheduled_target("a", "g", 1.0)]
    sink.set_targets(ts)

    async def main() -> None:
        scheduler = CycleScheduler(ProbeContext(None, lambda: 0.0), ResultPipeline([sink]))  # type: ignore[arg-type]
        scheduler.start(ts)
        await asyncio.sleep(5.0)
        scheduler.shutdown()
        for task in list(scheduler.running_cycles):
            task.cancel()
        await asyncio.sleep(0)

    asyncio.run(main())
    assert len(starts) >= 2 and ends
    for end, next_start in zip(ends, starts[1:], strict=False):
        assert next_start >= end  # the next cycle began only after the previous one ended
    text = b"".join(sink.exposition()).decode()
    skipped = [s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "connmon_cycles_skipped_total" and s.labels == {"probe": "icmp", "group": "g"}]
    assert skipped and skipped[0] >= 1


def test_the_real_scheduler_spreads_first_runs_and_limits_instances() -> None:
    """Jobs handed to APScheduler start spread over the interval and allow one instance each."""
    ts = [scheduled_target(f"s{i}", f"g{i}", 60.0) for i in range(4)]

    async def main() -> list[tuple[float, int]]:
        scheduler = CycleScheduler(ProbeContext(None, lambda: 0.0), ResultPipeline([]))  # type: ignore[arg-type]
        scheduler.set_targets(ts)
        jobs = scheduler._scheduler.get_jobs()
        first = min(job.next_run_time for job in jobs)
        return sorted(((job.next_run_time - first).total_seconds(), job.max_instances) for job in jobs)

    assert asyncio.run(main()) == [(0.0, 1), (15.0, 1), (30.0, 1), (45.0, 1)]


def test_reload_keeps_the_schedule_of_jobs_that_stay() -> None:
    """Re-setting targets keeps surviving jobs' next run, removes gone ones, adds new ones."""
    before = [scheduled_target("a", "g1", 60.0), scheduled_target("b", "g2", 60.0)]
    after = [scheduled_target("a", "g1", 60.0), scheduled_target("c", "g3", 60.0),
             scheduled_target("d", "g3", 60.0000001)]

    async def main() -> tuple[dict[str, object], dict[str, object], list[str]]:
        scheduler = CycleScheduler(ProbeContext(None, lambda: 0.0), ResultPipeline([]))  # type: ignore[arg-type]
        scheduler.set_targets(before)
        first = {job.id: job.next_run_time for job in scheduler._scheduler.get_jobs()}
        await asyncio.sleep(0.05)
        scheduler.set_targets(after)
        second = {job.id: job.next_run_time for job in scheduler._scheduler.get_jobs()}
        batch = next(job.args[2] for job in scheduler._scheduler.get_jobs() if job.id == "icmp:g1:60.0s")
        return first, second, [t.name for t in batch]

    first, second, g1_batch = asyncio.run(main())
    assert second["icmp:g1:60.0s"] == first["icmp:g1:60.0s"]  # not restarted by the reload
    assert "icmp:g2:60.0s" not in second
    assert {"icmp:g3:60.0s", "icmp:g3:60.0000001s"} <= set(second)  # near-equal intervals do not clash
    assert g1_batch == ["a"]
