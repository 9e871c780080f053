"""The shared history backend: one PostgreSQL database that several connmon instances write to.

SQLite (:mod:`monitor.history.sqlite`) stays the default; PostgreSQL is for sites split over
several instances (``--shard``) whose reports must cover every site. Why these choices:

* **Asynchronous, pooled.** :class:`AsyncPostgresStore` speaks psycopg's async API through a
  small :class:`psycopg_pool.AsyncConnectionPool`, on one event loop thread of its own
  (:class:`_IoLoop`), not the daemon's: the daemon's loop never waits on the database or parses
  its rows. :class:`PostgresStore` is the synchronous face of it that the one store interface
  (:class:`~monitor.history.store.HistoryStore`) asks for: the history writer thread and ``connmon
  report`` call it and wait, so SQLite and PostgreSQL share the writer's backlog, retry and
  pruning logic.
* **Endpoints upserted by name** (``ON CONFLICT (name)``), so instances that share a site list,
  or hand a site over between shards, never collide; one transaction per batch, rows sent with
  ``executemany`` (pipelined by psycopg).
* **Schema versions** in a ``schema_version`` table; :data:`MIGRATIONS` are ordered steps run
  under ``pg_advisory_xact_lock``, so two instances that start at once migrate once.
* **Pruning** takes ``pg_try_advisory_xact_lock`` per slice: an instance that finds another one
  pruning skips that slice instead of deleting the same rows; deletes are bounded
  (``ctid IN (SELECT ... LIMIT n)``), so no transaction holds the tables long.
* The row layout matches SQLite's (RTTs packed into one ``bytea``): both backends turn values into
  rows and back with the one codec, :mod:`monitor.history.codec`, where the label columns are mapped
  too, so adding a label is done once for both.
* **Replicas** (issue 19, schema 7): each instance writes its ICMP cycles under its ``instance``
  (its shard index; "" without ``--shard``, and for an agent site's cycles), so a site probed by R
  instances has R rows per interval; :meth:`AsyncPostgresStore.icmp_cycles` merges them into one
  stream (:mod:`monitor.history.replicas`). SQLite keeps one instance and has no such column.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool

from monitor.history import codec, replicas
from monitor.history.postgres_schema import MIGRATIONS
from monitor.history.store import EndpointRecord, HistoryNotCreated, StoredCycle, StoredGap, StoredTest, StoredWindow
from monitor.results import Gap, Result, Trace
from monitor.targets import Target

_MIGRATE_LOCK = 0x636F6E6D  # "conm": the advisory lock key that serialises migrations
_PRUNE_LOCK = 0x636F6E70  # "conp": pruning slices (one pruner at a time across instances)
_GAPS_VERSION = 3  # the schema version that added the gap table
_MAINTENANCE_VERSION = 4  # the schema version that added run-time maintenance windows
_LATENCY_VERSION = 5  # the schema version that added the tests' max_added_latency (issue 20)
AGENT_TOKENS_VERSION = 6  # the schema version that added enrolled agents' tokens and codes (issue 18)
_INSTANCE_VERSION = 7  # the schema version that added icmp.instance: each replica's cycles apart (issue 19)
_WINDOW_COLUMNS = "id, target, target_kind, starts_at, ends_at, reason, opened_at, closed_at"
_T = TypeVar("_T")

_ENDPOINT_UPSERT = (
    f"INSERT INTO endpoints ({', '.join(codec.ENDPOINT_COLUMNS)}) "  # noqa: S608 (fixed names)
    f"VALUES ({', '.join('%s' for _ in codec.ENDPOINT_COLUMNS)}) ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in codec.ENDPOINT_COLUMNS[1:]))


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


class _IoLoop:
    """The event loop thread that all of this process's PostgreSQL I/O runs on (started on first use).

    The daemon's own loop times ICMP echoes to the millisecond; parsing a 10,000-row batch there,
    or waiting on a server that does not answer, would show up as RTT. Here the pools and their
    connections live on a loop of their own, and callers (the history writer thread, ``connmon
    report``, the API's worker threads) hand it coroutines and wait for the answer.
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the I/O loop and return its result (or raise its error) in the calling thread."""
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="connmon-postgres", daemon=True).start()
                cls._loop = loop
            loop = cls._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


class AsyncPostgresStore:
    """The history on PostgreSQL through psycopg's asynchronous API and an :class:`AsyncConnectionPool`.

    :meth:`open` connects once directly (an unreachable server is the driver's own clear error at
    once, not a pool timeout), then opens the pool and migrates (or, read-only, checks the schema
    version). The pool keeps ``min_size`` connections, grows to ``max_size``, checks a connection
    before lending it (one broken by a server restart is replaced, not handed out) and waits at
    most ``connect_timeout_seconds`` for one; every failure is raised to the caller, which counts it.
    """

    def __init__(self, url: str, *, read_only: bool = False, connect_timeout_seconds: float = 10.0,
                 max_connections: int = 2, instance: str = "") -> None:
        self.url = url
        self.instance = instance  # this instance's identity on its cycles (issue 19): its shard index, or ""
        self._read_only = read_only
        self._timeout = connect_timeout_seconds
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            url, min_size=1, max_size=max_connections, open=False, timeout=connect_timeout_seconds,
            check=AsyncConnectionPool.check_connection, name="connmon-history",
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_seconds))})
        self._ids: dict[str, int] = {}
        self._first_known: set[int] = set()  # endpoint ids whose first_result_at this process has set
        self._has_gaps = False  # set by open: the schema has the gap table
        self._has_maintenance = False  # set by open: the schema has the maintenance table
        self._test_columns = codec.test_columns(False)  # set by open: with max_added_latency from schema 5
        self._cycle_columns = codec.instance_cycle_columns(False)  # set by open: with the instance from schema 7

    async def open(self) -> None:
        await (await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self._timeout)))).close()
        try:
            await self._pool.open(wait=True, timeout=self._timeout)
            if self._read_only:
                version = await self.schema_version()
                if version > len(MIGRATIONS):
                    raise psycopg.DatabaseError(f"{redact(self.url)} has schema version {version}, newer than this "
                                                f"connmon knows ({len(MIGRATIONS)}); upgrade connmon")
                if version == 0:  # no daemon has written to this database yet
                    raise HistoryNotCreated(f"{redact(self.url)} holds no connmon history (no schema yet)")
            else:
                version = await self._migrate()
        except BaseException:
            await self._pool.close()
            raise
        # a report may read (read-only, unmigrated) a history older than the gap table: it then has no gaps
        self._has_gaps = version >= _GAPS_VERSION
        self._has_maintenance = version >= _MAINTENANCE_VERSION
        self._test_columns = codec.test_columns(version >= _LATENCY_VERSION)
        self._cycle_columns = codec.instance_cycle_columns(version >= _INSTANCE_VERSION)

    async def close(self) -> None:
        await self._pool.close()

    # ------------------------------------------------------------------ schema
    async def schema_version(self) -> int:
        async with self._pool.connection() as conn:
            row = await (await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")).fetchone()
            if row is None or not row[0]:
                return 0
            found = await (await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")).fetchone()
            return int(found[0]) if found is not None else 0

    async def _migrate(self) -> int:
        """Bring the schema up to date under the migration lock; return the version it is at now."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                               "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            row = await (await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")).fetchone()
            version = int(row[0]) if row is not None else 0
            if version > len(MIGRATIONS):
                raise psycopg.DatabaseError(f"{redact(self.url)} has schema version {version}, newer than this "
                                            f"connmon knows ({len(MIGRATIONS)}); upgrade connmon")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        await conn.execute(statement)  # fixed text of this module
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
        return len(MIGRATIONS)  # every step applied (a newer schema raised above)

    # ------------------------------------------------------------------ writing
    async def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result],
                    gaps: Sequence[Gap] = ()) -> None:
        async with self._pool.connection() as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    if endpoints:
                        await cur.executemany(_ENDPOINT_UPSERT, [codec.endpoint_params(rec) for rec in endpoints])
                    missing = {EndpointRecord.of(r.target) for r in (*results, *gaps)
                               if r.target.name not in self._ids}
                    if missing:
                        await self._add_endpoints(cur, missing)
                    ids = self._ids
                    rows = codec.result_rows(results, lambda t: ids[t.name], self._first_known, self.instance)
                    icmp_rows, test_rows, first = rows.icmp, rows.throughput, rows.first
                    if icmp_rows:
                        await cur.executemany(
                            "INSERT INTO icmp (endpoint_id, started_at, address, sent, rtts, error, error_detail, "
                            "instance) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                            "ON CONFLICT (endpoint_id, started_at, instance) DO UPDATE SET address = excluded.address, "
                            "sent = excluded.sent, rtts = excluded.rtts, "
                            "error = excluded.error, error_detail = excluded.error_detail", icmp_rows)
                    if test_rows:
                        await cur.executemany(
                            "INSERT INTO throughput VALUES (" + ", ".join(["%s"] * 16) + ") "
                            "ON CONFLICT (endpoint_id, started_at) DO UPDATE SET ended_at = excluded.ended_at, "
                            "method = excluded.method, address = excluded.address, "
                            "download_bps = excluded.download_bps, upload_bps = excluded.upload_bps, "
                            "bytes = excluded.bytes, directions = excluded.directions, "
                            "target_bps = excluded.target_bps, target_upload_bps = excluded.target_upload_bps, "
                            "target_met = excluded.target_met, error = excluded.error, "
                            "error_detail = excluded.error_detail, budget_remaining = excluded.budget_remaining, "
                            "max_added_latency = excluded.max_added_latency",
                            test_rows)
                    for gap in gaps:  # in order: a provisional gap and the one replacing it may share a batch
                        endpoint_id = self._ids[gap.target.name]
                        if gap.replaces_start is not None and gap.replaces_start != gap.started_at:
                            await cur.execute("DELETE FROM gaps WHERE endpoint_id = %s AND started_at = %s",
                                              (endpoint_id, gap.replaces_start))
                        await cur.execute(  # a gap is not a result: first_result_at stays
                            "INSERT INTO gaps VALUES (%s, %s, %s, %s, %s) ON CONFLICT (endpoint_id, started_at) "
                            "DO UPDATE SET ended_at = excluded.ended_at, cause = excluded.cause, "
                            "interval_seconds = excluded.interval_seconds", codec.gap_row(endpoint_id, gap))
                    if first:
                        await cur.executemany("UPDATE endpoints SET first_result_at = %s WHERE id = %s AND "
                                              "(first_result_at IS NULL OR first_result_at > %s)",
                                              [(at, endpoint_id, at) for endpoint_id, at in first.items()])
                self._first_known.update(first)  # committed: once per endpoint and process
            except BaseException:
                self._ids.clear()  # ids learnt inside the rolled-back transaction may be void
                raise

    async def prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
        """Delete up to ``limit`` old rows in one transaction, unless another instance is pruning."""
        gone = 0
        async with self._pool.connection() as conn, conn.transaction():
            row = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_PRUNE_LOCK,))).fetchone()
            if row is None or not row[0]:
                return 0  # another instance prunes this slice; ours would only wait on the same rows
            for table, column, before in (("icmp", "started_at", icmp_before),
                                          ("throughput", "started_at", throughput_before),
                                          ("gaps", "ended_at", throughput_before),  # a gap goes once it ended
                                          ("traces", "at", throughput_before)):  # traces (issue 21): as long as tests
                if gone >= limit:
                    break
                cur = await conn.execute(
                    f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} "  # noqa: S608 (fixed names)
                    f"WHERE {column} < %s LIMIT %s)", (before, limit - gone))
                gone += max(0, cur.rowcount)
        return gone

    # ------------------------------------------------------------------ reading
    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()

    async def endpoints(self) -> list[EndpointRecord]:
        rows = await self._rows(f"SELECT {', '.join(codec.ENDPOINT_COLUMNS)} FROM endpoints ORDER BY name")  # noqa: S608
        return [codec.endpoint_record(row) for row in rows]

    async def first_results(self) -> dict[str, float]:
        rows = await self._rows("SELECT name, first_result_at FROM endpoints WHERE first_result_at IS NOT NULL")
        return {str(name): float(at) for name, at in rows}

    async def icmp_cycles(self, endpoint: str, start: float, end: float) -> list[StoredCycle]:
        """The site's cycles in [start, end), its replicas' merged into one stream (:func:`replicas.merge`)."""
        rows = await self._rows(
            f"SELECT {self._cycle_columns} FROM icmp i JOIN endpoints e ON e.id = i.endpoint_id "  # noqa: S608
            "WHERE e.name = %s AND i.started_at >= %s AND i.started_at < %s ORDER BY i.started_at, 6",
            (endpoint, start, end))
        return replicas.merge([codec.instance_cycle(row) for row in rows])

    async def throughput_tests(self, endpoint: str, start: float, end: float) -> list[StoredTest]:
        rows = await self._rows(
            f"SELECT {self._test_columns} FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "  # noqa: S608
            "WHERE e.name = %s AND t.started_at >= %s AND t.started_at < %s ORDER BY t.started_at",
            (endpoint, start, end))
        return [codec.stored_test(row) for row in rows]

    async def gaps(self, endpoint: str, start: float, end: float) -> list[StoredGap]:
        if not self._has_gaps:
            return []
        rows = await self._rows(
            f"SELECT {codec.GAP_COLUMNS} FROM gaps g "  # noqa: S608 (fixed names)
            "JOIN endpoints e ON e.id = g.endpoint_id WHERE e.name = %s AND g.ended_at > %s AND g.started_at < %s "
            "ORDER BY g.started_at", (endpoint, start, end))
        return [codec.stored_gap(endpoint, row) for row in rows]

    async def last_measured_tests(self) -> dict[str, StoredTest]:
        return await self._latest("AND (t.download_bps IS NOT NULL OR t.upload_bps IS NOT NULL)")

    async def last_tests(self) -> dict[str, StoredTest]:
        return await self._latest("")

    async def _latest(self, where: str) -> dict[str, StoredTest]:
        """Per endpoint, its newest matching test: one index descent each (LATERAL), not a scan."""
        rows = await self._rows(
            f"SELECT {self._test_columns} FROM endpoints e CROSS JOIN LATERAL "  # noqa: S608 (fixed text)
            f"(SELECT * FROM throughput t WHERE t.endpoint_id = e.id {where} "
            "ORDER BY t.started_at DESC LIMIT 1) t")
        return {str(row[0]): codec.stored_test(row) for row in rows}

    async def bytes_since(self, endpoint: str, since: float) -> int:
        rows = await self._rows(
            "SELECT COALESCE(SUM(t.bytes), 0) FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
            "WHERE e.name = %s AND t.started_at >= %s", (endpoint, since))
        return int(rows[0][0]) if rows else 0

    async def recent_verdicts(self, endpoint: str, limit: int) -> list[bool]:
        rows = await self._rows(
            "SELECT t.target_met FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
            "WHERE e.name = %s AND t.target_met IS NOT NULL ORDER BY t.started_at DESC LIMIT %s",
            (endpoint, limit))
        return [bool(met) for (met,) in rows]

    # ------------------------------------------------------------------ maintenance windows (issue 21)
    async def open_maintenance(self, target: str, kind: str, starts_at: float, ends_at: float, reason: str,
                               opened_at: float) -> StoredWindow:
        rows = await self._rows(
            "INSERT INTO maintenance (target, target_kind, starts_at, ends_at, reason, opened_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id", (target, kind, starts_at, ends_at, reason, opened_at))
        return StoredWindow(int(rows[0][0]), target, kind, starts_at, ends_at, reason, opened_at)

    async def close_maintenance(self, window_id: int, closed_at: float) -> StoredWindow | None:
        rows = await self._rows(
            f"UPDATE maintenance SET closed_at = COALESCE(closed_at, %s) WHERE id = %s "  # noqa: S608 (fixed names)
            f"RETURNING {_WINDOW_COLUMNS}", (closed_at, window_id))
        return StoredWindow(*rows[0]) if rows else None

    async def maintenance_windows(self, start: float, end: float) -> list[StoredWindow]:
        if not self._has_maintenance:
            return []
        rows = await self._rows(
            f"SELECT {_WINDOW_COLUMNS} FROM maintenance WHERE ends_at > %s AND starts_at < %s "  # noqa: S608
            "AND (closed_at IS NULL OR closed_at > %s) ORDER BY starts_at, id", (start, end, start))
        return [StoredWindow(*row) for row in rows]

    async def _add_endpoints(self, cur: Any, missing: set[EndpointRecord]) -> None:
        """Insert the endpoints the store lacks (one another instance added meanwhile stays); learn their ids."""
        await cur.executemany(_ENDPOINT_UPSERT.split(" ON CONFLICT")[0] + " ON CONFLICT (name) DO NOTHING",
                              [codec.endpoint_params(rec) for rec in missing])
        await cur.execute("SELECT name, id FROM endpoints WHERE name = ANY(%s)", ([rec.name for rec in missing],))
        self._ids.update({str(name): int(i) for name, i in await cur.fetchall()})

    async def write_traces(self, traces: Sequence[tuple[Target, Trace]]) -> None:
        async with self._pool.connection() as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    missing = {EndpointRecord.of(t) for t, _trace in traces if t.name not in self._ids}
                    if missing:
                        await self._add_endpoints(cur, missing)
                    await cur.executemany(
                        "INSERT INTO traces VALUES (%s, %s, %s, %s, %s) ON CONFLICT (endpoint_id, at) DO UPDATE "
                        "SET hops = excluded.hops, last_answering_hop = excluded.last_answering_hop, "
                        "reached = excluded.reached",
                        [codec.trace_row(self._ids[t.name], trace) for t, trace in traces])
            except BaseException:
                self._ids.clear()  # ids read inside the rolled-back transaction may be void
                raise

    async def traces(self, endpoint: str, start: float, end: float) -> list[Trace]:
        if not self._has_maintenance:  # the traces table came with the maintenance table (schema 4)
            return []
        rows = await self._rows(
            f"SELECT {codec.TRACE_COLUMNS} FROM traces r JOIN endpoints e ON e.id = r.endpoint_id "  # noqa: S608
            "WHERE e.name = %s AND r.at >= %s AND r.at < %s ORDER BY r.at", (endpoint, start, end))
        return [codec.stored_trace(row) for row in rows]

    async def last_traces(self) -> dict[str, Trace]:
        if not self._has_maintenance:
            return {}
        rows = await self._rows(
            f"SELECT DISTINCT ON (r.endpoint_id) e.name, {codec.TRACE_COLUMNS} FROM traces r "  # noqa: S608
            "JOIN endpoints e ON e.id = r.endpoint_id ORDER BY r.endpoint_id, r.at DESC")
        return {str(row[0]): codec.stored_trace(row[1:]) for row in rows}


