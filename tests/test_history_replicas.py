"""Replicas in the shared history (issue 19): each instance's cycles apart, one stream per site when read."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.errors import ProbeErrorReason
from monitor.history import postgres as postgres_store
from monitor.history import replicas
from monitor.history.postgres import PostgresStore
from monitor.history.sqlite import SqliteStore
from monitor.history.store import EndpointRecord, StoredCycle
from monitor.report.compliance import Period, site_row
from monitor.report.kpis import DEFAULT_THRESHOLDS, Span, site_kpi
from tests.factories import agent_target, icmp, october_rows, throughput_target, upstream_node
from tests.netlab import child_env
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.report_golden import GOLDEN_CSV

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC).timestamp()  # a midnight: a multiple of the 60 s interval
DAY = Period(dt.date(2026, 10, 1), dt.date(2026, 10, 1), "UTC")
UP, DOWN = (0.010,) * 4, (None,) * 4


def cycle(at: float, *rtts: float | None, error: str | None = None) -> StoredCycle:
    return StoredCycle(at, len(rtts), tuple(rtts), error)


# ----------------------------------------------------------------------------- the rule, pure


def test_one_instance_reads_as_written() -> None:
    """Rows of one instance (a named one, or "" alone) come back as they are, jitter and all: nothing is dropped."""
    rows = [cycle(0.0, 0.01), cycle(30.0, None), cycle(60.0, 0.02), cycle(60.5, 0.02), cycle(500.0)]
    for name in ("", "2"):
        assert replicas.merge([(name, c) for c in rows]) == rows


def test_a_reply_beats_silence_then_the_share_then_telling_then_the_name() -> None:
    """In one site-interval the kept replica is the one with a reply, then more replies per echo, then one that
    says something of the site rather than of itself (cut off), then the lowest name."""
    def pick(*entries: tuple[str, StoredCycle]) -> list[StoredCycle]:
        return replicas.best(list(entries))

    answered, silent = cycle(10.0, None, 0.02), cycle(12.0, None, None, error="timeout")
    assert pick(("0", silent), ("1", answered)) == [answered]
    half, full = cycle(10.0, 0.01, None), cycle(11.0, 0.01, 0.01)
    assert pick(("0", half), ("1", full)) == [full]
    cut_off = cycle(10.0, None, error=ProbeErrorReason.MONITOR_CUT_OFF.value)
    assert pick(("0", cut_off), ("1", silent)) == [silent]
    assert pick(("1", cycle(11.0, 0.02)), ("0", cycle(10.0, 0.03))) == [cycle(10.0, 0.03)]
    twice = [cycle(10.0, 0.01), cycle(10.002, 0.01)]  # one replica's two cycles in one interval: both kept
    assert pick(("0", twice[0]), ("1", cycle(12.0, 0.01)), ("0", twice[1])) == twice


def test_phase_shifted_replicas_count_each_interval_once_and_up_if_any_saw_it_up() -> None:
    """Two replicas 20 s apart at 60 s: 60 intervals, up where either answered, a dead one's stretch from the other."""
    rows = [("0", cycle(60.0 * k + 5, *(DOWN if 10 <= k < 20 else UP))) for k in range(60)]
    rows += [("1", cycle(60.0 * k + 25, *UP)) for k in range(60) if not 40 <= k < 50]
    rows.sort(key=lambda r: r[1].started_at)
    merged = replicas.merge(rows)
    assert len(merged) == 60
    assert all(c.received == 4 for c in merged)
    assert [c.started_at for c in merged if c.started_at % 60 == 25] == [60.0 * k + 25 for k in range(10, 20)]


def test_late_starts_and_a_restart_at_another_phase_keep_one_cycle_per_interval() -> None:
    """Starts a few milliseconds late, across what would be a bucket's border, and a replica restarted at another
    phase: every interval still counts once (one more at the restart at most)."""
    jitter = [0.004, -0.003, 0.0, 0.005, -0.005]
    rows = [("0", cycle(60.0 * k + jitter[k % 5], 0.01)) for k in range(100)]
    rows += [("1", cycle(60.0 * k + 31 + jitter[(k + 2) % 5], 0.01)) for k in range(50)]
    rows += [("1", cycle(60.0 * k + 55 + jitter[(k + 1) % 5], 0.01)) for k in range(51, 100)]  # restarted
    rows.sort(key=lambda r: r[1].started_at)
    assert 100 <= len(replicas.merge(rows)) <= 101


