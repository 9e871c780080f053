"""Issue 24, defence in depth: a row no store can take is set aside; the history of every other site goes on.

A lone UTF-16 surrogate (``"\\ud800"``) fails any UTF-8 encoder, a NUL byte fails PostgreSQL's
text. Before, one such value failed its whole chunk, which was retried for ever: the writer
stopped for every site. These tests feed the sink as the pipeline does (``consume(Cycle(...))``)
and read back through the store API, on real SQLite files and on a real PostgreSQL server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

from monitor.errors import ProbeErrorReason
from monitor.exposition.sink import MetricsSink
from monitor.history import set_aside as set_aside_module
from monitor.history import writer as history_module
from monitor.history.exposition import StoreExposition
from monitor.history.postgres import PostgresStore
from monitor.history.set_aside import SET_ASIDE_FILE_NAME, is_row_fault, set_aside_file
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import EndpointRecord, HistoryStore
from monitor.history.writer import HistorySink
from monitor.results import Cycle, Gap, IcmpResult, Result
from monitor.targets import Target
from tests.factories import KEEP_ALL, icmp, iperf3_test, throughput_target
from tests.polling import wait_for
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.stores import StoreOpeners

Opener = Callable[[], HistoryStore]
SURROGATE = "\ud800"
OTHER_SURROGATE = "\udc80"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Opener]]:
    """The backend's name and an opener of new connections to one fresh store of it."""
    opener = StoreOpeners(request.param, database_path(tmp_path / "state"),
                          request.getfixturevalue("pg_url") if request.param == "postgresql" else None)
    yield request.param, opener
    opener.close_all(closed_already=True)


def bad_icmp(t: Target, at: float, *, address: str | None = None, detail: str | None = None) -> IcmpResult:
    result = icmp(t, at, 0.001)
    if address is not None:
        result = dataclasses.replace(result, address=address)
    if detail is not None:
        result = dataclasses.replace(result, error=ProbeErrorReason.TIMEOUT, error_detail=detail)
    return result


def set_aside_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    raw.decode("ascii")  # ensure_ascii: every lone surrogate is an escape, the file is plain ASCII
    return [json.loads(line) for line in raw.splitlines()]


def set_aside_total(sink: HistorySink) -> int:
    """``connmon_store_results_set_aside_total`` as /metrics renders it for this sink's counters."""
    exposition = b"".join(MetricsSink(scrape=[StoreExposition(lambda: sink.stats)]).exposition()).decode("utf-8")
    assert "# TYPE connmon_store_results_set_aside_total counter" in exposition
    found = re.search(r"^connmon_store_results_set_aside_total(?:\{[^}]*\})? (\d+)$", exposition, flags=re.M)
    assert found is not None, exposition
    return int(found.group(1))


