"""Upstream nodes (issue 21): the config's forest, the verdict on nodes and sites, and the scheduler's part.

Unit tests of :class:`monitor.upstreams.UpstreamTree` (chains, the highest node down, node states,
the rewrite of a cycle's silent sites to ``upstream_down``), of the config's located errors, of the
scrape-time series, and of the scheduler: nodes run in their own job and on demand before a cycle
with silent sites behind a node not run since it began is classified. The same in a real network,
with a real Prometheus and Alertmanager, is in ``tests/test_fault_scenarios.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import probes
from monitor.centre_path import CentrePath
from monitor.config import load_config
from monitor.errors import ConfigError, ProbeErrorReason
from monitor.exposition.families import ShardLabels
from monitor.pipeline import ResultPipeline
from monitor.probes import ProbeContext
from monitor.results import Cycle, IcmpResult
from monitor.scheduler import UPSTREAMS_JOB_ID, CycleScheduler
from monitor.site_states import SiteStateName, site_state
from monitor.targets import Target, build_targets
from monitor.upstreams import (
    UPSTREAM_GROUP,
    NodeStateName,
    UpstreamTree,
    node_targets,
    upstream_detail,
    upstream_of,
)
from monitor.upstreams_exposition import UpstreamExposition
from tests.factories import Recorder, icmp, target, write_config

UP_DOWN = ProbeErrorReason.UPSTREAM_DOWN

CONFIG = """
upstreams:
  - {name: isp, host: 127.0.0.10, kind: pop}
  - {name: agg, host: 127.0.0.11, upstream: isp}
  - {name: teleport, host: 127.0.0.12, kind: teleport}
groups:
  - name: schools
    kind: school
    upstream: agg
    icmp: {interval: 30s}
    endpoints:
      - {name: s1, host: 127.0.0.2}
      - {name: s2, host: 127.0.0.3}
      - {name: s3, host: 127.0.0.4, upstream: isp}
      - {name: s4, host: 127.0.0.5, upstream: teleport}
      - {name: planned, status: planned}
  - name: clinics
    kind: clinic
    endpoints:
      - {name: c1, host: 127.0.0.6}
"""


def node(name: str, parent: str | None = None, kind: str = "router") -> Target:
    return target(name, group=UPSTREAM_GROUP, kind=kind, upstream=parent)


def tree_of(*nodes: Target, sites: Sequence[Target] = ()) -> UpstreamTree:
    tree = UpstreamTree()
    tree.set_nodes(nodes, sites)
    return tree


def test_config_cascades_upstream_and_builds_node_targets(tmp_path: Path) -> None:
    """A group's ``upstream`` is its endpoints' unless they name their own; nodes become targets at the
    fastest interval of the centre's sites, with their kind and parent."""
    config = load_config(write_config(tmp_path, CONFIG))
    sites = {t.name: t for t in build_targets(config)}
    assert [sites[n].upstream for n in ("s1", "s2", "s3", "s4", "c1")] == ["agg", "agg", "isp", "teleport", None]
    nodes = {n.name: n for n in node_targets(config)}
    assert list(nodes) == ["isp", "agg", "teleport"]
    assert nodes["agg"].upstream == "isp" and nodes["isp"].kind == "pop" and nodes["agg"].kind == "router"
    assert {n.group for n in nodes.values()} == {UPSTREAM_GROUP}
    assert {n.icmp.interval_seconds for n in nodes.values()} == {30.0}
    tree = tree_of(*nodes.values(), sites=tuple(sites.values()))
    # sites behind a node at any depth, the centre-probed ones only (the planned site is not counted)
    assert (tree.sites_behind("isp"), tree.sites_behind("agg"), tree.sites_behind("teleport")) == (3, 2, 1)
    assert tree.chain("agg") == ("agg", "isp") and tree.chain(None) == ()


@pytest.mark.parametrize(("text", "where", "message"), [
    ("upstreams:\n  - {name: a, host: 127.0.0.1, upstream: nowhere}\n",
     ":2:42: upstreams[0].upstream", "unknown upstream node 'nowhere'"),
    ("upstreams:\n  - {name: a, host: 127.0.0.1, upstream: b}\n  - {name: b, host: 127.0.0.2, upstream: a}\n",
     ":2:42: upstreams[0].upstream", "the upstream nodes form a cycle: a → b → a"),
    ("upstreams:\n  - {name: a, host: 127.0.0.1, upstream: a}\n",
     ":2:42: upstreams[0].upstream", "the upstream nodes form a cycle: a → a"),
    ("upstreams:\n  - {name: a, host: 127.0.0.1}\n  - {name: a, host: 127.0.0.2}\n",
     ":3:12: upstreams[1].name", "duplicate upstream node name 'a'"),
    ("upstreams:\n  - {name: a, host: 127.0.0.1, kind: spaceship}\n",
     ":2:38: upstreams[0].kind", "must be one of router, pop, teleport"),
])
def test_a_bad_tree_is_a_located_config_error(tmp_path: Path, text: str, where: str, message: str) -> None:
    groups = "groups:\n  - {name: g, kind: school, endpoints: [{name: s, host: 127.0.0.9}]}\n"
    path = write_config(tmp_path, text + groups)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}{where}: {message}" in str(err.value)


