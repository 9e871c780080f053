"""One contract for every history backend: the same assertions on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from monitor.errors import ProbeErrorReason
from monitor.history import postgres as postgres_store
from monitor.history import sqlite as sqlite_store
from monitor.history.postgres import PostgresStore, redact
from monitor.history.sqlite import SqliteStore
from monitor.history.store import EndpointRecord, HistoryNotCreated, HistoryStore, StoredGap
from monitor.results import Gap
from tests.factories import icmp, iperf3_test, throughput_target
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.stores import StoreOpeners

Opener = Callable[[], HistoryStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a new connection to one fresh store of the backend under test."""
    opener = StoreOpeners(request.param, tmp_path / "history.sqlite3",
                          request.getfixturevalue("pg_url") if request.param == "postgresql" else None)
    yield opener
    opener.close_all()


def test_cycles_and_tests_round_trip(open_store: Opener) -> None:
    """What is written is read back exactly: RTTs with gaps, test directions, verdicts, errors."""
    store = open_store()
    a = throughput_target("A")
    store.write([EndpointRecord.of(a)], [icmp(a, 100.0, 0.01, None, 0.03), icmp(a, 200.0, None),
                                         iperf3_test(a, 150.0, 5e6), iperf3_test(a, 250.0, None,
                                                                                 error=ProbeErrorReason.TIMEOUT)])
    cycles = list(store.icmp_cycles("A", 0.0, 1000.0))
    assert [(c.started_at, c.sent, c.rtts_seconds) for c in cycles] == [(100.0, 3, (0.01, None, 0.03)),
                                                                        (200.0, 1, (None,))]
    assert [c.started_at for c in store.icmp_cycles("A", 150.0, 200.0)] == []
    tests = store.throughput_tests("A", 0.0, 1000.0)
    assert [(t.started_at, t.direction_rate("download"), t.target_met, t.error) for t in tests] == [
        (150.0, 5e6, True, None), (250.0, None, None, "timeout")]
    assert tests[0].directions[0].retransmits == 3 and tests[0].budget_remaining_bytes == 123
    assert tests[1].error_detail == "why"


def test_writes_are_idempotent(open_store: Opener) -> None:
    """A batch written twice is stored once."""
    store = open_store()
    a = throughput_target("A")
    batch = [icmp(a, 100.0, 0.01), iperf3_test(a, 150.0, 5e6)]
    store.write([EndpointRecord.of(a)], batch)
    store.write([EndpointRecord.of(a)], batch)
    assert len(list(store.icmp_cycles("A", 0, 1e9))) == 1
    assert len(store.throughput_tests("A", 0, 1e9)) == 1


def test_endpoints_are_upserted_by_name(open_store: Opener) -> None:
    """An endpoint's labels are the latest written; endpoints come back sorted by name."""
    store = open_store()
    store.write([EndpointRecord.of(throughput_target("B")), EndpointRecord.of(throughput_target("A"))], [])
    store.write([EndpointRecord.of(throughput_target("A", district="Almaty", kind="clinic", mbps=8.0))], [])
    assert store.endpoints() == [EndpointRecord("A", "clinic", "Almaty", "fibre", "g", 8e6),
                                 EndpointRecord("B", "school", "Aktobe", "fibre", "g", 4e6)]


def test_latest_tests_bytes_and_verdicts(open_store: Opener) -> None:
    """last_tests, last_measured_tests, bytes_since and recent_verdicts read the right rows."""
    store = open_store()
    a, b = throughput_target("A"), throughput_target("B")
    store.write([], [iperf3_test(a, 100.0, 5e6, moved=10), iperf3_test(a, 200.0, 1e6, moved=20),
                     iperf3_test(a, 300.0, None, moved=40, error=ProbeErrorReason.TIMEOUT), iperf3_test(b, 100.0, 9e6)])
    assert {k: v.started_at for k, v in store.last_tests().items()} == {"A": 300.0, "B": 100.0}
    assert {k: v.started_at for k, v in store.last_measured_tests().items()} == {"A": 200.0, "B": 100.0}
    assert store.bytes_since("A", 150.0) == 60
    assert store.bytes_since("nobody", 0.0) == 0
    assert store.recent_verdicts("A", 5) == [False, True]
    assert store.recent_verdicts("A", 1) == [False]


