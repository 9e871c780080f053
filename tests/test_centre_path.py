"""The centre's own path (issue 21): when the centre is cut off, and how a cycle's silent sites are classified.

Unit tests of :class:`monitor.centre_path.CentrePath` (its uplink and resolver rules, the rewrite, the
log lines), of its scrape-time series, of :func:`monitor.targets.uplink_targets`, and of the scheduler's
part: uplink results go to the centre path and never to a sink, site cycles are classified before any
sink sees them. The same in a real network is in ``tests/test_monitor_cut_off.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import probes
from monitor.agent.centre.registry import token_hash
from monitor.centre_path import RESOLVER_DETAIL, UPLINK_DETAIL, CentrePath, cut_off_cause
from monitor.centre_path_exposition import CentrePathExposition
from monitor.config import IcmpSettings, load_config
from monitor.errors import ProbeErrorReason
from monitor.exposition.families import ShardLabels
from monitor.exposition.sink import MetricsSink
from monitor.pipeline import ResultPipeline
from monitor.probes import ProbeContext
from monitor.results import Cycle, IcmpResult
from monitor.scheduler import UPLINK_JOB_ID, CycleScheduler
from monitor.targets import UPLINK_GROUP, Target, build_targets, uplink_targets
from tests.factories import (
    Clock,
    Recorder,
    agent_target,
    agent_token,
    icmp,
    iperf3_test,
    target,
    throughput_target,
    write_config,
)

DNS = ProbeErrorReason.DNS
CUT = ProbeErrorReason.MONITOR_CUT_OFF


def check(name: str) -> Target:
    return target(name, group=UPLINK_GROUP, kind="uplink")


def named(name: str, interval_seconds: float = 60.0) -> Target:
    """A site written with a DNS name (resolved at every cycle: no address in its target)."""
    return target(name, host=f"{name}.example", address=None,
                  icmp=IcmpSettings(interval_seconds=interval_seconds))


def cycle(*results: IcmpResult, group: str = "g") -> Cycle:
    return Cycle("icmp", group, 100.0, 1.0, results)


def cut_off_path(*names: str) -> CentrePath:
    """A centre path whose uplink checks ``names`` all failed in their last run."""
    path = CentrePath([check(n) for n in names], Clock(100.0))
    path.record([icmp(check(n), 100.0, None, None) for n in names])
    return path


def test_with_every_uplink_check_failed_the_centre_is_cut_off_and_says_which() -> None:
    """All checks failed in their last run: cut off, by the uplink rule, naming every check."""
    path = cut_off_path("gateway", "isp-1")
    assert path.cut_off and path.cause == "uplink"
    assert path.why == "the centre's uplink checks all failed (gateway, isp-1)"


def test_one_check_answering_or_one_not_run_yet_is_not_cut_off() -> None:
    """One check that answered, or a check with no run yet, means the centre is not cut off."""
    gateway, isp = check("gateway"), check("isp-1")
    path = CentrePath([gateway, isp], Clock(100.0))
    path.record([icmp(gateway, 100.0, None, None)])
    assert not path.cut_off  # isp-1 has not run yet
    path.record([icmp(gateway, 101.0, None, None), icmp(isp, 101.0, None, 0.01)])
    assert not path.cut_off and path.cause is None and path.why == ""
    assert {name: r.up for name, r in path.uplink.items()} == {"gateway": False, "isp-1": True}


def test_a_silent_cycle_that_began_before_the_centre_was_back_is_still_cut_off() -> None:
    """The cut ended while a cycle's echoes were already lost: that cycle is monitor_cut_off, not down; a
    cycle begun after the run that found the centre back is judged on its own."""
    path = cut_off_path("gateway")
    path.record([icmp(check("gateway"), 200.0, 0.01)])  # the run begun at 200 answers: back
    assert not path.cut_off
    lost = path.classify(Cycle("icmp", "g", 199.5, 0.8, (icmp(target("a"), 199.5, None),)))
    after = path.classify(Cycle("icmp", "g", 200.0, 0.8, (icmp(target("a"), 200.0, None),)))
    assert [r.error for r in lost.results] == [CUT]
    assert cut_off_cause(lost.results[0]) == "uplink"
    assert [r.error for r in after.results] == [None]


def test_without_uplink_checks_a_silent_cycle_is_left_as_measured() -> None:
    """No checks configured and no resolver failure: every site that did not answer stays down, unchanged."""
    path = CentrePath()
    silent = cycle(icmp(target("a"), 100.0, None, None), icmp(target("b"), 100.0, None, None))
    assert path.classify(silent) is silent
    assert not path.cut_off


def test_while_cut_off_silent_sites_become_monitor_cut_off_and_answering_ones_stay() -> None:
    """Cut off: a site without reply gets monitor_cut_off with the reason in its detail, raw facts kept;
    a site that answered is the same result."""
    path = cut_off_path("gateway", "isp-1")
    silent, answered = icmp(target("a"), 100.0, None, None), icmp(target("b"), 100.0, 0.02, None)
    out = path.classify(cycle(silent, answered))
    a, b = out.results
    assert isinstance(a, IcmpResult)
    assert a.error is CUT and cut_off_cause(a) == "uplink"
    assert a.error_detail == "no reply while the centre's uplink checks all failed (gateway, isp-1)"
    assert a.error_detail.startswith(UPLINK_DETAIL)
    assert (a.sent, a.rtts_seconds, a.up, a.started_at) == (2, (None, None), False, 100.0)  # connmon_up stays 0
    assert b is answered


def test_the_probes_own_reason_is_kept_in_the_detail() -> None:
    """A silent site that had an error of its own (no_route) keeps it in the detail of its monitor_cut_off."""
    path = cut_off_path("gateway")
    result = dataclasses.replace(icmp(target("a"), 100.0), error=ProbeErrorReason.NO_ROUTE,
                                 error_detail="no route to 192.0.2.1")
    (out,) = path.classify(cycle(result)).results
    assert isinstance(out, IcmpResult) and out.error is CUT
    assert out.error_detail.endswith("; the probe said no_route: no route to 192.0.2.1")


def test_agent_sites_and_throughput_cycles_are_never_rewritten() -> None:
    """An agent site's result (not probed by the centre) and a throughput test pass through as they are."""
    path = cut_off_path("gateway")
    agent_result = icmp(agent_target("vsat"), 100.0, None, None)
    assert path.classify(cycle(agent_result)).results == (agent_result,)
    test = Cycle("throughput", "g", 100.0, 11.0, (iperf3_test(throughput_target("s"), 100.0, None),))
    assert path.classify(test) is test