class PostgresStore:
    """:class:`~monitor.history.store.HistoryStore` on a PostgreSQL database shared by several instances.

    The one store interface is synchronous (the history writer thread, ``connmon report``); each
    call runs :class:`AsyncPostgresStore`'s coroutine on the I/O loop (:class:`_IoLoop`) and waits
    in the calling thread, never on the daemon's event loop. Opening it raises when the server does
    not answer within ``connect_timeout_seconds``, so the caller counts an ``open`` error and retries.
    """

    def __init__(self, url: str, *, read_only: bool = False, connect_timeout_seconds: float = 10.0,
                 max_connections: int = 2, instance: str = "") -> None:
        self.url = url
        self._store = AsyncPostgresStore(url, read_only=read_only, connect_timeout_seconds=connect_timeout_seconds,
                                         max_connections=max_connections, instance=instance)
        _IoLoop.run(self._store.open())

    def close(self) -> None:
        _IoLoop.run(self._store.close())

    def schema_version(self) -> int:
        return _IoLoop.run(self._store.schema_version())

    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap] = ()) -> None:
        _IoLoop.run(self._store.write(endpoints, results, gaps))

    def prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
        return _IoLoop.run(self._store.prune(icmp_before, throughput_before, limit))

    def endpoints(self) -> list[EndpointRecord]:
        return _IoLoop.run(self._store.endpoints())

    def first_results(self) -> dict[str, float]:
        return _IoLoop.run(self._store.first_results())

    def icmp_cycles(self, endpoint: str, start: float, end: float) -> Iterator[StoredCycle]:
        return iter(_IoLoop.run(self._store.icmp_cycles(endpoint, start, end)))

    def throughput_tests(self, endpoint: str, start: float, end: float) -> list[StoredTest]:
        return _IoLoop.run(self._store.throughput_tests(endpoint, start, end))

    def gaps(self, endpoint: str, start: float, end: float) -> list[StoredGap]:
        return _IoLoop.run(self._store.gaps(endpoint, start, end))

    def last_measured_tests(self) -> dict[str, StoredTest]:
        return _IoLoop.run(self._store.last_measured_tests())

    def last_tests(self) -> dict[str, StoredTest]:
        return _IoLoop.run(self._store.last_tests())

    def bytes_since(self, endpoint: str, since: float) -> int:
        return _IoLoop.run(self._store.bytes_since(endpoint, since))

    def recent_verdicts(self, endpoint: str, limit: int) -> list[bool]:
        return _IoLoop.run(self._store.recent_verdicts(endpoint, limit))

    def open_maintenance(self, target: str, kind: str, starts_at: float, ends_at: float, reason: str,
                         opened_at: float) -> StoredWindow:
        return _IoLoop.run(self._store.open_maintenance(target, kind, starts_at, ends_at, reason, opened_at))

    def close_maintenance(self, window_id: int, closed_at: float) -> StoredWindow | None:
        return _IoLoop.run(self._store.close_maintenance(window_id, closed_at))

    def maintenance_windows(self, start: float, end: float) -> list[StoredWindow]:
        return _IoLoop.run(self._store.maintenance_windows(start, end))

    def write_traces(self, traces: Sequence[tuple[Target, Trace]]) -> None:
        _IoLoop.run(self._store.write_traces(traces))

    def traces(self, endpoint: str, start: float, end: float) -> list[Trace]:
        return _IoLoop.run(self._store.traces(endpoint, start, end))

    def last_traces(self) -> dict[str, Trace]:
        return _IoLoop.run(self._store.last_traces())