def test_rows_no_store_takes_are_set_aside_and_every_other_site_is_written(
        backend: tuple[str, Opener], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Three cycles of seven sites, two of them with bad rows of every kind: a lone surrogate in an ICMP
    address, in an ICMP error detail, in a throughput test's detail, in a gap; a NUL byte in a detail
    (PostgreSQL refuses it, SQLite keeps it); and a configured site whose very name holds a surrogate.
    Every other row is stored, the bad ones are in the set-aside file with their surrogates intact,
    counted, out of ``pending``, and the writer goes on; each cause is logged once, on one line."""
    name, opener = backend
    caplog.set_level(logging.ERROR, logger="monitor.history")
    path = tmp_path / "state" / SET_ASIDE_FILE_NAME
    s0, s1, s2, s3, s4, s5 = (throughput_target(f"s{i}") for i in range(6))
    odd = throughput_target(f"odd{OTHER_SURROGATE}\nname")  # a newline too: the log must stay one line
    sink = HistorySink(opener, KEEP_ALL, set_aside_path=path)
    sink.set_targets([s0, s1, s2, s3, s4, s5, odd])
    try:
        for at in (100.0, 200.0):
            sink.consume(Cycle("icmp", "g", at, 0.1, (
                icmp(s0, at, 0.001), bad_icmp(s1, at, address=f"192.0.2.{SURROGATE}"),
                bad_icmp(s2, at, detail=f"no route {OTHER_SURROGATE}"), bad_icmp(s3, at, detail="nul\x00byte"),
                icmp(s4, at, 0.002), icmp(s5, at, 0.003), icmp(odd, at, 0.004))))
            sink.consume(Cycle("throughput", "g", at, 11.0, (
                dataclasses.replace(iperf3_test(s4, at + 1, None, error=ProbeErrorReason.TIMEOUT),
                                    error_detail=f"iperf3: {SURROGATE}"),)))
            sink.consume(Cycle("agent", "g", at, 0.1, (icmp(s5, at + 2, 0.001),), gaps=(
                Gap(s5, at - 50, at, f"power{SURROGATE}", 60.0),)))  # type: ignore[arg-type]  # from outside
        wait_for(lambda: sink.stats.pending == 0 and sink.stats.written + sink.stats.set_aside == 2 * 10)
        # the writer did not stop: a later cycle of every site is written, the odd one's result set aside again
        sink.consume(Cycle("icmp", "g", 300.0, 0.1, tuple(icmp(t, 300.0, 0.001) for t in (s0, s1, s2, s3, s4, s5,
                                                                                              odd))))
        wait_for(lambda: sink.stats.pending == 0 and sink.stats.written + sink.stats.set_aside == 2 * 10 + 7)
    finally:
        sink.close()

    nul_refused = name == "postgresql"
    store = opener()
    cycles = {t.name: [c.started_at for c in store.icmp_cycles(t.name, 0, 1e12)] for t in (s0, s1, s2, s3, s4, s5)}
    assert cycles == {"s0": [100.0, 200.0, 300.0], "s1": [300.0], "s2": [300.0],
                      "s3": [300.0] if nul_refused else [100.0, 200.0, 300.0],
                      "s4": [100.0, 200.0, 300.0], "s5": [100.0, 102.0, 200.0, 202.0, 300.0]}
    assert store.throughput_tests("s4", 0, 1e12) == [] and store.gaps("s5", 0, 1e12) == []
    assert {e.name for e in store.endpoints()} == {"s0", "s1", "s2", "s3", "s4", "s5"}

    lines = set_aside_lines(path)
    kept = sorted(((line["kind"], line["endpoint"], line["started_at"]) for line in lines),
                  key=lambda k: (k[0], k[1], k[2] or 0.0))
    expected = sorted([("icmp", "s1", 100.0), ("icmp", "s1", 200.0), ("icmp", "s2", 100.0), ("icmp", "s2", 200.0),
                       ("throughput", "s4", 101.0), ("throughput", "s4", 201.0), ("gap", "s5", 50.0),
                       ("gap", "s5", 150.0), ("icmp", odd.name, 100.0), ("icmp", odd.name, 200.0),
                       ("icmp", odd.name, 300.0), ("endpoint", odd.name, None)]
                      + ([("icmp", "s3", 100.0), ("icmp", "s3", 200.0)] if nul_refused else []),
                      key=lambda k: (k[0], k[1], k[2] or 0.0))
    assert kept == expected
    by_key = {(line["kind"], line["endpoint"], line["started_at"]): line for line in lines}
    address = by_key[("icmp", "s1", 100.0)]
    assert address["fields"]["address"] == f"192.0.2.{SURROGATE}"  # the escape loaded back
    assert address["fields"]["rtts_seconds"] == [0.001] and "UnicodeEncodeError" in str(address["error"])
    assert by_key[("icmp", "s2", 200.0)]["fields"]["error_detail"] == f"no route {OTHER_SURROGATE}"
    assert by_key[("icmp", "s2", 200.0)]["fields"]["error"] == "timeout"
    assert by_key[("throughput", "s4", 101.0)]["fields"]["error_detail"] == f"iperf3: {SURROGATE}"
    assert by_key[("gap", "s5", 50.0)]["fields"]["cause"] == f"power{SURROGATE}"
    assert by_key[("endpoint", odd.name, None)]["fields"]["district"] == "Aktobe"
    if nul_refused:
        assert by_key[("icmp", "s3", 100.0)]["fields"]["error_detail"] == "nul\x00byte"
        assert "DataError" in str(by_key[("icmp", "s3", 100.0)]["error"])
    assert all(isinstance(line["set_aside_at"], float) for line in lines)

    results_set_aside = sum(line["kind"] != "endpoint" for line in lines)  # a site's record is no result
    assert sink.stats.set_aside == results_set_aside == (13 if nul_refused else 11)
    assert sink.stats.written == 2 * 10 + 7 - results_set_aside and sink.stats.pending == 0
    assert sink.stats.set_aside_lost == 0 and sink.stats.dropped == 0
    assert sink.stats.errors["write"] == 0  # the store worked throughout: no store error, no retry
    assert set_aside_total(sink) == results_set_aside

    said = [r for r in caplog.records if "set aside" in r.getMessage()]
    # once per cause however many rows: the surrogates (UnicodeEncodeError), and PostgreSQL's NUL (DataError)
    assert len(said) == (2 if nul_refused else 1), [r.getMessage() for r in said]
    for record in said:
        message = record.getMessage()
        assert record.levelno == logging.ERROR and record.exc_info is None and "Traceback" not in message
        assert "\n" not in message and "\x00" not in message
        message.encode("utf-8")  # no lone surrogate reached the log
        assert f"kept in {path}" in message
        assert re.search(r"of (s\d|odd\ufffd\\x0aname) that the store cannot write", message), message
    assert not [r for r in caplog.records if "write failed" in r.getMessage()]


def test_a_failed_write_is_rolled_back_and_leaves_the_store_usable(backend: tuple[str, Opener]) -> None:
    """The store contract the writer relies on: a write refused for a row writes nothing of its batch
    (the transaction is rolled back), its error is a row fault, and the same connection writes on."""
    name, opener = backend
    store = opener()
    a, b = throughput_target("a"), throughput_target("b")
    bads: list[IcmpResult] = [bad_icmp(b, 10.0, address=f"192.0.2.{SURROGATE}")]
    if name == "postgresql":
        bads.append(bad_icmp(b, 11.0, detail="nul\x00"))
    for bad in bads:
        with pytest.raises(Exception) as raised:  # noqa: PT011 (any row fault)
            store.write([EndpointRecord.of(a), EndpointRecord.of(b)], [icmp(a, 1.0, 0.001), bad])
        assert is_row_fault(raised.value), raised.value
        assert list(store.icmp_cycles("a", 0, 1e12)) == [] and store.endpoints() == []
    store.write([], [icmp(a, 1.0, 0.001), icmp(b, 10.0, 0.002)])
    assert [c.started_at for c in store.icmp_cycles("a", 0, 1e12)] == [1.0]
    assert [c.started_at for c in store.icmp_cycles("b", 0, 1e12)] == [10.0]


def test_a_read_only_sqlite_history_is_a_store_fault_nothing_set_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A history file that opens read-only for a new connection fails every write with OperationalError:
    that is the store, not a row. As before: counted, results kept pending and written once it is
    writable; nothing set aside, no set-aside file."""
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.05)
    path = database_path(tmp_path)
    SqliteStore(path).close()  # exists, with its schema: the read-only connection opens, its writes fail
    read_only = [True]
    aside = tmp_path / SET_ASIDE_FILE_NAME
    sink = HistorySink(lambda: SqliteStore(path, read_only=read_only[0]), KEEP_ALL, set_aside_path=aside)
    a = throughput_target("a")
    try:
        for i in range(1, 6):
            sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(a, float(i), 0.001),)))
        wait_for(lambda: sink.stats.errors["write"] >= 3)
        assert sink.stats.written == 0 and sink.stats.pending == 5 and sink.stats.set_aside == 0
        read_only[0] = False
        wait_for(lambda: sink.stats.written == 5 and sink.stats.pending == 0)
    finally:
        sink.close()
    assert sink.stats.set_aside == 0 and not aside.exists()
    store = SqliteStore(path, read_only=True)
    assert [c.started_at for c in store.icmp_cycles("a", 0, 1e12)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    store.close()


def test_a_read_only_postgresql_database_is_a_store_fault_nothing_set_aside(
        pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A database whose new sessions are read-only (its connections cut, then refused writes with
    ReadOnlySqlTransaction): a store fault, retried as before, nothing set aside, all written once it
    takes writes again."""
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.05)
    database = pg_server.new_database()
    url = pg_server.url(database)
    aside = tmp_path / SET_ASIDE_FILE_NAME
    sink = HistorySink(lambda: PostgresStore(url, connect_timeout_seconds=5.0), KEEP_ALL, set_aside_path=aside)
    a = throughput_target("a")
    try:
        sink.consume(Cycle("icmp", "g", 1.0, 0.1, (icmp(a, 1.0, 0.001),)))
        wait_for(lambda: sink.stats.written == 1)
        pg_server.psql(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        pg_server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        for i in range(2, 6):
            sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(a, float(i), 0.001),)))
        errors = sink.stats.errors
        wait_for(lambda: errors["write"] >= 1 and errors["write"] + errors["open"] >= 3, timeout=30.0)
        assert sink.stats.written == 1 and sink.stats.pending == 4 and sink.stats.set_aside == 0
        pg_server.psql(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        pg_server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        wait_for(lambda: sink.stats.written == 5 and sink.stats.pending == 0, timeout=30.0)
    finally:
        sink.close()
    assert sink.stats.set_aside == 0 and not aside.exists()
    store = PostgresStore(url)
    try:
        assert [c.started_at for c in store.icmp_cycles("a", 0, 1e12)] == [1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        store.close()


class CountingStore(SqliteStore):
    """A real SQLite store that counts the transactions the writer asks for."""

    writes: list[int]

    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap] = ()) -> None:
        self.writes.append(len(results) + len(gaps))
        super().write(endpoints, results, gaps)


def test_a_chunk_with_one_bad_row_is_halved_not_written_row_by_row(tmp_path: Path) -> None:
    """One bad row among 256 costs a handful of transactions (halves down to the row), not 256: a site
    that sends a bad row every cycle must not make the writer fall behind at 10,000 sites."""
    writes: list[int] = []

    def opener() -> SqliteStore:
        store = CountingStore(database_path(tmp_path))
        store.writes = writes
        return store

    sink = HistorySink(opener, KEEP_ALL, set_aside_path=tmp_path / SET_ASIDE_FILE_NAME)
    sites = [throughput_target(f"s{i:03d}") for i in range(256)]
    results = [icmp(t, 1.0, 0.001) for t in sites]
    results[77] = bad_icmp(sites[77], 1.0, address=SURROGATE)
    sink.consume(Cycle("icmp", "g", 1.0, 0.1, tuple(results)))
    sink.close()
    assert sink.stats.written == 255 and sink.stats.set_aside == 1 and sink.stats.pending == 0
    assert len(writes) <= 1 + 2 * 8, writes  # the chunk, then two halves per level of a binary split
    store = SqliteStore(database_path(tmp_path), read_only=True)
    assert sum(len(list(store.icmp_cycles(t.name, 0, 1e12))) for t in sites) == 255
    store.close()


def test_the_set_aside_file_is_bounded_and_beyond_it_rows_are_only_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past SET_ASIDE_MAX_BYTES nothing more is appended: the rows are counted (set aside and lost), the log
    says so once, and the writer goes on writing the good rows."""
    monkeypatch.setattr(set_aside_module, "SET_ASIDE_MAX_BYTES", 1500)
    caplog.set_level(logging.ERROR, logger="monitor.history")
    path = tmp_path / SET_ASIDE_FILE_NAME
    sink = HistorySink(lambda: SqliteStore(database_path(tmp_path)), KEEP_ALL, set_aside_path=path)
    good, bad = throughput_target("good"), throughput_target("bad")
    try:
        for i in range(20):
            sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(good, float(i), 0.001),
                                                             bad_icmp(bad, float(i), detail=f"{SURROGATE}" * 20))))
        wait_for(lambda: sink.stats.pending == 0 and sink.stats.written == 20)
    finally:
        sink.close()
    kept = set_aside_lines(path)
    assert 0 < len(kept) < 20 and path.stat().st_size <= 1500
    assert sink.stats.set_aside == 20 and sink.stats.set_aside_lost == 20 - len(kept)
    full = [r for r in caplog.records if "has reached" in r.getMessage()]
    assert len(full) == 1 and "connmon_store_results_set_aside_lost_total" in full[0].getMessage()
    exposition = b"".join(MetricsSink(scrape=[StoreExposition(lambda: sink.stats)]).exposition()).decode("utf-8")
    assert re.search(rf"^connmon_store_results_set_aside_lost_total(?:\{{[^}}]*\}})? {20 - len(kept)}$", exposition,
                     flags=re.M), exposition


