"""The history store and sink on real SQLite files: round trips, idempotence, pruning, faults.

Faults are real: a read-only bind mount and a tmpfs too small for the next write (root only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from monitor.config import Retention, ThroughputSettings
from monitor.errors import ProbeErrorReason
from monitor.history import set_aside as set_aside_module
from monitor.history import writer as history_module
from monitor.history.codec import pack_rtts, unpack_rtts
from monitor.history.sqlite import MIGRATIONS, SqliteStore, database_path
from monitor.history.store import EndpointRecord, HistoryNotCreated
from monitor.history.writer import HistorySink
from monitor.months import month_start
from monitor.results import Cycle, Gap, Result
from tests.conftest import need_root
from tests.documented import documented_metrics
from tests.factories import KEEP_ALL, icmp, iperf3_test, throughput_target
from tests.polling import wait_for


def test_rtts_pack_exactly_with_gaps() -> None:
    rtts = (0.000004321, None, 0.6123456789, None)
    assert unpack_rtts(pack_rtts(rtts)) == rtts


def test_round_trip_of_cycles_and_tests(tmp_path: Path) -> None:
    """What goes in comes out unchanged: RTTs with their gaps, directions, verdict, target at test time."""
    store = SqliteStore(tmp_path / "h.sqlite3")
    a, b = throughput_target("a"), throughput_target("№12 мектеп", mbps=20)
    store.write([], [icmp(a, 100.0, 0.001, None, 0.003), icmp(b, 100.0, None, None), iperf3_test(a, 150.0, 5e6),
                     iperf3_test(b, 160.0, 3e6)])
    cycles = list(store.icmp_cycles("a", 0, 1e12))
    assert [(c.started_at, c.rtts_seconds, c.attempted, c.received) for c in cycles] == \
        [(100.0, (0.001, None, 0.003), 3, 2)]
    tests = store.throughput_tests("№12 мектеп", 0, 1e12)
    assert len(tests) == 1
    stored = tests[0]
    assert stored.direction_rate("download") == 3e6 and stored.target_met is False
    assert stored.target_bits_per_second == 20e6 and stored.budget_remaining_bytes == 123
    assert stored.directions[0].retransmits == 3 and stored.directions[0].bytes == 1_000_000
    assert {e.name for e in store.endpoints()} == {"a", "№12 мектеп"}
    assert store.schema_version() == len(MIGRATIONS)
    assert store.integrity_check() == "ok"


def test_writes_are_idempotent_and_labels_follow_the_config(tmp_path: Path) -> None:
    """A batch written twice is stored once; an endpoint's labels are its latest."""
    store = SqliteStore(tmp_path / "h.sqlite3")
    a = throughput_target("a")
    batch = [icmp(a, 100.0, 0.001), iperf3_test(a, 150.0, 5e6)]
    store.write([], batch)
    store.write([], batch)
    assert len(list(store.icmp_cycles("a", 0, 1e12))) == 1 and len(store.throughput_tests("a", 0, 1e12)) == 1
    moved = throughput_target("a", district="Khromtau")
    store.write([history_module.EndpointRecord.of(moved)], [icmp(moved, 200.0, 0.002)])
    assert [e.district for e in store.endpoints()] == ["Khromtau"]


def test_last_tests_and_month_bytes(tmp_path: Path) -> None:
    """The restore queries: the latest measured test, the latest try, and bytes since a time."""
    store = SqliteStore(tmp_path / "h.sqlite3")
    a = throughput_target("a")
    store.write([], [iperf3_test(a, 100.0, 5e6, moved=10), iperf3_test(a, 200.0, 6e6, moved=20),
                     iperf3_test(a, 300.0, None, moved=0, error=ProbeErrorReason.REFUSED)])
    assert store.last_measured_tests()["a"].started_at == 200.0
    assert store.last_tests()["a"].started_at == 300.0
    assert store.bytes_since("a", 150.0) == 20
    restored = store.last_measured_tests()["a"].as_result(a)
    assert restored.download_bits_per_second == 6e6 and restored.target_met is True


