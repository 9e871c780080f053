"""When traces are taken and what they say together (issue 21), with a fake engine: monitor.tracer.

The real engine and real routers are in tests/test_trace_netns.py; here the paths are made up, so
each rule (up to down only, explained silences left alone, the budget, the common fault) is shown
on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import load_config
from monitor.errors import ConfigError, ProbeErrorReason
from monitor.exposition.families import ShardLabels
from monitor.icmp.engine import HopAnswer
from monitor.icmp.trace import trace_from_answers
from monitor.results import Cycle, IcmpResult, Trace
from monitor.targets import Target
from monitor.tracer import Tracer
from monitor.tracer_exposition import TraceExposition
from monitor.upstreams import UPSTREAM_GROUP, UpstreamTree
from tests.factories import target, write_config

ISP, AGG = "10.77.240.2", "10.77.240.6"


class FakePaths:
    """Answers a trace as the made-up network says: hops by destination, the last one answering or not."""

    def __init__(self) -> None:
        self.paths: dict[str, tuple[list[str], bool]] = {}  # address → (hops before it, reached)
        self.asked: list[str] = []

    async def echo_hops(self, address: str, ttls: Sequence[int], timeout_seconds: float,
                        spacing_seconds: float = 0.0, payload_bytes: int = 56) -> list[HopAnswer]:
        self.asked.append(address)
        hops, reached = self.paths.get(address, ([], True))
        out = []
        for ttl in ttls:
            if ttl <= len(hops):
                out.append(HopAnswer(ttl, hops[ttl - 1], 0.001))
            elif reached:
                out.append(HopAnswer(ttl, address, 0.002, reached=True))
            else:
                out.append(HopAnswer(ttl, None, None))
        return out


def site(name: str, address: str, **fields: object) -> Target:
    return target(name, host=address, address=address, **fields)


def cycle(at: float, *results: IcmpResult) -> Cycle:
    return Cycle("icmp", "g", at, 1.0, results)


def up(t: Target, at: float) -> IcmpResult:
    return IcmpResult(t, at, t.address, 1, (0.001,))


def down(t: Target, at: float, error: ProbeErrorReason | None = ProbeErrorReason.TIMEOUT) -> IcmpResult:
    return IcmpResult(t, at, t.address, 1, (None,), error)


async def settle(tracer: Tracer) -> None:
    while tracer.running:
        await asyncio.sleep(0)


def metrics(tracer: Tracer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = TraceExposition(tracer).render(ShardLabels.of(None), {}).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_site_is_traced_once_when_it_goes_from_up_to_down() -> None:
    """Only the first silent cycle after an answered one starts a trace; a site never seen up is not traced."""
    async def run() -> None:
        paths = FakePaths()
        a, b = site("a", "192.0.2.1"), site("b", "192.0.2.2")
        paths.paths["192.0.2.1"] = ([ISP, AGG], False)
        traced: list[tuple[str, Trace]] = []
        tracer = Tracer(paths, lambda: 1000.0, record=lambda t, tr: traced.append((t.name, tr)))
        tracer.set_targets([a, b])
        tracer.consume(cycle(0, up(a, 0), down(b, 0)))
        tracer.consume(cycle(60, down(a, 60), down(b, 60)))
        tracer.consume(cycle(120, down(a, 120), down(b, 120)))
        await settle(tracer)
        assert paths.asked == ["192.0.2.1"]
        last = tracer.last_trace("a")
        assert last is not None and last.last_answering_hop == AGG and not last.reached
        assert [h.address for h in last.hops] == [ISP, AGG, None]
        assert traced == [("a", last)]
        assert tracer.last_trace("b") is None
    asyncio.run(run())


def test_explained_silences_are_not_traced() -> None:
    """A site gone silent while the centre is cut off, in maintenance or behind a down node is not traced."""
    async def run() -> None:
        paths = FakePaths()
        sites = [site(f"s{i}", f"192.0.2.{i}") for i in range(1, 4)]
        tracer = Tracer(paths, lambda: 0.0)
        tracer.set_targets(sites)
        tracer.consume(cycle(0, *(up(s, 0) for s in sites)))
        tracer.consume(cycle(60, *(down(s, 60, e) for s, e in zip(sites, (
            ProbeErrorReason.MONITOR_CUT_OFF, ProbeErrorReason.MAINTENANCE, ProbeErrorReason.UPSTREAM_DOWN),
            strict=True))))
        await settle(tracer)
        assert paths.asked == []
    asyncio.run(run())


def test_the_budget_caps_traces_per_minute_and_counts_the_rest() -> None:
    """With traces_per_minute 2, five sites going down at once give two traces and three skipped_budget."""
    async def run() -> None:
        paths = FakePaths()
        sites = [site(f"s{i}", f"192.0.2.{i}") for i in range(1, 6)]
        tracer = Tracer(paths, lambda: 0.0, traces_per_minute=2)
        tracer.set_targets(sites)
        tracer.consume(cycle(0, *(up(s, 0) for s in sites)))
        tracer.consume(cycle(60, *(down(s, 60) for s in sites)))
        await settle(tracer)
        assert len(paths.asked) == 2
        m = metrics(tracer)
        assert m[("connmon_traces_total", (("outcome", "taken"),))] == 2
        assert m[("connmon_traces_total", (("outcome", "skipped_budget"),))] == 3
        assert m[("connmon_traces_total", (("outcome", "failed"),))] == 0
    asyncio.run(run())


def test_common_fault_names_the_hop_and_only_the_sites_behind_it_and_clears() -> None:
    """Three sites down together whose traces end at isp are one common fault at isp naming exactly them;
    a site down at the same time whose trace ends elsewhere is not in it; the fault clears as they answer."""
    async def run() -> None:
        paths = FakePaths()
        behind = [site(f"agg-{i}", f"10.77.242.{4 * i - 2}") for i in (1, 2, 3)]
        alone = site("far", "10.77.243.2")
        declared = site("declared", "10.77.242.30", upstream="agg")
        for s in behind:
            paths.paths[s.address or ""] = ([ISP], False)
        paths.paths["10.77.243.2"] = ([ISP, "10.77.250.1"], False)
        paths.paths["10.77.242.30"] = ([ISP], False)
        tracer = Tracer(paths, lambda: 0.0)
        every = [*behind, alone, declared]
        tracer.set_targets(every)
        tracer.consume(cycle(0, *(up(s, 0) for s in every)))
        tracer.consume(cycle(60, *(down(s, 60) for s in every)))
        await settle(tracer)
        faults = tracer.faults
        assert [(f.hop, f.sites) for f in faults] == [(ISP, ("agg-1", "agg-2", "agg-3"))]
        m = metrics(tracer)
        assert m[("connmon_common_fault", (("hop", ISP),))] == 3
        assert {dict(k[1])["endpoint"] for k in m if k[0] == "connmon_common_fault_site"} == {
            "agg-1", "agg-2", "agg-3"}
        tracer.consume(cycle(120, up(behind[0], 120), *(down(s, 120) for s in behind[1:])))
        assert [f.sites for f in tracer.faults] == [("agg-2", "agg-3")]
        tracer.consume(cycle(180, up(behind[1], 180), down(behind[2], 180)))
        assert tracer.faults == ()
        assert not [k for k in metrics(tracer) if k[0].startswith("connmon_common_fault")]
    asyncio.run(run())


def test_sites_down_more_than_an_interval_apart_are_no_common_fault() -> None:
    """Two sites whose traces end at the same hop but that went down an hour apart are two faults, not one."""
    async def run() -> None:
        paths = FakePaths()
        a, b = site("a", "192.0.2.1"), site("b", "192.0.2.2")
        paths.paths["192.0.2.1"] = paths.paths["192.0.2.2"] = ([ISP], False)
        tracer = Tracer(paths, lambda: 0.0, traces_per_minute=100)
        tracer.set_targets([a, b])
        tracer.consume(cycle(0, up(a, 0), up(b, 0)))
        tracer.consume(cycle(60, down(a, 60), up(b, 60)))
        tracer.consume(cycle(3600, down(a, 3600), down(b, 3600)))
        await settle(tracer)
        assert tracer.faults == ()
    asyncio.run(run())


def test_a_node_going_down_is_traced() -> None:
    """The upstream tree's went_down callback traces the node's own address."""
    async def run() -> None:
        paths = FakePaths()
        paths.paths[AGG] = ([ISP], False)
        tracer = Tracer(paths, lambda: 5.0)
        tracer.node_went_down(site("agg", AGG))
        await settle(tracer)
        last = tracer.last_trace("agg")
        assert last is not None and last.last_answering_hop == ISP and last.at == 5.0
    asyncio.run(run())


def test_shutdown_cancels_running_traces() -> None:
    """stop() cancels a trace still waiting for answers; nothing is left running."""
    class Hanging:
        async def echo_hops(self, address: str, ttls: Sequence[int], timeout_seconds: float,
                            spacing_seconds: float = 0.0, payload_bytes: int = 56) -> list[HopAnswer]:
            await asyncio.sleep(3600)
            return []

    async def run() -> None:
        tracer = Tracer(Hanging(), lambda: 0.0)
        tracer.node_went_down(site("agg", AGG))
        await asyncio.sleep(0)
        assert tracer.running == 1
        await tracer.stop()
        assert tracer.running == 0 and tracer.last_trace("agg") is None
    asyncio.run(run())


def test_answers_fold_into_hops_up_to_one_past_the_last_answer() -> None:
    """Two probes per TTL: one answer is enough; the trace ends one hop past the last answer, or at the target."""
    answers = [HopAnswer(1, None, None), HopAnswer(1, ISP, 0.001), HopAnswer(2, None, None), HopAnswer(2, None, None),
               HopAnswer(3, None, None), HopAnswer(3, None, None)]
    t = trace_from_answers(7.0, "10.77.242.2", answers, 3)
    assert [(h.ttl, h.address) for h in t.hops] == [(1, ISP), (2, None)]
    assert t.last_answering_hop == ISP and not t.reached
    reached = trace_from_answers(7.0, "10.77.242.2", [HopAnswer(1, ISP, 0.001), HopAnswer(2, "10.77.242.2", 0.002,
                                                                                         reached=True),
                                                      HopAnswer(3, "10.77.242.2", 0.002, reached=True)], 3)
    assert [h.address for h in reached.hops] == [ISP, "10.77.242.2"] and reached.reached
    nothing = trace_from_answers(7.0, "10.77.242.2", [HopAnswer(1, None, None), HopAnswer(2, None, None)], 2)
    assert [h.address for h in nothing.hops] == [None] and nothing.last_answering_hop is None


def test_the_budget_comes_from_the_monitor_block(tmp_path: Path) -> None:
    """``monitor.traces_per_minute`` sets the budget (10 without it); a negative one is a located error."""
    sites = "groups:\n  - {name: g, kind: school, endpoints: [{name: a, host: 192.0.2.1}]}\n"
    assert load_config(write_config(tmp_path, sites)).monitor.traces_per_minute == 10
    given = load_config(write_config(tmp_path, "monitor:\n  traces_per_minute: 0\n" + sites, "zero.yaml"))
    assert given.monitor.traces_per_minute == 0 and given.monitor.uplink == ()
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, "monitor:\n  traces_per_minute: -1\n" + sites, "bad.yaml"))
    assert "bad.yaml:2:22: monitor.traces_per_minute: must be ≥ 0 and ≤ 10000, got -1" in str(caught.value)


def test_no_budget_no_traces() -> None:
    """With traces_per_minute 0 nothing is traced, and nothing counted as skipped either."""
    async def run() -> None:
        paths = FakePaths()
        a = site("a", "192.0.2.1")
        tracer = Tracer(paths, lambda: 0.0, traces_per_minute=0)
        tracer.set_targets([a])
        tracer.consume(cycle(0, up(a, 0)))
        tracer.consume(cycle(60, down(a, 60)))
        await settle(tracer)
        assert paths.asked == [] and tracer.counts == {"taken": 0, "skipped_budget": 0, "failed": 0}
    asyncio.run(run())


def test_the_upstream_tree_tells_the_tracer_of_a_node_going_down() -> None:
    """``UpstreamTree(went_down=tracer.node_went_down)``: a node going from up to down is traced once; a node
    still down, or down from its first run, is not traced again."""
    async def run() -> None:
        paths = FakePaths()
        paths.paths[AGG] = ([ISP], False)
        tracer = Tracer(paths, lambda: 0.0)
        tree = UpstreamTree(went_down=tracer.node_went_down)
        agg = site("agg", AGG, group=UPSTREAM_GROUP, kind="router")
        never = site("never", "192.0.2.9", group=UPSTREAM_GROUP, kind="router")
        tree.set_nodes([agg, never])
        tree.record([up(agg, 0), down(never, 0)])
        tree.record([down(agg, 60), down(never, 60)])
        tree.record([down(agg, 120), down(never, 120)])
        await settle(tracer)
        assert paths.asked == [AGG]
        last = tracer.last_trace("agg")
        assert last is not None and last.last_answering_hop == ISP
    asyncio.run(run())
