"""The shared history backend: one PostgreSQL database that several connmon instances write to.

SQLite (:mod:`monitor.sqlite_store`) stays the default; PostgreSQL is for sites split over
several instances (``--shard``) whose reports must cover every site. Why these choices:

* **Pooled synchronous connections.** The history sink writes from its one writer thread and
  ``connmon report`` reads synchronously, so a small :class:`psycopg_pool.ConnectionPool` used
  from those threads keeps the event loop free without an async driver.
* **Endpoints upserted by name** (``ON CONFLICT (name)``), so instances that share a site list,
  or hand a site over between shards, never collide; one transaction per batch, rows sent with
  ``executemany`` (pipelined by psycopg).
* **Schema versions** in a ``schema_version`` table; :data:`MIGRATIONS` are ordered steps run
  under ``pg_advisory_xact_lock``, so two instances that start at once migrate once.
* **Pruning** takes ``pg_try_advisory_xact_lock`` per slice: an instance that finds another one
  pruning skips that slice instead of deleting the same rows; deletes are bounded
  (``ctid IN (SELECT ... LIMIT n)``), so no transaction holds the tables long.
* The row layout matches SQLite's (RTTs packed into one ``bytea``), and all label columns are
  mapped in one place (:data:`_ENDPOINT_COLUMNS`), so adding a label is a one-line change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from monitor.history import EndpointRecord, HistoryNotCreated, StoredCycle, StoredTest
from monitor.results import IcmpResult, Result, ThroughputResult
from monitor.sqlite_store import _DETAIL_MAX, _directions_from_json, _directions_json, pack_rtts, unpack_rtts

_MIGRATE_LOCK = 0x636F6E6D  # "conm": the advisory lock key that serialises migrations
_PRUNE_LOCK = 0x636F6E70  # "conp": pruning slices (one pruner at a time across instances)

# EndpointRecord field → column, in record order: the one place a new label column is added.
_ENDPOINT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "name"), ("kind", "kind"), ("district", "district"), ("link", "link"), ("group", "grp"),
    ("target_bits_per_second", "target_bps"), ("status", "status"), ("planned_date", "planned_date"),
    ("provider", "provider"), ("contracted_bits_per_second", "contracted_bps"))

MIGRATIONS: tuple[str, ...] = (
    # 1: endpoints, ICMP cycles, throughput tests (as SQLite's version 1)
    """
    CREATE TABLE endpoints (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        district TEXT NOT NULL,
        link TEXT NOT NULL,
        grp TEXT NOT NULL,
        target_bps DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE icmp (
        endpoint_id BIGINT NOT NULL REFERENCES endpoints(id),
        started_at DOUBLE PRECISION NOT NULL,
        address TEXT,
        sent INTEGER NOT NULL,
        rtts BYTEA NOT NULL,
        error TEXT,
        error_detail TEXT,
        PRIMARY KEY (endpoint_id, started_at)
    );
    CREATE TABLE throughput (
        endpoint_id BIGINT NOT NULL REFERENCES endpoints(id),
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION NOT NULL,
        method TEXT NOT NULL,
        address TEXT,
        download_bps DOUBLE PRECISION,
        upload_bps DOUBLE PRECISION,
        bytes BIGINT NOT NULL,
        directions TEXT NOT NULL,
        target_bps DOUBLE PRECISION NOT NULL,
        target_upload_bps DOUBLE PRECISION,
        target_met BOOLEAN,
        error TEXT,
        error_detail TEXT,
        budget_remaining BIGINT,
        PRIMARY KEY (endpoint_id, started_at)
    );
    """,
    # 2: roll-out (issue 11), as SQLite's version 2: status, planned date, provider, contract, first result
    """
    ALTER TABLE endpoints ADD COLUMN status TEXT NOT NULL DEFAULT 'connected';
    ALTER TABLE endpoints ADD COLUMN planned_date DATE;
    ALTER TABLE endpoints ADD COLUMN provider TEXT;
    ALTER TABLE endpoints ADD COLUMN contracted_bps DOUBLE PRECISION;
    ALTER TABLE endpoints ADD COLUMN first_result_at DOUBLE PRECISION;
    UPDATE endpoints e SET first_result_at = LEAST(
        (SELECT MIN(started_at) FROM icmp i WHERE i.endpoint_id = e.id),
        (SELECT MIN(started_at) FROM throughput t WHERE t.endpoint_id = e.id));
    """,
)

_ENDPOINT_UPSERT = (
    f"INSERT INTO endpoints ({', '.join(c for _, c in _ENDPOINT_COLUMNS)}) "  # noqa: S608 (fixed names)
    f"VALUES ({', '.join('%s' for _ in _ENDPOINT_COLUMNS)}) ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for f, c in _ENDPOINT_COLUMNS if f != "name"))
_ENDPOINT_SELECT = ", ".join(c for _, c in _ENDPOINT_COLUMNS)
_TEST_COLUMNS = ("e.name, t.method, t.started_at, t.ended_at, t.address, t.directions, t.target_bps, "
                 "t.target_upload_bps, t.target_met, t.error, t.error_detail, t.budget_remaining")


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))


def scrub(text: str) -> str:
    """``text`` with any password of a PostgreSQL URL or ``password=`` setting in it hidden."""
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text)


def _endpoint_params(rec: EndpointRecord) -> tuple[Any, ...]:
    return tuple(getattr(rec, f) for f, _ in _ENDPOINT_COLUMNS)


class PostgresStore:
    """:class:`~monitor.history.HistoryStore` on a PostgreSQL database shared by several instances."""

    def __init__(self, url: str, *, read_only: bool = False, connect_timeout_seconds: float = 10.0,
                 max_connections: int = 2) -> None:
        self.url = url
        self._pool = ConnectionPool(url, min_size=1, max_size=max_connections, open=False,
                                    kwargs={"autocommit": True, "connect_timeout": int(connect_timeout_seconds)})
        # One direct connection first: an unreachable server is the driver's own clear error at once,
        # instead of the pool retrying in the background and logging each attempt.
        psycopg.connect(url, autocommit=True, connect_timeout=int(connect_timeout_seconds)).close()
        try:
            self._pool.open(wait=True, timeout=connect_timeout_seconds)
            if read_only:
                version = self.schema_version()
                if version > len(MIGRATIONS):
                    raise psycopg.DatabaseError(f"{redact(url)} has schema version {version}, newer than this "
                                                f"connmon knows ({len(MIGRATIONS)}); upgrade connmon")
                if version == 0:  # no daemon has written to this database yet
                    raise HistoryNotCreated(f"{redact(url)} holds no connmon history (no schema yet)")
            else:
                self._migrate()
        except BaseException:
            self._pool.close()
            raise
        self._ids: dict[str, int] = {}
        self._first_known: set[int] = set()  # endpoint ids whose first_result_at this process has set

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------ schema
    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            if row is None or not row[0]:
                return 0
            found = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            return int(found[0]) if found is not None else 0

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                         "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            version = int(row[0]) if row is not None else 0
            if version > len(MIGRATIONS):
                raise psycopg.DatabaseError(f"{redact(self.url)} has schema version {version}, newer than this "
                                            f"connmon knows ({len(MIGRATIONS)}); upgrade connmon")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)  # fixed text of this module
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    # ------------------------------------------------------------------ writing
    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result]) -> None:
        with self._pool.connection() as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if endpoints:
                        cur.executemany(_ENDPOINT_UPSERT, [_endpoint_params(rec) for rec in endpoints])
                    missing = {EndpointRecord.of(r.target) for r in results if r.target.name not in self._ids}
                    if missing:
                        cur.executemany(_ENDPOINT_UPSERT.split(" ON CONFLICT")[0] + " ON CONFLICT (name) DO NOTHING",
                                        [_endpoint_params(rec) for rec in missing])
                        cur.execute("SELECT name, id FROM endpoints WHERE name = ANY(%s)",
                                    ([rec.name for rec in missing],))
                        self._ids.update({str(name): int(i) for name, i in cur.fetchall()})
                    icmp_rows = []
                    test_rows = []
                    first: dict[int, float] = {}  # endpoint id → its earliest result in this batch
                    for result in results:
                        endpoint_id = self._ids[result.target.name]
                        if endpoint_id not in self._first_known:
                            first[endpoint_id] = min(first.get(endpoint_id, result.started_at), result.started_at)
                        if isinstance(result, IcmpResult):
                            icmp_rows.append((endpoint_id, result.started_at, result.address, result.sent,
                                              pack_rtts(result.rtts_seconds),
                                              result.error.value if result.error is not None else None,
                                              result.error_detail[:_DETAIL_MAX] or None))
                        elif isinstance(result, ThroughputResult):
                            test_rows.append(_test_row(endpoint_id, result))
                    if icmp_rows:
                        cur.executemany(
                            "INSERT INTO icmp VALUES (%s, %s, %s, %s, %s, %s, %s) "
                            "ON CONFLICT (endpoint_id, started_at) DO UPDATE SET address = excluded.address, "
                            "sent = excluded.sent, rtts = excluded.rtts, "
                            "error = excluded.error, error_detail = excluded.error_detail", icmp_rows)
                    if test_rows:
                        cur.executemany(
                            "INSERT INTO throughput VALUES (" + ", ".join(["%s"] * 15) + ") "
                            "ON CONFLICT (endpoint_id, started_at) DO UPDATE SET ended_at = excluded.ended_at, "
                            "method = excluded.method, address = excluded.address, "
                            "download_bps = excluded.download_bps, upload_bps = excluded.upload_bps, "
                            "bytes = excluded.bytes, directions = excluded.directions, "
                            "target_bps = excluded.target_bps, target_upload_bps = excluded.target_upload_bps, "
                            "target_met = excluded.target_met, error = excluded.error, "
                            "error_detail = excluded.error_detail, budget_remaining = excluded.budget_remaining",
                            test_rows)
                    if first:
                        cur.executemany("UPDATE endpoints SET first_result_at = %s WHERE id = %s AND "
                                        "(first_result_at IS NULL OR first_result_at > %s)",
                                        [(at, endpoint_id, at) for endpoint_id, at in first.items()])
                self._first_known.update(first)  # committed: once per endpoint and process
            except BaseException:
                self._ids.clear()  # ids learnt inside the rolled-back transaction may be void
                raise

    def prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
        """Delete up to ``limit`` old rows in one transaction, unless another instance is pruning."""
        gone = 0
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_PRUNE_LOCK,)).fetchone()
            if row is None or not row[0]:
                return 0  # another instance prunes this slice; ours would only wait on the same rows
            for table, before in (("icmp", icmp_before), ("throughput", throughput_before)):
                if gone >= limit:
                    break
                cur = conn.execute(
                    f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} "  # noqa: S608 (fixed names)
                    "WHERE started_at < %s LIMIT %s)", (before, limit - gone))
                gone += max(0, cur.rowcount)
        return gone

    # ------------------------------------------------------------------ reading
    def endpoints(self) -> list[EndpointRecord]:
        with self._pool.connection() as conn:
            rows = conn.execute(f"SELECT {_ENDPOINT_SELECT} FROM endpoints ORDER BY name").fetchall()  # noqa: S608
        return [EndpointRecord(*row) for row in rows]

    def first_results(self) -> dict[str, float]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT name, first_result_at FROM endpoints WHERE first_result_at IS NOT NULL").fetchall()
        return {str(name): float(at) for name, at in rows}

    def icmp_cycles(self, endpoint: str, start: float, end: float) -> Iterator[StoredCycle]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT i.started_at, i.sent, i.rtts, i.error FROM icmp i JOIN endpoints e ON e.id = i.endpoint_id "
                "WHERE e.name = %s AND i.started_at >= %s AND i.started_at < %s ORDER BY i.started_at",
                (endpoint, start, end)).fetchall()
        for started_at, sent, rtts, error in rows:
            yield StoredCycle(float(started_at), int(sent), unpack_rtts(bytes(rtts)), error)

    def throughput_tests(self, endpoint: str, start: float, end: float) -> list[StoredTest]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_TEST_COLUMNS} FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "  # noqa: S608
                "WHERE e.name = %s AND t.started_at >= %s AND t.started_at < %s ORDER BY t.started_at",
                (endpoint, start, end)).fetchall()
        return [_stored_test(row) for row in rows]

    def last_measured_tests(self) -> dict[str, StoredTest]:
        return self._latest("AND (t.download_bps IS NOT NULL OR t.upload_bps IS NOT NULL)")

    def last_tests(self) -> dict[str, StoredTest]:
        return self._latest("")

    def _latest(self, where: str) -> dict[str, StoredTest]:
        """Per endpoint, its newest matching test: one index descent each (LATERAL), not a scan."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT {_TEST_COLUMNS} FROM endpoints e CROSS JOIN LATERAL "  # noqa: S608 (fixed text)
                f"(SELECT * FROM throughput t WHERE t.endpoint_id = e.id {where} "
                "ORDER BY t.started_at DESC LIMIT 1) t").fetchall()
        return {str(row[0]): _stored_test(row) for row in rows}

    def bytes_since(self, endpoint: str, since: float) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(t.bytes), 0) FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
                "WHERE e.name = %s AND t.started_at >= %s", (endpoint, since)).fetchone()
        return int(row[0]) if row is not None else 0

    def recent_verdicts(self, endpoint: str, limit: int) -> list[bool]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT t.target_met FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
                "WHERE e.name = %s AND t.target_met IS NOT NULL ORDER BY t.started_at DESC LIMIT %s",
                (endpoint, limit)).fetchall()
        return [bool(met) for (met,) in rows]


def _test_row(endpoint_id: int, r: ThroughputResult) -> tuple[object, ...]:
    return (endpoint_id, r.started_at, r.ended_at, r.method, r.address, r.download_bits_per_second,
            r.upload_bits_per_second, r.bytes, _directions_json(r.directions), r.target.target_bits_per_second,
            r.target.target_upload_bits_per_second, r.target_met,
            r.error.value if r.error is not None else None, r.error_detail[:_DETAIL_MAX] or None,
            r.budget_remaining_bytes)


def _stored_test(row: Sequence[Any]) -> StoredTest:
    (name, method, started_at, ended_at, address, directions, target, target_upload, met, error, detail,
     budget) = row
    return StoredTest(str(name), str(method), float(started_at), float(ended_at),
                      None if address is None else str(address), _directions_from_json(str(directions)),
                      float(target), None if target_upload is None else float(target_upload),
                      None if met is None else bool(met), None if error is None else str(error),
                      "" if detail is None else str(detail), None if budget is None else int(budget))
