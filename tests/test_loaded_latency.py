"""Latency under load (issue 20) without a network: figures, sampling, exposition, output, history and config."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import ThroughputSettings, load_config
from monitor.exposition.sink import MetricsSink
from monitor.history.store import EndpointRecord, HistoryStore
from monitor.icmp.engine import EchoJob, EchoOutcome
from monitor.probe_output import format_throughput_table, throughput_to_json
from monitor.probes import ProbeContext, loaded_latency
from monitor.probes.throughput import run_tests
from monitor.results import Cycle, DirectionResult, ThroughputResult
from monitor.targets import Target, build_targets
from tests.factories import located_target, throughput_target, write_config
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.stores import StoreOpeners

IDLE = (0.010, 0.012, None, 0.011)
LOADED = tuple(0.01 + 0.01 * i for i in range(1, 11)) + (None,)  # 0.02 … 0.11 s, one echo lost


def _direction(name: str = "download", idle: Sequence[float | None] = IDLE,
               loaded: Sequence[float | None] = LOADED) -> DirectionResult:
    return DirectionResult(name, 1.0, 8.0, 4e6, 4_000_000, 6.0, idle_rtts_seconds=tuple(idle),  # type: ignore[arg-type]
                           loaded_rtts_seconds=tuple(loaded))


def _test(t: Target, *directions: DirectionResult) -> ThroughputResult:
    return ThroughputResult(t, "iperf3", 1.0, 20.0, "192.0.2.1", directions)


def test_figures_are_derived_from_the_raw_samples() -> None:
    """Idle and loaded medians, the interpolated p90, added latency and RPM come from the answered echoes only."""
    d = _direction()
    assert d.idle_rtt_seconds == pytest.approx(0.011)
    assert d.loaded_rtt_seconds == pytest.approx(0.065)
    assert d.loaded_rtt_p90_seconds == pytest.approx(0.101)  # 0.1 + 0.1 × (0.11 - 0.1)
    assert d.added_latency_seconds == pytest.approx(0.054)
    assert d.round_trips_per_minute == pytest.approx(60 / 0.065)
    assert d.latency_sample_bytes == (4 + 11) * 84 + (3 + 10) * 84
    bare = DirectionResult("download", 1.0, 2.0, 1e6)
    assert bare.latency_figures() == dict.fromkeys(bare.latency_figures())  # all None without samples
    assert set(d.as_json("")) == set(bare.as_json(""))  # the agents' wire is unchanged
    assert set(d.latency_json()) == {"idle_rtts_seconds", "loaded_rtts_seconds"}  # the history's extra keys


def test_the_verdict_takes_the_worst_direction_against_the_cascaded_limit(tmp_path: Path) -> None:
    """max_added_latency cascades defaults → group → endpoint; the verdict fails when any direction exceeds it."""
    config = load_config(write_config(tmp_path, """
defaults: {max_added_latency: 150ms}
groups:
  - name: fibre
    kind: school
    endpoints:
      - {name: a, host: 192.0.2.1}
  - name: satellite
    kind: school
    max_added_latency: 600ms
    endpoints:
      - {name: b, host: 192.0.2.2}
      - {name: c, host: 192.0.2.3, max_added_latency: 40ms}