def test_pruning_goes_in_slices_and_keeps_what_is_young(tmp_path: Path) -> None:
    """Rows older than retention go, at most ``limit`` per call, resuming where the last call stopped."""
    store = SqliteStore(tmp_path / "h.sqlite3")
    sites = [throughput_target(f"s{i}") for i in range(3)]
    store.write([], [icmp(s, float(t), 0.001) for s in sites for t in range(100)]
                + [iperf3_test(s, float(t), 5e6) for s in sites for t in (10, 90)])
    slices = []
    while (gone := store.prune(icmp_before=50.0, throughput_before=20.0, limit=40)) > 0:
        slices.append(gone)
        assert len(slices) < 20
    assert max(slices) <= 40 and sum(slices) == 3 * 50 + 3
    for s in sites:
        assert [c.started_at for c in store.icmp_cycles(s.name, 0, 1e12)] == [float(t) for t in range(50, 100)]
        assert [x.started_at for x in store.throughput_tests(s.name, 0, 1e12)] == [90.0]


def test_a_newer_schema_is_refused_not_damaged(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    SqliteStore(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        db.commit()
    with pytest.raises(sqlite3.DatabaseError, match="upgrade connmon"):
        SqliteStore(path)


def test_month_start_is_in_the_sites_time_zone() -> None:
    t = 1_785_542_400.0  # 2026-08-01 00:00 UTC = 05:00 in Almaty
    assert month_start(t, "UTC") == t
    assert month_start(t - 1, "UTC") == 1_782_864_000.0  # 2026-07-01 00:00 UTC
    assert month_start(t - 3600, "Asia/Almaty") == t - 5 * 3600  # 04:00 local on 1 Aug: August began at 00:00 local


def test_the_sink_writes_each_cycle_off_the_calling_thread(tmp_path: Path) -> None:
    """consume() only queues; the writer thread stores every result; close() writes the rest."""
    sink = HistorySink(lambda: SqliteStore(database_path(tmp_path)), KEEP_ALL)
    a, b = throughput_target("a"), throughput_target("b")
    sink.set_targets([a, b])
    for i in range(50):
        sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(a, float(i), 0.001), icmp(b, float(i), None))))
    sink.close()
    assert sink.stats.written == 100 and sink.stats.pending == 0
    store = SqliteStore(database_path(tmp_path), read_only=True)
    assert len(list(store.icmp_cycles("b", 0, 1e12))) == 50


def test_the_sink_writes_every_configured_site_planned_ones_without_results(tmp_path: Path) -> None:
    """set_targets alone writes each site's record (issue 11): a planned site is in the history at once,
    a reload that connects it updates its record, and the store is not rewritten when nothing changed."""
    path = database_path(tmp_path)
    sink = HistorySink(lambda: SqliteStore(path), KEEP_ALL)
    planned = dataclasses.replace(throughput_target("soon", kind="clinic"), host="", address=None, status="planned",
                                  planned_date=dt.date(2026, 12, 1), provider="KazSat", contracted_bits_per_second=8e6)
    sink.set_targets([throughput_target("a"), planned])

    def both_recorded() -> bool:
        try:  # the writer thread may not have created the file, or its tables, yet
            return {e.name for e in SqliteStore(path, read_only=True).endpoints()} == {"a", "soon"}
        except HistoryNotCreated:
            return False

    wait_for(both_recorded)
    assert SqliteStore(path, read_only=True).endpoints()[1] == EndpointRecord(
        "soon", "clinic", "Aktobe", "fibre", "g", 4e6, "planned", dt.date(2026, 12, 1), "KazSat", 8e6)
    sink.set_targets([throughput_target("a"), dataclasses.replace(planned, status="connected")])
    sink.close()
    assert SqliteStore(path, read_only=True).endpoints()[1].status == "connected"
    assert sink.stats.written == 0 and sink.stats.errors["write"] == 0  # records are not results


