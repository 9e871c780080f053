"""Agents served by any instance (issue 19): sequence positions and throughput slots in the shared PostgreSQL.

Why: several instances behind one centre URL each kept an agent's last sequence number in their own
memory and journal, and granted throughput slots against their own ``max_concurrent``. A batch posted
to one and posted again to another (its answer lost, a load balancer's choice) was taken twice, and
``max_concurrent`` held per instance, not per region. With a PostgreSQL history (``--store
postgresql://…``) both live in the database every instance already shares; SQLite and ``--no-history``
keep today's single-instance state (this module is not used, and psycopg is not imported).

* **Positions** (``agent_sequences``): per agent site and installation, the last sequence number whose
  results the history holds. An instance reads it before it takes a batch (:meth:`SharedAgents.position`),
  so a batch another instance stored is answered as duplicates, and writes it only once its own history
  writer has stored the batch (:meth:`SharedAgents.confirm`, called after the answer's wait for the
  history, as the journal's confirmation is): a position never runs ahead of the stored results, so a
  kill loses nothing the agent was told is in. The update is ``GREATEST``: an instance that confirms late
  never moves the position back. Results refused on their own (protocol version 2) are kept too
  (``agent_refusals``, the last :data:`~monitor.agent.centre.registry.REFUSALS_REMEMBERED` per site and
  installation), so a held result posted again to another instance is taken or refused again, never
  called a duplicate.
* **Due times and budgets** (:meth:`SharedAgents.site_tests`): before an agent's grant, its site's newest
  stored test and the month's bytes, so an instance that did not book the last test neither grants the
  next one early nor spends the budget again.
* **Slots** (``throughput_slots``): a grant is one row, taken in a transaction under
  ``pg_advisory_xact_lock`` (:meth:`SharedAgents.take`) that counts the unexpired rows of every instance,
  refuses when ``max_concurrent`` are out or the site has one already, and inserts. The agents' grants
  and the centre's own tests both take them; a finished test deletes its row, an unused grant expires by
  its ``expires_at`` (a killed instance's grants too), and every instance prunes expired rows.

* **Contacts** (``agent_sequences.seen_at``): when each site's last batch was taken, by any instance,
  written with the position and read every :data:`CONTACTS_REFRESH_SECONDS` (:func:`keep_contacts`), so
  the instances that watch a site's silence do not declare it silent while its agent posts elsewhere.
* **Retired installations** (:meth:`SharedAgents.forget_silent`): a reinstalled agent numbers from 1
  under a new installation, and the old one's position and refusals would stay for ever. An
  installation not heard for :data:`~monitor.agent.protocol.MAX_AGE_SECONDS` is forgotten, once an hour
  by every instance: anything it could still post is older than that and refused as too old, so its
  position can no longer decide anything.

All I/O runs on a few worker threads (:data:`WORKERS`), each with a connection of its own (opened when
first needed, again after an error), never on the daemon's event loop: a server that does not answer
costs the caller a 503 or a refused slot after :data:`STATEMENT_TIMEOUT_SECONDS`, never an echo's timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from monitor.agent.centre.registry import AgentRegistry
from monitor.agent.protocol import MAX_AGE_SECONDS
from monitor.history.leases import IS_A_TEST
from monitor.history.postgres import redact, scrub

log = logging.getLogger(__name__)

_SLOT_LOCK = 0x636F6E73  # "cons": the advisory lock key that serialises slot grants across instances
CONNECT_TIMEOUT_SECONDS = 5
WORKERS = 4  # connections (and threads) per instance: a batch's read and its confirmation each take one round trip
STATEMENT_TIMEOUT_SECONDS = 5.0
CALL_LIMIT_SECONDS = CONNECT_TIMEOUT_SECONDS + STATEMENT_TIMEOUT_SECONDS + 2.0  # the most a caller waits
REFUSALS_KEPT = 5000  # per site and installation, as the registry's memory (REFUSALS_REMEMBERED)
LOG_EVERY_SECONDS = 60.0
CONTACTS_REFRESH_SECONDS = 5.0  # how often the other instances' contacts with agent sites are read
FORGET_EVERY_SECONDS = 3600.0  # how often each instance forgets the installations silent for MAX_AGE_SECONDS
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SharedPosition:
    """What the region has stored of one agent installation: the last sequence number and the refused ones."""

    seq: int
    refused: frozenset[int]


@dataclass(frozen=True, slots=True)
class SiteTests:
    """A site's tests as the region's history has them: when the newest began (None: none yet), what they moved."""

    last_started_at: float | None
    last_measured_bytes: int | None  # the newest test that measured: what a capped iperf3 test is judged by
    month_bytes: int


@dataclass(frozen=True, slots=True)
class SharedSlot:
    """A grant as the database holds it: whose, until when, and the bytes each direction may move."""

    site: str
    expires_at: float
    download_bytes: int
    upload_bytes: int


class SharedAgents:
    """The shared positions and slot grants of one PostgreSQL database, for one instance.

    Args:
        url: the ``--store`` URL.
        instance: this instance's name (``--shard I/N``), written with its grants for the record.
    """

    def __init__(self, url: str, instance: str, workers: int = WORKERS) -> None:
        self.url = url
        self.instance = instance
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="connmon-agents-pg")
        self._local = threading.local()  # each worker thread's own connection
        self._connections: list[psycopg.Connection[tuple[Any, ...]]] = []
        self._lock = threading.Lock()  # guards _connections
        self._said: dict[str, float] = {}
        self._pending: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ plumbing
    async def _run(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        """``fn`` on a worker, answered within :data:`CALL_LIMIT_SECONDS` (a blackholed server must not hang a
        request: TimeoutError, which the callers treat as the database being away)."""
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(self._executor, functools.partial(self._call, fn)),
                                      CALL_LIMIT_SECONDS)

    def _call(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], _T]) -> _T:
        conn: psycopg.Connection[tuple[Any, ...]] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            # a statement, a lock wait and an idle transaction each bounded on the server (a frozen instance
            # holding the slots' lock must not stop every grant for hours); keepalives end a dead link's wait
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                   application_name=f"connmon agents {self.instance}"[:63],
                                   keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
                                   options=f"-c statement_timeout={int(STATEMENT_TIMEOUT_SECONDS * 1000)} "
                                           f"-c lock_timeout={int(STATEMENT_TIMEOUT_SECONDS * 1000)} "
                                           "-c idle_in_transaction_session_timeout=10000")
            self._local.conn = conn
            with self._lock:
                self._connections = [c for c in self._connections if not c.closed] + [conn]
        try:
            return fn(conn)
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            self._local.conn = None  # the next call connects again (a server restart, a broken connection)
            raise

    def say(self, what: str, err: BaseException) -> None:
        """A failure, logged at most once a minute per kind: a server that is away must not fill the log."""
        now = time.monotonic()
        if now - self._said.get(what, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._said[what] = now
            log.warning("agents' shared state on %s: cannot %s: %s", redact(self.url), what,
                        " ".join(scrub(str(err)).split()) or type(err).__name__)

    def _later(self, what: str, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], object]) -> None:
        """Run ``fn`` on the worker without waiting (a release, a prune); a failure is said, not raised."""
        async def go() -> None:
            try:
                await self._run(fn)
            except Exception as err:
                self.say(what, err)

        task = asyncio.ensure_future(go())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Let the releases under way finish, then close the connections and the workers."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=STATEMENT_TIMEOUT_SECONDS)
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()

    # ------------------------------------------------------------------ sequence positions
    async def position(self, site: str, agent_instance: str) -> SharedPosition:
        """The region's stored position of ``site``'s installation ``agent_instance`` (0 when none yet).

        Raises:
            psycopg.Error: the server cannot be asked now (the caller refuses the batch: nothing is taken).
        """
        def read(conn: psycopg.Connection[tuple[Any, ...]]) -> SharedPosition:
            row = conn.execute("SELECT seq FROM agent_sequences WHERE site = %s AND agent_instance = %s",
                               (site, agent_instance)).fetchone()
            refused = conn.execute("SELECT seq FROM agent_refusals WHERE site = %s AND agent_instance = %s",
                                   (site, agent_instance)).fetchall()
            return SharedPosition(int(row[0]) if row is not None else 0, frozenset(int(r[0]) for r in refused))

        return await self._run(read)

    async def confirm(self, site: str, agent_instance: str, seq: int, stored: Iterable[int],
                      refused: Iterable[int], seen_at: float) -> None:
        """The history holds ``site``'s results up to ``seq`` (``stored`` now, ``refused`` on their own): say so.

        Called only after the history has stored them; ``GREATEST`` keeps a later position another
        instance wrote meanwhile. One transaction: the position and the refusals change together.

        Raises:
            psycopg.Error: not written (the caller says so; it costs a retry taken again, never a result).
        """
        stored_now, refused_now = sorted(set(stored)), sorted(set(refused))

        def write(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
            with conn.transaction():
                conn.execute("INSERT INTO agent_sequences (site, agent_instance, seq, seen_at) VALUES (%s, %s, %s, %s) "
                             "ON CONFLICT (site, agent_instance) DO UPDATE "
                             "SET seq = GREATEST(agent_sequences.seq, excluded.seq), "
                             "seen_at = GREATEST(agent_sequences.seen_at, excluded.seen_at)",
                             (site, agent_instance, seq, seen_at))
                if stored_now:  # refused before, taken now: no longer held
                    conn.execute("DELETE FROM agent_refusals WHERE site = %s AND agent_instance = %s "
                                 "AND seq = ANY(%s)", (site, agent_instance, stored_now))
                if refused_now:
                    with conn.cursor() as cur:
                        cur.executemany("INSERT INTO agent_refusals (site, agent_instance, seq) VALUES (%s, %s, %s) "
                                        "ON CONFLICT DO NOTHING", [(site, agent_instance, s) for s in refused_now])
                    conn.execute("DELETE FROM agent_refusals WHERE site = %s AND agent_instance = %s AND seq < "
                                 "(SELECT seq FROM agent_refusals WHERE site = %s AND agent_instance = %s "
                                 "ORDER BY seq DESC OFFSET %s LIMIT 1)",
                                 (site, agent_instance, site, agent_instance, REFUSALS_KEPT - 1))

        await self._run(write)

    async def contacts(self) -> dict[str, float]:
        """When each agent site's last batch was taken, by any instance: the silence watch's shared clock."""
        def read(conn: psycopg.Connection[tuple[Any, ...]]) -> dict[str, float]:
            rows = conn.execute("SELECT site, MAX(seen_at) FROM agent_sequences GROUP BY site").fetchall()
            return {str(site): float(at) for site, at in rows}

        return await self._run(read)

    async def forget_silent(self, now: float, silent_seconds: float = MAX_AGE_SECONDS) -> int:
        """Forget the installations not heard for ``silent_seconds``: their positions and refusals; how many.

        Raises:
            psycopg.Error: the server cannot be asked now (tried again at the next turn).
        """
        def forget(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
            with conn.transaction():
                conn.execute("DELETE FROM agent_refusals r USING agent_sequences s WHERE r.site = s.site "
                             "AND r.agent_instance = s.agent_instance AND s.seen_at < %s", (now - silent_seconds,))
                return conn.execute("DELETE FROM agent_sequences WHERE seen_at < %s",
                                    (now - silent_seconds,)).rowcount

        return await self._run(forget)

    # ------------------------------------------------------------------ throughput slots
    async def site_tests(self, site: str, month_since: float | None) -> SiteTests:
        """What the region's history holds of ``site``'s tests, whichever instance booked them: when the newest
        began (a ``busy`` or ``budget`` row is no test: it is retried), the bytes of the newest measured one, and
        the bytes moved since ``month_since`` (None: not asked, the site has no budget).

        Why: each instance planned an agent site's next test and counted its month's bytes from the tests it
        booked itself. A test granted by one and booked by another left a third (a replica, or any instance a
        load balancer picks) with the site due at once and its budget unspent: the agent was granted a second
        test within the period, and the metered link paid for it. Read before a grant, and before a result
        is booked. Each figure is one descent of the ``(endpoint_id, started_at)`` key.

        Raises:
            psycopg.Error: the server cannot be asked now (the caller grants nothing).
        """
        def read(conn: psycopg.Connection[tuple[Any, ...]]) -> SiteTests:
            row = conn.execute(
                "SELECT (SELECT t.started_at FROM throughput t WHERE t.endpoint_id = e.id AND " + IS_A_TEST +
                "        ORDER BY t.started_at DESC LIMIT 1), "
                "       (SELECT t.bytes FROM throughput t WHERE t.endpoint_id = e.id AND t.error IS NULL "
                "        ORDER BY t.started_at DESC LIMIT 1), "
                "       (SELECT COALESCE(SUM(t.bytes), 0) FROM throughput t WHERE t.endpoint_id = e.id "
                "        AND t.started_at >= %s) "
                "FROM endpoints e WHERE e.name = %s",
                (month_since if month_since is not None else float("inf"), site)).fetchone()
            if row is None:
                return SiteTests(None, None, 0)
            return SiteTests(None if row[0] is None else float(row[0]), None if row[1] is None else int(row[1]),
                             int(row[2]))

        return await self._run(read)

    async def take(self, slot_id: str, site: str, now: float, expires_at: float, limit: int,
                   download_bytes: int = 0, upload_bytes: int = 0, tested_at: float | None = None) -> bool:
        """Take a region-wide slot for ``site``: False when ``limit`` are out already, or the site has one, or (with
        ``tested_at``, the newest test the caller read) a newer test was stored since it read.

        One transaction under ``pg_advisory_xact_lock``: grants are counted and inserted one at a time
        across every instance, so ``max_concurrent`` holds for the region. Expired rows are deleted first.
        A test's slot is freed only once its result is stored, so a grant that finds the slot free and no
        newer test has not raced a test that ended meanwhile.

        Raises:
            psycopg.Error: the server cannot be asked now (the caller grants nothing).
        """
        def grant(conn: psycopg.Connection[tuple[Any, ...]]) -> bool:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SLOT_LOCK,))
                conn.execute("DELETE FROM throughput_slots WHERE expires_at <= %s", (now,))
                row = conn.execute("SELECT COUNT(*), COUNT(*) FILTER (WHERE site = %s) FROM throughput_slots",
                                   (site,)).fetchone()
                out, of_site = (int(row[0]), int(row[1])) if row is not None else (0, 0)
                if out >= limit or of_site:
                    return False
                if tested_at is not None:
                    newer = conn.execute("SELECT 1 FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
                                         "WHERE e.name = %s AND t.started_at > %s AND " + IS_A_TEST + " LIMIT 1",
                                         (site, tested_at)).fetchone()
                    if newer is not None:
                        return False
                conn.execute("INSERT INTO throughput_slots (slot_id, site, granted_at, expires_at, instance, "
                             "download_bytes, upload_bytes) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                             (slot_id, site, now, expires_at, self.instance, download_bytes, upload_bytes))
                return True

        return await self._run(grant)

    async def slot(self, slot_id: str) -> SharedSlot | None:
        """A grant another instance made (an agent's download that a load balancer sent here), or None."""
        def read(conn: psycopg.Connection[tuple[Any, ...]]) -> SharedSlot | None:
            row = conn.execute("SELECT site, expires_at, download_bytes, upload_bytes FROM throughput_slots "
                               "WHERE slot_id = %s", (slot_id,)).fetchone()
            return None if row is None else SharedSlot(str(row[0]), float(row[1]), int(row[2]), int(row[3]))

        return await self._run(read)

    def release(self, slot_id: str, site: str | None = None) -> None:
        """Free the grant ``slot_id`` (of ``site``, when a result names it) without waiting (its test ended, or
        it expired unused here); a result cannot free another site's grant."""
        if site is None:
            self._later("free a throughput slot", lambda conn: conn.execute(
                "DELETE FROM throughput_slots WHERE slot_id = %s", (slot_id,)))
        else:
            self._later("free a throughput slot", lambda conn: conn.execute(
                "DELETE FROM throughput_slots WHERE slot_id = %s AND site = %s", (slot_id, site)))

    async def live(self, slot_ids: Iterable[str]) -> set[str]:
        """Which of ``slot_ids`` the region still holds (a test's result that reached another instance freed it)."""
        wanted = sorted(set(slot_ids))

        def read(conn: psycopg.Connection[tuple[Any, ...]]) -> set[str]:
            return {str(r[0]) for r in conn.execute("SELECT slot_id FROM throughput_slots WHERE slot_id = ANY(%s)",
                                                    (wanted,)).fetchall()}

        return await self._run(read)

    async def held(self, now: float) -> int:
        """Unexpired grants in the region now (for tests and the log)."""
        def count(conn: psycopg.Connection[tuple[Any, ...]]) -> int:
            row = conn.execute("SELECT COUNT(*) FROM throughput_slots WHERE expires_at > %s", (now,)).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._run(count)


async def keep_contacts(registry: AgentRegistry, shared: SharedAgents,
                        every_seconds: float = CONTACTS_REFRESH_SECONDS) -> None:
    """Every ``every_seconds``: the last contacts other instances had with agent sites, into ``registry``.

    A site whose agent posts to another instance behind the same URL is not silent: its owners here
    see the contact within this time, so their silence watch holds for the region (issue 19). Once
    every :data:`FORGET_EVERY_SECONDS`, the installations silent for longer than anything is kept are
    forgotten (:meth:`SharedAgents.forget_silent`).
    """
    forgotten_at = -FORGET_EVERY_SECONDS
    while True:
        await asyncio.sleep(every_seconds)
        if time.monotonic() - forgotten_at >= FORGET_EVERY_SECONDS:
            forgotten_at = time.monotonic()
            try:
                if forgotten := await shared.forget_silent(registry.clock()):
                    log.info("agents' shared state: forgot %d installations silent for %d days", forgotten,
                             MAX_AGE_SECONDS // 86400)
            except Exception as err:
                shared.say("forget the silent installations", err)
        try:
            contacts = await shared.contacts()
        except Exception as err:  # the server is away: each instance watches what it hears itself meanwhile
            shared.say("read the agents' last contacts", err)
            continue
        registry.heard(contacts)