def test_without_two_cycles_of_any_replica_the_span_is_one_interval() -> None:
    """When no replica has two cycles in the span there is no interval to measure: one site-interval, the best."""
    assert replicas.merge([("0", cycle(10.0, None)), ("1", cycle(40.0, 0.01))]) == [cycle(40.0, 0.01)]


@st.composite
def replica_rows(draw: st.DrawFn) -> list[replicas.InstanceCycle]:
    """Up to four replicas of one site at one interval, each at its own phase, late by a little, alive in stretches,
    answering or not."""
    interval = draw(st.sampled_from([10.0, 60.0, 300.0]))
    names = draw(st.lists(st.sampled_from(["", "0", "1", "2", "10"]), min_size=1, max_size=4, unique=True))
    rows: list[replicas.InstanceCycle] = []
    for name in names:
        phase = draw(st.floats(0, interval, exclude_max=True))
        alive = draw(st.lists(st.booleans(), min_size=1, max_size=40))
        for k, on in enumerate(alive):
            if on:
                late = draw(st.floats(0, interval / (8 * len(names))))
                replies = draw(st.integers(0, 3))
                rtts = [0.01] * replies + [None] * (3 - replies)
                rows.append((name, cycle(1e9 + k * interval + phase + late, *rtts)))
    rows.sort(key=lambda r: (r[1].started_at, r[0]))
    return rows


@settings(max_examples=300, deadline=None)
@given(replica_rows())
def test_the_merge_keeps_input_cycles_one_replica_per_interval(rows: list[replicas.InstanceCycle]) -> None:
    """The merged stream is a part of the rows, oldest first; per site-interval it keeps one replica's cycles, never
    more than the most any replica had there, at least one, and a reply when any replica had one; one replica's rows
    come back unchanged."""
    merged = replicas.merge(rows)
    assert not Counter(merged) - Counter(c for _i, c in rows)
    assert [c.started_at for c in merged] == sorted(c.started_at for c in merged)
    if len(replicas.instances(rows)) == 1:
        assert merged == [c for _i, c in rows]
        return
    kept = iter(merged)
    bound = 0
    for group in replicas.groups(rows, replicas.reach_of(rows)):
        per = Counter(name for name, _c in group)
        bound += max(per.values())
        out = [next(kept) for _ in range(len(replicas.best(group)))]
        assert 1 <= len(out) <= max(per.values())
        assert {id(c) for c in out} <= {id(c) for _n, c in group}
        assert any(c.received for c in out) == any(c.received for _n, c in group)
    assert next(kept, None) is None
    assert len(merged) <= bound


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.lists(st.floats(0, 1, exclude_max=True), min_size=4, max_size=4),
       st.integers(5, 60), st.randoms(use_true_random=False))
def test_replicas_on_a_steady_schedule_give_one_cycle_per_interval(count: int, phases: list[float], n: int,
                                                                   rng: random.Random) -> None:
    """R replicas each firing every interval at any phase, a little late: n intervals give n cycles, and at most
    R - 1 more where the span cuts through an interval's replicas."""
    interval = 60.0
    rows = [(str(i), cycle(k * interval + phases[i] * interval + rng.uniform(0, interval / (8 * count)), 0.01))
            for i in range(count) for k in range(n)]
    rows.sort(key=lambda r: (r[1].started_at, r[0]))
    assert n <= len(replicas.merge(rows)) <= n + count - 1


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 4), st.lists(st.floats(0, 1, exclude_max=True), min_size=5, max_size=5),
       st.integers(5, 60), st.integers(1, 59), st.randoms(use_true_random=False))
