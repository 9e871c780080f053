"""The metrics sink: exposition derived from results, parsed back with prometheus-client."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import ThroughputSettings
from monitor.config.windows import MaintenanceWindows, parse_window
from monitor.errors import ICMP_REASONS, ProbeErrorReason
from monitor.exposition.families import RTT_BUCKETS_SECONDS, escape_label_value
from monitor.exposition.sink import MetricsSink
from monitor.results import Cycle, Gap, IcmpResult
from monitor.site_states import SITE_STATES
from tests.factories import SOME_TIME, Clock, agent_target, icmp, located_target
from tests.promtool import promtool_problems

TRICKY_NAMES = ['№12 мектеп', 'Ақтөбе "Central" #3', "back\\slash", "two\nlines", "🏫 school", "a,b=c{d}"]


def render(sink: MetricsSink) -> str:
    return b"".join(sink.exposition()).decode("utf-8")


def parsed(sink: MetricsSink) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(render(sink)):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(p: dict, name: str, **labels: str) -> float:
    found = [v for lb, v in p.get(name, []) if labels.items() <= lb.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_tricky_names_survive_into_labels_exactly() -> None:
    """Cyrillic, quotes, backslashes, newlines and emoji in names parse back to the same string."""
    targets = [located_target(n, district=n) for n in TRICKY_NAMES]
    sink = MetricsSink()
    sink.set_targets(targets)
    sink.consume(Cycle("icmp", "g", 0.0, 0.1, tuple(icmp(t, SOME_TIME, 0.01) for t in targets)))
    p = parsed(sink)
    ups = {lb["endpoint"]: (lb["district"], v) for lb, v in p["connmon_up"]}
    assert ups == {n: (n, 1.0) for n in TRICKY_NAMES}
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert promtool_problems(render(sink)) == []


def test_histogram_counters_and_last_cycle_gauges() -> None:
    """RTTs land in cumulative buckets; counters add up over cycles; gauges show the last cycle."""
    t = located_target("s1")
    sink = MetricsSink()
    sink.set_targets([t])
    sink.consume(Cycle("icmp", "g", 0.0, 0.5, (icmp(t, SOME_TIME, 0.0004, 0.003, None, 0.7),)))
    sink.consume(Cycle("icmp", "g", 60.0, 0.5, (icmp(t, SOME_TIME, 10.0, None),)))
    p = parsed(sink)
    buckets = {lb["le"]: v for lb, v in p["connmon_icmp_rtt_seconds_bucket"]}
    assert buckets["0.0005"] == 1 and buckets["0.005"] == 2 and buckets["0.5"] == 2
    assert buckets["0.75"] == 3 and buckets["5.0"] == 3 and buckets["+Inf"] == 4
    assert len(buckets) == len(RTT_BUCKETS_SECONDS) + 1
    assert one(p, "connmon_icmp_rtt_seconds_count") == 4
    assert one(p, "connmon_icmp_rtt_seconds_sum") == pytest.approx(0.0004 + 0.003 + 0.7 + 10.0)
    assert one(p, "connmon_icmp_packets_sent_total") == 6
    assert one(p, "connmon_icmp_packets_received_total") == 4
    assert one(p, "connmon_icmp_loss_ratio") == 0.5  # last cycle: 1 of 2 answered
    assert one(p, "connmon_up") == 1
    assert one(p, "connmon_icmp_rtt_last_seconds", stat="max") == 10.0
    assert "connmon_icmp_jitter_seconds" not in p  # no two consecutive answers in the last cycle
    assert one(p, "connmon_cycle_duration_seconds_count", group="g") == 2
    assert one(p, "connmon_last_probe_timestamp_seconds", probe="icmp") == 1_700_000_000.0


def test_series_exist_before_the_first_cycle_and_errors_start_at_zero() -> None:
    """Before any result, counters and info exist (errors at 0 for every reason); 'up' does not."""
    sink = MetricsSink()
    sink.set_targets([located_target("s1")])
    p = parsed(sink)
    assert "connmon_up" not in p
    reasons = {lb["reason"]: v for lb, v in p["connmon_probe_errors_total"]}
    assert reasons == {r.value: 0.0 for r in ICMP_REASONS}  # no throughput method: no throughput series
    assert one(p, "connmon_endpoint_info", endpoint="s1", host="192.0.2.1") == 1
    assert one(p, "connmon_target_bits_per_second") == 4e6


def test_error_results_count_by_reason_and_mark_down() -> None:
    """An unprobeable endpoint is down with loss 1 and its reason counted."""
    t = located_target("s1", host="nosuch.example", address=None)
    sink = MetricsSink()
    sink.set_targets([t])
    for _ in range(3):
        sink.consume(Cycle("icmp", "g", 0.0, 0.1, (IcmpResult(t, 0.0, None, 0, (), ProbeErrorReason.DNS),)))
    p = parsed(sink)
    assert one(p, "connmon_probe_errors_total", reason="dns") == 3
    assert one(p, "connmon_probe_errors_total", reason="no_route") == 0
    assert (one(p, "connmon_up"), one(p, "connmon_icmp_loss_ratio")) == (0, 1)


def test_reload_drops_removed_endpoints_and_keeps_unchanged_state() -> None:
    """Setting new targets removes series of endpoints that went, keeps counters of those that stay."""
    a, b = located_target("a"), located_target("b", group="gone")
    sink = MetricsSink()
    sink.set_targets([a, b])
    sink.consume(Cycle("icmp", "g", 0.0, 0.1, (icmp(a, SOME_TIME, 0.01),)))
    sink.consume(Cycle("icmp", "gone", 0.0, 0.1, (icmp(b, SOME_TIME, 0.01),)))
    sink.set_targets([a, located_target("c")])
    sink.consume(Cycle("icmp", "gone", 0.0, 0.1, (icmp(b, SOME_TIME, 0.01),)))  # its last cycle, finishing late
    p = parsed(sink)
    assert {lb["group"] for lb, _ in p["connmon_cycle_duration_seconds_count"]} == {"g"}
    assert one(p, "connmon_cycle_duration_seconds_count", group="g") == 1
    assert {lb["endpoint"] for lb, _ in p["connmon_endpoint_info"]} == {"a", "c"}
    assert one(p, "connmon_icmp_packets_sent_total", endpoint="a") == 1
    assert one(p, "connmon_icmp_packets_sent_total", endpoint="c") == 0


def test_skipped_cycles_and_reload_state_are_exposed() -> None:
    """Skipped cycles are counted per group; a failed reload shows 0 and keeps the last good time."""
    times = iter([100.0, 200.0])
    sink = MetricsSink(clock=lambda: next(times))
    sink.set_targets([located_target("a")])
    sink.config_loaded(True)
    sink.cycle_skipped("icmp", "g")
    sink.config_loaded(False)
    p = parsed(sink)
    assert one(p, "connmon_cycles_skipped_total", group="g") == 1
    assert one(p, "connmon_config_last_reload_successful") == 0
    assert one(p, "connmon_config_last_reload_success_timestamp_seconds") == 100.0


def test_a_partly_failed_throughput_test_keeps_the_last_verdict() -> None:
    """Download measured and met, then a test whose download is busy: connmon_target_met stays 1."""
    import dataclasses

    from monitor.config import ThroughputSettings
    from monitor.results import Cycle, DirectionResult, ThroughputResult

    t = dataclasses.replace(located_target("s1"), throughput=ThroughputSettings(method="iperf3"))
    sink = MetricsSink()
    sink.set_targets([t])
    good = ThroughputResult(t, "iperf3", 1.0, 11.0, "192.0.2.1",
                            (DirectionResult("download", 1.0, 6.0, 5e6, 6_000_000, 5.0),
                             DirectionResult("upload", 6.0, 11.0, 1e6, 1_000_000, 5.0)))
    sink.consume(Cycle("throughput", "g", 1.0, 10.0, (good,)))
    busy = ThroughputResult(t, "iperf3", 100.0, 106.0, "192.0.2.1",
                            (DirectionResult("download", 100.0, 100.1, error=ProbeErrorReason.BUSY),
                             DirectionResult("upload", 101.0, 106.0, 2e6, 2_000_000, 5.0)),
                            ProbeErrorReason.BUSY)
    sink.consume(Cycle("throughput", "g", 100.0, 6.0, (busy,)))
    p = parsed(sink)
    assert one(p, "connmon_target_met") == 1
    assert one(p, "connmon_throughput_bits_per_second", direction="download") == 5e6
    assert one(p, "connmon_throughput_bits_per_second", direction="upload") == 2e6
    assert one(p, "connmon_probe_errors_total", probe="throughput", reason="busy") == 1
    assert one(p, "connmon_throughput_bytes_total", direction="upload") == 3_000_000


def test_missed_tests_in_a_row_count_up_and_reset_on_a_met_target() -> None:
    """Two misses give 2, a failed test (no verdict) leaves it, a met target resets it to 0."""
    import dataclasses

    from monitor.config import ThroughputSettings
    from monitor.results import DirectionResult, ThroughputResult

    t = dataclasses.replace(located_target("s1"), throughput=ThroughputSettings(method="iperf3"))
    sink = MetricsSink()
    sink.set_targets([t])
    assert "connmon_target_missed_consecutive_tests" not in parsed(sink)  # no verdict yet, no series

    def test_at(start: float, rate: float | None) -> None:
        error = ProbeErrorReason.REFUSED if rate is None else None
        d = DirectionResult("download", start, start + 5.0, rate, 1000, 5.0, error=error)
        sink.consume(Cycle("throughput", "g", start, 5.0, (ThroughputResult(t, "iperf3", start, start + 5.0,
                                                                            "192.0.2.1", (d,), error),)))

    test_at(1.0, 1e6)
    test_at(100.0, 2e6)
    assert one(parsed(sink), "connmon_target_missed_consecutive_tests") == 2
    test_at(200.0, None)
    p = parsed(sink)
    assert one(p, "connmon_target_missed_consecutive_tests") == 2
    assert one(p, "connmon_target_met") == 0
    test_at(300.0, 5e6)
    p = parsed(sink)
    assert one(p, "connmon_target_missed_consecutive_tests") == 0
    assert one(p, "connmon_target_met") == 1
    assert promtool_problems(render(sink)) == []


def test_a_large_cycle_is_absorbed_in_slices_between_other_work() -> None:
    """On a running loop, 2,500 results are absorbed over several loop turns: other tasks (scrapes)
    run in between; what they see changes a whole page at a time (every endpoint's series from one
    cycle), pages are published before the cycle's last slice, and the last body has every site."""
    import asyncio

    from monitor.exposition.pages import PAGE_ENDPOINTS
    from monitor.exposition.sink import AT_ONCE_RESULTS

    targets = [located_target(f"s{i:04d}") for i in range(2500)]
    sink = MetricsSink()
    sink.set_targets(targets)
    assert len(targets) > AT_ONCE_RESULTS

    async def run() -> tuple[int, bool, list[int]]:
        ticks = 0
        seen: list[int] = []  # endpoints with an up line, as each scrape would see it
        stop = asyncio.Event()

        async def scraper() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                seen.append(b"".join(sink.exposition()).count(b"connmon_up{"))
                await asyncio.sleep(0)

        task = asyncio.create_task(scraper())
        await asyncio.sleep(0)
        sink.consume(Cycle("icmp", "g", 0.0, 0.1, tuple(icmp(t, SOME_TIME, 0.01) for t in targets)))
        untouched = b"connmon_up{" not in b"".join(sink.exposition())
        at_consume = ticks
        while b"".join(sink.exposition()).count(b"connmon_up{") < len(targets):
            await asyncio.sleep(0)
        stop.set()
        await task
        return ticks - at_consume, untouched, seen

    interleaved, untouched, seen = asyncio.run(run())
    assert untouched  # consume() returned before absorbing: the old body is still served
    assert interleaved >= 3  # the other task ran between the slices
    assert all(n % PAGE_ENDPOINTS == 0 or n == len(targets) for n in seen), seen  # whole pages only
    assert seen == sorted(seen)
    assert any(0 < n < len(targets) for n in seen)  # pages went out before the cycle's end
    text = b"".join(sink.exposition()).decode()
    assert text.count("connmon_up{") == 2500