@pytest.mark.parametrize(("endpoint", "where", "message"), [
    ("{name: s, host: 127.0.0.9, upstream: ghost}", ":4:78: groups[0].endpoints[0].upstream",
     "unknown upstream node 'ghost' (the nodes are: a)"),
    ("{name: a, host: 127.0.0.9}", ":4:48: groups[0].endpoints[0].name", "'a' is also the name of an upstream node"),
])
def test_a_site_naming_no_node_or_a_node_name_is_a_located_error(tmp_path: Path, endpoint: str, where: str,
                                                                 message: str) -> None:
    path = write_config(tmp_path, "upstreams:\n  - {name: a, host: 127.0.0.1}\ngroups:\n"
                                  f"  - {{name: g, kind: school, endpoints: [{endpoint}]}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}{where}: {message}" in str(err.value)


def test_the_highest_node_down_is_named_and_nodes_below_it_are_upstream_down() -> None:
    isp, agg, edge = node("isp", kind="pop"), node("agg", "isp"), node("edge", "agg")
    tree = tree_of(isp, agg, edge)
    assert [tree.node_state(n) for n in ("isp", "agg", "edge")] == [NodeStateName.UNKNOWN] * 3
    tree.record([icmp(isp, 100.0, 0.01), icmp(agg, 100.0, None), icmp(edge, 100.0, None)])
    assert tree.highest_down("edge") == "agg"
    assert [tree.node_state(n) for n in ("isp", "agg", "edge")] == [
        NodeStateName.UP, NodeStateName.DOWN, NodeStateName.UPSTREAM_DOWN]
    tree.record([icmp(isp, 160.0, None)])
    assert tree.highest_down("edge") == "isp" and tree.highest_down("agg") == "isp"
    tree.record([icmp(isp, 150.0, 0.01)])  # a run begun earlier that ended later is older news: kept out
    assert tree.node_up("isp") is False
    assert [tree.node_state(n) for n in ("isp", "agg", "edge")] == [
        NodeStateName.DOWN, NodeStateName.UPSTREAM_DOWN, NodeStateName.UPSTREAM_DOWN]


def test_node_states_give_way_to_a_cut_off_centre_and_to_maintenance() -> None:
    cut = {"off": False}
    tree = UpstreamTree(cut_off=lambda: cut["off"],
                        in_maintenance=lambda n: "Sun 02:00-04:00 UTC" if n == "b" else None)
    a, b = node("a"), node("b")
    tree.set_nodes((a, b))
    tree.record([icmp(a, 100.0, None), icmp(b, 100.0, None)])
    assert (tree.node_state("a"), tree.node_state("b")) == (NodeStateName.DOWN, NodeStateName.MAINTENANCE)
    cut["off"] = True
    assert tree.node_state("a") is NodeStateName.MONITOR_CUT_OFF


def test_silent_sites_behind_a_down_node_are_upstream_down_and_name_it() -> None:
    """Only silent, centre-probed sites with a down node in their chain are rewritten; the rest stay."""
    isp, agg = node("isp", kind="pop"), node("agg", "isp")
    tree = tree_of(isp, agg)
    tree.record([icmp(isp, 100.0, 0.01), icmp(agg, 100.0, None)])
    behind, beside, answering = target("behind", upstream="agg"), target("beside"), target("ok", upstream="agg")
    cut_off = target("cut", upstream="agg")
    agent_site = target("agent", upstream="agg", mode="agent")
    cycle = Cycle("icmp", "g", 100.0, 1.0, (
        icmp(behind, 100.0, None, error=ProbeErrorReason.UNREACHABLE), icmp(beside, 100.0, None),
        icmp(answering, 100.0, 0.02), icmp(cut_off, 100.0, None, error=ProbeErrorReason.MONITOR_CUT_OFF),
        icmp(agent_site, 100.0, None)))
    out = tree.classify(cycle)
    first = out.results[0]
    assert isinstance(first, IcmpResult)
    assert first.error is UP_DOWN and first.sent == 1 and first.received == 0
    assert first.error_detail == upstream_detail("agg") + "; the probe said unreachable"
    assert upstream_of(first.error, first.error_detail) == "agg"
    assert out.results[1:] == cycle.results[1:]
    # agg answers again in its run begun at 160: a cycle begun before that (its echoes left while agg was
    # dead) judged now is still agg's, not the site's (the issue 21 race); one begun after is the site's
    tree.record([icmp(agg, 160.0, 0.01)])
    again = tree.classify(cycle).results[0]
    assert isinstance(again, IcmpResult) and again.error is UP_DOWN and upstream_of(again.error,
                                                                                      again.error_detail) == "agg"
    later = Cycle("icmp", "g", 161.0, 1.0, (icmp(behind, 161.0, None, error=ProbeErrorReason.UNREACHABLE),
                                            icmp(answering, 161.0, 0.02)))
    assert tree.classify(later) is later  # nothing to rewrite: the very same cycle
    # a node that never went down has no such edge
    tree.record([icmp(isp, 200.0, 0.01)])
    assert tree.classify(later) is later
    # a site's state and its cause name the node
    state = site_state(behind, first, 100.0)
    assert state.state is SiteStateName.UPSTREAM_DOWN and state.as_json() == {
        "state": "upstream_down", "cause": {"upstream": "agg"}}


def test_a_node_change_is_logged_once_and_a_node_that_goes_down_is_traced(caplog: pytest.LogCaptureFixture) -> None:
    traced: list[str] = []
    tree = UpstreamTree(went_down=lambda t: traced.append(t.name))
    agg = node("agg")
    tree.set_nodes((agg,), (target("s1", upstream="agg"), target("s2", upstream="agg")))
    with caplog.at_level(logging.INFO, logger="monitor.events"):
        tree.record([icmp(agg, 100.0, None)])  # down from its first run: not a change from up, no trace
        tree.record([icmp(agg, 160.0, None)])
        tree.record([icmp(agg, 220.0, 0.01)])
        tree.record([icmp(agg, 280.0, None)])
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.events"]
    assert lines == [
        "upstream node agg (router, 192.0.2.1) is down: 2 sites behind it are upstream_down",
        "upstream node agg (router, 192.0.2.1) is up again",
        "upstream node agg (router, 192.0.2.1) is down: 2 sites behind it are upstream_down"]
    assert traced == ["agg"]


def test_upstream_series_have_one_state_per_node_and_count_sites_behind() -> None:
    isp, agg = node("isp", kind="pop"), node("agg", "isp")
    tree = tree_of(isp, agg, sites=(target("s1", upstream="agg"), target("s2", upstream="isp")))
    tree.record([icmp(isp, 100.0, None), icmp(agg, 100.0, None)])
    text = UpstreamExposition(tree).render(ShardLabels.of(None), {}).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("connmon_upstream_up", (("kind", "pop"), ("upstream", "isp")))] == 0
    states = {dict(k[1])["state"]: v for k, v in samples.items()
              if k[0] == "connmon_upstream_state" and dict(k[1])["upstream"] == "agg"}
    assert states == {"up": 0, "down": 0, "upstream_down": 1, "monitor_cut_off": 0, "maintenance": 0, "unknown": 0}
    assert samples[("connmon_upstream_sites", (("kind", "pop"), ("upstream", "isp")))] == 2
    assert samples[("connmon_upstream_sites", (("kind", "router"), ("upstream", "agg")))] == 1
    assert UpstreamExposition(tree_of()).render(ShardLabels.of(None), {}) == b""


