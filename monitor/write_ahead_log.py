"""SQLite's write-ahead log kept to a size a small disk holds (issue 25): the history's and the agent's spool's.

SQLite checkpoints its log by default only once it holds about 1,000 pages (~4 MB), and never
shrinks the file. On a 2 MB volume the log alone filled the disk; the checkpoint that would have
emptied it needed room in the main file, so writing never resumed. A connection that writes
through a :class:`BoundedLog`:

* checkpoints (PASSIVE, at commit) once the log holds :attr:`LogBounds.checkpoint_pages` pages,
  and keeps the log file to :attr:`LogBounds.limit_bytes` when it starts over (``journal_size_limit``):
  the file is then reused, not grown;
* after a write that left the log longer than that (one large transaction, or a reader that held
  the log), checkpoints it into the main file and truncates it to nothing
  (:meth:`BoundedLog.after_write`);
* on "database or disk is full", frees its own log first (checkpoint, truncate) and tries the write
  once more before the error goes up (:meth:`BoundedLog.freeing`): the log may be what filled the disk.

Left to the callers: the journal mode and ``synchronous``, their transactions (a write handed to
:meth:`BoundedLog.freeing` must roll itself back when it fails, and may run twice), and what a
failed write means (the history's writer keeps a backlog, the agent keeps its spool's count).
Pruning frees pages inside the main file, which later writes reuse; the file itself never
shrinks, and ``VACUUM`` needs as much free space again as the file, so it is not tried here.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

READER_WAIT_MILLISECONDS = 200  # a truncating checkpoint waits this long for readers, not the 10 s writes wait
WARN_EVERY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class LogBounds:
    """How long one database's log may grow: pages before a checkpoint, bytes kept after one."""

    checkpoint_pages: int
    limit_bytes: int


def is_disk_full(err: BaseException) -> bool:
    """True for SQLite's "database or disk is full" (SQLITE_FULL)."""
    return isinstance(err, sqlite3.Error) and (
        (getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL or "disk is full" in str(err))


class BoundedLog:
    """One writing connection's log, kept within ``bounds``; the pragmas are set here, on the connection.

    ``log`` is the caller's logger: a write that went through only once the log was freed is said
    there at most once a minute (the disk is full, or nearly: the operator should know).
    """

    def __init__(self, db: sqlite3.Connection, path: Path, bounds: LogBounds, log: logging.Logger) -> None:
        self._db = db
        self.wal_path = Path(f"{path}-wal")
        self.bounds = bounds
        self._log = log
        self._warned_at = -WARN_EVERY_SECONDS
        db.execute(f"PRAGMA wal_autocheckpoint = {int(bounds.checkpoint_pages)}")
        db.execute(f"PRAGMA journal_size_limit = {int(bounds.limit_bytes)}")

    def log_bytes(self) -> int:
        """The log file's size now (0 when there is none)."""
        try:
            return self.wal_path.stat().st_size
        except FileNotFoundError:
            return 0

    def truncate(self) -> bool:
        """Checkpoint the whole log into the main file and truncate the log to 0 bytes.

        Returns False when a reader kept part of the log (it waited :data:`READER_WAIT_MILLISECONDS`).

        Raises:
            sqlite3.Error: the checkpoint failed (the main file could not grow on a full disk).
        """
        db = self._db
        waited = int(db.execute("PRAGMA busy_timeout").fetchone()[0])
        db.execute(f"PRAGMA busy_timeout = {READER_WAIT_MILLISECONDS}")
        try:
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            db.execute(f"PRAGMA busy_timeout = {waited}")
        return int(busy) == 0

    def after_write(self) -> None:
        """After a commit: a log longer than the bound is checkpointed and truncated now.

        Never raises: the write is committed, and a caller told otherwise would write it again. A
        checkpoint that fails (a full disk) is tried again after the next write.
        """
        if self.log_bytes() <= self.bounds.limit_bytes:
            return
        try:
            self.truncate()
        except sqlite3.Error:
            self._log.debug("checkpoint after a write failed", exc_info=True)

    def freeing(self, write: Callable[[], T]) -> T:
        """Run ``write``; on "database or disk is full", free the log (checkpoint, truncate) and run it once more.

        ``write`` is one transaction that rolls itself back when it fails. Any other error, a log
        that could not be freed, or a second failure goes up as raised.
        """
        try:
            return write()
        except sqlite3.Error as err:
            if not is_disk_full(err):
                raise
            first = err
        if self._db.in_transaction:  # SQLite may or may not have rolled back a transaction that hit a full disk
            self._db.execute("ROLLBACK")
        held = self.log_bytes()
        try:
            freed = self.truncate()
        except sqlite3.Error:
            self._log.debug("freeing the log on a full disk failed", exc_info=True)
            freed = False
        if not freed:
            raise first
        done = write()
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            self._log.warning("%s: the disk is full: the write went through only once the write-ahead log (%d bytes) "
                              "was checkpointed and truncated; free space on %s", self.wal_path.name[:-4], held,
                              self.wal_path.parent)
        return done