class RecordingStore(SqliteStore):
    """A real SQLite store that remembers which endpoint records each write was asked to upsert."""

    upserts: list[list[str]]

    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap] = ()) -> None:
        self.upserts.append(sorted(rec.name for rec in endpoints))
        super().write(endpoints, results, gaps)


def test_the_sink_upserts_a_sites_record_only_when_its_labels_changed(tmp_path: Path) -> None:
    """Issue 9: re-upserting 10,000 unchanged records with every cycle was a third of the writer's time.
    A record goes in once, again after a reload changed it, and a result of a site no longer
    configured brings its own record once."""
    path = database_path(tmp_path)
    upserts: list[list[str]] = []

    def open_store() -> SqliteStore:
        store = RecordingStore(path)
        store.upserts = upserts
        return store

    sink = HistorySink(open_store, Retention())
    a, b, gone = throughput_target("a"), throughput_target("b"), throughput_target("gone")
    sink.set_targets([a, b])
    for i in range(3):
        sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(a, float(i), 0.001), icmp(b, float(i), 0.002))))
        wait_for(lambda i=i: sink.stats.written == 2 * (i + 1))
    moved = throughput_target("b", district="Khromtau")
    sink.set_targets([a, moved])
    sink.consume(Cycle("icmp", "g", 3.0, 0.1, (icmp(a, 3.0, 0.001), icmp(moved, 3.0, 0.002))))
    wait_for(lambda: sink.stats.written == 8)
    for i in range(4, 6):  # a cycle that ran while its site was removed: written, its record once
        sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(gone, float(i), 0.001),)))
        wait_for(lambda i=i: sink.stats.written == 9 + i - 4)
    sink.close()
    written = [names for names in upserts if names]
    assert written == [["a", "b"], ["b"], ["gone"]], upserts
    store = SqliteStore(path, read_only=True)
    assert {e.name: e.district for e in store.endpoints()} == {"a": "Aktobe", "b": "Khromtau", "gone": "Aktobe"}
    assert len(list(store.icmp_cycles("gone", 0, 1e12))) == 2


@contextlib.contextmanager
def mounted(kind: str, where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    args = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)] if kind == "tmpfs" \
        else ["mount", "--bind", str(where), str(where)]
    subprocess.run(args, check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_counted_logged_once_and_loses_nothing_once_space_returns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a tmpfs that fills up: writes fail and are counted, results wait, and all land after it grows."""
    need_root()
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.1)
    caplog.set_level(logging.ERROR, logger="monitor.history")
    with mounted("tmpfs", tmp_path / "state", "size=128k") as state:  # room for the schema (6 steps)
        sink = HistorySink(lambda: SqliteStore(database_path(state)), KEEP_ALL)
        a = throughput_target("a")
        rtts = tuple(0.001 * k for k in range(50))
        sent = 0
        try:
            while sink.stats.errors["write"] + sink.stats.errors["open"] == 0:
                sink.consume(Cycle("icmp", "g", float(sent), 0.1, (icmp(a, float(sent), *rtts),)))
                sent += 1
                time.sleep(0.002)
                assert sent < 20_000, "the tmpfs never filled"
            for extra in range(20):  # probing goes on while the disk is full
                sink.consume(Cycle("icmp", "g", float(sent + extra), 0.1, (icmp(a, float(sent + extra), *rtts),)))
            sent += 20
            wait_for(lambda: sink.stats.pending == sent - sink.stats.written and sink.stats.errors["write"] >= 3)
            failures = sum(sink.stats.errors.values())
            assert failures >= 3
            logged = [r for r in caplog.records if "write failed" in r.getMessage()]
            assert len(logged) == 1, [r.getMessage() for r in logged]  # at most once a minute
            subprocess.run(["mount", "-o", "remount,size=16m", str(state)], check=True)
            wait_for(lambda: sink.stats.written == sent and sink.stats.pending == 0)
        finally:
            sink.close()
        store = SqliteStore(database_path(state), read_only=True)
        assert len(list(store.icmp_cycles("a", 0, 1e12))) == sent  # nothing lost
        assert store.integrity_check() == "ok"
        store.close()


def test_a_read_only_state_dir_is_counted_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state dir mounted read-only: opening fails (counted), results wait, and land once it is writable.

    (A file system cannot be remounted read-only under an open database, so it starts read-only,
    as after a boot that mounted the data disk read-only.)
    """
    need_root()
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.1)
    with mounted("bind", tmp_path / "state", "") as state:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        sink = HistorySink(lambda: SqliteStore(database_path(state)), KEEP_ALL)
        a = throughput_target("a")
        try:
            for i in range(1, 11):
                sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(a, float(i), 0.001),)))
            wait_for(lambda: sink.stats.errors["open"] >= 2)
            assert sink.stats.written == 0 and sink.stats.pending == 10
            subprocess.run(["mount", "-o", "remount,bind,rw", str(state)], check=True)
            wait_for(lambda: sink.stats.written == 10 and sink.stats.pending == 0)
        finally:
            sink.close()
        store = SqliteStore(database_path(state), read_only=True)
        assert [c.started_at for c in store.icmp_cycles("a", 0, 1e12)] == [float(i) for i in range(1, 11)]
        store.close()