# ----------------------------------------------------------------------------- the scheduler's part

class FakeIcmp:
    """The ICMP probe as the scheduler calls it: answers only from ``answering``; records every batch."""

    def __init__(self, answering: set[str]) -> None:
        self.answering = answering
        self.batches: list[list[str]] = []

    async def __call__(self, targets: Sequence[Target], ctx: ProbeContext) -> list[IcmpResult]:
        self.batches.append([t.name for t in targets])
        return [icmp(t, ctx.clock(), 0.01 if t.name in self.answering else None) for t in targets]


def test_a_silent_cycle_pings_its_nodes_first_and_is_classified_before_any_sink(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The node job has not run since the router was cut: the site cycle pings the router itself, so its
    silent sites are upstream_down from the first cycle; the nodes' runs go to the node history only,
    and a cut-off centre wins over the upstream verdict."""
    isp, agg = node("isp", kind="pop"), node("agg", "isp")
    s1, s2, beside = target("s1", upstream="agg"), target("s2", upstream="agg"), target("beside")
    fake = FakeIcmp({"isp", "agg", "s1", "s2", "beside"})
    monkeypatch.setitem(probes.PROBES, "icmp", fake)
    now = {"t": 1000.0}
    tree = tree_of(isp, agg, sites=(s1, s2, beside))
    path = CentrePath((), lambda: now["t"])
    recorder, kept = Recorder(), Recorder()
    scheduler = CycleScheduler(ProbeContext(None, lambda: now["t"]), ResultPipeline([recorder]),
                               clock=lambda: now["t"], centre_path=path, upstreams=tree)
    scheduler.node_history = kept.consume

    async def go() -> None:
        await scheduler.run_nodes(tree.nodes)  # all answer
        now["t"] = 1060.0
        fake.answering -= {"agg", "s1", "s2"}  # agg is cut: its sites fall silent with it
        await scheduler.run_cycle("icmp", "g", [s1, s2, beside])
        now["t"] = 1120.0
        await scheduler.run_cycle("icmp", "g", [s1, s2, beside])  # the nodes were run after this cycle began?

    asyncio.run(go())
    assert fake.batches[0] == ["isp", "agg"] and fake.batches[1] == ["s1", "s2", "beside"]
    assert fake.batches[2] == ["agg", "isp"]  # on demand, for the silent sites' chain, nearest first
    first = recorder.cycles[0].results
    assert [(r.target.name, r.error) for r in first if isinstance(r, IcmpResult)] == [
        ("s1", UP_DOWN), ("s2", UP_DOWN), ("beside", None)]
    assert all(upstream_of(r.error, r.error_detail) == "agg" for r in first[:2] if isinstance(r, IcmpResult))
    assert len(recorder.cycles) == 2 and len(kept.cycles) == 3  # node runs: the job's and two on demand
    assert {c.group for c in kept.cycles} == {UPSTREAM_GROUP}
    assert all(r.target.group != UPSTREAM_GROUP for c in recorder.cycles for r in c.results)


def test_the_node_job_follows_the_tree_at_a_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(probes.PROBES, "icmp", FakeIcmp(set()))
    tree = tree_of(node("agg"))
    scheduler = CycleScheduler(ProbeContext(None, lambda: 100.0), ResultPipeline([]),
                               upstreams=tree)

    async def go() -> None:
        scheduler.start([target("a")])
        try:
            job = scheduler._scheduler.get_job(UPSTREAMS_JOB_ID)
            assert job is not None and [t.name for t in job.args[0]] == ["agg"]
            tree.set_nodes((node("agg"), node("isp")))
            scheduler.set_targets([target("a")])
            job = scheduler._scheduler.get_job(UPSTREAMS_JOB_ID)
            assert job is not None and [t.name for t in job.args[0]] == ["agg", "isp"]
            tree.set_nodes(())
            scheduler.set_targets([target("a")])
            assert scheduler._scheduler.get_job(UPSTREAMS_JOB_ID) is None
        finally:
            scheduler.shutdown()

    asyncio.run(go())


class DnsFailing(FakeIcmp):
    """Every name fails to resolve (the centre's resolver is down); literal addresses answer per ``answering``."""

    async def __call__(self, targets: Sequence[Target], ctx: ProbeContext) -> list[IcmpResult]:
        self.batches.append([t.name for t in targets])
        return [icmp(t, ctx.clock(), None, error=ProbeErrorReason.DNS) if t.address is None
                else icmp(t, ctx.clock(), 0.01 if t.name in self.answering else None) for t in targets]


def test_a_failing_resolver_is_the_centres_fault_not_a_named_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node and its sites all written with DNS names, and the resolver fails: the node does not answer,
    but the sites are monitor_cut_off (the resolver rule reads the cycle as measured), not upstream_down."""
    agg = target("agg", group=UPSTREAM_GROUP, kind="router", host="agg.example", address=None)
    sites = [target(f"s{i}", host=f"s{i}.example", address=None, upstream="agg") for i in range(3)]
    monkeypatch.setitem(probes.PROBES, "icmp", DnsFailing(set()))
    path = CentrePath((), lambda: 1000.0)
    tree = UpstreamTree(cut_off=lambda: path.cut_off)
    tree.set_nodes((agg,), sites)
    recorder = Recorder()
    scheduler = CycleScheduler(ProbeContext(None, lambda: 1000.0), ResultPipeline([recorder]),
                               clock=lambda: 1000.0, centre_path=path, upstreams=tree)
    asyncio.run(scheduler.run_cycle("icmp", "g", sites))
    assert path.cut_off and path.cause == "resolver"
    assert [r.error for r in recorder.results] == [ProbeErrorReason.MONITOR_CUT_OFF] * 3
    assert tree.node_state("agg") is NodeStateName.MONITOR_CUT_OFF