def test_prune_deletes_old_rows_in_bounded_slices(open_store: Opener) -> None:
    """Pruning removes only rows older than the bounds, at most ``limit`` per call, until 0."""
    store = open_store()
    a, b = throughput_target("A"), throughput_target("B")
    store.write([], [icmp(t, float(at), 0.01) for t in (a, b) for at in range(10)]
                + [iperf3_test(a, 5.0, 1e6), iperf3_test(a, 50.0, 1e6)])
    total = 0
    while (gone := store.prune(icmp_before=6.0, throughput_before=10.0, limit=4)) > 0:
        assert gone <= 4
        total += gone
    assert total == 6 * 2 + 1
    assert [c.started_at for c in store.icmp_cycles("A", 0, 1e9)] == [6.0, 7.0, 8.0, 9.0]
    assert [t.started_at for t in store.throughput_tests("A", 0, 1e9)] == [50.0]


def test_schema_version_is_current_and_reopen_keeps_data(open_store: Opener) -> None:
    """A new store is at the latest schema version; opening it again migrates nothing and keeps rows."""
    store = open_store()
    assert store.schema_version() >= 1  # type: ignore[attr-defined]
    store.write([], [icmp(throughput_target("A"), 1.0, 0.01)])
    again = open_store()
    assert again.schema_version() == store.schema_version()  # type: ignore[attr-defined]
    assert len(list(again.icmp_cycles("A", 0, 10))) == 1


def test_concurrent_writers_share_one_store(open_store: Opener) -> None:
    """Two stores writing at once (as two shards) lose nothing and share endpoints by name."""
    stores = [open_store(), open_store()]
    shared = throughput_target("shared")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            own = throughput_target(f"own{n}")
            for i in range(30):
                stores[n].write([EndpointRecord.of(shared), EndpointRecord.of(own)],
                                [icmp(own, float(i), 0.01), icmp(shared, float(i * 2 + n), 0.02)])
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reader = open_store()
    assert [e.name for e in reader.endpoints()] == ["own0", "own1", "shared"]
    assert len(list(reader.icmp_cycles("shared", 0, 1e9))) == 60
    assert len(list(reader.icmp_cycles("own1", 0, 1e9))) == 30