def test_restore_reads_last_results_and_budget(tmp_path: Path) -> None:
    """restore(): the last measured test per site as a result of today's target, and the month's bytes."""
    now = 1_795_000_000.0  # 2026-11-18 08:26 UTC: mid-month, so every test below is in November
    a, b = throughput_target("a", budget=10_000_000), throughput_target("b")
    store = SqliteStore(database_path(tmp_path))
    store.write([], [iperf3_test(a, now - 7200, 5e6, moved=3000), iperf3_test(a, now - 3600, None, moved=500,
                                                                             error=ProbeErrorReason.TIMEOUT),
                     iperf3_test(b, now - 300, 1e6), iperf3_test(b, now - 200, 5e6), iperf3_test(b, now - 100, 3e6),
                     iperf3_test(b, now - 60, 2e6)])
    store.close()
    sink = HistorySink(lambda: SqliteStore(database_path(tmp_path)), Retention(), clock=lambda: now)
    try:
        restored = sink.restore([a, b, throughput_target("c")])
    finally:
        sink.close()
    assert restored.results["a"].download_bits_per_second == 5e6 and restored.results["a"].target is a
    assert restored.results["b"].target_met is False and "c" not in restored.results
    assert restored.last_tried == {"a": now - 3600, "b": now - 60}
    assert restored.missed_in_a_row == {"a": 0, "b": 2}  # b: 2 and 3 Mbit/s since it last met 4
    assert restored.used_bytes["a"] == (1_793_491_200.0, 3500)  # since 2026-11-01 00:00 UTC, the failed test too
    assert "b" not in restored.used_bytes  # no budget, nothing to restore
    assert restored.verdicts == {"a": True, "b": False}
    assert restored.last_test_bytes == {"a": 3000, "b": 1_000_000}  # a whole test, for the budget cap


def test_close_with_a_failing_store_counts_and_says_what_was_lost(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """At shutdown a store that keeps failing is retried until the deadline; the rest is dropped, said always."""
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.05)
    caplog.set_level(logging.ERROR, logger="monitor.history")

    def broken() -> SqliteStore:
        raise sqlite3.OperationalError("disk I/O error")

    sink = HistorySink(broken, KEEP_ALL)
    a = throughput_target("a")
    for i in range(5):
        sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(a, float(i), 0.001),)))
    sink.close(timeout_seconds=1.0)
    assert sink.stats.dropped == 5 and sink.stats.pending == 0 and sink.stats.written == 0
    assert sink.stats.errors["open"] >= 2  # retried, not given up at the first failure
    assert any("5 results lost at shutdown" in r.getMessage() for r in caplog.records)


