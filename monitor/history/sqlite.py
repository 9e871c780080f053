"""The embedded history backend: one SQLite file in WAL mode under the state directory.

Why these choices:

* **WAL, synchronous=NORMAL.** Readers (``connmon report`` on a live daemon) never block the
  writer; a transaction is all-or-nothing, so ``kill -9`` in the middle of a write leaves a file
  that opens cleanly and has lost at most the cycle in flight.
* **One row per endpoint and cycle, RTTs packed.** An ICMP cycle's echoes go into one BLOB of
  little-endian doubles (NaN where no reply came): exact RTTs for the report's median and p95,
  at ~60 bytes a cycle instead of a row per echo.
* **Primary key (endpoint, start time), WITHOUT ROWID.** A site's rows sit together for the
  report, a batch retried after an unclear failure is stored once (``INSERT OR REPLACE``), and
  pruning walks the key one endpoint at a time instead of needing a second index.
* **Schema versions** live in ``PRAGMA user_version``; :data:`MIGRATIONS` brings any older file
  up to date when it is opened.
* **A corrupt file is moved aside, not retried** (issue 25): the writer's open (``recover``) checks
  the file once per process (``PRAGMA quick_check``, and again after an error that says corruption)
  and moves a damaged one to ``history.sqlite3.corrupt-<UTC time>`` before starting a fresh one
  (:mod:`monitor.sqlite_files`); a permission fault is raised naming the file and the fix.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from monitor import sqlite_files
from monitor.history import codec
from monitor.history.store import EndpointRecord, HistoryNotCreated, StoredCycle, StoredGap, StoredTest, StoredWindow
from monitor.results import Gap, Result, Trace
from monitor.targets import Target
from monitor.write_ahead_log import BoundedLog, LogBounds

log = logging.getLogger("monitor.history")
_T = TypeVar("_T")

DATABASE_NAME = "history.sqlite3"
CORRUPT_METRIC = "connmon_store_corrupt_files_total"  # counts the corrupt files moved aside (issue 25)
# Issue 25: the log is checkpointed every 64 pages (256 KB) and kept to 512 KB, so that a 2 MB volume holds a
# working history; SQLite's default (1,000 pages, never shrunk) filled a 2 MiB disk with the log alone.
LOG_BOUNDS = LogBounds(checkpoint_pages=64, limit_bytes=512 * 1024)

MIGRATIONS: tuple[str, ...] = (
    # 1: endpoints, ICMP cycles, throughput tests
    """
    CREATE TABLE endpoints (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        district TEXT NOT NULL,
        link TEXT NOT NULL,
        grp TEXT NOT NULL,
        target_bps REAL NOT NULL
    );
    CREATE TABLE icmp (
        endpoint_id INTEGER NOT NULL REFERENCES endpoints(id),
        started_at REAL NOT NULL,
        address TEXT,
        sent INTEGER NOT NULL,
        rtts BLOB NOT NULL,
        error TEXT,
        error_detail TEXT,
        PRIMARY KEY (endpoint_id, started_at)
    ) WITHOUT ROWID;
    CREATE TABLE throughput (
        endpoint_id INTEGER NOT NULL REFERENCES endpoints(id),
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        method TEXT NOT NULL,
        address TEXT,
        download_bps REAL,
        upload_bps REAL,
        bytes INTEGER NOT NULL,
        directions TEXT NOT NULL,
        target_bps REAL NOT NULL,
        target_upload_bps REAL,
        target_met INTEGER,
        error TEXT,
        error_detail TEXT,
        budget_remaining INTEGER,
        PRIMARY KEY (endpoint_id, started_at)
    ) WITHOUT ROWID;
    """,
    # 2: roll-out (issue 11): status, planned date, provider and contract per endpoint, and when its first
    # result came (kept past pruning, for "connected in the period"); older rows are connected sites
    """
    ALTER TABLE endpoints ADD COLUMN status TEXT NOT NULL DEFAULT 'connected';
    ALTER TABLE endpoints ADD COLUMN planned_date TEXT;
    ALTER TABLE endpoints ADD COLUMN provider TEXT;
    ALTER TABLE endpoints ADD COLUMN contracted_bps REAL;
    ALTER TABLE endpoints ADD COLUMN first_result_at REAL;
    UPDATE endpoints SET first_result_at = (SELECT MIN(started_at) FROM icmp WHERE icmp.endpoint_id = endpoints.id);
    UPDATE endpoints SET first_result_at = (SELECT MIN(started_at) FROM throughput t WHERE t.endpoint_id = endpoints.id)
        WHERE EXISTS (SELECT 1 FROM throughput t WHERE t.endpoint_id = endpoints.id AND
                      (endpoints.first_result_at IS NULL OR t.started_at < endpoints.first_result_at));
    """,
    # 3: agent sites' classified silences (issue 10), so reports leave out the hours without power
    """
    CREATE TABLE gaps (
        endpoint_id INTEGER NOT NULL REFERENCES endpoints(id),
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        cause TEXT NOT NULL,
        interval_seconds REAL NOT NULL,
        PRIMARY KEY (endpoint_id, started_at)
    ) WITHOUT ROWID;
    """,
    # 4: where is the fault (issue 21): maintenance windows opened at run time through the API (kept across
    # restarts), and the traces taken when a site or an upstream node went down
    """
    CREATE TABLE maintenance (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        target_kind TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        reason TEXT NOT NULL,
        opened_at REAL NOT NULL,
        closed_at REAL
    );
    CREATE INDEX maintenance_ends_at ON maintenance (ends_at);
    CREATE TABLE traces (
        endpoint_id INTEGER NOT NULL REFERENCES endpoints(id),
        at REAL NOT NULL,
        hops TEXT NOT NULL,
        last_answering_hop TEXT,
        reached INTEGER NOT NULL,
        PRIMARY KEY (endpoint_id, at)
    ) WITHOUT ROWID;
    """,
    # 5: latency under load (issue 20): the site's max_added_latency when tested, for the verdict in reports
    # (the samples themselves are in each direction's JSON, which older rows simply lack)
    """
    ALTER TABLE throughput ADD COLUMN max_added_latency REAL;
    """,
    # 6: enrolment (issue 18): agent tokens issued by `connmon agent enrol` and the one-time codes that bring
    # them, as SHA-256 hashes only (monitor.history.agent_tokens reads and writes them); a few rows per site, so
    # no index beyond the keys (every page of the schema counts on a tiny volume)
    """
    CREATE TABLE agent_tokens (
        site TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        issued_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE agent_invites (
        code_sha256 TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    ) WITHOUT ROWID;
    """,
)
_GAPS_VERSION = 3  # the schema version that added the gap table
_MAINTENANCE_VERSION = 4  # the schema version that added run-time maintenance windows
_LATENCY_VERSION = 5  # the schema version that added the tests' max_added_latency (issue 20)
AGENT_TOKENS_VERSION = 6  # the schema version that added enrolled agents' tokens and codes (issue 18)
_WINDOW_COLUMNS = "id, target, target_kind, starts_at, ends_at, reason, opened_at, closed_at"
_ENDPOINT_INSERT = (f"INSERT INTO endpoints ({', '.join(codec.ENDPOINT_COLUMNS)}) "  # noqa: S608 (fixed names)
                    f"VALUES ({', '.join('?' for _ in codec.ENDPOINT_COLUMNS)})")
_ENDPOINT_UPSERT = (_ENDPOINT_INSERT + " ON CONFLICT (name) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in codec.ENDPOINT_COLUMNS[1:]))


def database_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / DATABASE_NAME


class SqliteStore:
    """:class:`~monitor.history.store.HistoryStore` on one SQLite file. One instance per thread."""

    _wal: BoundedLog | None = None  # a writing store's log, kept within LOG_BOUNDS (issue 25)

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False, recover: bool = False) -> None:
        self.path = Path(path)
        # the writer's open (``recover``) moves a corrupt file aside first and starts a fresh one (issue 25)
        self.moved_aside = (sqlite_files.set_aside_if_corrupt(self.path, what="history", log=log,
                                                              metric=CORRUPT_METRIC)
                            if recover and not read_only else None)
        if read_only:
            if not self.path.exists():
                raise HistoryNotCreated(f"no history at {self.path} (has the daemon run with this --state-dir?)")
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0,
                                       isolation_level=None, check_same_thread=False)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and not os.access(self.path, os.W_OK):  # SQLite would open it read-only
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self.path))  # and fail later
                self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            except (OSError, sqlite3.Error) as err:  # a permission fault names the file and the fix (issue 25)
                mapped = sqlite_files.named(self.path, err)
                if mapped is err:
                    raise
                raise mapped from err
        try:
            self._db.execute("PRAGMA busy_timeout = 10000")
            if not read_only:
                self._enter_wal()
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._wal = BoundedLog(self._db, self.path, LOG_BOUNDS, log)
                self._migrate()
            elif self.schema_version() > len(MIGRATIONS):
                raise sqlite3.DatabaseError(f"{self.path} has schema version {self.schema_version()}, newer than "
                                            f"this connmon knows ({len(MIGRATIONS)}); upgrade connmon")
            elif self.schema_version() == 0:  # created by the writer a moment ago, or not connmon's at all
                raise HistoryNotCreated(f"{self.path} holds no connmon history (no schema yet)")
        except BaseException as err:
            self._db.close()
            mapped = err if read_only else sqlite_files.named(self.path, err)
            if mapped is err:
                raise
            raise mapped from err
        # a report may read (read-only, unmigrated) a history older than the gap table: it then has no gaps
        self._has_gaps = self.schema_version() >= _GAPS_VERSION
        self._has_maintenance = self.schema_version() >= _MAINTENANCE_VERSION
        self._test_columns = codec.test_columns(self.schema_version() >= _LATENCY_VERSION)
        self._ids: dict[str, int] = {}
        self._first_known: set[int] = set()  # endpoint ids whose first_result_at this process has set
        self._prune_cursor = 0  # endpoint id the next prune slice starts at

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _enter_wal(self) -> None:
        """Switch to WAL; another connection opening the new file at the same moment (the start-up
        restore beside the writer) can make the switch fail at once with "database is locked",
        without SQLite's busy handler waiting: so wait here, as the busy timeout would."""
        deadline = time.monotonic() + 10.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > len(MIGRATIONS):
            raise sqlite3.DatabaseError(f"{self.path} has schema version {version}, newer than this connmon knows "
                                        f"({len(MIGRATIONS)}); upgrade connmon")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self.schema_version() < number:  # another process may have migrated meanwhile
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ writing
    def _bounded(self, write: Callable[[], _T]) -> _T:
        """Run one write transaction; on a full disk the log is freed and the write tried once more, and a
        log left longer than its bound is truncated after it (issue 25, :mod:`monitor.write_ahead_log`)."""
        if self._wal is None:
            return write()
        done = self._wal.freeing(write)
        self._wal.after_write()
        return done

    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap] = ()) -> None:
        self._bounded(lambda: self._write(endpoints, results, gaps))

    def _write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for rec in endpoints:
                db.execute(_ENDPOINT_UPSERT, codec.endpoint_params(rec))
            rows = codec.result_rows(results, self._endpoint_id, self._first_known)
            icmp_rows, test_rows, first = rows.icmp, rows.throughput, rows.first
            db.executemany("INSERT OR REPLACE INTO icmp VALUES (?, ?, ?, ?, ?, ?, ?)", icmp_rows)
            db.executemany("INSERT OR REPLACE INTO throughput VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           test_rows)
            for gap in gaps:  # in order: a provisional gap and the one replacing it may share a batch
                endpoint_id = self._endpoint_id(gap.target)
                if gap.replaces_start is not None and gap.replaces_start != gap.started_at:
                    db.execute("DELETE FROM gaps WHERE endpoint_id = ? AND started_at = ?",
                               (endpoint_id, gap.replaces_start))
                db.execute("INSERT OR REPLACE INTO gaps VALUES (?, ?, ?, ?, ?)",  # not a result: first_result_at stays
                           codec.gap_row(endpoint_id, gap))
            db.executemany("UPDATE endpoints SET first_result_at = ? WHERE id = ? AND "
                           "(first_result_at IS NULL OR first_result_at > ?)",
                           [(at, endpoint_id, at) for endpoint_id, at in first.items()])
            db.execute("COMMIT")
            self._first_known.update(first)  # once per endpoint and process: later results are later
        except BaseException:
            self._ids.clear()  # ids handed out inside the rolled-back transaction are void
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _endpoint_id(self, target: Target) -> int:
        """The row id of ``target``'s endpoint, inserted when new (its record is built only then)."""
        found = self._ids.get(target.name)
        if found is None:
            row = self._db.execute("SELECT id FROM endpoints WHERE name = ?", (target.name,)).fetchone()
            if row is None:
                cursor = self._db.execute(_ENDPOINT_INSERT, codec.endpoint_params(EndpointRecord.of(target)))
                found = int(cursor.lastrowid or 0)
            else:
                found = int(row[0])
            self._ids[target.name] = found
        return found

    def prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
        """Delete old rows one endpoint after another, resuming where the last slice stopped.

        A delete needs room in the log too: on a full disk the log is freed first (issue 25).
        """
        return self._bounded(lambda: self._prune(icmp_before, throughput_before, limit))

    def _prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
        db = self._db
        gone = 0
        ids = [row[0] for row in db.execute("SELECT id FROM endpoints WHERE id >= ? ORDER BY id",
                                            (self._prune_cursor,))]
        for endpoint_id in ids:
            db.execute("BEGIN IMMEDIATE")
            try:
                for table, key, column, before in (("icmp", "started_at", "started_at", icmp_before),
                                                   ("throughput", "started_at", "started_at", throughput_before),
                                                   # a gap goes once it ended
                                                   ("gaps", "started_at", "ended_at", throughput_before),
                                                   # traces (issue 21) are kept as long as tests
                                                   *((("traces", "at", "at", throughput_before),)
                                                     if self._has_maintenance else ())):
                    cursor = db.execute(
                        f"DELETE FROM {table} WHERE endpoint_id = ? AND {key} IN "  # noqa: S608 (fixed names)
                        f"(SELECT {key} FROM {table} WHERE endpoint_id = ? AND {column} < ? "
                        f"ORDER BY {key} LIMIT ?)", (endpoint_id, endpoint_id, before, limit - gone))
                    gone += max(0, cursor.rowcount)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if gone >= limit:
                self._prune_cursor = endpoint_id  # this endpoint may have more: start here next time
                return gone
        self._prune_cursor = 0
        return gone

    # ------------------------------------------------------------------ reading
    def endpoints(self) -> list[EndpointRecord]:
        return [codec.endpoint_record(row) for row in self._db.execute(
            f"SELECT {', '.join(codec.ENDPOINT_COLUMNS)} FROM endpoints ORDER BY name")]  # noqa: S608 (fixed names)

    def first_results(self) -> dict[str, float]:
        return {str(name): float(at) for name, at in self._db.execute(
            "SELECT name, first_result_at FROM endpoints WHERE first_result_at IS NOT NULL")}

    def icmp_cycles(self, endpoint: str, start: float, end: float) -> Iterator[StoredCycle]:
        rows = self._db.execute(
            f"SELECT {codec.CYCLE_COLUMNS} FROM icmp i JOIN endpoints e ON e.id = i.endpoint_id "  # noqa: S608
            "WHERE e.name = ? AND i.started_at >= ? AND i.started_at < ? ORDER BY i.started_at",
            (endpoint, start, end))
        for row in rows:
            yield codec.stored_cycle(row)

    def throughput_tests(self, endpoint: str, start: float, end: float) -> list[StoredTest]:
        rows = self._db.execute(
            f"SELECT {self._test_columns} FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "  # noqa: S608
            "WHERE e.name = ? AND t.started_at >= ? AND t.started_at < ? ORDER BY t.started_at",
            (endpoint, start, end))
        return [codec.stored_test(row) for row in rows]

    def gaps(self, endpoint: str, start: float, end: float) -> list[StoredGap]:
        if not self._has_gaps:
            return []
        rows = self._db.execute(
            f"SELECT {codec.GAP_COLUMNS} FROM gaps g "  # noqa: S608 (fixed names)
            "JOIN endpoints e ON e.id = g.endpoint_id WHERE e.name = ? AND g.ended_at > ? AND g.started_at < ? "
            "ORDER BY g.started_at", (endpoint, start, end))
        return [codec.stored_gap(endpoint, row) for row in rows]

    def last_measured_tests(self) -> dict[str, StoredTest]:
        return self._latest("AND (t.download_bps IS NOT NULL OR t.upload_bps IS NOT NULL)")

    def last_tests(self) -> dict[str, StoredTest]:
        return self._latest("")

    def _latest(self, where: str) -> dict[str, StoredTest]:
        """Per endpoint, walk its key backwards from the newest test: a few rows each, whatever the
        history's length (a scan of 400 days of tests would hold up the start-up)."""
        out: dict[str, StoredTest] = {}
        query = (f"SELECT {self._test_columns} FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "  # noqa: S608
                 f"WHERE t.endpoint_id = ? {where} ORDER BY t.started_at DESC LIMIT 1")
        for (endpoint_id,) in self._db.execute("SELECT id FROM endpoints").fetchall():
            row = self._db.execute(query, (endpoint_id,)).fetchone()
            if row is not None:
                out[row[0]] = codec.stored_test(row)
        return out

    def bytes_since(self, endpoint: str, since: float) -> int:
        row = self._db.execute(
            "SELECT COALESCE(SUM(t.bytes), 0) FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
            "WHERE e.name = ? AND t.started_at >= ?", (endpoint, since)).fetchone()
        return int(row[0])

    def recent_verdicts(self, endpoint: str, limit: int) -> list[bool]:
        rows = self._db.execute(
            "SELECT t.target_met FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
            "WHERE e.name = ? AND t.target_met IS NOT NULL ORDER BY t.started_at DESC LIMIT ?", (endpoint, limit))
        return [bool(met) for (met,) in rows]

    # ------------------------------------------------------------------ maintenance windows (issue 21)
    def open_maintenance(self, target: str, kind: str, starts_at: float, ends_at: float, reason: str,
                         opened_at: float) -> StoredWindow:
        cursor = self._db.execute(
            f"INSERT INTO maintenance ({_WINDOW_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, NULL)",  # noqa: S608
            (target, kind, starts_at, ends_at, reason, opened_at))
        return StoredWindow(int(cursor.lastrowid or 0), target, kind, starts_at, ends_at, reason, opened_at)

    def close_maintenance(self, window_id: int, closed_at: float) -> StoredWindow | None:
        self._db.execute("UPDATE maintenance SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                         (closed_at, window_id))
        row = self._db.execute(f"SELECT {_WINDOW_COLUMNS} FROM maintenance WHERE id = ?",  # noqa: S608
                               (window_id,)).fetchone()
        return None if row is None else StoredWindow(*row)

    def maintenance_windows(self, start: float, end: float) -> list[StoredWindow]:
        if not self._has_maintenance:
            return []
        rows = self._db.execute(
            f"SELECT {_WINDOW_COLUMNS} FROM maintenance WHERE ends_at > ? AND starts_at < ? "  # noqa: S608
            "AND (closed_at IS NULL OR closed_at > ?) ORDER BY starts_at, id", (start, end, start))
        return [StoredWindow(*row) for row in rows]

    def write_traces(self, traces: Sequence[tuple[Target, Trace]]) -> None:
        self._bounded(lambda: self._write_traces(traces))

    def _write_traces(self, traces: Sequence[tuple[Target, Trace]]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO traces VALUES (?, ?, ?, ?, ?)",
                           [codec.trace_row(self._endpoint_id(target), trace) for target, trace in traces])
            db.execute("COMMIT")
        except BaseException:
            self._ids.clear()  # ids handed out inside the rolled-back transaction are void
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def traces(self, endpoint: str, start: float, end: float) -> list[Trace]:
        if not self._has_maintenance:  # the traces table came with the maintenance table (schema 4)
            return []
        rows = self._db.execute(
            f"SELECT {codec.TRACE_COLUMNS} FROM traces r JOIN endpoints e ON e.id = r.endpoint_id "  # noqa: S608
            "WHERE e.name = ? AND r.at >= ? AND r.at < ? ORDER BY r.at", (endpoint, start, end))
        return [codec.stored_trace(row) for row in rows]

    def last_traces(self) -> dict[str, Trace]:
        if not self._has_maintenance:
            return {}
        rows = self._db.execute(
            f"SELECT e.name, {codec.TRACE_COLUMNS} FROM traces r JOIN endpoints e ON e.id = r.endpoint_id "  # noqa: S608
            "WHERE r.at = (SELECT MAX(at) FROM traces WHERE endpoint_id = r.endpoint_id)")
        return {str(row[0]): codec.stored_trace(row[1:]) for row in rows}

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

