"""The agent's bounded on-disk spool: results wait here, numbered, until the centre has them.

Why SQLite (stdlib ``sqlite3``) in WAL mode: every append and every acknowledged upload is one
transaction, so a ``kill -9`` or a crash loses at most the result being written, and the file
never holds half a result. ``synchronous=NORMAL`` keeps SD cards (Raspberry Pi) from an fsync per
result; a power cut may then lose the last few commits, never the file's consistency. The log is
kept small (:mod:`monitor.write_ahead_log`, issue 25): a 1 MB volume holds a working spool. A
corrupt spool is moved aside at open and a fresh one started, and a file the agent may not write is
named with the fix (:mod:`monitor.sqlite_files`, issue 25).

What it keeps:

* ``results``: ``seq`` → the encoded result as JSON text (:mod:`monitor.agent.protocol`), in order;
* ``meta``: ``instance`` (random hex made at the first start: the centre numbers results per
  instance, so a reinstalled agent, with a new spool, starts again at 1 without clashing),
  ``next_seq`` (kept even when the spool is empty: sequence numbers never go back), and
  ``dropped`` (results discarded unsent, reported to the centre as ``agent.spool_dropped``).

* ``held`` (issue 25): results the centre refused for a cause that can pass (a time stamped ahead by a
  clock that was fast), each with when it may be sent again; :meth:`Spool.release_held` puts them
  back under new sequence numbers (the centre has decided their old ones), and one held beyond
  :data:`HOLD_MAX_SECONDS` is dropped and counted.

The spool is bounded by a count of results: beyond ``max_results`` the *oldest* go first, as
the newest say most about the site now, and each one dropped is counted.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from monitor import sqlite_files
from monitor.write_ahead_log import BoundedLog, LogBounds

log = logging.getLogger(__name__)
_T = TypeVar("_T")

FILE_NAME = "spool.sqlite3"
# Issue 25: the log is checkpointed every 32 pages (128 KB) and kept to 256 KB, so that a 1 MB volume holds a
# working spool; SQLite's default (1,000 pages, never shrunk) let the log alone refill a 1 MB volume.
LOG_BOUNDS = LogBounds(checkpoint_pages=32, limit_bytes=256 * 1024)

HOLD_MAX_SECONDS = 86400.0  # a refused result whose cause has not passed in a day is dropped (counted)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, not_before REAL NOT NULL,
                                 held_since REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS released (seq INTEGER PRIMARY KEY, held_since REAL NOT NULL);
"""
_MAX_REASON = 300