def test_a_long_backlog_is_written_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog longer than a chunk goes in several transactions, every result once."""
    monkeypatch.setattr(history_module, "WRITE_CHUNK_RESULTS", 7)
    writes: list[int] = []

    class Counting(SqliteStore):
        def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result],
                  gaps: Sequence[Gap] = ()) -> None:
            writes.append(len(results))
            super().write(endpoints, results, gaps)

    sink = HistorySink(lambda: Counting(database_path(tmp_path)), KEEP_ALL)
    sites = [throughput_target(f"s{i}") for i in range(30)]
    sink.consume(Cycle("icmp", "g", 1.0, 0.1, tuple(icmp(s, 1.0, 0.001) for s in sites)))
    sink.close()
    assert sum(writes) == 30 and max(writes) <= 7 and sink.stats.written == 30


def test_restore_later_waits_for_the_store_and_reads_before_this_process_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that is away: None is delivered once at the first failed open, the restored state when the
    store answers, read before the backlog of this process is written (its bytes are not counted twice)."""
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.05)
    now = 1_795_000_000.0
    a = throughput_target("a", budget=10_000_000)
    path = database_path(tmp_path)
    store = SqliteStore(path)
    store.write([], [iperf3_test(a, now - 7200, 5e6, moved=3000)])
    store.close()
    away = True
    opens = 0

    def open_store() -> SqliteStore:
        nonlocal opens
        opens += 1
        if away:
            raise ConnectionError("the server does not answer")
        return SqliteStore(path)

    delivered: list[object] = []
    sink = HistorySink(open_store, Retention(), clock=lambda: now)
    try:
        sink.restore_later([a], delivered.append)
        sink.consume(Cycle("throughput", "g", now - 60, 11.0, (iperf3_test(a, now - 60, 6e6, moved=700),)))
        wait_for(lambda: opens >= 3)
        assert delivered == [None] and sink.stats.errors["open"] >= 2 and sink.stats.written == 0
        away = False
        wait_for(lambda: len(delivered) == 2 and sink.stats.written == 1)
    finally:
        sink.close()
    restored = delivered[1]
    assert isinstance(restored, history_module.RestoredState)
    assert restored.results["a"].started_at == now - 7200  # read before the new test was written
    assert restored.used_bytes["a"] == (1_793_491_200.0, 3000)
    assert sink.stats.errors["restore"] == 0