def test_concurrent_prune_deletes_each_row_once(open_store: Opener) -> None:
    """Two pruners at once remove every old row exactly once and nothing newer."""
    store = open_store()
    a = throughput_target("A")
    store.write([], [icmp(a, float(at), 0.01) for at in range(400)])
    pruners = [open_store(), open_store()]
    counts = [0, 0]

    def prune(n: int) -> None:
        idle = 0
        while idle < 20:
            gone = pruners[n].prune(icmp_before=300.0, throughput_before=300.0, limit=7)
            counts[n] += gone
            idle = idle + 1 if gone == 0 else 0

    threads = [threading.Thread(target=prune, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 300
    assert [c.started_at for c in store.icmp_cycles("A", 0, 1e9)] == [float(x) for x in range(300, 400)]


def test_postgres_migrates_from_an_older_version(pg_server: PgServer) -> None:  # noqa: F811
    """A database at an older schema version is brought up to date, keeping its rows."""
    db = pg_server.new_database()
    url = pg_server.url(db)
    store = PostgresStore(url)
    store.write([], [icmp(throughput_target("A"), 1.0, 0.01)])
    store.close()
    pg_server.psql("DELETE FROM schema_version", db)  # as if written by an older connmon
    pg_server.psql("ALTER TABLE endpoints ADD COLUMN IF NOT EXISTS probe_marker INTEGER", db)
    original = postgres_store.MIGRATIONS
    try:
        postgres_store.MIGRATIONS = ("SELECT 1", "ALTER TABLE endpoints DROP COLUMN probe_marker")
        pg_server.psql("INSERT INTO schema_version (version) VALUES (1)", db)
        upgraded = PostgresStore(url)
        assert upgraded.schema_version() == 2
        assert pg_server.psql("SELECT count(*) FROM information_schema.columns "
                              "WHERE column_name = 'probe_marker'", db).strip() == "0"
        assert len(list(upgraded.icmp_cycles("A", 0, 10))) == 1
        upgraded.close()
    finally:
        postgres_store.MIGRATIONS = original


def test_postgres_refuses_a_newer_schema(pg_server: PgServer) -> None:  # noqa: F811
    """A database migrated by a newer connmon is an error naming the fix, not a silent misuse."""
    db = pg_server.new_database()
    PostgresStore(pg_server.url(db)).close()
    pg_server.psql("INSERT INTO schema_version (version) VALUES (99)", db)
    with pytest.raises(psycopg.DatabaseError, match="upgrade connmon"):
        PostgresStore(pg_server.url(db))


def _open_at_once(url: str, n: int) -> tuple[list[PostgresStore], list[BaseException]]:
    """``n`` stores opening ``url`` at the same moment, as instances starting together would."""
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(url))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stores, errors


def test_two_instances_migrate_at_once(pg_server: PgServer) -> None:  # noqa: F811
    """Two stores opening a new database at the same moment migrate it once, without error."""
    url = pg_server.url(pg_server.new_database())
    stores, errors = _open_at_once(url, 4)
    assert errors == []
    assert [s.schema_version() for s in stores] == [len(postgres_store.MIGRATIONS)] * 4
    for s in stores:
        s.close()


@pytest.mark.parametrize("backend", ["sqlite file missing", "sqlite file empty", "postgresql"])
def test_a_reader_before_the_first_writer_is_told_no_history_yet(backend: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    """A read-only open of a store no daemon has created yet (no file, a file or database without schema)
    raises HistoryNotCreated, which the API reads as an empty history; once a writer opened it, it reads."""
    def reader() -> HistoryStore:
        return PostgresStore(url, read_only=True) if backend == "postgresql" else SqliteStore(path, read_only=True)

    def writer() -> HistoryStore:
        return PostgresStore(url) if backend == "postgresql" else SqliteStore(path)

    path, url = tmp_path / "history.sqlite3", ""
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
    elif backend == "sqlite file empty":
        sqlite3.connect(path).close()  # what the writer's connect leaves a moment before its schema
    with pytest.raises(HistoryNotCreated, match="no connmon history|no history at"):
        reader()
    writer().close()
    store = reader()
    try:
        assert store.endpoints() == [] and store.first_results() == {}
    finally:
        store.close()


def test_redact_hides_the_password() -> None:
    """A URL is logged without its password."""
    assert redact("postgresql://u:s3cret@db.example/h") == "postgresql://u:***@db.example/h"
    assert "s3cret" not in redact("postgres://u:s3cret@/h?host=/run/pg")


# ----------------------------------------------------------------------------- roll-out (issue 11)


def test_rollout_fields_round_trip(open_store: Opener) -> None:
    """Status, planned date, provider and contract are stored and read back; a planned site needs no results."""
    store = open_store()
    planned = EndpointRecord("P", "clinic", "Temir", "satellite", "new-clinics", 4e6, "planned",
                             dt.date(2026, 11, 15), "KazSat", 10e6)
    retired = EndpointRecord("R", "school", "Aktobe", "dsl", "g", 2e6, "retired", None, "Old Telecom", None)
    store.write([planned, retired], [])
    a = throughput_target("A")
    store.write([EndpointRecord.of(a)], [icmp(a, 100.0, 0.01)])
    assert store.endpoints() == [EndpointRecord("A", "school", "Aktobe", "fibre", "g", 4e6), planned, retired]
    connected = dataclasses.replace(planned, status="connected", contracted_bits_per_second=None, provider=None)
    store.write([connected], [])  # the next config's labels replace the old ones, None included
    assert open_store().endpoints()[1] == connected


def test_first_results_are_kept_when_old_rows_are_pruned(open_store: Opener) -> None:
    """Each site's first result time is the earliest written, ICMP or test, and outlives pruning."""
    store = open_store()
    a, b = throughput_target("A"), throughput_target("B")
    store.write([EndpointRecord("P", "clinic", "Temir", "lte", "g", 4e6, "planned")], [])
    store.write([], [icmp(a, 200.0, 0.01), icmp(a, 300.0, None), iperf3_test(a, 150.0, 5e6)])
    store.write([], [icmp(b, 500.0, 0.01)])
    later = open_store()  # another process (a restart, another shard) writing later results moves nothing
    later.write([], [icmp(a, 900.0, 0.01), icmp(b, 400.0, 0.01)])
    assert later.first_results() == {"A": 150.0, "B": 400.0}
    while later.prune(1e9, 1e9, 100):
        pass
    assert list(later.icmp_cycles("A", 0, 1e9)) == [] and later.throughput_tests("A", 0, 1e9) == []
    assert open_store().first_results() == {"A": 150.0, "B": 400.0}


_V1_ROWS = (  # a version-1 history: one site with a cycle at 300 and a test at 200, one with nothing
    "INSERT INTO endpoints (id, name, kind, district, link, grp, target_bps) VALUES "
    "(1, 'old', 'school', 'Aktobe', 'fibre', 'g', 4000000), (2, 'quiet', 'clinic', 'Temir', 'lte', 'g', 2000000)",
    "INSERT INTO icmp (endpoint_id, started_at, address, sent, rtts) VALUES (1, 300, '192.0.2.1', 0, X'')",
    "INSERT INTO throughput (endpoint_id, started_at, ended_at, method, bytes, directions, target_bps) VALUES "
    "(1, 200, 211, 'iperf3', 0, '[]', 4000000)",
)


def _check_migrated(store: HistoryStore) -> None:
    assert store.endpoints() == [EndpointRecord("old", "school", "Aktobe", "fibre", "g", 4e6),
                                 EndpointRecord("quiet", "clinic", "Temir", "lte", "g", 2e6)]
    assert store.first_results() == {"old": 200.0}
    assert [c.started_at for c in store.icmp_cycles("old", 0, 1e9)] == [300.0]
    assert store.gaps("old", 0, 1e9) == []  # the gap table (version 3) is there, empty
    store.write([EndpointRecord("quiet", "clinic", "Temir", "lte", "g", 2e6, "retired", dt.date(2026, 1, 2))], [])
    assert store.endpoints()[1].status == "retired"
    store.write([], [], [Gap(throughput_target("old"), 400.0, 1000.0, "power", 60.0)])
    assert store.gaps("old", 0, 1e9) == [StoredGap("old", 400.0, 1000.0, "power", 60.0)]
    assert store.first_results() == {"old": 200.0}  # a gap is not a result


def test_sqlite_history_of_version_2_opens_and_migrates_and_reads_without_gaps(tmp_path: Path) -> None:
    """A version-2 file (roll-out, no gap table) reads read-only as having no gaps, then migrates on a write open."""
    path = tmp_path / "history.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(sqlite_store.MIGRATIONS[0] + ";\n".join(_V1_ROWS) + ";\n" + sqlite_store.MIGRATIONS[1]
                     + ";\nPRAGMA user_version = 2;")
    db.close()
    reader = SqliteStore(path, read_only=True)  # a report on an older history: no table, no gaps, no error
    try:
        assert reader.schema_version() == 2 and reader.gaps("old", 0, 1e9) == []
    finally:
        reader.close()
    store = SqliteStore(path)
    try:
        assert store.schema_version() == len(sqlite_store.MIGRATIONS) == 6
        _check_migrated(store)
    finally:
        store.close()


def test_sqlite_history_of_the_old_schema_opens_and_migrates(tmp_path: Path) -> None:
    """A SQLite file made by the version-1 schema (before roll-out) opens, migrates and keeps its rows."""
    path = tmp_path / "history.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(sqlite_store.MIGRATIONS[0] + ";\n".join(_V1_ROWS) + ";\nPRAGMA user_version = 1;")
    db.close()
    store = SqliteStore(path)
    try:
        assert store.schema_version() == len(sqlite_store.MIGRATIONS) >= 2
        _check_migrated(store)
    finally:
        store.close()


def _postgres_version_2(url: str) -> None:
    """Make the (empty) database at ``url`` a version-2 history holding :data:`_V1_ROWS`."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for statement in postgres_store.MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(statement)
        for statement in _V1_ROWS:
            conn.execute(statement.replace("X''", "'\\x'::bytea"))
        for statement in postgres_store.MIGRATIONS[1].split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (1), (2)")


def test_postgres_history_of_version_2_opens_and_migrates(pg_server: PgServer) -> None:  # noqa: F811
    """A PostgreSQL database at version 2 (no gap table) reads read-only without gaps, then migrates to 3."""
    db = pg_server.new_database()
    url = pg_server.url(db)
    _postgres_version_2(url)
    reader = PostgresStore(url, read_only=True)
    try:
        assert reader.schema_version() == 2 and reader.gaps("old", 0, 1e9) == []
    finally:
        reader.close()
    store = PostgresStore(url)
    try:
        assert store.schema_version() == len(postgres_store.MIGRATIONS) == 9
        _check_migrated(store)
    finally:
        store.close()


def test_instances_opening_a_version_2_history_at_once_add_the_gap_table_once(
        pg_server: PgServer) -> None:  # noqa: F811
    """The v3 step runs under the migration lock like the others: four instances that open a v2
    database together migrate it once, without error, and each then writes and reads gaps."""
    db = pg_server.new_database()
    url = pg_server.url(db)
    _postgres_version_2(url)
    stores, errors = _open_at_once(url, 4)
    try:
        assert errors == []
        assert pg_server.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version",
                              db).strip() == "1,2,3,4,5,6,7,8,9"
        _check_migrated(stores[0])  # writes a gap: every instance reads it
        assert [s.gaps("old", 0, 1e9) for s in stores] == [[StoredGap("old", 400.0, 1000.0, "power", 60.0)]] * 4
    finally:
        for s in stores:
            s.close()


def test_postgres_history_of_the_old_schema_opens_and_migrates(pg_server: PgServer) -> None:  # noqa: F811
    """A PostgreSQL database made by the version-1 schema opens, migrates and keeps its rows."""
    db = pg_server.new_database()
    url = pg_server.url(db)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                     "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for statement in postgres_store.MIGRATIONS[0].split(";"):
            if statement.strip():
                conn.execute(statement)
        for statement in _V1_ROWS:
            conn.execute(statement.replace("X''", "'\\x'::bytea"))
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    store = PostgresStore(url)
    try:
        assert store.schema_version() == len(postgres_store.MIGRATIONS) >= 2
        _check_migrated(store)
    finally:
        store.close()


# ----------------------------------------------------------------------------- agent gaps (issue 10)


def test_gaps_round_trip_overlap_and_replace(open_store: Opener) -> None:
    """Gaps are written with results in one call, read back by overlap with the span, and replaced by (site, start)."""
    store = open_store()
    a, b = throughput_target("A"), throughput_target("B")
    store.write([EndpointRecord.of(a)], [icmp(a, 100.0, 0.01)],
                [Gap(a, 200.0, 500.0, "link", 60.0), Gap(a, 900.0, 1200.0, "power", 60.0),
                 Gap(b, 300.0, 400.0, "unknown", 30.0)])
    assert store.gaps("A", 0, 1e9) == [StoredGap("A", 200.0, 500.0, "link", 60.0),
                                       StoredGap("A", 900.0, 1200.0, "power", 60.0)]
    assert [g.started_at for g in store.gaps("A", 499.0, 900.0)] == [200.0]  # ends after 499; the next starts at 900
    assert [g.started_at for g in store.gaps("A", 500.0, 901.0)] == [900.0]  # ended at 500: not in [500, …)
    assert store.gaps("B", 0, 1e9) == [StoredGap("B", 300.0, 400.0, "unknown", 30.0)]
    assert store.gaps("nowhere", 0, 1e9) == []
    store.write([], [], [Gap(a, 200.0, 520.0, "link", 60.0)])  # written again (a retried batch): replaced
    assert open_store().gaps("A", 0, 600.0) == [StoredGap("A", 200.0, 520.0, "link", 60.0)]
    assert {e.name for e in store.endpoints()} == {"A", "B"}  # a gap's site is recorded like a result's
    assert store.first_results() == {"A": 100.0}


def test_a_classified_gap_replaces_the_provisional_one_it_names(open_store: Opener) -> None:
    """A gap with ``replaces_start`` deletes the site's gap starting there, also when both share one write."""
    store = open_store()
    a, b = throughput_target("A"), throughput_target("B")
    store.write([], [], [Gap(a, 100.0, 400.0, "unknown", 60.0), Gap(b, 100.0, 400.0, "unknown", 60.0)])
    store.write([], [], [Gap(a, 100.0, 700.0, "unknown", 60.0), Gap(a, 150.0, 600.0, "power", 60.0, 100.0)])
    assert store.gaps("A", 0, 1e9) == [StoredGap("A", 150.0, 600.0, "power", 60.0)]
    assert store.gaps("B", 0, 1e9) == [StoredGap("B", 100.0, 400.0, "unknown", 60.0)]  # another site's: kept
    store.write([], [], [Gap(a, 150.0, 600.0, "power", 60.0, 100.0)])  # retried: nothing left to delete, same row
    assert open_store().gaps("A", 0, 1e9) == [StoredGap("A", 150.0, 600.0, "power", 60.0)]


def test_gaps_are_pruned_with_the_long_retention_once_ended(open_store: Opener) -> None:
    """A gap goes when it ended before the throughput bound, not by the ICMP one."""
    store = open_store()
    a = throughput_target("A")
    store.write([], [], [Gap(a, 10.0, 50.0, "power", 60.0), Gap(a, 60.0, 200.0, "link", 60.0)])
    while store.prune(icmp_before=1e9, throughput_before=100.0, limit=1):
        pass
    assert [g.started_at for g in store.gaps("A", 0, 1e9)] == [60.0]  # ended at 200: kept
    while store.prune(icmp_before=1e9, throughput_before=1e9, limit=10):
        pass
    assert store.gaps("A", 0, 1e9) == []


def test_an_icmp_error_reason_is_read_back(open_store: Opener) -> None:
    """A cycle that could not probe keeps its reason (the report and the restore read it as stored)."""
    from monitor.results import IcmpResult

    store = open_store()
    a = throughput_target("A")
    store.write([EndpointRecord.of(a)], [
        IcmpResult(a, 100.0, a.address, 0, (None, None), ProbeErrorReason.NO_ROUTE, "ENETUNREACH"),
        IcmpResult(a, 160.0, a.address, 2, (None, None), ProbeErrorReason.UNREACHABLE, "host unreachable"),
        icmp(a, 220.0, 0.01)])
    assert [(c.started_at, c.sent, c.error) for c in store.icmp_cycles("A", 0.0, 1000.0)] == [
        (100.0, 0, "no_route"), (160.0, 2, "unreachable"), (220.0, 1, None)]
    assert [ProbeErrorReason.stored(c.error) for c in open_store().icmp_cycles("A", 0.0, 1000.0)] == [
        ProbeErrorReason.NO_ROUTE, ProbeErrorReason.UNREACHABLE, None]  # another connection reads the same


def test_an_icmp_error_detail_is_read_back(open_store: Opener) -> None:
    """A cycle's error detail is read back (issue 21: a report charges an upstream_down cycle to the node named)."""
    from monitor.results import IcmpResult
    from monitor.upstreams import upstream_detail, upstream_of

    store = open_store()
    a = throughput_target("A")
    store.write([EndpointRecord.of(a)], [
        IcmpResult(a, 100.0, a.address, 2, (None, None), ProbeErrorReason.UPSTREAM_DOWN,
                   upstream_detail("khromtau-agg") + "; the probe said timeout"),
        IcmpResult(a, 160.0, a.address, 0, (None, None), ProbeErrorReason.NO_ROUTE, "ENETUNREACH"),
        icmp(a, 220.0, 0.01)])
    cycles = list(open_store().icmp_cycles("A", 0.0, 1000.0))
    assert [(c.error, c.error_detail) for c in cycles] == [
        ("upstream_down", "no reply while upstream node khromtau-agg was down; the probe said timeout"),
        ("no_route", "ENETUNREACH"), (None, "")]
    assert [upstream_of(c.error, c.error_detail) for c in cycles] == ["khromtau-agg", None, None]


def test_maintenance_windows_round_trip_close_once_and_overlap(open_store: Opener) -> None:
    """A run-time window is stored with a new id and read back by any connection (a restart's); closing it keeps
    the first close; the windows overlapping a span are those that really ran into it, closed ones by their close."""
    store = open_store()
    a = store.open_maintenance("Школа №1", "site", 1000.0, 5000.0, "ремонт \u200fشبكة", 900.0)
    b = store.open_maintenance("agg", "upstream", 2000.0, 3000.0, "swap", 950.0)
    assert a.id != b.id and (a.target, a.kind, a.starts_at, a.ends_at, a.closed_at) == (
        "Школа №1", "site", 1000.0, 5000.0, None)
    other = open_store()
    assert other.maintenance_windows(0.0, float("inf")) == [a, b]
    closed = other.close_maintenance(a.id, 1500.0)
    assert closed is not None and closed.closed_at == 1500.0 and closed.until == 1500.0
    assert other.close_maintenance(a.id, 1800.0) == closed  # the first close stays
    assert other.close_maintenance(a.id + b.id + 100, 1800.0) is None
    assert store.maintenance_windows(1600.0, 10_000.0) == [b]  # a ended at its close
    assert store.maintenance_windows(1400.0, 2000.0) == [closed]  # b starts at 2000: not in [1400, 2000)
    assert store.maintenance_windows(3000.0, 4000.0) == []



def test_traces_round_trip_replace_and_last(open_store: Opener) -> None:
    """Traces (issue 21) of a site and of a node are read back by any connection: hops in order, silent hops
    included, the last answering hop and whether the path reached; one at the same time replaces the first;
    last_traces gives each endpoint's latest."""
    from monitor.results import Hop, Trace

    store = open_store()
    site, node = throughput_target("Школа №1"), throughput_target("agg")
    first = Trace(100.0, "10.77.242.2", (Hop(1, "10.77.240.2", 2.5e-05), Hop(2, None, None)), "10.77.240.2", False)
    later = Trace(200.0, "10.77.242.2", (Hop(1, "10.77.240.2", 3e-05), Hop(2, "10.77.240.6", 4e-05),
                                         Hop(3, "10.77.242.2", 5e-05)), "10.77.242.2", True)
    store.write_traces([(site, first), (node, Trace(150.0, "10.77.240.6", (Hop(1, None, None),), None, False))])
    store.write_traces([(site, later)])
    store.write_traces([(site, later)])  # idempotent
    other = open_store()
    assert other.traces("Школа №1", 0.0, 1000.0) == [dataclasses.replace(first, target=""),
                                                       dataclasses.replace(later, target="")]
    assert other.traces("Школа №1", 100.0, 200.0) == [dataclasses.replace(first, target="")]
    last = other.last_traces()
    assert last == {"Школа №1": dataclasses.replace(later, target=""),
                    "agg": Trace(150.0, "", (Hop(1, None, None),), None, False)}
    while store.prune(0.0, 180.0, 100):  # traces go with the long (throughput) retention
        pass
    assert [t.at for t in other.traces("Школа №1", 0.0, 1000.0)] == [200.0]
    assert other.traces("agg", 0.0, 1000.0) == []