def test_a_replica_restarted_at_another_phase_costs_at_most_r_minus_1_intervals(
        count: int, phases: list[float], n: int, restart: int, rng: random.Random) -> None:
    """One of R replicas restarts at another phase mid-span: no interval is lost, and at most R - 1 more are counted
    for the change (beside the span's edges)."""
    restart = min(restart, n - 1)
    interval = 60.0
    rows = [(str(i), cycle(interval * (k + (phases[4] if i == 0 and k >= restart else phases[i]))
                           + rng.uniform(0, interval / (8 * count)), 0.01))
            for i in range(count) for k in range(n)]
    rows.sort(key=lambda r: (r[1].started_at, r[0]))
    assert n <= len(replicas.merge(rows)) <= n + 2 * (count - 1)


# ----------------------------------------------------------------------------- a real PostgreSQL


def _write_two_replicas(url: str) -> None:
    """Site "a" probed by instances "0" (at :05) and "1" (at :25) for an hour at 60 s, 4 echoes a cycle:

    * k 10-19: "0" sees it down, "1" up (0.020 s): up, "1"'s cycles;
    * k 30-34: both see it down: down;
    * k 40-49: "1" is dead; "0" alone sees it down at k 45-46: down;
    * otherwise both see it up: "0"'s cycles (0.010 s), the lowest name.

    So 60 site-intervals, 53 up; 7 down of 60 s each; 212 replies of 240 echoes, 172 at 10 ms and 40 at 20 ms.
    """
    a = throughput_target("a")
    first, second = PostgresStore(url, instance="0"), PostgresStore(url, instance="1")
    try:
        for k in range(60):  # interleaved, as two daemons write
            down0 = 10 <= k < 20 or 30 <= k < 35 or k in (45, 46)
            first.write([], [icmp(a, T0 + 60 * k + 5, *((None,) * 4 if down0 else (0.010,) * 4),
                                  error=ProbeErrorReason.TIMEOUT if down0 else None)])
            if not 40 <= k < 50:
                down1 = 30 <= k < 35
                second.write([], [icmp(a, T0 + 60 * k + 25, *((None,) * 4 if down1 else (0.020,) * 4),
                                       error=ProbeErrorReason.TIMEOUT if down1 else None)])
    finally:
        first.close()
        second.close()


def test_two_replicas_count_each_site_interval_once_in_the_report_and_kpis(pg_url: str) -> None:  # noqa: F811
    """Two instances writing their own views of one site: 110 rows, read as 60 cycles; the report's row and the
    KPI count 60 site-intervals, 53 up (up where either replica saw a reply), the known figures."""
    _write_two_replicas(pg_url)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT instance, count(*) FROM icmp GROUP BY instance ORDER BY instance").fetchall()
    assert rows == [("0", 60), ("1", 50)]
    reader = PostgresStore(pg_url, read_only=True)
    try:
        cycles = list(reader.icmp_cycles("a", DAY.start, DAY.end))
        assert len(cycles) == 60 and sum(c.received > 0 for c in cycles) == 53
        record = EndpointRecord.of(throughput_target("a"))
        row = site_row(reader, record, DAY)
        assert (row.cycles, row.cycles_up, row.echoes, row.replies) == (60, 53, 240, 212)
        assert (row.rtt_median_seconds, row.rtt_p95_seconds) == (0.010, 0.020)
        assert row.site_down_seconds == pytest.approx(7 * 60.0)
        kpi = site_kpi(reader, record, Span(DAY.start, DAY.end), None, DEFAULT_THRESHOLDS)
        assert (kpi.cycles, kpi.cycles_up) == (60, 53)
        assert kpi.site_down_seconds == pytest.approx(7 * 60.0)
        assert kpi.last_success_at == T0 + 60 * 59 + 5
    finally:
        reader.close()


