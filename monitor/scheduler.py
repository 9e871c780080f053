"""The scheduler: runs each group's probe cycle on its interval with APScheduler 3.x.

ICMP: one job per (probe, group, interval); ``max_instances=1`` so a cycle still running is never
started twice: APScheduler then emits ``EVENT_JOB_MAX_INSTANCES``, which is counted as a skipped
cycle. First runs are spread over the interval so that not every group fires at once.

Throughput: one dispatcher job ticks every second and starts the tests that
:class:`~monitor.throughput_plan.ThroughputPlan` (handed in: the agents' grants share it) says are
due, never more than its ``max_concurrent`` at once; each finished test is booked in the plan
and published as its own cycle. With replicas (issue 19), a handed-in
:class:`~monitor.test_leader.TestLeader` says whether a due test is this instance's turn.

The centre's own path (issue 21): with a :class:`~monitor.centre_path.CentrePath` handed in, its
uplink checks run in a job of their own (at their targets' interval: the fastest of the sites'),
and their results go to the centre path, never to the pipeline. Every ICMP cycle of the sites goes
through :meth:`~monitor.centre_path.CentrePath.classify` before it is published, so no sink sees a
silent site as ``down`` while the centre itself is cut off. A site cycle that ends while an uplink
run is under way waits for it (at most that run's bound): the two often run side by side, and the
verdict for the cycle is the run that saw the same minute of the network. A cycle with silent sites
that ends when no uplink run has begun since it began runs the checks itself first, for the same
reason: a cut a moment ago must not be charged to the sites for a cycle.

Upstream nodes (issue 21): with an :class:`~monitor.upstreams.UpstreamTree` handed in, its nodes run
in a job of their own like the uplink checks, and a site cycle with silent sites whose chain holds a
node not run since the cycle began pings those nodes first
(:meth:`~monitor.upstreams.UpstreamTree.stale_nodes`), so that a router cut a moment ago makes its
sites ``upstream_down`` from their first silent cycle, not ``down`` until the node job comes round.
The tree classifies before the centre path (``monitor_cut_off`` wins over ``upstream_down``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.centre_path import CentrePath
from monitor.errors import ProbeErrorReason
from monitor.pipeline import ResultPipeline
from monitor.probes import PROBES, ProbeContext
from monitor.results import Cycle, IcmpResult, ThroughputResult
from monitor.targets import Target
from monitor.test_leader import TestLeader, defer
from monitor.throughput_plan import SiteState, ThroughputPlan
from monitor.upstreams import UpstreamTree

log = logging.getLogger(__name__)

UPLINK_JOB_ID = "uplink"  # the centre's uplink checks (issue 21); site jobs are "icmp:GROUP:INTERVAL"
UPSTREAMS_JOB_ID = "upstreams"  # the upstream nodes (issue 21)
UPLINK_WAIT_SLACK_SECONDS = 3.0  # a site cycle waits for a running uplink run at most its bound plus this


def plan_jobs(targets: Sequence[Target]) -> dict[tuple[str, float], list[Target]]:
    """Group targets into ICMP batches: one per (group, interval), in config order."""
    batches: dict[tuple[str, float], list[Target]] = defaultdict(list)
    for target in targets:
        if not target.probed_by_centre:  # an agent at the site measures it (issue 10)
            continue
        batches[(target.group, target.icmp.interval_seconds)].append(target)
    return dict(batches)


def start_offsets(intervals: Sequence[float]) -> list[float]:
    """Delay before each job's first run: job i of n starts at i/n of its own interval."""
    n = len(intervals)
    return [interval * i / n for i, interval in enumerate(intervals)]