def test_planned_and_retired_sites_are_counted_and_described_but_have_no_probe_series() -> None:
    """Issue 11: connmon_sites counts every configured site by status; only connected ones get probe series.

    endpoint_info carries status and provider for every site; connmon_contracted_bits_per_second exists
    exactly for the sites whose contract is written down; with --shard both carry the shard label.
    """
    iperf = ThroughputSettings(method="iperf3")
    sites = [located_target("on", provider="KazSat", contracted_bits_per_second=20e6, throughput=iperf),
             located_target("on2", district="Temir"),
             located_target("soon", host="", address=None, status="planned", throughput=iperf,
                            contracted_bits_per_second=10e6),
             located_target("soon2", host="192.0.2.9", status="planned", link="satellite"),
             located_target("gone", status="retired", provider="Old Telecom")]
    sink = MetricsSink(shard="1")
    sink.set_targets(sites)
    sink.consume(Cycle("icmp", "g", 0.0, 0.1, (icmp(sites[0], SOME_TIME, 0.01), icmp(sites[1], SOME_TIME, 0.01))))
    p = parsed(sink)
    counts = {(lb["kind"], lb["district"], lb["link"], lb["status"], lb["shard"]): v for lb, v in p["connmon_sites"]}
    assert counts == {("school", "Aktobe", "fibre", "connected", "1"): 1,
                      ("school", "Temir", "fibre", "connected", "1"): 1,
                      ("school", "Aktobe", "fibre", "planned", "1"): 1,
                      ("school", "Aktobe", "satellite", "planned", "1"): 1,
                      ("school", "Aktobe", "fibre", "retired", "1"): 1}
    info = {lb["endpoint"]: (lb["status"], lb["provider"], lb["host"]) for lb, _ in p["connmon_endpoint_info"]}
    assert info == {"on": ("connected", "KazSat", "192.0.2.1"), "on2": ("connected", "", "192.0.2.1"),
                    "soon": ("planned", "", ""), "soon2": ("planned", "", "192.0.2.9"),
                    "gone": ("retired", "Old Telecom", "192.0.2.1")}
    assert {lb["endpoint"]: v for lb, v in p["connmon_contracted_bits_per_second"]} == {"on": 20e6, "soon": 10e6}
    probe_families = [name for name in p if name not in (
        "connmon_sites", "connmon_endpoint_info", "connmon_contracted_bits_per_second")
        and p[name] and "endpoint" in p[name][0][0]]
    assert "connmon_up" in probe_families and "connmon_throughput_tests_total" in probe_families
    for name in probe_families:  # no up, ICMP, target or throughput series for planned or retired sites
        assert {lb["endpoint"] for lb, _ in p[name]} <= {"on", "on2"}, name
    assert {lb["group"] for lb, _ in p["connmon_cycle_duration_seconds_count"]} == {"g"}
    assert promtool_problems(render(sink)) == []

    sink.set_targets([dataclasses.replace(sites[2], status="connected", host="192.0.2.8", address="192.0.2.8")])
    p = parsed(sink)  # a reload that connects the site: its probe series appear, the counts follow
    assert [(lb["status"], v) for lb, v in p["connmon_sites"]] == [("connected", 1)]
    assert one(p, "connmon_target_bits_per_second", endpoint="soon") == 4e6
    assert one(p, "connmon_throughput_tests_total", endpoint="soon") == 0