"""))
    limits = {t.name: t.max_added_latency_seconds for t in build_targets(config)}
    assert limits == {"a": pytest.approx(0.15), "b": pytest.approx(0.6), "c": pytest.approx(0.04)}
    t = dataclasses.replace(throughput_target("s"), max_added_latency_seconds=0.05)
    up_slow = _direction("upload", loaded=(0.3, 0.4, 0.5))
    assert _test(t, _direction()).latency_under_load_ok is False  # 54 ms > 50 ms
    assert _test(dataclasses.replace(t, max_added_latency_seconds=0.06), _direction()).latency_under_load_ok is True
    assert _test(dataclasses.replace(t, max_added_latency_seconds=0.06), _direction(),
                 up_slow).latency_under_load_ok is False
    assert _test(t, DirectionResult("download", 1.0, 2.0, 1e6)).latency_under_load_ok is None


class _FakePinger:
    """Answers every echo with the RTT its queue gives at the moment it is sent: idle before the test, full during."""

    families = frozenset({2})

    def __init__(self) -> None:
        self.loaded = False
        self.jobs: list[EchoJob] = []

    async def ping(self, jobs: Sequence[EchoJob]) -> list[EchoOutcome]:
        self.jobs.extend(jobs)
        rtt = 0.2 if self.loaded else 0.01
        out = []
        for job in jobs:
            for _ in range(job.count):
                await asyncio.sleep(0)
            out.append(EchoOutcome(sent=job.count, rtts_seconds=[rtt] * job.count))
        await asyncio.sleep(rtt / 10)
        return out


def test_each_direction_gets_an_idle_burst_then_samples_while_it_runs() -> None:
    """Through the shared runner: 10 idle echoes before, then 10 a second to the tested address during the test.

    Only the echoes sent once the data surely flowed count as loaded (review finding E): the measure
    below spends 0.4 s starting up with the link idle, 0.3 s of warm-up (``omit``) and 1.0 s measured
    with the link full, then 0.3 s tearing down while the queue it filled drains.
    """
    pinger = _FakePinger()
    t = throughput_target("s", directions=("download", "upload"), omit_seconds=0.3)
    t = dataclasses.replace(t, host="192.0.2.7", address="192.0.2.7")

    async def measure(target: Target, address: str | None, direction: str, ctx: ProbeContext) -> DirectionResult:
        started_at = ctx.clock()
        await asyncio.sleep(0.4)  # the tool starts, its control exchange: nothing flows yet
        pinger.loaded = True
        await asyncio.sleep(0.3 + 1.0)  # warm-up, then the measured span
        await asyncio.sleep(0.3)  # results exchanged, the tool exits: the queue it filled still drains
        pinger.loaded = False  # drained before the next direction's idle burst
        return DirectionResult(direction, started_at, ctx.clock(), 1e6, 125_000, 1.0)  # type: ignore[arg-type]

    async def main() -> list[ThroughputResult]:
        ctx = ProbeContext(pinger, address_families=frozenset({2}))
        return await run_tests([t], ctx, "iperf3", measure)

    (result,) = asyncio.run(main())
    for d in result.directions:
        assert d.idle_rtts_seconds == (0.01,) * loaded_latency.IDLE_ECHOES
        # every echo counts (loaded_latency's module doc says why): the start-up's idle ones too
        assert set(d.loaded_rtts_seconds) == {0.01, 0.2}
        assert len(d.loaded_rtts_seconds) >= 18  # ~2 s at 10 a second
        assert d.loaded_rtt_p90_seconds == pytest.approx(0.2)  # the 90th percentile is the queue's
        echoes = loaded_latency.IDLE_ECHOES + len(d.loaded_rtts_seconds)
        assert d.latency_sample_bytes == 2 * echoes * 84  # every echo was on the link, both ways
    assert {j.address for j in pinger.jobs} == {"192.0.2.7"}
    assert result.latency_under_load_ok is False  # 190 ms against the default 100 ms


def test_every_echo_of_a_direction_counts_as_loaded() -> None:
    """The start-up's echoes are not told apart (review finding E: see loaded_latency's module doc); a test
    that measured nothing has no loaded echo."""
    from monitor.probes.loaded_latency import LoadedSamples, loaded

    samples = LoadedSamples([0.01, 0.02, 0.3, None, 0.4, 0.03], [100.5, 101.5, 102.5, 106.0, 108.0, 110.5])
    assert loaded(samples, measured_seconds=6.0) == tuple(samples.rtts_seconds)
    assert loaded(samples, 0.0) == ()


def test_a_direction_that_loses_its_echoes_under_load_fails_the_verdict() -> None:
    """Review finding F: lost loaded echoes are no delay figure, but losing them to the load is a fail.

    The quantiles stay over the answered echoes; every loaded echo lost while the idle burst
    answered gives verdict 0, as does a loaded loss more than 0.5 above the idle loss. A loss the
    idle burst had too (the path, not the load) does not.
    """
    t = dataclasses.replace(throughput_target("s"), max_added_latency_seconds=0.1)
    all_lost = _direction("upload", idle=(0.01, 0.012), loaded=(None,) * 40)
    assert all_lost.loaded_rtt_seconds is None and all_lost.added_latency_seconds is None
    assert all_lost.lost_under_load and all_lost.loaded_loss_ratio == 1.0
    assert _test(t, all_lost).latency_under_load_ok is False  # was None: no figure, no verdict
    assert _test(t, _direction(), all_lost).latency_under_load_ok is False  # download alone would pass
    mostly_lost = _direction(loaded=(0.02, 0.03, 0.02) + (None,) * 7)  # 70% lost, idle 25%: +45 points
    assert mostly_lost.loaded_rtt_seconds == pytest.approx(0.02)  # the quantiles: answered echoes only
    assert mostly_lost.loaded_rtt_p90_seconds == pytest.approx(0.03 - 0.2 * 0.01)
    assert not mostly_lost.lost_under_load and _test(t, mostly_lost).latency_under_load_ok is True
    worse = _direction(idle=(0.01,) * 10, loaded=(0.02, 0.03, 0.02) + (None,) * 7)  # idle 0%: +70 points
    assert worse.lost_under_load and _test(t, worse).latency_under_load_ok is False
    path_loss = _direction(idle=(0.01, None, None, None), loaded=(0.02,) + (None,) * 3)  # 75% both ways
    assert not path_loss.lost_under_load and _test(t, path_loss).latency_under_load_ok is True
    dead = _direction(idle=(None,) * 10, loaded=(None,) * 40)  # no idle answer: the site is down, not loaded
    assert not dead.lost_under_load and _test(t, dead).latency_under_load_ok is None
    sink = MetricsSink()
    m = dataclasses.replace(located_target("m"), throughput=ThroughputSettings(method="iperf3"))
    sink.set_targets([m])
    sink.consume(Cycle("throughput", "g", 1.0, 10.0, (_test(m, all_lost),)))
    assert [v for lb, v in _parsed(sink)["connmon_latency_under_load_ok"] if lb["endpoint"] == "m"] == [0]


def test_without_an_engine_the_test_runs_as_before() -> None:
    """No ICMP engine in the context: no samples, no verdict, the rate still measured."""
    t = throughput_target("s", directions=("download",))

    async def measure(target: Target, address: str | None, direction: str, ctx: ProbeContext) -> DirectionResult:
        return DirectionResult(direction, 0.0, 1.0, 1e6)  # type: ignore[arg-type]

    (result,) = asyncio.run(run_tests([dataclasses.replace(t, host="192.0.2.7", address="192.0.2.7")],
                                      ProbeContext(None), "iperf3", measure))
    assert result.directions[0].loaded_rtts_seconds == () and result.latency_under_load_ok is None
    assert result.download_bits_per_second == 1e6


def _parsed(sink: MetricsSink) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(b"".join(sink.exposition()).decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics_are_absent_until_a_sampled_test_then_per_direction() -> None:
    """The idle, loaded (0.5/0.9), added, RPM and verdict series appear with the first sampled test, per direction."""
    t = dataclasses.replace(located_target("s1"), throughput=ThroughputSettings(method="iperf3"))
    sink = MetricsSink()
    sink.set_targets([t])
    p = _parsed(sink)
    assert "connmon_throughput_added_latency_seconds" not in p and "connmon_latency_under_load_ok" not in p
    sink.consume(Cycle("throughput", "g", 1.0, 10.0, (_test(t, _direction(), _direction("upload", loaded=(0.5,))),)))
    p = _parsed(sink)

    def one(name: str, **labels: str) -> float:
        found = [v for lb, v in p[name] if labels.items() <= lb.items()]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert one("connmon_throughput_idle_rtt_seconds", direction="download", endpoint="s1") == pytest.approx(0.011)
    assert one("connmon_throughput_loaded_rtt_seconds", direction="download", quantile="0.5") == pytest.approx(0.065)
    assert one("connmon_throughput_loaded_rtt_seconds", direction="download", quantile="0.9") == pytest.approx(0.101)
    assert one("connmon_throughput_added_latency_seconds", direction="upload") == pytest.approx(0.489)
    assert one("connmon_throughput_round_trips_per_minute", direction="upload") == pytest.approx(120)
    assert one("connmon_latency_under_load_ok", endpoint="s1") == 0
    # a later test without samples (no engine) keeps the figures and the verdict, as the speed verdict is kept
    sink.consume(Cycle("throughput", "g", 50.0, 10.0, (_test(t, DirectionResult("download", 50.0, 60.0, 5e6)),)))
    p = _parsed(sink)
    assert one("connmon_latency_under_load_ok", endpoint="s1") == 0


def test_probe_json_and_table_carry_the_figures() -> None:
    """``--json`` directions gain the five figures; the table gains an added-latency column (ms, down/up)."""
    t = throughput_target("s")
    test = _test(t, _direction(), _direction("upload", idle=(0.01,), loaded=(0.02,)))
    entry = throughput_to_json(t, test)
    down = entry["throughput_directions"][0]  # type: ignore[index]
    assert {k: round(v, 6) for k, v in down.items() if k.endswith(("_seconds", "_minute"))
            and k not in ("measured_seconds", "tcp_connect_seconds")} == {
        "idle_rtt_seconds": 0.011, "loaded_rtt_seconds": 0.065, "loaded_rtt_p90_seconds": 0.101,
        "added_latency_seconds": 0.054, "round_trips_per_minute": round(60 / 0.065, 6)}
    json.dumps(entry)
    table = format_throughput_table([t], {"s": test})
    assert "ADDED LATENCY ms down/up" in table and "54.0/10.0" in table


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreOpeners]:
    opener = StoreOpeners(request.param, tmp_path / "history.sqlite3",
                          request.getfixturevalue("pg_url") if request.param == "postgresql" else None)
    yield opener
    opener.close_all()


def test_history_keeps_the_samples_with_the_test(open_store: StoreOpeners) -> None:
    """Both backends give back the samples, so the figures and the verdict are the same after a restart."""
    store: HistoryStore = open_store()
    t = throughput_target("A")
    store.write([EndpointRecord.of(t)], [_test(t, _direction(), _direction("upload", idle=(0.01,), loaded=(None,)))])
    (stored,) = store.throughput_tests("A", 0.0, 100.0)
    down, up = stored.directions
    assert down.idle_rtts_seconds == IDLE and down.loaded_rtts_seconds == LOADED
    assert up.loaded_rtts_seconds == (None,) and up.added_latency_seconds is None
    # download's 54 ms is within the default 100 ms, but upload lost its one loaded echo while idle answered
    assert stored.as_result(t).latency_under_load_ok is False and stored.latency_under_load_ok is False
    store.write([], [dataclasses.replace(_test(t, _direction()), started_at=30.0, ended_at=40.0)])
    assert [s.latency_under_load_ok for s in store.throughput_tests("A", 0.0, 100.0)] == [False, True]


def test_tests_stored_before_issue_20_still_read(tmp_path: Path) -> None:
    """A direction written without the sample keys (an older history) reads back with no figures."""
    from monitor.history.codec import directions_from_json

    old = ('[{"direction":"download","started_at":1.0,"ended_at":2.0,"bits_per_second":5000000.0,"bytes":10,'
           '"measured_seconds":1.0,"retransmits":null,"error":null,"error_detail":""}]')
    (d,) = directions_from_json(old)
    assert d.bits_per_second == 5e6 and d.idle_rtts_seconds == () and d.added_latency_seconds is None


def test_a_version_4_sqlite_history_reads_then_migrates_keeping_its_tests(tmp_path: Path) -> None:
    """A history from before issue 20 reads read-only (tests without a limit), then migrates on a write open."""
    import sqlite3

    from monitor.history import sqlite as sqlite_store
    from monitor.history.sqlite import SqliteStore

    path = tmp_path / "history.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(";\n".join(sqlite_store.MIGRATIONS[:4]) + ";\n"
                     "INSERT INTO endpoints (id, name, kind, district, link, grp, target_bps) VALUES "
                     "(1, 'old', 'school', 'Aktobe', 'fibre', 'g', 4000000);\n"
                     "INSERT INTO throughput (endpoint_id, started_at, ended_at, method, bytes, directions, "
                     "target_bps) VALUES (1, 200, 211, 'iperf3', 0, '[]', 4000000);\nPRAGMA user_version = 4;")
    db.close()
    reader = SqliteStore(path, read_only=True)
    try:
        (old,) = reader.throughput_tests("old", 0, 1e9)
        assert old.max_added_latency_seconds is None and old.latency_under_load_ok is None
    finally:
        reader.close()
    store = SqliteStore(path)
    try:
        assert store.schema_version() == len(sqlite_store.MIGRATIONS) >= 5
        t = dataclasses.replace(throughput_target("old"), max_added_latency_seconds=0.05)
        store.write([EndpointRecord.of(t)], [dataclasses.replace(_test(t, _direction()), started_at=300.0)])
        before, after = store.throughput_tests("old", 0, 1e9)
        assert before.max_added_latency_seconds is None and before.directions == ()
        assert after.max_added_latency_seconds == 0.05 and after.latency_under_load_ok is False  # 54 ms > 50 ms
    finally:
        store.close()


def test_the_report_shows_the_column_and_the_kpi_line_in_every_format(tmp_path: Path) -> None:
    """With sampled tests: an added-latency column and the line "1 of 2 sites ... more latency ..." in each format."""
    import csv as csv_module
    import io

    from monitor.history.sqlite import SqliteStore
    from monitor.report.compliance import build_report
    from monitor.report.render import RENDERERS
    from tests.factories import OCT

    store = SqliteStore(tmp_path / "history.sqlite3")
    try:
        bloated = dataclasses.replace(throughput_target("bloated"), max_added_latency_seconds=0.05)
        fine = throughput_target("fine")  # the default 100 ms
        at = OCT.start + 3600
        store.write([EndpointRecord.of(bloated), EndpointRecord.of(fine)], [
            dataclasses.replace(_test(bloated, _direction()), started_at=at),  # 54 ms > 50 ms
            dataclasses.replace(_test(fine, _direction()), started_at=at)])  # 54 ms ≤ 100 ms
        report = build_report(store, OCT)
    finally:
        store.close()
    assert report.latency_sites == (1, 2)
    sentence = ("Sites whose added latency under load exceeds their max_added_latency (the median of their tests): "
                "1 of 2 with sampled tests.")
    for fmt, render in RENDERERS.items():
        text = render(report)
        assert sentence in text or fmt == "csv", fmt
        if fmt in ("table", "markdown", "html"):
            assert "added latency ms" in text and "54.0" in text, fmt
    rows = list(csv_module.reader(io.StringIO(RENDERERS["csv"](report))))
    header = rows[0]
    by_site = {row[0]: dict(zip(header, row, strict=True)) for row in rows[1:3]}
    assert by_site["bloated"]["added_latency_median_ms"] == "54.000"
    assert by_site["bloated"]["latency_exceeded"] == "true"
    assert by_site["fine"]["latency_exceeded"] == "false"
    assert rows[-2:] == [["latency_sites_exceeding", "latency_sites_judged"], ["1", "2"]]
    doc = json.loads(RENDERERS["json"](report))
    assert doc["latency_under_load"]["sites_exceeding"] == 1 and doc["latency_under_load"]["sites_judged"] == 2


def test_a_proxy_is_flagged_in_metrics_site_json_and_report(tmp_path: Path) -> None:
    """Handshakes under half the idle RTT: connmon_pep_detected 1, the site JSON's note and the report's line."""
    from monitor.history.sqlite import SqliteStore
    from monitor.report.compliance import build_report
    from monitor.report.render import RENDERERS
    from monitor.web.site_state import SiteStateSink
    from tests.factories import OCT

    satellite = (0.6, 0.61, 0.6)
    proxied = dataclasses.replace(_direction(idle=satellite, loaded=(0.7,)), connect_seconds=(0.02, 0.03, 0.02))
    slow = dataclasses.replace(_direction(idle=satellite, loaded=(0.7,)), connect_seconds=(0.6, 0.62, 0.61))
    lan = dataclasses.replace(_direction(idle=(0.001,), loaded=(0.002,)), connect_seconds=(0.0001,))
    assert (proxied.pep_suspected, slow.pep_suspected, lan.pep_suspected) == (True, False, False)
    assert _direction().pep_suspected is None  # no handshakes timed: not judged
    a = dataclasses.replace(located_target("a"), throughput=ThroughputSettings(method="iperf3"))
    b = dataclasses.replace(located_target("b"), throughput=ThroughputSettings(method="iperf3"))
    sink = MetricsSink()
    sink.set_targets([a, b])
    sink.consume(Cycle("throughput", "g", 1.0, 10.0, (_test(a, proxied), _test(b, slow))))
    values = {lb["endpoint"]: v for lb, v in _parsed(sink)["connmon_pep_detected"]}
    assert values == {"a": 1, "b": 0}
    state = SiteStateSink()
    state.set_targets([a, b])
    state.consume(Cycle("throughput", "g", 1.0, 10.0, (_test(a, proxied), _test(b, slow))))
    site_a, site_b = state.site("a"), state.site("b")
    assert site_a is not None and site_b is not None
    assert site_a["throughput"]["pep_detected"] is True
    assert site_a["throughput"]["pep_note"] == "TCP is terminated before the site: speed figures include a proxy"
    assert site_b["throughput"]["pep_detected"] is False and site_b["throughput"]["pep_note"] is None
    store = SqliteStore(tmp_path / "history.sqlite3")
    try:
        sa, sb = throughput_target("sat-a"), throughput_target("sat-b")
        at = OCT.start + 3600
        store.write([EndpointRecord.of(sa), EndpointRecord.of(sb)], [
            dataclasses.replace(_test(sa, proxied), started_at=at),
            dataclasses.replace(_test(sb, slow), started_at=at)])
        report = build_report(store, OCT)
    finally:
        store.close()
    assert report.pep_sites == ("sat-a",)
    line = "TCP is terminated before the site: speed figures include a proxy: sat-a."
    for fmt in ("table", "markdown", "html", "json"):
        assert line in RENDERERS[fmt](report), fmt
    assert "pep_detected_site\nsat-a\n" in RENDERERS["csv"](report)


def test_the_samples_count_toward_the_monthly_budget() -> None:
    """A sampled test books its TCP bytes and its echoes (84 B each way) against the site's month."""
    from monitor.throughput_plan import ThroughputPlan

    t = throughput_target("metered", budget=10_000_000)
    plan = ThroughputPlan()
    plan.set_targets([t], 0.0)
    d = _direction()  # 4,000,000 TCP bytes, 15 echoes and 13 replies
    test = _test(t, d)
    assert test.bytes == 4_000_000 + (15 + 13) * 84
    plan.finished("metered", test, 30.0)
    assert plan.remaining_after("metered", 30.0) == 10_000_000 - 4_000_000 - 28 * 84
    m = dataclasses.replace(located_target("m"), throughput=ThroughputSettings(method="iperf3"))
    sink = MetricsSink()
    sink.set_targets([m])
    sink.consume(Cycle("throughput", "g", 1.0, 10.0, (_test(m, d),)))
    bytes_total = {lb["direction"]: v for lb, v in _parsed(sink)["connmon_throughput_bytes_total"]}
    assert bytes_total["download"] == 4_000_000 + 28 * 84


def test_handshakes_are_timed_and_a_refusing_server_ends_them() -> None:
    """Three connects to a listening port are timed; a refused port gives none, after one try."""
    import socket

    from monitor.probes.handshake import handshake_seconds

    server = socket.create_server(("127.0.0.1", 19540), backlog=8)
    try:
        timed = asyncio.run(handshake_seconds("127.0.0.1", 19540))
    finally:
        server.close()
    assert len(timed) == 3 and all(0 <= t < 1 for t in timed)
    assert asyncio.run(handshake_seconds("127.0.0.1", 19541)) == ()