def test_a_set_aside_file_that_cannot_be_written_is_counted_and_said_never_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The set-aside file's directory is a regular file: every row set aside is counted as lost, the
    failure is said once, and the writer goes on (the good rows are all written)."""
    caplog.set_level(logging.ERROR, logger="monitor.history")
    (tmp_path / "not-a-dir").write_text("")
    sink = HistorySink(lambda: SqliteStore(database_path(tmp_path)), KEEP_ALL,
                       set_aside_path=tmp_path / "not-a-dir" / SET_ASIDE_FILE_NAME)
    good, bad = throughput_target("good"), throughput_target("bad")
    try:
        for i in range(5):
            sink.consume(Cycle("icmp", "g", float(i), 0.1, (icmp(good, float(i), 0.001),
                                                             bad_icmp(bad, float(i), address=SURROGATE))))
        wait_for(lambda: sink.stats.pending == 0 and sink.stats.written == 5)
    finally:
        sink.close()
    assert sink.stats.set_aside == 5 and sink.stats.set_aside_lost == 5
    assert sink.stats.errors["write"] == 0
    said = [r.getMessage() for r in caplog.records if "cannot write the set-aside file" in r.getMessage()]
    assert len(said) == 1, said
    assert any("not kept:" in r.getMessage() and "set aside" in r.getMessage() for r in caplog.records)


def test_row_faults_and_store_faults_are_told_apart() -> None:
    """What the writer sets aside (a value the store cannot take) and what it retries (the store)."""
    def raised(action: Callable[[], object]) -> Exception:
        try:
            action()
        except Exception as err:  # noqa: BLE001
            return err
        raise AssertionError("did not raise")

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x INTEGER NOT NULL)")
    row = [raised(lambda: SURROGATE.encode()), raised(lambda: db.execute("INSERT INTO t VALUES (?)", (2**70,))),
           raised(lambda: db.execute("INSERT INTO t VALUES (?)", (None,))),
           raised(lambda: db.execute("INSERT INTO t VALUES (?)", (object(),))),
           raised(lambda: struct.pack("<d", "x")), psycopg.DataError("PostgreSQL text fields cannot contain NUL"),
           psycopg.errors.NumericValueOutOfRange("bigint out of range"), psycopg.errors.NotNullViolation("null")]
    db.close()
    store = [raised(lambda: db.execute("SELECT 1")), sqlite3.OperationalError("database is locked"),
             sqlite3.OperationalError("attempt to write a readonly database"), OSError(28, "No space left"),
             ConnectionError("gone"), psycopg.OperationalError("server closed the connection"),
             psycopg.errors.ReadOnlySqlTransaction("read-only"), RuntimeError("event loop closed")]
    assert [type(e).__name__ for e in row if not is_row_fault(e)] == []
    assert [type(e).__name__ for e in store if is_row_fault(e)] == []


def test_the_daemon_keeps_the_set_aside_file_in_its_state_dir() -> None:
    """The daemon passes ``set_aside_file(state_dir)``: the file sits beside the SQLite history (and in the
    state dir with a PostgreSQL one), under the name the docs give (docs/history.md)."""
    assert set_aside_file("/var/lib/connmon") == Path("/var/lib/connmon/history-set-aside.jsonl")
    assert set_aside_file("/var/lib/connmon").parent == database_path("/var/lib/connmon").parent
    readme = (Path(__file__).resolve().parent.parent / "docs" / "history.md").read_text(encoding="utf-8")
    assert f"`{SET_ASIDE_FILE_NAME}`" in readme and "connmon_store_results_set_aside_total" in readme
    source = (Path(__file__).resolve().parent.parent / "monitor" / "daemon.py").read_text(encoding="utf-8")
    assert "set_aside_path=set_aside_file(state_dir)" in source

