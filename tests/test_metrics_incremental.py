"""Issue 9: a page's block of one family is rendered again only when one of its endpoints changed
that family. These tests hold the incremental body to the body rendered whole from the same state,
after every step of a long random run, and check that a healthy cycle leaves the lines it did not
change (info, target, up, loss, error counters, state) as the very same chunks. Issue 21: the runs
cut the centre off, open and close maintenance windows and classify agent sites' silences, so the
sites' states change with and without a result of their own."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import random
from zoneinfo import ZoneInfo

import pytest

from monitor.config import ThroughputSettings
from monitor.config.windows import MaintenanceWindows, TimeWindow
from monitor.errors import ICMP_REASONS, THROUGHPUT_REASONS, ProbeErrorReason
from monitor.exposition import pages
from monitor.exposition import sink as metrics
from monitor.exposition.endpoint import ALL_FAMILIES
from monitor.exposition.sink import MetricsSink
from monitor.results import GAP_CAUSES, Cycle, DirectionResult, Gap, IcmpResult, Result, ThroughputResult
from monitor.targets import Target
from tests.factories import Clock, icmp, located_target
from tests.promtool import promtool_problems


def cached_part(sink: MetricsSink) -> bytes:
    """The body without the per-scrape chunk (process collectors change between two calls)."""
    return b"".join(sink.exposition()[:-1])


def rendered_whole(sink: MetricsSink) -> bytes:
    """The body a sink in the same state gives when every line of every endpoint is rendered anew."""
    twin = copy.copy(sink)  # the states, pages and chunk maps copied; the registry and clock shared
    twin._endpoints, twin._pages = copy.deepcopy((sink._endpoints, sink._pages))  # pages: states and block keys
    twin._body = copy.copy(sink._body)
    twin._body._plain, twin._body._segments = dict(sink._body._plain), dict(sink._body._segments)
    for state in twin._endpoints.values():
        state.dirty = ALL_FAMILIES
    twin._rebuild()
    return cached_part(twin)


START = 1_700_000_000.0  # the random runs' first cycle; they last 20 minutes


def windows_of_the_run() -> tuple[MaintenanceWindows, MaintenanceWindows]:
    """Two maintenance windows that open and close during a run: a weekly one in UTC from its 2nd to its 7th
    minute, a dated one in Almaty from its 9th to its 14th."""
    utc = dt.datetime.fromtimestamp(START, dt.UTC)
    first = utc.hour * 60 + utc.minute + 2
    weekly = MaintenanceWindows("UTC", weekly=(TimeWindow(first, first + 5, frozenset({utc.weekday()})),))
    local = dt.datetime.fromtimestamp(START + 9 * 60, ZoneInfo("Asia/Almaty")).replace(tzinfo=None, second=0)
    return weekly, MaintenanceWindows("Asia/Almaty", once=((local, local + dt.timedelta(minutes=5)),))


WEEKLY, DATED = windows_of_the_run()


def fleet() -> list[Target]:
    plain = [located_target(f"site-{i}", maintenance=(WEEKLY, WEEKLY, DATED, None)[i % 4]) for i in range(7)]
    measured = [dataclasses.replace(located_target(f"tput-{i}", maintenance=DATED if i == 0 else None),
                                    throughput=ThroughputSettings(method="iperf3")) for i in range(4)]
    agents = [dataclasses.replace(located_target(f"agent-{i}", maintenance=WEEKLY if i == 0 else None), mode="agent")
              for i in range(2)]
    return plain + measured + agents


def icmp_result(rng: random.Random, t: Target, started_at: float) -> IcmpResult:
    roll = rng.random()
    if roll < 0.1:  # no address: nothing sent
        return IcmpResult(t, started_at, None, 0, (), ProbeErrorReason.DNS, "no such name")
    rtts = tuple(rng.choice((None, rng.uniform(1e-4, 3.0), 0.004, 0.004)) for _ in range(rng.randint(1, 4)))
    error = rng.choice(ICMP_REASONS) if roll < 0.25 else None
    if t.mode == "agent" and roll > 0.9:
        error = ProbeErrorReason.AGENT_SILENT
    if t.mode != "agent" and roll > 0.9:  # the centre cut off (issue 21): no reply, and the centre's reason
        return IcmpResult(t, started_at, t.address, len(rtts), (None,) * len(rtts), ProbeErrorReason.MONITOR_CUT_OFF,
                          "no reply while the centre's uplink checks all failed (gateway)")
    return IcmpResult(t, started_at, t.address, len(rtts), rtts, error)


def throughput_result(rng: random.Random, t: Target, started_at: float) -> ThroughputResult:
    directions = []
    for direction in ("download", "upload"):
        if rng.random() < 0.3:
            directions.append(DirectionResult(direction, started_at, started_at + 1, error=ProbeErrorReason.BUSY))
        else:
            directions.append(DirectionResult(direction, started_at, started_at + 5, rng.uniform(1e6, 9e6),
                                              rng.randint(1, 10_000_000), 5.0, rng.randint(0, 3)))
    error = next((d.error for d in directions if d.error is not None), None)
    if rng.random() < 0.1:
        return ThroughputResult(t, "iperf3", started_at, started_at, t.address, (), rng.choice(THROUGHPUT_REASONS))
    return ThroughputResult(t, "iperf3", started_at, started_at + 10, t.address, tuple(directions), error)


def changed_target(rng: random.Random, t: Target) -> Target:
    """A reload's change of one site: where it is, who provides it, whether it is probed, its target."""
    field, value = rng.choice((
        ("host", f"192.0.2.{rng.randint(2, 200)}"), ("provider", rng.choice((None, "KazTelecom", "Beeline"))),
        ("status", rng.choice(("planned", "connected", "retired"))), ("lat", rng.choice((None, 51.5))),
        ("target_bits_per_second", rng.choice((2e6, 4e6, 8e6))),
        ("contracted_bits_per_second", rng.choice((None, 1e7))), ("maintenance", rng.choice((None, WEEKLY, DATED))),
    ))
    return dataclasses.replace(t, **{field: value})


