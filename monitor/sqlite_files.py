"""The SQLite files connmon owns (the centre's history, the agent's spool): a corrupt one moved aside, a
permission fault named with its fix (issue 25).

A corrupt file is a state, not a passing fault: a truncated file, a garbage header or a file that
is not a database fails the same way on every retry, so retrying it every 10 s (as the history
writer did) only hid it and lost the backlog at stop. So the owner of the file (the history writer,
the agent's spool) asks :func:`set_aside_if_corrupt` before it opens it: the first time in the
process, and again after an error that says corruption (:func:`check_again_after`), the file is
``PRAGMA quick_check``-ed; one that fails is renamed to ``<name>.corrupt-<UTC time>`` together with
its ``-wal`` and ``-shm`` (so SQLite finds them beside it for a salvage), nothing is ever
overwritten, one ERROR line says both names and what to do, and the owner starts a fresh file and
counts it. Read-only users (``connmon report``, the API) never move anything.

A file the process may not write ("attempt to write a readonly database", "unable to open
database file", EACCES, EROFS) is the operator's to fix, and the error said neither which file nor
how: :func:`named` makes it :class:`Unwritable`, whose message names the file, the user connmon
runs as, and the fix (chown/chmod, or a read-write mount).

What it leaves to others: opening, schemas and counting are the stores' (:mod:`monitor.history.sqlite`,
:mod:`monitor.agent.site.spool`) and the writer's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import pwd
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from monitor.text import printable

SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
_PERMISSION_CODES = frozenset({3, 8, 14, 23})  # SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_AUTH
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
COMPANIONS = ("-wal", "-shm", "-journal")  # files SQLite keeps beside the database: they go with it

_lock = threading.Lock()  # one check and move at a time in the process (the writer's thread and the restore)
_checked: set[Path] = set()  # files found sound by this process; not checked again until an error says corruption


class Unwritable(sqlite3.OperationalError):
    """The process may not write a database file or its directory; the message names the file and the fix."""


def is_corruption(err: BaseException) -> bool:
    """Whether ``err`` says the file is damaged or no database at all (SQLITE_CORRUPT, SQLITE_NOTADB)."""
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    text = str(err)
    return "file is not a database" in text or "malformed" in text


def is_permission(err: BaseException) -> bool:
    """Whether ``err`` is about the right to write (read-only file or mount, no permission), not the data."""
    if isinstance(err, Unwritable):
        return True
    if isinstance(err, OSError):
        return err.errno in _PERMISSION_ERRNOS
    if isinstance(err, sqlite3.OperationalError):
        code = getattr(err, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in _PERMISSION_CODES
        return "readonly" in str(err) or "unable to open" in str(err)
    return False


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _owner_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def named(path: Path, err: BaseException) -> BaseException:
    """``err`` as :class:`Unwritable` naming ``path`` and the fix when it is a permission fault, else ``err``."""
    if isinstance(err, Unwritable) or not is_permission(err):
        return err
    directory = path.parent
    owner = _owner_name()
    read_only_mount = False
    with contextlib.suppress(OSError):
        read_only_mount = bool(os.statvfs(directory if directory.exists() else directory.parent).f_flag
                               & os.ST_RDONLY)
    if read_only_mount:
        fix = (f"the file system holding {directory} is mounted read-only: remount it read-write, or use another "
               "directory")
    elif not directory.exists():
        fix = (f"{directory} does not exist and cannot be made: create it (mkdir -p {directory}; "
               f"chown {owner} {directory})")
    elif not os.access(directory, os.W_OK | os.X_OK):
        fix = (f"it may not write the directory {directory}, where SQLite keeps {path.name}-wal and -shm: "
               f"chown {owner} {directory} (or chmod u+rwx it)")
    elif path.exists() and not os.access(path, os.W_OK):
        fix = f"it may not write the file: chown {owner} {path}* (or chmod u+rw {path}*; chattr -i if immutable)"
    else:
        fix = (f"give it the file, its -wal and -shm and the directory: chown {owner} {path}* {directory}; "
               f"chmod u+rw {path}* (an immutable file needs chattr -i)")
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    mapped = Unwritable(f"cannot write {path}: {reason}; connmon runs as {_user()}: {fix}")
    mapped.sqlite_errorcode = getattr(err, "sqlite_errorcode", 8)
    return mapped


def corrupt_name(path: Path, now: float) -> Path:
    """``path`` renamed for keeping: ``history.sqlite3.corrupt-20261206T141500Z`` (``-1``, ``-2``… when taken)."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    candidate, number = base, 0
    while any(os.path.lexists(f"{candidate}{suffix}") for suffix in ("", *COMPANIONS)):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