def test_the_resolver_failing_for_every_name_of_a_cycle_cuts_the_centre_off() -> None:
    """Two or more DNS-named sites all with error dns: cut off by the resolver rule; the silent sites of
    the cycle, literal addresses included, become monitor_cut_off; the dns reason stays in the detail."""
    path = CentrePath(clock=Clock(100.0))
    dns_a = dataclasses.replace(icmp(named("a"), 100.0), error=DNS, error_detail="name does not resolve")
    dns_b = dataclasses.replace(icmp(named("b"), 100.0), error=DNS)
    literal = icmp(target("c"), 100.0, None)
    out = path.classify(cycle(dns_a, dns_b, literal, group="schools"))
    assert path.cut_off and path.cause == "resolver"
    assert path.why == "the centre's resolver failed for every name (2 names in a cycle of group schools)"
    assert [r.error for r in out.results] == [CUT, CUT, CUT]
    first = out.results[0]
    assert isinstance(first, IcmpResult) and cut_off_cause(first) == "resolver"
    assert first.error_detail.startswith(RESOLVER_DETAIL)
    assert first.error_detail.endswith("; the probe said dns: name does not resolve")


def test_one_failing_name_or_one_name_resolving_is_not_the_resolver() -> None:
    """A single DNS-named site failing is its own fault; any name resolving clears the resolver verdict."""
    path = CentrePath(clock=Clock(100.0))
    lone = cycle(dataclasses.replace(icmp(named("a"), 100.0), error=DNS), icmp(target("c"), 100.0, None))
    assert path.classify(lone) is lone and not path.cut_off
    failing = [dataclasses.replace(icmp(named(n), 100.0), error=DNS) for n in ("a", "b")]
    path.classify(cycle(*failing))
    assert path.cause == "resolver"
    resolved = icmp(named("b"), 101.0, 0.01)
    path.classify(cycle(failing[0], resolved))
    assert not path.cut_off