@pytest.mark.parametrize("seed", range(6))
def test_the_incremental_body_is_the_body_rendered_whole_after_every_step(seed: int) -> None:
    """Cycles with answers, losses, errors, the centre cut off and no address at all; throughput tests
    that met, missed, failed or were skipped; restores; agent sites' silences classified; maintenance
    windows opening and closing; reloads that move, re-target, plan, retire sites or change their
    windows. After every step the body equals the one rendered whole from the same state (a missed
    change would leave a stale line behind), and promtool accepts it."""
    rng = random.Random(seed)
    targets = fleet()
    clock = Clock(START)
    sink = MetricsSink(clock=clock)
    sink.set_targets(targets)
    now = START
    states: set[str] = set()
    for step in range(120):
        now += 10
        clock.now = now
        roll = rng.random()
        if roll < 0.04:
            agents = [t for t in targets if t.mode == "agent"]
            sink.consume(Cycle("agent", "g", now, 0.0, (), tuple(
                Gap(t, now - 60, now, rng.choice(GAP_CAUSES), 60.0) for t in agents if rng.random() < 0.7)))
        elif roll < 0.08:
            index = rng.randrange(len(targets))
            targets[index] = changed_target(rng, targets[index])
            sink.set_targets(targets)
        elif roll < 0.12:
            measured = [t for t in targets if t.throughput.enabled]
            sink.restore([throughput_result(rng, t, now - 3600) for t in measured],
                         missed_in_a_row={t.name: rng.randint(0, 3) for t in measured})
        else:
            probed = [t for t in targets if rng.random() < 0.7]
            results: list[Result] = [icmp_result(rng, t, now) for t in probed]
            results += [throughput_result(rng, t, now) for t in probed if t.throughput.enabled and rng.random() < 0.3]
            sink.consume(Cycle("icmp", "g", now, 2.0, tuple(results)))
        assert cached_part(sink) == rendered_whole(sink), f"seed {seed}, step {step}"
        states.update(s.state.value for s in sink._endpoints.values() if s.target.probed)
    assert {"up", "down", "monitor_cut_off", "maintenance"} <= states
    assert promtool_problems(b"".join(sink.exposition()).decode()) == []


def test_a_large_cycle_absorbed_in_slices_gives_the_body_rendered_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sliced path (a running loop, pages published as they fill) renders the same lines."""
    monkeypatch.setattr(pages, "PAGE_ENDPOINTS", 7)
    monkeypatch.setattr(metrics, "SLICE_RESULTS", 3)
    monkeypatch.setattr(metrics, "AT_ONCE_RESULTS", 5)
    rng = random.Random(7)
    targets = [located_target(f"site-{i}") for i in range(60)]

    async def main() -> None:
        sink = MetricsSink()
        sink.set_targets(targets)
        for n in range(5):
            sink.consume(Cycle("icmp", "g", float(n), 2.0, tuple(icmp_result(rng, t, float(n)) for t in targets)))
            while sink._slices:
                await asyncio.sleep(0)
            assert cached_part(sink) == rendered_whole(sink)

    asyncio.run(main())


def test_a_healthy_cycle_leaves_the_lines_it_did_not_change_as_they_were() -> None:
    """A second answered cycle changes RTTs, counters and times, not the sites' info, target, up,
    loss or error-counter lines: those chunks are the very same objects (nothing rendered, joined
    or compressed again). A loss, then an error, re-render just their families."""
    targets = [located_target(f"site-{i}") for i in range(30)]
    sink = MetricsSink()
    sink.set_targets(targets)

    def cycle(at: float, rtts: tuple[float | None, ...], error: ProbeErrorReason | None = None) -> None:
        sink.consume(Cycle("icmp", "g", at, 1.0, tuple(icmp(t, at, *rtts, error=error) for t in targets)))

    def changed_families(before: list[bytes]) -> set[str]:
        kept = {id(chunk) for chunk in before}
        text = b"".join(chunk for chunk in sink.exposition()[:-2] if id(chunk) not in kept).decode()  # not the tail
        return {line.split("{", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}

    cycle(1.0, (0.004, 0.005, 0.004))
    before = sink.exposition()[:-1]
    cycle(2.0, (0.003, 0.006, 0.004))
    every_cycle = {"connmon_icmp_jitter_seconds", "connmon_icmp_rtt_last_seconds",
                   "connmon_last_probe_timestamp_seconds", "connmon_icmp_rtt_seconds_bucket",
                   "connmon_icmp_rtt_seconds_sum", "connmon_icmp_rtt_seconds_count",
                   "connmon_icmp_packets_sent_total", "connmon_icmp_packets_received_total"}
    assert changed_families(before) == every_cycle
    before = sink.exposition()[:-1]
    cycle(3.0, (0.003, 0.004, None))
    assert changed_families(before) == every_cycle | {"connmon_icmp_loss_ratio"}
    before = sink.exposition()[:-1]
    cycle(4.0, (None, None, None), ProbeErrorReason.UNREACHABLE)
    assert changed_families(before) == {
        "connmon_up", "connmon_site_state", "connmon_icmp_loss_ratio", "connmon_probe_errors_total",
        "connmon_icmp_packets_sent_total",
        "connmon_last_probe_timestamp_seconds"}  # no RTT: no jitter, no last RTTs, an unchanged histogram
    assert cached_part(sink) == rendered_whole(sink)