def move_aside(path: Path, now: float) -> Path:
    """Rename ``path`` and its companions to :func:`corrupt_name`; never overwrites. Returns the new name.

    Raises:
        OSError: the directory cannot be written (nothing was moved, or the main file was not).
    """
    target = corrupt_name(path, now)
    os.rename(path, target)  # corrupt_name found the name free; the state directory's lock keeps it so
    for suffix in COMPANIONS:
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            with contextlib.suppress(FileNotFoundError):
                os.rename(companion, f"{target}{suffix}")
    return target


def quick_check(path: Path) -> str | None:
    """What is wrong with the database at ``path`` (``PRAGMA quick_check``), or None when it is sound.

    Raises:
        sqlite3.Error: a fault that is not corruption (locked, no permission): the file is left alone.
    """
    # read-only: a connection that may write deletes a -wal it cannot use when it closes, and the evidence with it
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0, isolation_level=None)
    try:
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as err:
            if is_corruption(err):
                return str(err)
            raise
    finally:
        db.close()
    problems = [str(row[0]) for row in rows if str(row[0]) != "ok"]
    return "; ".join(problems[:3]) if problems else None


def set_aside_if_corrupt(path: Path, *, what: str, log: logging.Logger, metric: str,
                         clock: Callable[[], float] = time.time) -> Path | None:
    """Check ``path`` (first time in the process, or after :func:`check_again_after`); move it aside if corrupt.

    Returns the name the corrupt file now has, or None when nothing was moved (sound, missing, empty,
    already checked). A fault that is not corruption (no permission, locked) moves nothing and is left
    to the open that follows, which raises it. A move that fails is said and the open goes on (and fails).

    Args:
        path: the database file.
        what: what it is, for the log ("history", "spool").
        log: the owner's logger; the ERROR line goes there.
        metric: the counter that counts it, named in the line.
        clock: for the new name's time.
    """
    with _lock:
        if path in _checked:
            return None
        try:
            if not path.is_file() or path.stat().st_size == 0:  # none yet, or SQLite's own empty file
                _checked.add(path)
                return None
            problem = quick_check(path)
        except (OSError, sqlite3.Error):
            return None  # the open says it (named when it is a permission fault)
        if problem is None:
            _checked.add(path)
            return None
        try:
            moved = move_aside(path, clock())
        except OSError as err:
            log.error("%s: %s is corrupt (%s) and cannot be moved aside (%s): fix the directory's permissions, "
                      "or stop connmon and move it yourself", what, printable(str(path)), printable(problem[:200]),
                      err.strerror or err)
            return None
        log.error("%s: %s is not a usable SQLite database (%s); moved it aside to %s (with its -wal and -shm) "
                  "and started a fresh one (%s). What it held is not read from now on: to salvage it, run "
                  "'sqlite3 %s .recover | sqlite3 recovered.sqlite3' (or restore the file from a backup) while "
                  "connmon is stopped; delete %s once done", what, printable(str(path)), printable(problem[:200]),
                  printable(str(moved)), metric, printable(str(moved)), printable(str(moved)))
        _checked.add(path)  # the fresh file the open makes next
        return moved


def check_again_after(err: BaseException) -> None:
    """An error that says corruption makes the next :func:`set_aside_if_corrupt` of every file check again."""
    if is_corruption(err):
        with _lock:
            _checked.clear()