def test_the_resolver_verdict_lapses_when_no_cycle_confirms_it() -> None:
    """A resolver verdict stands for two intervals of its cycle; unconfirmed after that, it lapses."""
    clock = Clock(100.0)
    path = CentrePath(clock=clock)
    path.classify(cycle(*[dataclasses.replace(icmp(named(n, 60.0), 100.0), error=DNS) for n in ("a", "b")]))
    literal = cycle(icmp(target("c"), 150.0, None))
    clock.now = 219.0
    assert path.classify(literal).results[0].error is CUT  # another group's cycle, within 2 × 60 s
    clock.now = 221.0
    assert path.classify(literal) is literal and not path.cut_off


def test_the_uplink_rule_comes_first_when_both_hold() -> None:
    """With the uplink checks failed and the resolver failing too, the cause is the uplink."""
    path = cut_off_path("gateway")
    path.classify(cycle(*[dataclasses.replace(icmp(named(n), 100.0), error=DNS) for n in ("a", "b")]))
    assert path.cause == "uplink"


def test_one_log_line_when_cut_off_and_one_when_back_not_one_per_cycle(caplog: pytest.LogCaptureFixture) -> None:
    """The event log says once that the centre is cut off, and once that it is back, whatever the cycles."""
    gateway = check("gateway")
    path = CentrePath([gateway], Clock(100.0))
    with caplog.at_level(logging.INFO, logger="monitor.events"):
        for at in range(3):
            path.record([icmp(gateway, 100.0 + at, None)])
            path.classify(cycle(icmp(target("a"), 100.0 + at, None)))
        path.record([icmp(gateway, 104.0, 0.01)])
        path.record([icmp(gateway, 105.0, 0.01)])
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.events"]
    assert lines == [
        "the centre is cut off: the centre's uplink checks all failed (gateway); sites that do not answer are "
        "recorded as monitor_cut_off, not down",
        "the centre is no longer cut off: uplink checks answer (gateway); sites that do not answer are down again"]


def test_a_reload_that_removes_the_checks_ends_the_cut_off() -> None:
    """Checks removed at a reload are forgotten: with none left, the uplink rule no longer holds."""
    path = cut_off_path("gateway", "isp-1")
    path.set_checks([check("isp-1")])
    assert path.cut_off and list(path.uplink) == ["isp-1"]
    path.set_checks([])
    assert not path.cut_off and dict(path.uplink) == {}


def test_a_result_of_a_check_that_went_is_ignored() -> None:
    """A run begun before a reload may still report a removed check: it does not count."""
    path = CentrePath([check("gateway")], Clock(100.0))
    path.record([icmp(check("old"), 100.0, None), icmp(check("gateway"), 100.0, 0.01)])
    assert list(path.uplink) == ["gateway"] and not path.cut_off


def test_cut_off_cause_is_none_for_any_other_result() -> None:
    """Only a monitor_cut_off result has a cut-off cause."""
    assert cut_off_cause(icmp(target("a"), 1.0, None)) is None
    assert cut_off_cause(dataclasses.replace(icmp(target("a"), 1.0), error=DNS)) is None


# ----------------------------------------------------------------------------- /metrics