def test_restore_later_gives_up_on_a_store_that_opens_but_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries that fail on an open store are retried a few times, then given up; writing goes on."""
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.05)

    class Broken(SqliteStore):
        def last_measured_tests(self) -> dict:  # type: ignore[type-arg]
            raise sqlite3.OperationalError("no such table")

    delivered: list[object] = []
    a = throughput_target("a")
    sink = HistorySink(lambda: Broken(database_path(tmp_path)), KEEP_ALL)
    try:
        sink.restore_later([a], delivered.append)
        sink.consume(Cycle("icmp", "g", 1.0, 0.1, (icmp(a, 1.0, 0.01),)))
        wait_for(lambda: sink.stats.written == 1)
    finally:
        sink.close()
    assert delivered == [None]
    assert sink.stats.errors["restore"] == history_module.RESTORE_ATTEMPTS


def test_connections_opening_a_new_history_at_once_all_open(tmp_path: Path) -> None:
    """The writer and the start-up restore open a fresh file at the same moment: switching it to WAL must
    wait for the other connection, not fail with "database is locked" (CI saw it once at start-up)."""
    import threading

    from monitor.history.sqlite import SqliteStore

    errors: list[BaseException] = []
    for attempt in range(100):
        path = tmp_path / f"h{attempt}" / "history.sqlite3"

        def open_one(path: Path = path) -> None:
            try:
                SqliteStore(path).close()
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        threads = [threading.Thread(target=open_one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_consume_returns_while_a_write_is_blocked_and_the_write_runs_in_the_writer_thread(tmp_path: Path) -> None:
    """The event loop never waits on the disk: with the store's write stuck (a hung disk), 100 more cycles
    are taken at once; the write runs in a thread other than the caller's, and everything lands once it
    is released."""
    import threading

    caller = threading.get_ident()
    entered, release = threading.Event(), threading.Event()
    writers: list[int] = []

    class Blocking(SqliteStore):
        def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result],
                  gaps: Sequence[Gap] = ()) -> None:
            writers.append(threading.get_ident())
            if threading.get_ident() != caller:  # written on the caller's thread, it would wait for ever
                entered.set()
                release.wait(60)
            super().write(endpoints, results, gaps)

    sink = HistorySink(lambda: Blocking(database_path(tmp_path)), KEEP_ALL)
    a = throughput_target("a")
    try:
        sink.consume(Cycle("icmp", "g", 0.0, 0.1, (icmp(a, 0.0, 0.001),)))
        assert entered.wait(10), "the writer never started the write"
        for i in range(1, 101):
            sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(a, float(i), 0.001),)))
        assert not release.is_set()  # every call returned while the write was still blocked
        assert sink.stats.written == 0 and sink.stats.pending == 101
    finally:
        release.set()
        sink.close()
    assert writers and caller not in writers
    assert sink.stats.written == 101 and sink.stats.pending == 0


def journal_mode(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])


def test_a_new_history_file_is_in_wal_mode(tmp_path: Path) -> None:
    """WAL is a property of the file: any later connection (a report beside the daemon) finds it."""
    path = database_path(tmp_path)
    SqliteStore(path).close()
    assert journal_mode(path) == "wal"


def test_retention_defaults_are_35_and_400_days() -> None:
    assert Retention() == Retention(icmp_seconds=35 * 86400.0, throughput_seconds=400 * 86400.0)


def test_the_sink_prunes_old_rows_in_slices_by_its_retention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a fake clock and a short retention, rows older than it go in slices of PRUNE_SLICE_ROWS (counted
    in stats.pruned), young ones stay."""
    monkeypatch.setattr(history_module, "PRUNE_SLICE_ROWS", 7)
    path = database_path(tmp_path)
    a, b = throughput_target("a"), throughput_target("b")
    now = 1_000_000.0
    store = SqliteStore(path)
    store.write([], [icmp(s, now - 7200 + t, 0.001) for s in (a, b) for t in range(20)]  # 40 old cycles
                + [icmp(s, now - 60 + t, 0.001) for s in (a, b) for t in range(5)]  # 10 young ones
                + [iperf3_test(a, now - 5 * 86400, 5e6), iperf3_test(a, now - 86400, 5e6)])  # one old test
    slices: list[int] = []
    clock = [now]

    class Counting(SqliteStore):
        def prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
            assert (icmp_before, throughput_before, limit) == (clock[0] - 3600, clock[0] - 2 * 86400, 7)
            gone = super().prune(icmp_before, throughput_before, limit)
            slices.append(gone)
            clock[0] += 1.0  # time passes between slices (the writer waits 0.2 s of it before the next)
            return gone

    sink = HistorySink(lambda: Counting(path), Retention(icmp_seconds=3600, throughput_seconds=2 * 86400),
                       clock=lambda: clock[0])
    try:
        wait_for(lambda: sink.stats.pruned >= 41)
    finally:
        sink.close()
    assert sink.stats.pruned == 41 and max(slices) <= 7 and len([n for n in slices if n]) == 6  # 7·5 + 6
    assert len(list(store.icmp_cycles("a", 0, 1e12))) == 5 and len(list(store.icmp_cycles("b", 0, 1e12))) == 5
    assert [t.started_at for t in store.throughput_tests("a", 0, 1e12)] == [now - 86400]
    store.close()