def test_one_instance_reads_what_sqlite_reads(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    """A single instance (with or without a shard index) reads back every cycle it wrote, as SQLite does."""
    a, b = throughput_target("a"), throughput_target("b")
    results = [icmp(a, T0 + 60 * k + (0.002 if k == 3 else 0.0), *(UP if k % 7 else DOWN)) for k in range(20)]
    results.append(icmp(a, T0 + 60 * 3 + 1.5, 0.01))  # a second cycle in one interval: kept
    results += [icmp(b, T0 + 60 * k, 0.02) for k in range(5)]
    sqlite = SqliteStore(tmp_path / "history.sqlite3")
    sharded = PostgresStore(pg_url, instance="3")
    try:
        sqlite.write([], results)
        sharded.write([], results)
        for name in ("a", "b"):
            expected = list(sqlite.icmp_cycles(name, T0, T0 + 3600))
            assert list(sharded.icmp_cycles(name, T0, T0 + 3600)) == expected
        assert len(list(sharded.icmp_cycles("a", T0, T0 + 3600))) == 21
    finally:
        sqlite.close()
        sharded.close()


def test_an_agent_batch_taken_by_two_instances_is_stored_once(pg_url: str) -> None:  # noqa: F811
    """An agent's cycles are the site's, not an instance's view: posted to two instances, each cycle is one row."""
    sat = agent_target("sat")
    batch = [icmp(sat, T0 + 60 * k, 0.6 if k % 2 else None) for k in range(10)]
    first, second = PostgresStore(pg_url, instance="0"), PostgresStore(pg_url, instance="1")
    try:
        first.write([], batch)
        second.write([], batch)
        second.write([], batch[5:])  # a retry
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT instance, count(*) FROM icmp GROUP BY instance").fetchall() == [("", 10)]
        assert [c.started_at for c in first.icmp_cycles("sat", T0, T0 + 3600)] == [T0 + 60 * k for k in range(10)]
    finally:
        first.close()
        second.close()


def test_replicas_at_the_same_start_and_an_upstream_node_merge_the_same_way(pg_url: str) -> None:  # noqa: F811
    """Two replicas that start a cycle at the same instant keep both rows (one per instance) and read as one; an
    upstream node's runs, kept by each of its replicas, read once per interval too."""
    a, node = throughput_target("a"), upstream_node("agg-1", "aggregation")
    first, second = PostgresStore(pg_url, instance="0"), PostgresStore(pg_url, instance="1")
    try:
        first.write([], [icmp(a, T0 + 60 * k, None, error=ProbeErrorReason.TIMEOUT) for k in range(5)]
                    + [icmp(node, T0 + 60 * k + 1, 0.003) for k in range(5)])
        second.write([], [icmp(a, T0 + 60 * k, 0.02) for k in range(5)]
                     + [icmp(node, T0 + 60 * k + 40, 0.004) for k in range(5)])
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT count(*) FROM icmp").fetchone() == (20,)
        assert [(c.started_at, c.received) for c in first.icmp_cycles("a", T0, T0 + 3600)] == \
            [(T0 + 60 * k, 1) for k in range(5)]
        assert [c.started_at for c in first.icmp_cycles("agg-1", T0, T0 + 3600)] == [T0 + 60 * k + 1 for k in range(5)]
        assert first.prune(T0 + 125, 0, 100) == 6 + 5  # every instance's old rows go, the site's and the node's
        assert len(list(second.icmp_cycles("a", T0, T0 + 3600))) == 2
    finally:
        first.close()
        second.close()


def test_a_single_instance_history_read_on_after_replicas_join(pg_url: str) -> None:  # noqa: F811
    """A history written without --shard ("") and then by two replicas reads one cycle per interval throughout."""
    a = throughput_target("a")
    before = PostgresStore(pg_url)
    try:
        before.write([], [icmp(a, T0 + 60 * k + 10, 0.01) for k in range(30)])
    finally:
        before.close()
    _write_replicas = [PostgresStore(pg_url, instance=str(i)) for i in range(2)]
    try:
        for i, store in enumerate(_write_replicas):
            store.write([], [icmp(a, T0 + 60 * k + 20 + 15 * i, 0.01) for k in range(30, 60)])
        assert len(list(_write_replicas[0].icmp_cycles("a", T0, T0 + 3600))) == 60
    finally:
        for store in _write_replicas:
            store.close()


def test_two_replicas_that_saw_the_same_give_the_golden_report(pg_url: str) -> None:  # noqa: F811
    """``connmon report`` over a history where two instances wrote the same month's cycles equals the SQLite golden
    report: nothing is counted twice."""
    rows = october_rows()
    for instance in ("0", "1"):
        store = PostgresStore(pg_url, instance=instance)
        try:
            store.write([], rows)
        finally:
            store.close()
    proc = subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-10-01", "--to", "2026-10-31",
                           "--timezone", "UTC", "--format", "csv", "--store", pg_url], capture_output=True, text=True,
                          timeout=60, check=False, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n\n")[0] + "\n" == GOLDEN_CSV