def parsed(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_series_say_cut_off_from_start_up_and_each_check_after_its_first_run() -> None:
    """connmon_monitor_cut_off is 0 from start-up; connmon_uplink_up appears per check once it has run."""
    gateway, isp = check("gateway"), check("isp \"1\"")
    path = CentrePath([gateway, isp], Clock(100.0))
    renderer = CentrePathExposition(path)
    before = renderer.render(ShardLabels.of(None), {}).decode()
    assert parsed(before) == {("connmon_monitor_cut_off", ()): 0.0}
    path.record([icmp(gateway, 100.0, None), icmp(isp, 100.0, None)])
    after = parsed(renderer.render(ShardLabels.of("2"), {}).decode())
    assert after == {("connmon_monitor_cut_off", (("shard", "2"),)): 1.0,
                     ("connmon_uplink_up", (("check", "gateway"), ("shard", "2"))): 0.0,
                     ("connmon_uplink_up", (("check", 'isp "1"'), ("shard", "2"))): 0.0}


def test_the_metrics_sink_serves_the_centre_paths_series_at_every_scrape() -> None:
    """Handed to the metrics sink, the renderer's lines are current at each scrape, without a new cycle."""
    gateway = check("gateway")
    path = CentrePath([gateway], Clock(100.0))
    sink = MetricsSink(scrape=[CentrePathExposition(path)])
    sink.set_targets([target("a")])
    assert parsed(b"".join(sink.exposition()).decode())[("connmon_monitor_cut_off", ())] == 0.0
    path.record([icmp(gateway, 100.0, None)])
    assert parsed(b"".join(sink.exposition()).decode())[("connmon_monitor_cut_off", ())] == 1.0


# ----------------------------------------------------------------------------- uplink targets

def test_uplink_targets_take_the_fastest_sites_cycle_and_the_defaults_family(tmp_path: Path) -> None:
    """The checks are pinged at the fastest interval of the centre's own sites, with that site's count,
    spacing and timeout, in the defaults' address family; a name stays a name, a literal is canonical."""
    config = load_config(write_config(tmp_path, """
defaults:
  icmp: {interval: 60s, family: ipv4}
monitor:
  uplink:
    - {name: gateway, host: "::0001"}
    - {name: isp-1, host: isp.example}
groups:
  - name: slow
    kind: school
    endpoints: [{name: a, host: 192.0.2.1}]
  - name: fast
    kind: school
    icmp: {interval: 10s, count: 3, spacing: 100ms, timeout: 1s, family: ipv6}
    endpoints: [{name: b, host: 192.0.2.2}]
  - name: faster-but-agents
    kind: school
    mode: agent
    icmp: {interval: 5s}
    endpoints: [{name: c, agent: {token_sha256: TOKEN_HASH}}]
""".replace("TOKEN_HASH", token_hash(agent_token("c")))))
    checks = uplink_targets(config)
    assert uplink_targets(config, build_targets(config)) == checks
    assert [(c.name, c.host, c.address, c.group) for c in checks] == [
        ("gateway", "::0001", "::1", UPLINK_GROUP), ("isp-1", "isp.example", None, UPLINK_GROUP)]
    settings = checks[0].icmp
    assert (settings.interval_seconds, settings.count, settings.spacing_seconds, settings.timeout_seconds,
            settings.family) == (10.0, 3, 0.1, 1.0, "ipv4")
    assert all(c.probed_by_centre for c in checks)


def test_no_uplink_block_means_no_checks(tmp_path: Path) -> None:
    """Without ``monitor:`` there is nothing to check."""
    config = load_config(write_config(tmp_path, "groups:\n  - {name: g, kind: school, endpoints: "
                                                "[{name: a, host: 192.0.2.1}]}\n"))
    assert uplink_targets(config) == ()


# ----------------------------------------------------------------------------- the scheduler's part

class FakeIcmp:
    """The ICMP probe as the scheduler calls it: answers only from ``answering``; uplink runs can be held."""

    def __init__(self, answering: set[str]) -> None:
        self.answering = answering
        self.hold_uplink: asyncio.Event | None = None
        self.uplink_started = asyncio.Event()
        self.uplink_runs = 0
        self.hold_sites: asyncio.Event | None = None
        self.now = 100.0  # when a run begins, as its results say

    async def __call__(self, targets: Sequence[Target], ctx: ProbeContext) -> list[IcmpResult]:
        answering, began = set(self.answering), self.now  # the echoes leave now, whenever the run ends
        if targets and targets[0].group == UPLINK_GROUP:
            self.uplink_runs += 1
            self.uplink_started.set()
            if self.hold_uplink is not None:
                await self.hold_uplink.wait()
        elif self.hold_sites is not None:
            await self.hold_sites.wait()
        return [icmp(t, began, 0.01 if t.name in answering else None) for t in targets]


def scheduler_with(monkeypatch: pytest.MonkeyPatch, fake: FakeIcmp, checks: Sequence[Target],
                   clock: Callable[[], float] = time.time) -> tuple[CycleScheduler, CentrePath, Recorder]:
    monkeypatch.setitem(probes.PROBES, "icmp", fake)
    recorder = Recorder()
    path = CentrePath(checks, Clock(100.0))
    scheduler = CycleScheduler(ProbeContext(None, lambda: 100.0), ResultPipeline([recorder]),  # type: ignore[arg-type]
                               clock=clock, centre_path=path)
    return scheduler, path, recorder


def test_uplink_results_go_to_the_centre_path_and_site_cycles_are_classified(monkeypatch: pytest.MonkeyPatch) -> None:
    """An uplink run reaches the centre path and no sink; the next site cycle reaches the sinks classified."""
    checks = [check("gateway"), check("isp-1")]
    fake = FakeIcmp(answering={"b"})
    scheduler, path, recorder = scheduler_with(monkeypatch, fake, checks)

    async def main() -> None:
        await scheduler.run_uplink(checks)
        await scheduler.run_cycle("icmp", "g", [target("a"), target("b")])

    asyncio.run(main())
    assert path.cut_off
    assert [c.group for c in recorder.cycles] == ["g"]  # the uplink run was never published
    assert [(r.target.name, r.error) for r in recorder.results] == [("a", CUT), ("b", None)]


def test_a_silent_cycle_with_no_uplink_run_since_it_began_runs_the_checks_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The way out was cut after the last uplink run: the silent cycle runs the checks itself, so its sites
    are monitor_cut_off at once, not down for a cycle; a cycle whose sites all answer runs nothing."""
    checks = [check("gateway")]
    fake = FakeIcmp(answering={"gateway", "a"})
    scheduler, path, recorder = scheduler_with(monkeypatch, fake, checks)  # the fake stamps runs at t=100

    async def main() -> None:
        await scheduler.run_uplink(checks)
        fake.uplink_started.clear()
        await scheduler.run_cycle("icmp", "g", [target("a")])  # answers: nothing else runs
        assert not fake.uplink_started.is_set()
        fake.answering = set()  # now the way out is cut; the uplink job has not come round
        await scheduler.run_cycle("icmp", "g", [target("a")])
        assert fake.uplink_started.is_set()

    asyncio.run(main())
    assert path.cut_off
    assert [(r.target.name, r.error) for r in recorder.results] == [("a", None), ("a", CUT)]


def test_a_site_cycle_waits_for_the_uplink_run_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """A site cycle that ends while an uplink run is under way is classified by that run, not the one before."""
    checks = [check("gateway")]
    fake = FakeIcmp(answering={"gateway"})
    scheduler, path, recorder = scheduler_with(monkeypatch, fake, checks)

    async def main() -> None:
        await scheduler.run_uplink(checks)  # the centre's way out works
        assert not path.cut_off
        fake.answering = set()  # now the way out is cut
        fake.hold_uplink = asyncio.Event()
        fake.uplink_started.clear()
        uplink = asyncio.create_task(scheduler.run_uplink(checks))
        await fake.uplink_started.wait()
        site = asyncio.create_task(scheduler.run_cycle("icmp", "g", [target("a")]))
        await asyncio.sleep(0.05)
        assert not recorder.cycles  # held until the uplink run is recorded
        fake.hold_uplink.set()
        await asyncio.gather(uplink, site)

    asyncio.run(main())
    assert [r.error for r in recorder.results] == [CUT]


def test_an_uplink_run_begun_before_the_cycle_is_waited_for_and_then_run_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first edge of a cut: the uplink run under way left before the cut and answers, the site cycle left after
    it and is silent. Judged by that run, the site was down for a cycle (issue 21's race at the start of the
    centre's cut); the scheduler waits for it, sees it began before the cycle, and runs the checks again."""
    checks = [check("gateway")]
    fake = FakeIcmp(answering={"gateway"})
    scheduler, path, recorder = scheduler_with(monkeypatch, fake, checks)

    async def main() -> None:
        fake.hold_uplink = asyncio.Event()
        uplink = asyncio.create_task(scheduler.run_uplink(checks))  # begins at 100, before the cut: answers
        await fake.uplink_started.wait()
        fake.answering, fake.now = set(), 105.0  # the cut; the site cycle begins after it
        site = asyncio.create_task(scheduler.run_cycle("icmp", "g", [target("a")]))
        await asyncio.sleep(0.05)
        assert not recorder.cycles  # waits for the run under way
        fake.uplink_started.clear()
        fake.hold_uplink.set()
        await asyncio.gather(uplink, site)
        assert fake.uplink_started.is_set()  # and then ran the checks again, since the cycle began

    asyncio.run(main())
    assert path.cut_off
    assert [r.error for r in recorder.results] == [CUT]


def test_an_uplink_run_begun_after_the_cycle_is_waited_for_and_not_run_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run under way began after the silent cycle did: it is of the same moment of the network, so the cycle is
    judged by it and the checks are not run a second time (one uplink run, not one more per silent cycle)."""
    checks = [check("gateway")]
    fake = FakeIcmp(answering=set())
    scheduler, path, recorder = scheduler_with(monkeypatch, fake, checks, clock=lambda: fake.now)

    async def main() -> None:
        fake.hold_sites, fake.hold_uplink = asyncio.Event(), asyncio.Event()
        site = asyncio.create_task(scheduler.run_cycle("icmp", "g", [target("a")]))  # begins at 100
        await asyncio.sleep(0.01)
        fake.now = 101.0
        uplink = asyncio.create_task(scheduler.run_uplink(checks))  # begins at 101, after the cycle
        await fake.uplink_started.wait()
        fake.hold_sites.set()
        await asyncio.sleep(0.05)
        assert not recorder.cycles  # the silent cycle waits for the run under way
        fake.hold_uplink.set()
        await asyncio.gather(uplink, site)

    asyncio.run(main())
    assert path.cut_off and fake.uplink_runs == 1
    assert [r.error for r in recorder.results] == [CUT]


def test_the_uplink_job_follows_the_checks_at_a_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """One uplink job at the checks' interval; a reload with other checks keeps it, without checks removes it."""
    fast = dataclasses.replace(IcmpSettings(), interval_seconds=10.0)
    checks = [dataclasses.replace(check("gateway"), icmp=fast)]
    scheduler, path, _ = scheduler_with(monkeypatch, FakeIcmp(set()), checks)

    async def main() -> list[tuple[str, object, float | None]]:
        seen: list[tuple[str, object, float | None]] = []

        def uplink_job() -> tuple[str, object, float | None]:
            job = scheduler._scheduler.get_job(UPLINK_JOB_ID)
            if job is None:
                return ("none", None, None)
            return ("job", [t.name for t in job.args[0]], job.trigger.interval.total_seconds())

        scheduler.set_targets([target("a")])
        seen.append(uplink_job())
        path.set_checks([*checks, dataclasses.replace(check("isp-1"), icmp=fast)])
        scheduler.set_targets([target("a")])
        seen.append(uplink_job())
        path.set_checks([])
        scheduler.set_targets([target("a")])
        seen.append(uplink_job())
        return seen

    assert asyncio.run(main()) == [("job", ["gateway"], 10.0), ("job", ["gateway", "isp-1"], 10.0),
                                   ("none", None, None)]