def test_history_retention_in_the_config_is_read_in_seconds() -> None:
    """``history: {retention: {icmp: 7d, throughput: 60d}}`` gives those seconds; left out, the defaults; the
    docs' sample (docs/history.md) is the defaults."""
    from monitor.config import parse_config

    groups = "groups: [{name: g, endpoints: [{name: a, host: 192.0.2.1}]}]\n"
    both = parse_config("history: {retention: {icmp: 7d, throughput: 60d}}\n" + groups, "c.yaml")
    assert both.retention == Retention(icmp_seconds=7 * 86400.0, throughput_seconds=60 * 86400.0)
    one = parse_config("history:\n  retention:\n    icmp: 36h\n" + groups, "c.yaml")
    assert one.retention == Retention(icmp_seconds=36 * 3600.0)
    assert parse_config(groups, "c.yaml").retention == Retention()
    readme = (Path(__file__).resolve().parent.parent / "docs" / "history.md").read_text(encoding="utf-8")
    sample = readme.split("**Retention is pruned in slices**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert parse_config(sample + groups, "docs/history.md").retention == Retention()


def test_retention_limits_are_the_ones_the_readme_gives() -> None:
    """docs/history.md: ``icmp`` 1h to 3650d, ``throughput`` 32d to 3650d; outside is an error naming file, line
    and key."""
    from monitor.config import parse_config
    from monitor.errors import ConfigError

    readme = (Path(__file__).resolve().parent.parent / "docs" / "history.md").read_text(encoding="utf-8")
    assert "accepts `icmp` from 1h to 3650d and `throughput` from\n32d to 3650d" in readme
    groups = "groups: [{name: g, endpoints: [{name: a, host: 192.0.2.1}]}]\n"

    def retention(icmp: str, throughput: str) -> Retention:
        return parse_config(f"history: {{retention: {{icmp: {icmp}, throughput: {throughput}}}}}\n" + groups,
                            "c.yaml").retention

    assert retention("1h", "32d") == Retention(3600.0, 32 * 86400.0)
    assert retention("3650d", "3650d") == Retention(3650 * 86400.0, 3650 * 86400.0)
    for icmp_value, throughput_value, key in (("59m", "32d", "icmp"), ("3651d", "32d", "icmp"),
                                              ("1h", "31d", "throughput"), ("1h", "3651d", "throughput")):
        with pytest.raises(ConfigError, match=rf"c\.yaml:1:\d+: history\.retention\.{key}: must be between"):
            retention(icmp_value, throughput_value)


def test_pruning_runs_while_cycles_keep_arriving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A steady producer must not starve pruning: each write is followed by a cycle already queued (the next
    one arrives while the last is written), yet the rows that fall out of retention go, in slices, before
    the producer lets up. The fake clock moves a minute per cycle."""
    import threading

    monkeypatch.setattr(history_module, "PRUNE_SLICE_ROWS", 7)
    path = database_path(tmp_path)
    now = 1_000_000.0
    old, a = throughput_target("old"), throughput_target("a")
    store = SqliteStore(path)
    store.write([], [icmp(old, now - 3000 + t, 0.001) for t in range(40)])  # out of retention after ~10 cycles
    store.close()
    clock = [now]
    cycles = 120
    busy: dict[str, int] = {}
    done = threading.Event()

    class Producing(SqliteStore):
        writes = 0

        def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result],
                  gaps: Sequence[Gap] = ()) -> None:
            super().write(endpoints, results, gaps)
            Producing.writes += 1
            if Producing.writes < cycles:  # the next cycle is queued before this write returns
                clock[0] += 60.0
                sink.consume(Cycle("icmp", "g", clock[0], 0.1, (icmp(a, clock[0], 0.001),)))
            elif not done.is_set():
                busy["pruned"] = sink.stats.pruned
                busy["old_left"] = len(list(self.icmp_cycles("old", 0, 1e12)))
                done.set()

    sink = HistorySink(lambda: Producing(path), Retention(icmp_seconds=3600, throughput_seconds=40 * 86400),
                       clock=lambda: clock[0])
    try:
        sink.consume(Cycle("icmp", "g", now, 0.1, (icmp(a, now, 0.001),)))
        assert done.wait(30), "the producer did not finish"
    finally:
        sink.close()
    assert busy["old_left"] == 0, busy  # pruned while the producer never let the queue run dry
    assert busy["pruned"] >= 40


def test_the_metrics_the_history_log_names_are_exported() -> None:
    """A log message that points ops at a metric names one that /metrics has (and docs/metrics.md documents)."""
    source = "".join(Path(module.__file__).read_text(encoding="utf-8")  # the writer and its set-aside file
                     for module in (history_module, set_aside_module))
    named = set(re.findall(r"connmon_[a-z_]+", source))
    readme = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert named and named <= documented_metrics(readme), named - documented_metrics(readme)


def test_store_failures_are_logged_again_once_the_minute_has_passed(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the log interval a failing store is said once however often it fails; once the interval
    has passed (the constant set to 0 here, instead of waiting a minute) it is said again."""
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(history_module, "LOG_EVERY_SECONDS", 1e9)
    caplog.set_level(logging.ERROR, logger="monitor.history")

    def broken() -> SqliteStore:
        raise sqlite3.OperationalError("disk I/O error")

    def said() -> int:
        return sum("open failed" in r.getMessage() for r in caplog.records)

    sink = HistorySink(broken, KEEP_ALL)
    try:
        sink.consume(Cycle("icmp", "g", 1.0, 0.1, (icmp(throughput_target("a"), 1.0, 0.001),)))
        wait_for(lambda: sink.stats.errors["open"] >= 5)
        assert said() == 1
        monkeypatch.setattr(history_module, "LOG_EVERY_SECONDS", 0.0)  # the minute has passed
        failures = sink.stats.errors["open"]
        wait_for(lambda: said() >= 2 and sink.stats.errors["open"] > failures)
    finally:
        sink.close(timeout_seconds=0.5)


def test_overdue_tests_read_back_from_the_history_are_spread_over_every(tmp_path: Path) -> None:
    """The restart path short of the daemon's loop: 200 sites last tested a day ago in a real history file,
    restored by the sink and handed to the plan as the daemon does (``plan.restore(last_tried, ...)``): their
    tests are spread over `every`, not all due at once."""
    from monitor.throughput_plan import ThroughputPlan

    now = 1_795_000_000.0
    sites = [dataclasses.replace(throughput_target(f"s{i:03d}"), throughput=ThroughputSettings(method="iperf3",
                                                                                             every_seconds=6 * 3600))
             for i in range(200)]
    store = SqliteStore(database_path(tmp_path))
    store.write([], [iperf3_test(t, now - 86400, 5e6) for t in sites])
    store.close()
    sink = HistorySink(lambda: SqliteStore(database_path(tmp_path)), Retention(), clock=lambda: now)
    try:
        restored = sink.restore(sites)
    finally:
        sink.close()
    assert restored.last_tried == {t.name: now - 86400 for t in sites}
    plan = ThroughputPlan()
    plan.set_targets(sites, now)
    plan.restore(restored.last_tried, restored.used_bytes, now, restored.last_test_bytes)
    due = sorted(s.next_due - now for s in plan.sites.values())
    assert due[0] >= 0 and due[-1] < 6 * 3600
    assert len(plan.due(now + 60, 1000)) < 10  # a handful in the first minute, not 200
    assert len({round(d) for d in due}) > 150  # spread, not piled on a few instants