class CycleScheduler:
    """Owns the APScheduler instance and turns each job run into a published :class:`Cycle`."""

    def __init__(self, ctx: ProbeContext, pipeline: ResultPipeline, plan: ThroughputPlan | None = None,
                 clock: Callable[[], float] = time.time, centre_path: CentrePath | None = None,
                 upstreams: UpstreamTree | None = None) -> None:
        self.ctx = ctx
        self.upstreams = upstreams
        self._nodes_lock = asyncio.Lock()  # one on-demand node run at a time: the next cycle then finds them fresh
        self.pipeline = pipeline
        self.clock = clock
        self.plan = plan if plan is not None else ThroughputPlan()
        self.centre_path = centre_path
        self._side_intervals: dict[str, float] = {}  # the uplink's and the nodes' jobs: their interval now
        self._uplink_idle = asyncio.Event()  # clear while an uplink run is under way
        self._uplink_idle.set()
        self._scheduler = AsyncIOScheduler(timezone=dt.UTC)
        self._scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self._job_names: dict[str, tuple[str, str]] = {}
        self.running_cycles: set[asyncio.Task[None]] = set()
        # where the nodes' own runs are kept (the history only: they are not sites); None: nowhere
        self.node_history: Callable[[Cycle], None] | None = None
        # True while the history's restore is awaited (a store that may answer late): a test run before
        # it would not know the site's last test time or the month's bytes. ICMP is never held.
        self.throughput_held = False
        # whose turn a due test is among the site's replicas (issue 19); None: always this instance's
        self.test_leader: TestLeader | None = None

    def start(self, targets: Sequence[Target]) -> None:
        self._scheduler.start()
        self._scheduler.add_job(self.dispatch_throughput, IntervalTrigger(seconds=1, timezone=dt.UTC),
                                id="throughput:dispatch", max_instances=1, coalesce=True, misfire_grace_time=5)
        self.set_targets(targets)

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Make the jobs match ``targets``, as a diff: at a reload, a job that stays keeps its schedule.

        Jobs that stay get their new batch (changed labels or settings apply from their next run);
        jobs that are gone are removed (a cycle of theirs already running finishes); new jobs start
        spread over their interval from now.
        """
        self.plan.set_targets(targets, self.clock())
        batches = {self._job_id(group, interval): (group, interval, batch)
                   for (group, interval), batch in plan_jobs(targets).items()}
        for job_id in set(self._job_names) - set(batches):
            self._scheduler.remove_job(job_id)
            del self._job_names[job_id]
        new = [job_id for job_id in batches if job_id not in self._job_names]
        offsets = dict(zip(new, start_offsets([batches[j][1] for j in new]), strict=True))
        now = dt.datetime.now(dt.UTC)
        for job_id, (group, interval, batch) in batches.items():
            if job_id in self._job_names:
                self._scheduler.modify_job(job_id, args=("icmp", group, batch))
                continue
            first = now + dt.timedelta(seconds=offsets[job_id])
            self._scheduler.add_job(
                self.run_cycle, IntervalTrigger(seconds=interval, start_date=first, timezone=dt.UTC),
                args=("icmp", group, batch), id=job_id, max_instances=1, coalesce=True,
                misfire_grace_time=max(1, int(interval)), next_run_time=first)
            self._job_names[job_id] = ("icmp", group)
        log.info("scheduled %d ICMP jobs for %d endpoints (%d new)", len(batches), len(targets), len(new))
        self._set_uplink_job()
        self._set_upstreams_job()

    def _set_upstreams_job(self) -> None:
        """One job for the upstream nodes, as configured now (none without nodes); as the uplink job at a reload."""
        self._set_side_job(UPSTREAMS_JOB_ID, self.upstreams.nodes if self.upstreams is not None else (),
                           self._run_nodes_job, "the %d upstream node(s)")

    def _set_uplink_job(self) -> None:
        """One job for the centre path's uplink checks, as configured now; none without checks.

        At a reload, a job whose interval stays keeps its schedule and probes the new checks from its
        next run; otherwise it starts again, its first run at once (the verdict is wanted early).
        """
        self._set_side_job(UPLINK_JOB_ID, self.centre_path.checks if self.centre_path is not None else (),
                           self.run_uplink, "the centre's %d uplink check(s)")

    def _set_side_job(self, job_id: str, targets: Sequence[Target],
                      run: Callable[[Sequence[Target]], Coroutine[Any, Any, None]], what: str) -> None:
        """A job that pings ``targets`` at their interval for a verdict, never for a sink (the uplink, the nodes)."""
        interval = targets[0].icmp.interval_seconds if targets else None
        current = self._side_intervals.get(job_id)
        if current is not None and interval != current:
            self._scheduler.remove_job(job_id)
            del self._side_intervals[job_id]
            current = None
        if interval is None:
            return
        if current is not None:
            self._scheduler.modify_job(job_id, args=(targets,))
            return
        now = dt.datetime.now(dt.UTC)
        self._scheduler.add_job(
            run, IntervalTrigger(seconds=interval, start_date=now, timezone=dt.UTC), args=(targets,),
            id=job_id, max_instances=1, coalesce=True, misfire_grace_time=max(1, int(interval)), next_run_time=now)
        self._side_intervals[job_id] = interval
        log.info("scheduled %s every %gs", what % len(targets), interval)

    @staticmethod
    def _job_id(group: str, interval: float) -> str:
        return f"icmp:{group}:{interval!r}s"  # repr: two intervals that print alike must not clash

    def pause(self) -> None:
        """Start no more cycles; running ones go on (``shutdown`` would cancel them: APScheduler's executor does)."""
        if self._scheduler.running:
            self._scheduler.pause()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def run_cycle(self, probe: str, group: str, targets: Sequence[Target]) -> None:
        """Run one probe over one batch and publish the cycle; never raises."""
        task = asyncio.current_task()
        if task is not None:
            self.running_cycles.add(task)
        started_at = self.clock()
        started = time.monotonic()
        try:
            results = await PROBES[probe](targets, self.ctx)
            cycle = Cycle(probe, group, started_at, time.monotonic() - started, tuple(results))
            centre_path = self.centre_path
            if centre_path is not None and probe == "icmp":
                await self._fresh_uplink(centre_path, cycle)
                _judged(centre_path, cycle)  # the resolver rule reads the errors as measured
            if self.upstreams is not None and probe == "icmp":
                cycle = await self._by_upstreams(self.upstreams, cycle)
            if centre_path is not None and probe == "icmp":
                cycle = _classified(centre_path, cycle)  # last: monitor_cut_off wins over upstream_down
        except asyncio.CancelledError:  # shutdown: a half-done cycle is dropped, not published
            log.info("cycle cancelled by shutdown", extra={"probe": probe, "group": group})
            return
        except Exception:
            log.exception("probe cycle failed", extra={"probe": probe, "group": group})
            return
        finally:
            if task is not None:
                self.running_cycles.discard(task)
        self.pipeline.publish(cycle)

    async def _fresh_uplink(self, centre_path: CentrePath, cycle: Cycle) -> None:
        """Before a cycle with silent results is judged: the uplink verdict of the same minute of the network.

        An uplink run under way is waited for; when no run has begun since the cycle began (the one waited
        for may have begun before it), the checks are run now. Why both: a run whose echoes left before the
        cut answers, and a cycle whose echoes left after it is silent; judged by that run, the cycle's
        silence was charged to its sites (or node) at the first edge of every cut (issue 21's race).
        """
        if all(isinstance(r, IcmpResult) and r.up for r in cycle.results):
            return
        for _ in range(2):  # a run another cycle began after the wait began since this cycle: waited for once more
            if not self._uplink_idle.is_set():
                await self._wait_for_uplink(centre_path)
            if not _stale(centre_path, cycle.started_at):
                return
            if self._uplink_idle.is_set():
                await self._run_uplink(centre_path.checks)
                return

    async def _wait_for_uplink(self, centre_path: CentrePath) -> None:
        """Wait until the uplink run under way has been recorded (bounded by its own cycle bound)."""
        bound = max((c.icmp.cycle_bound_seconds for c in centre_path.checks), default=0.0)
        try:
            await asyncio.wait_for(self._uplink_idle.wait(), bound + UPLINK_WAIT_SLACK_SECONDS)
        except TimeoutError:
            log.warning("the centre's uplink checks did not finish in time; classifying the cycle by their last run")

    async def _by_upstreams(self, tree: UpstreamTree, cycle: Cycle) -> Cycle:
        """The cycle classified by the upstream tree, after pinging the nodes it needs fresh; as measured on failure."""
        try:
            if tree.stale_nodes(cycle):
                async with self._nodes_lock:
                    stale = tree.stale_nodes(cycle)  # another cycle may have run them while this one waited
                    if stale:
                        await self.run_nodes(stale)
            return tree.classify(cycle)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("classifying a cycle by the upstream nodes failed; publishing it as measured",
                          extra={"probe": cycle.probe, "group": cycle.group})
            return cycle

    async def run_nodes(self, nodes: Sequence[Target]) -> None:
        """Ping upstream nodes once and give the results to the tree; never raises (but for shutdown)."""
        tree = self.upstreams
        if tree is None or not nodes:
            return
        try:
            results = await PROBES["icmp"](nodes, self.ctx)
            cycle = Cycle("icmp", nodes[0].group, results[0].started_at if results else self.clock(), 0.0,
                          tuple(results))
            if self.centre_path is not None:  # a node silent because the centre is cut off is not down
                await self._fresh_uplink(self.centre_path, cycle)
            tree.record([r for r in results if isinstance(r, IcmpResult)])
            if self.node_history is not None:  # kept as the sites' are: silent while cut off is not the node's fault
                if self.centre_path is not None:
                    _judged(self.centre_path, cycle)
                    cycle = _classified(self.centre_path, cycle)
                self.node_history(cycle)
        except asyncio.CancelledError:
            raise
        except Exception:  # the node states stay as the last run left them
            log.exception("the upstream nodes failed to run", extra={"probe": "icmp", "group": nodes[0].group})

    async def _run_nodes_job(self, nodes: Sequence[Target]) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # shutdown
            await self.run_nodes(nodes)

    async def run_uplink(self, checks: Sequence[Target]) -> None:
        """Ping the centre's uplink checks once and give the results to the centre path; never raises."""
        with contextlib.suppress(asyncio.CancelledError):  # shutdown
            await self._run_uplink(checks)

    async def _run_uplink(self, checks: Sequence[Target]) -> None:
        """:meth:`run_uplink`, but a shutdown's cancellation goes on to the caller (a cycle must not publish)."""
        centre_path = self.centre_path
        if centre_path is None or not checks:
            return
        self._uplink_idle.clear()
        try:
            results = await PROBES["icmp"](checks, self.ctx)
            centre_path.record([r for r in results if isinstance(r, IcmpResult)])
        except asyncio.CancelledError:
            raise
        except Exception:  # the verdict stays as the last run left it
            log.exception("the uplink checks failed to run", extra={"probe": "icmp", "group": checks[0].group})
        finally:
            self._uplink_idle.set()

    async def dispatch_throughput(self) -> None:
        """Start every throughput test that is due, up to the global limit; never raises."""
        if self.throughput_held:
            return
        now = self.clock()
        while True:  # a due site held here (another replica's turn, the budget, the region) frees its place
            due = self.plan.due(now, self.plan.max_concurrent - self.plan.running)
            if not due:
                return
            for state in due:  # each leaves "due": started, or due again later
                await self._start_test(state, now)

    async def _start_test(self, state: SiteState, now: float) -> None:
        if self.test_leader is not None and defer(state, await self.test_leader.turn(state.target.name, now), now):
            return  # another replica's turn (issue 19), or not before a period after its last test
        target = self.plan.test_target(state, now)
        if target is None:
            self._publish_test(state, ThroughputResult(
                state.target, state.target.throughput.method, now, now, None, (), ProbeErrorReason.BUDGET,
                "the monthly data budget is spent; tests resume next month"))
            return
        if not await self.plan.take_region(state, now):
            return  # max_concurrent is the region's (issue 19): every slot is out, asked again shortly
        task = asyncio.create_task(self._run_test(state, target))
        self.running_cycles.add(task)
        task.add_done_callback(self.running_cycles.discard)

    async def _run_test(self, state: SiteState, target: Target) -> None:
        started = self.clock()
        try:
            results = await PROBES[target.throughput.method]([target], self.ctx)
        except asyncio.CancelledError:  # shutdown: nothing to publish, but the site must not stay "running"
            self.plan.finished(target.name, ThroughputResult(target, target.throughput.method, started, started, None,
                                                             error=ProbeErrorReason.FAILED), self.clock())
            raise
        except Exception as err:  # a bug, not a site's failure: count it, and keep the site in the plan
            log.exception("throughput test failed", extra={"endpoint": target.name, "probe": "throughput"})
            results = [ThroughputResult(target, target.throughput.method, started, self.clock(), None,
                                        error=ProbeErrorReason.FAILED, error_detail=f"internal error: {err!r}")]
        result = results[0]
        assert isinstance(result, ThroughputResult)
        self._publish_test(state, dataclasses.replace(result, target=state.target))

    def _publish_test(self, state: SiteState, result: ThroughputResult) -> None:
        result = self.plan.book(result, self.clock())
        self.pipeline.publish(Cycle("throughput", state.target.group, result.started_at,
                                    result.ended_at - result.started_at, (result,)))

    def _on_max_instances(self, event: JobExecutionEvent) -> None:
        if event.job_id == UPLINK_JOB_ID:  # not a site group's cycle: no series of its own
            log.warning("the centre's uplink checks skipped a run: the previous one is still running")
            return
        if event.job_id == UPSTREAMS_JOB_ID:
            log.warning("the upstream nodes skipped a run: the previous one is still running")
            return
        probe, group = self._job_names.get(event.job_id, ("unknown", event.job_id))
        self.pipeline.cycle_skipped(probe, group)


def _stale(centre_path: CentrePath, since: float) -> bool:
    """Whether some uplink check has not been run since ``since`` (a silent cycle's start)."""
    last = centre_path.uplink
    return any(c.name not in last or last[c.name].started_at < since for c in centre_path.checks)


def _judged(centre_path: CentrePath, cycle: Cycle) -> None:
    """Let the centre path read the cycle as measured (its resolver rule); a bug is logged, not raised."""
    try:
        centre_path.judge(cycle)
    except Exception:
        log.exception("judging a cycle by the centre's own path failed", extra={"probe": cycle.probe,
                                                                               "group": cycle.group})


def _classified(centre_path: CentrePath, cycle: Cycle) -> Cycle:
    """The cycle as the centre path judges it; as measured if judging fails (a bug must not lose the cycle)."""
    try:
        return centre_path.rewrite(cycle)
    except Exception:
        log.exception("classifying a cycle by the centre's own path failed; publishing it as measured",
                      extra={"probe": cycle.probe, "group": cycle.group})
        return cycle
