"""One instance per identity on a shared PostgreSQL history (issue 25): an advisory lock held for the process's life.

Apart from :mod:`monitor.history.postgres` (the store): the lock is the daemon's start-up and upkeep
concern, taken on a connection of its own before the store is opened, and it needs none of the
store's pool, schema or queries.
"""

from __future__ import annotations

import os
import socket
import zlib
from typing import Any

import psycopg

from monitor.errors import StateInUseError
from monitor.history.postgres import redact

_OWNER_LOCK = 0x636F6E6F  # "cono": the class of the instance identity locks (two-key form: never meets the others)
_HOLDER = ("SELECT a.application_name, host(a.client_addr), a.pid FROM pg_locks l "
           "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
           "AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 2 LIMIT 1")


def identity_key(identity: str) -> int:
    """The advisory lock's second key for ``identity``: 31 bits of CRC-32, the same in every process."""
    return zlib.crc32(identity.encode("utf-8")) & 0x7FFFFFFF


class IdentityLock:
    """One instance per identity on a shared history (issue 25): a session advisory lock on a connection of its own.

    Two instances with the same identity (the same ``--shard I/N``, or both without one) write every
    cycle of the same sites twice into the shared history; on one machine the state directory's lock
    stops the second, across machines only the database can. The lock is
    ``pg_try_advisory_lock(classid, crc32(identity))``, held on a connection that does nothing else
    (the pool's connections come and go) and whose ``application_name`` says which connmon holds it,
    so that the refusal can name it. The server releases it when that connection ends (the process
    ended, the server restarted): :meth:`keep`, called every minute, takes it again, or says who has it.
    """

    def __init__(self, url: str, identity: str, connect_timeout_seconds: float = 3.0) -> None:
        self.url = url
        self.identity = identity
        self._timeout = connect_timeout_seconds
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    @classmethod
    def take(cls, url: str, identity: str, *, connect_timeout_seconds: float = 3.0) -> IdentityLock:
        """Take the identity's lock, or refuse.

        Raises:
            StateInUseError: another connection holds it; the message names its connmon (PID, host).
            psycopg.Error: the server does not answer (the caller decides whether to go on).
        """
        lock = cls(url, identity, connect_timeout_seconds)
        lock._take()
        return lock

    def _take(self) -> None:
        me = f"connmon pid {os.getpid()} on {socket.gethostname()}"[:63]  # NAMEDATALEN - 1
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, int(self._timeout)),
                               application_name=me)
        try:
            key = identity_key(self.identity)
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_OWNER_LOCK, key)).fetchone()
            if row is not None and row[0]:
                self._conn = conn
                return
            holder = conn.execute(_HOLDER, (_OWNER_LOCK, key)).fetchone()
        except BaseException:
            conn.close()
            raise
        conn.close()
        if holder is None:
            who = "another connmon (it let go just now: try again)"
        else:
            name, address, backend = holder
            who = (f"{name or 'another client'} (PostgreSQL backend {backend}"
                   + (f", from {address}" if address else "") + ")")
        raise StateInUseError(
            f"the shared history {redact(self.url)} is in use by another connmon with the same identity "
            f"({self.identity}): {who}. Two instances with one identity would store every cycle twice: stop that "
            "one, or give each instance its own --shard I/N")

    def keep(self) -> None:
        """Make sure the lock is still held (its connection answers); take it again when it was lost.

        Raises:
            StateInUseError: it was lost (a server restart, an outage at start-up) and another instance has it now.
            psycopg.Error: the server does not answer; tried again at the next call.
        """
        conn = self._conn
        if conn is not None:
            try:
                conn.execute("SELECT 1")
                return
            except psycopg.Error:
                self._conn = None
                conn.close()
        self._take()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