def test_each_probed_site_is_in_exactly_one_state_and_maintenance_follows_its_window() -> None:
    """Issue 21: connmon_site_state has one series per state, exactly one at 1, from start-up (unknown); a result
    with monitor_cut_off makes that state (and counts the reason); an open window makes maintenance and
    connmon_maintenance 1, and closes without a result of the site's own (another group's cycle tells); a silent
    agent site known to have had no power is in power; planned sites have neither family."""
    almaty = ZoneInfo("Asia/Almaty")

    def at(hour: int, minute: int = 0) -> float:
        return dt.datetime(2026, 12, 6, hour, minute, tzinfo=almaty).timestamp()  # a Sunday

    night = MaintenanceWindows("Asia/Almaty", weekly=(parse_window("Sun 02:00-04:00"),))
    a, b = located_target("a", maintenance=night), located_target("b")
    vsat = agent_target("vsat")
    soon = located_target("soon", status="planned", maintenance=night)
    clock = Clock(at(1))
    sink = MetricsSink(clock=clock)
    sink.set_targets([a, b, vsat, soon])

    def states() -> dict[str, str]:
        p = parsed(sink)
        assert {lb["endpoint"] for lb, _ in p["connmon_site_state"]} == {"a", "b", "vsat"}
        assert {lb["endpoint"] for lb, _ in p["connmon_maintenance"]} == {"a", "b", "vsat"}
        shown = {}
        for name in ("a", "b", "vsat"):
            values = {lb["state"]: v for lb, v in p["connmon_site_state"] if lb["endpoint"] == name}
            assert sorted(values) == sorted(s.value for s in SITE_STATES)
            [state] = [s for s, v in values.items() if v == 1]
            assert sum(values.values()) == 1
            assert one(p, "connmon_maintenance", endpoint=name) == (state == "maintenance")
            shown[name] = state
        assert promtool_problems(render(sink)) == []
        return shown

    assert states() == {"a": "unknown", "b": "unknown", "vsat": "unknown"}
    cut = IcmpResult(b, at(1), b.address, 2, (None, None), ProbeErrorReason.MONITOR_CUT_OFF,
                     "no reply while the centre's uplink checks all failed (gateway)")
    sink.consume(Cycle("icmp", "g", at(1), 1.0, (icmp(a, at(1), 0.01), cut, icmp(vsat, at(1), 0.6))))
    assert states() == {"a": "up", "b": "monitor_cut_off", "vsat": "up"}
    p = parsed(sink)
    assert one(p, "connmon_probe_errors_total", endpoint="b", reason="monitor_cut_off") == 1
    assert one(p, "connmon_up", endpoint="b") == 0  # the raw truth stays

    clock.now = at(2, 1)
    sink.consume(Cycle("icmp", "other", at(2, 1), 0.0, ()))
    assert states() == {"a": "maintenance", "b": "monitor_cut_off", "vsat": "up"}
    clock.now = at(3)
    silent = IcmpResult(vsat, at(3), None, 0, (), ProbeErrorReason.AGENT_SILENT, "nothing received")
    sink.consume(Cycle("agent", "vsat", at(3), 0.0, (silent,), (Gap(vsat, at(1), at(3), "unknown", 60.0),)))
    assert states() == {"a": "maintenance", "b": "monitor_cut_off", "vsat": "down"}
    sink.consume(Cycle("agent", "vsat", at(3, 30), 0.0, (), (Gap(vsat, at(1), at(3, 20), "power", 60.0),)))
    assert states() == {"a": "maintenance", "b": "monitor_cut_off", "vsat": "power"}
    clock.now = at(4)
    sink.consume(Cycle("icmp", "g", at(4), 1.0, (icmp(b, at(4), None),)))
    assert states() == {"a": "up", "b": "down", "vsat": "power"}
    sink.set_targets([a, b, vsat, dataclasses.replace(soon, status="connected")])  # a reload: soon is probed now
    assert one(parsed(sink), "connmon_site_state", endpoint="soon", state="unknown") == 1