# ----------------------------------------------------------------------------- a history before schema 7


def _postgres_version_6(url: str) -> None:
    """Make the (empty) database at ``url`` a version-6 history (no instance column) with two sites' cycles."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for script in postgres_store.MIGRATIONS[:6]:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1), (2), (3), (4), (5), (6)")
        conn.execute("INSERT INTO endpoints (id, name, kind, district, link, grp, target_bps) VALUES "
                     "(1, 'a', 'school', 'Aktobe', 'fibre', 'g', 4000000)")
        for k in range(3):
            conn.execute("INSERT INTO icmp (endpoint_id, started_at, address, sent, rtts) VALUES "
                         "(1, %s, '192.0.2.1', 1, %s)", (T0 + 60 * k, b"\x00" * 8))


def test_a_version_6_history_reads_read_only_then_migrates(pg_server: PgServer) -> None:  # noqa: F811
    """A history of schema 6 (before the instance column) reads read-only, unmigrated; a writer migrates it, its
    rows become instance "", and a replica's cycles written after it merge with them."""
    db = pg_server.new_database()
    url = pg_server.url(db)
    _postgres_version_6(url)
    reader = PostgresStore(url, read_only=True)
    try:
        assert reader.schema_version() == 6
        assert [c.started_at for c in reader.icmp_cycles("a", T0, T0 + 3600)] == [T0, T0 + 60, T0 + 120]
    finally:
        reader.close()
    assert pg_server.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'icmp' "
                          "AND column_name = 'instance'", db).strip() == "0"  # the reader did not migrate
    store = PostgresStore(url, instance="1")
    try:
        assert store.schema_version() == len(postgres_store.MIGRATIONS)
        assert pg_server.psql("SELECT string_agg(DISTINCT instance, ',') FROM icmp", db).strip() == ""
        store.write([], [icmp(throughput_target("a"), T0 + 60 * k + 30, 0.01) for k in range(3)])
        # each interval once: the old row ("") and the replica's 30 s later both answered; the lowest name is kept
        assert [c.started_at for c in store.icmp_cycles("a", T0, T0 + 3600)] == [T0, T0 + 60, T0 + 120]
    finally:
        store.close()


def test_instances_opening_a_version_6_history_at_once_migrate_it_once(pg_server: PgServer) -> None:  # noqa: F811
    """Three replicas starting together on a schema-6 history: the instance column is added once, under the
    migration lock, and each writes its own cycles."""
    db = pg_server.new_database()
    url = pg_server.url(db)
    _postgres_version_6(url)
    stores: dict[str, PostgresStore] = {}
    errors: list[BaseException] = []
    gate = threading.Barrier(3)

    def open_one(name: str) -> None:
        gate.wait()
        try:
            stores[name] = PostgresStore(url, instance=name)
        except BaseException as err:  # noqa: BLE001 (the test reports any)
            errors.append(err)

    threads = [threading.Thread(target=open_one, args=(str(i),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert pg_server.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version",
                              db).strip() == "1,2,3,4,5,6,7,8,9"
        for name, store in stores.items():
            store.write([], [icmp(throughput_target("a"), T0 + 600 + int(name), 0.01)])
        assert pg_server.psql("SELECT string_agg(instance, ',' ORDER BY instance) FROM icmp WHERE started_at > "
                              f"{T0 + 300}", db).strip() == "0,1,2"
    finally:
        for store in stores.values():
            store.close()



def test_the_store_url_opener_gives_the_writer_its_instance(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    """``--store postgresql://`` opened for the daemon's writer with its shard index writes its cycles under it;
    an agent site's cycles under none."""
    from monitor.history.store_url import opener

    store = opener(pg_url, str(tmp_path), recover=True, instance="2")()
    try:
        store.write([], [icmp(throughput_target("a"), T0, 0.01), icmp(agent_target("sat"), T0, 0.5)])
    finally:
        store.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT e.name, i.instance FROM icmp i JOIN endpoints e ON e.id = i.endpoint_id "
                            "ORDER BY e.name").fetchall() == [("a", "2"), ("sat", "")]
