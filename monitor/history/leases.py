"""Replicas' throughput turns on a shared PostgreSQL history (issue 19): live instances and test leases.

Each instance writes a heartbeat (table ``instances``, schema 9) six times a lease (every 5 s by
default) and renews the leases it holds (table ``leases``). A site's throughput test is the turn of its
first replica in rendezvous order that has beaten within 2/3 of a lease; that replica
runs it only while it holds the site's lease (``throughput:NAME``), taken when free, expired or
its own. So two replicas never test one site at once, even while they disagree about who is alive
(each sees the database's lease), and a killed replica's sites are taken over once its leases have
expired: at most a lease after its last heartbeat, plus the follower's recheck.

A replica that finds it is no longer the first live one (the first came back) gives the lease up,
so the turn returns to the first. A taking-over replica starts from the last test any replica
stored for the site (:class:`~monitor.test_leader.Turn` ``last_tested_at``), not from its own plan.

A replica decides "not mine" from its last heartbeat's view alone, with no statement: only the
site's tester goes to the database, once per due test. It renews only the leases it took and still
schedules (a site that left its plan, or a lease of its previous life, simply expires).

When the database does not answer, a replica tests a site only while the lease it last took or
renewed is still running by its own clock; otherwise it waits (and so does every test, since the
slots are the region's too: :mod:`monitor.agent.centre.shared`). So a tester cut off from the
database stops testing before a follower can take its lease: the budget is never spent twice.
Time is the instances' own clocks (Unix seconds): replicas must be NTP-synchronised, within seconds
of each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from monitor.history.postgres import redact
from monitor.shard import Shard, ranking
from monitor.test_leader import FOLLOW_RECHECK_SECONDS, Turn

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0  # a lease not renewed for this long is free (``--replicas.lease``)
# an instance beats 6 times a lease, and one not heard from for 2/3 of a lease is taken for dead
QUERY_TIMEOUT_SECONDS = 5.0

_TAKE = ("INSERT INTO leases (name, holder, expires_at) VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE "
         "SET holder = excluded.holder, expires_at = excluded.expires_at "
         "WHERE leases.holder = excluded.holder OR leases.expires_at < %s RETURNING holder")
# a stored throughput row (alias ``t``) that is a test: ``busy`` (the server was taken) and ``budget`` (skipped) are
# retried, not tests; the one definition for the leases and the agents' grants (monitor.agent.centre.shared)
IS_A_TEST = "(t.error IS NULL OR t.error NOT IN ('budget', 'busy'))"
_LAST_TEST = ("SELECT MAX(t.started_at) FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id "
              "WHERE e.name = %s AND " + IS_A_TEST)


class ReplicaLeases:
    """A :class:`~monitor.test_leader.TestLeader` over PostgreSQL: the first live replica, holding a lease."""

    def __init__(self, url: str, shard: Shard, clock: Callable[[], float] = time.time,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.url = url
        self.shard = shard
        self.me = shard.label
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.live_within_seconds = lease_seconds * 2 / 3
        self.heartbeat_seconds = lease_seconds / 6
        self.live: set[str] = {self.me}  # as the last heartbeat read them
        self._held: dict[str, float] = {}  # lease name → until when it runs, as this process last took or renewed it
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the one connection
        self._failing = False

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=3,
                                                               application_name=f"connmon shard {self.me} leases")
        return self._conn

    async def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._lock:
            try:
                conn = await self._connection()
                cur = await asyncio.wait_for(conn.execute(sql, params), QUERY_TIMEOUT_SECONDS)
                rows = await cur.fetchall() if cur.description is not None else []
            except BaseException:
                conn_, self._conn = self._conn, None
                if conn_ is not None:
                    with contextlib.suppress(Exception):
                        await conn_.close()
                raise
        if self._failing:
            self._failing = False
            log.info("throughput turns: the shared history %s answers again; replicas take turns by lease",
                     redact(self.url))
        return rows

    def _say_failing(self, err: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("throughput turns: the shared history %s does not answer (%s); until it does, each "
                        "site's first replica tests it and the others do not", redact(self.url),
                        str(err).splitlines()[0] if str(err) else type(err).__name__)

    async def beat(self) -> None:
        """Say this instance is alive, renew its leases, and read who else is; never raises."""
        now = self.clock()
        try:
            await self._run("INSERT INTO instances (name, seen_at) VALUES (%s, %s) ON CONFLICT (name) "
                            "DO UPDATE SET seen_at = excluded.seen_at", (self.me, now))
            held = list(self._held)
            if held:  # only the leases this process took and still schedules: the others expire
                until = now + self.lease_seconds
                renewed = await self._run("UPDATE leases SET expires_at = %s WHERE holder = %s AND name = ANY(%s) "
                                          "RETURNING name", (until, self.me, held))
                kept = {str(r[0]) for r in renewed}  # a lease taken meanwhile (not in ``held``) stays as taken
                self._held = {k: until if k in kept else v for k, v in self._held.items() if k in kept or k not in held}
            rows = await self._run("SELECT name FROM instances WHERE seen_at >= %s",
                                   (now - self.live_within_seconds,))
        except (psycopg.Error, OSError, TimeoutError) as err:
            self._say_failing(err)
            return
        self.live = {str(r[0]) for r in rows} | {self.me}

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Beat six times a lease until cancelled (or ``stop`` is set)."""
        while stop is None or not stop.is_set():
            await self.beat()
            await asyncio.sleep(self.heartbeat_seconds)

    def tester(self, name: str) -> str:
        """The site's first replica in rendezvous order that is alive as last seen (the first one when none is)."""
        replicas = [str(i) for i in ranking(name, self.shard.count)[:self.shard.replicas]]
        return next((r for r in replicas if r in self.live), replicas[0])

    async def turn(self, name: str, now: float) -> Turn:
        if self.shard.replicas == 1:
            return Turn(True, now)
        key = f"throughput:{name}"
        recheck = now + min(FOLLOW_RECHECK_SECONDS, self.lease_seconds / 2)
        try:
            if self.tester(name) != self.me:  # not mine, by the last heartbeat: give the lease back if it was
                if self._held.pop(key, None) is not None:
                    await self._run("DELETE FROM leases WHERE name = %s AND holder = %s", (key, self.me))
                return Turn(False, recheck)
            held = await self._run(_TAKE, (key, self.me, now + self.lease_seconds, now))
            if not held:  # another replica's lease is still running: it tests, or did a moment ago
                self._held.pop(key, None)
                return Turn(False, recheck)
            self._held[key] = now + self.lease_seconds
            last = await self._run(_LAST_TEST, (name,))
        except (psycopg.Error, OSError, TimeoutError) as err:
            self._say_failing(err)
            # the database is away: only a lease still running by this clock lets the test go on
            return Turn(self._held.get(key, 0.0) > now, recheck)
        last_at = last[0][0] if last and last[0][0] is not None else None
        return Turn(True, now, None if last_at is None else float(last_at))

    def forget(self, names: set[str]) -> None:
        """Stop renewing the leases of sites no longer in this instance's plan (they expire)."""
        self._held = {k: v for k, v in self._held.items() if k.removeprefix("throughput:") in names}

    async def close(self) -> None:
        """Give this instance's leases up (a clean stop hands its sites over at once) and disconnect."""
        with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
            await self._run("DELETE FROM leases WHERE holder = %s", (self.me,))
            await self._run("UPDATE instances SET seen_at = 0 WHERE name = %s", (self.me,))
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