class Spool:
    """Results numbered from 1, oldest first; thread-unsafe by design (the agent has one loop)."""

    def __init__(self, db: sqlite3.Connection, path: Path, max_results: int) -> None:
        self._db = db
        self.path = path
        self.max_results = max_results
        self.moved_aside: Path | None = None  # where open moved a corrupt spool (issue 25)
        self._wal = BoundedLog(db, path, LOG_BOUNDS, log)
        self.instance = self._meta("instance")

    @classmethod
    def open(cls, state_dir: str | Path, max_results: int = 100_000) -> Spool:
        """Open (or create) the spool in ``state_dir``; the directory is made if missing (mode 0700).

        Raises:
            OSError, sqlite3.Error: the directory or file cannot be used.
        """
        directory = Path(state_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / FILE_NAME
        # a corrupt spool is moved aside and a fresh one started (issue 25): its results are lost either way,
        # and the agent must go on measuring; the centre sees a new instance (connmon_agent_info)
        moved = sqlite_files.set_aside_if_corrupt(path, what="spool", log=log,
                                                  metric="the centre sees a new instance in connmon_agent_info")
        db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            with _transaction(db):
                db.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (secrets.token_hex(16),))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', '1')")
                db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', '0')")
        except BaseException as err:
            db.close()
            mapped = sqlite_files.named(path, err)  # a permission fault names the file and the fix (issue 25)
            if mapped is err:
                raise
            raise mapped from err
        os.chmod(path, 0o600)
        spool = cls(db, path, max_results)
        spool.moved_aside = moved
        return spool

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ reading
    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    @property
    def next_seq(self) -> int:
        return int(self._meta("next_seq"))

    @property
    def dropped(self) -> int:
        """Results discarded without reaching the centre, over the spool's whole life."""
        return int(self._meta("dropped"))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM results").fetchone()[0])

    @property
    def held(self) -> int:
        """Results the centre refused for a cause that can pass, waiting to be sent again."""
        return int(self._db.execute("SELECT count(*) FROM held").fetchone()[0])

    def oldest(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` results, oldest first, as (seq, encoded result)."""
        rows = self._db.execute("SELECT seq, body FROM results ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [(int(seq), json.loads(body)) for seq, body in rows]

    # ------------------------------------------------------------------ writing
    def _bounded(self, write: Callable[[], _T]) -> _T:
        """Run one write transaction; on a full disk the log is freed and the write tried once more, and a
        log left longer than its bound is truncated after it (issue 25, :mod:`monitor.write_ahead_log`)."""
        done = self._wal.freeing(write)
        self._wal.after_write()
        return done

    def append_kept(self, encodes: Sequence[Callable[[int], dict[str, Any]]], lost: int = 0) -> list[int]:
        """Number ``lost`` results that could not be kept, then keep ``encodes`` in order; their seqs.

        Used when the spool could not be written for a while (issue 25): the results kept in memory
        meanwhile are written, and those that memory could not hold either use up their sequence
        numbers and are counted as dropped, in the same transaction, so the centre sees the gap and
        ``spool_dropped`` says why.

        Raises:
            sqlite3.Error: nothing was written or numbered.
        """
        return self._bounded(lambda: self._append_kept(encodes, lost))

    def _append_kept(self, encodes: Sequence[Callable[[int], dict[str, Any]]], lost: int) -> list[int]:
        with _transaction(self._db):
            if lost:
                self._db.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) "
                                 "WHERE key = 'next_seq'", (lost,))
                self._add_dropped(lost)
            return [self._insert(encode) for encode in encodes]

    def _insert(self, encode: Callable[[int], dict[str, Any]]) -> int:
        """Number and insert one result inside the caller's transaction; the oldest go beyond ``max_results``."""
        seq = int(self._db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
        body = json.dumps(encode(seq), separators=(",", ":"), allow_nan=False)
        self._db.execute("INSERT INTO results VALUES (?, ?)", (seq, body))
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq + 1),))
        excess = len(self) - self.max_results
        if excess > 0:
            self._discard_oldest(excess)
        return seq

    def settle(self, last_seq: int, held: Sequence[tuple[int, float, str]] = (), dropped: Sequence[int] = (),
               now: float = 0.0) -> None:
        """The centre answered every result up to ``last_seq`` (protocol 2): forget them, but first move
        ``held`` (seq, not before, reason) aside to be sent again, and count ``dropped`` (refused for good).

        One transaction: a failure (a full disk) changes nothing, and the caller tries again before
        sending anything more (issue 25: a failed acknowledgement had the same results sent every interval).
        """
        self._bounded(lambda: self._settle(last_seq, held, dropped, now))

    def _settle(self, last_seq: int, held: Sequence[tuple[int, float, str]], dropped: Sequence[int],
                now: float) -> None:
        with _transaction(self._db):
            for seq, not_before, reason in held:  # refused again after a release: held since its first refusal
                self._db.execute(
                    "INSERT OR REPLACE INTO held SELECT r.seq, r.body, ?, COALESCE((SELECT held_since "
                    "FROM released WHERE seq = r.seq), ?), ? FROM results r WHERE r.seq = ?",
                    (not_before, now, reason[:_MAX_REASON], seq))
            self._db.execute("DELETE FROM released WHERE seq <= ?", (last_seq,))
            gone = int(self._db.execute("DELETE FROM results WHERE seq <= ?", (last_seq,)).rowcount)
            kept = sum(1 for seq, _, _ in held if seq <= last_seq)
            refused = sum(1 for seq in dropped if seq <= last_seq)
            if refused:
                self._add_dropped(min(refused, max(0, gone - kept)))

    def release_held(self, now: float) -> tuple[int, int]:
        """Send again, under new numbers, the held results whose time has come; drop those held too long.

        Returns (released, dropped). The held rows keep their first refusal's time, so a result
        refused again is dropped :data:`HOLD_MAX_SECONDS` after the first refusal, not never.
        """
        due = self._db.execute("SELECT seq, body, held_since FROM held WHERE not_before <= ? ORDER BY seq",
                               (now,)).fetchall()
        stale = int(self._db.execute("SELECT count(*) FROM held WHERE held_since <= ?",
                                     (now - HOLD_MAX_SECONDS,)).fetchone()[0])
        if not due and not stale:
            return 0, 0
        return self._bounded(lambda: self._release(due, now))

    def _release(self, due: list[tuple[int, str, float]], now: float) -> tuple[int, int]:
        with _transaction(self._db):
            stale = int(self._db.execute("DELETE FROM held WHERE held_since <= ?",
                                         (now - HOLD_MAX_SECONDS,)).rowcount)
            self._add_dropped(stale)
            released = 0
            for old_seq, body, held_since in due:
                if held_since <= now - HOLD_MAX_SECONDS:
                    continue
                self._db.execute("DELETE FROM held WHERE seq = ?", (old_seq,))
                # a new number: the centre has answered the old one; ``held`` remembers when it was first refused
                new_seq = self._insert(functools.partial(_renumbered, json.loads(body)))
                self._db.execute("INSERT OR REPLACE INTO released VALUES (?, ?)", (new_seq, held_since))
                released += 1
        return released, stale

    def append(self, encode: Callable[[int], dict[str, Any]]) -> int:
        """Number a result and keep it; return its ``seq``. ``encode(seq)`` builds the wire object.

        Beyond ``max_results`` the oldest results are deleted and counted as dropped, in the same
        transaction: the count and the spool never disagree.

        Raises:
            sqlite3.Error: the result could not be kept (nothing was numbered), e.g. a disk still
                full once the spool's own log was freed.
        """
        return self._bounded(lambda: self._append(encode))

    def _append(self, encode: Callable[[int], dict[str, Any]]) -> int:
        with _transaction(self._db):
            return self._insert(encode)

    def acknowledge(self, last_seq: int) -> int:
        """The centre has every result up to ``last_seq``: forget them; return how many went."""
        return self._bounded(lambda: self._delete_through(last_seq, dropped=False))

    def _delete_through(self, last_seq: int, *, dropped: bool) -> int:
        with _transaction(self._db):
            gone = int(self._db.execute("DELETE FROM results WHERE seq <= ?", (last_seq,)).rowcount)
            if dropped:
                self._add_dropped(gone)
        return gone

    def drop_through(self, last_seq: int) -> int:
        """Give up on the results up to ``last_seq`` (a batch the centre keeps refusing): forget and count them."""
        return self._bounded(lambda: self._delete_through(last_seq, dropped=True))

    def _discard_oldest(self, count: int) -> None:
        gone = self._db.execute("DELETE FROM results WHERE seq IN (SELECT seq FROM results ORDER BY seq LIMIT ?)",
                                (count,)).rowcount
        self._add_dropped(gone)

    def _add_dropped(self, count: int) -> None:
        self._db.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + ? AS TEXT) WHERE key = 'dropped'",
                         (count,))


def _renumbered(body: dict[str, Any], seq: int) -> dict[str, Any]:
    return {**body, "seq": seq}


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an exception) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
            except BaseException:  # a commit that failed (a full disk) must not leave the transaction open
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        elif self.db.in_transaction:  # SQLite may have rolled it back itself (a full disk): keep the first error
            self.db.execute("ROLLBACK")
