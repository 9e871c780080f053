"""One owner per state directory (issue 25): an exclusive ``flock`` on ``connmon.lock``, held for the process's life.

Two daemons on one ``--state-dir`` (a second unit started by mistake, a container restarted beside
its old self) both ran and both wrote: every cycle was stored twice and each counted the other's
replies as unmatched. So ``connmon run`` (its ``--state-dir``) and ``connmon agent`` (its spool
directory, ``state_dir``) take :class:`StateLock` before they open anything there; a second process
is refused with :class:`~monitor.errors.StateInUseError` (exit 2) naming the directory and the
holder's PID, which the holder writes into the file.

Why ``flock`` on a file that stays: the kernel releases the lock when the process ends, however it
ends (``kill -9`` too), so a stale lock cannot exist; the file is never removed (removing it would
let a third process lock a new file while the second still holds the old one). The PID in it means
something only while the file is locked; the holder empties it at a clean stop.

Read-only users (``connmon report``, the API's reads) never take it. A directory where the file
cannot be made (a read-only volume) is run without the lock, with a warning: nothing can be written
there, so nothing can be doubled, and the history says its own errors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from monitor.errors import StateInUseError
from monitor.text import printable

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "connmon.lock"
_PID_WAIT_SECONDS = 1.0  # the holder writes its PID just after locking: a refusal waits this long to read it


class StateLock:
    """The lock on one state directory; :meth:`take` it, :meth:`release` it (or let the process end)."""

    def __init__(self, directory: Path, fd: int | None) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE_NAME
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def take(cls, directory: str | os.PathLike[str], *, what: str, mode: int = 0o777) -> StateLock:
        """Lock ``directory`` (made with ``mode`` if missing) for this process, or refuse.

        Args:
            directory: the state directory (``--state-dir``, the agent's ``state_dir``).
            what: who takes it, for the refusal ("connmon run", "connmon agent").
            mode: the mode a missing directory is made with (the agent's is 0700).

        Raises:
            StateInUseError: another process holds the lock; the message names the directory and its PID.
        """
        where = Path(directory).absolute()  # the refusal names it as the operator can find it
        path = where / LOCK_FILE_NAME
        try:
            where.mkdir(mode=mode, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            existing = _open_existing(path)
            if existing is None:  # a read-only volume: nothing can be written there, so nothing doubled
                log.warning("%s: cannot make the lock file %s (%s); running without it, so another connmon "
                            "on this directory would not be refused", what, printable(str(path)),
                            err.strerror or err)
                return cls(where, None)
            fd = existing
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd) if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                log.warning("%s: cannot lock %s (%s); running without the lock", what, printable(str(path)), err)
                return cls(where, None)
            pid = f"PID {holder}" if holder else "a process that has not written its PID"
            raise StateInUseError(
                f"{where} is in use by another connmon ({pid}, holding {path}): two processes on one state "
                f"directory would both write the same files and store every result twice. Stop that one first, "
                f"or give {what} a directory of its own") from None
        with contextlib.suppress(OSError):  # a PID not written only makes a later refusal less precise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(where, fd)

    def release(self) -> None:
        """Empty the file (the PID no longer holds it) and unlock; the file stays (see the module doc)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock


def _open_existing(path: Path) -> int | None:
    """A lock file that cannot be opened for writing (another user's) is locked read-only: flock needs no write."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _holder(fd: int) -> str:
    """The PID the lock's holder wrote, waiting a moment for a holder that has just locked it."""
    deadline = time.monotonic() + _PID_WAIT_SECONDS
    while True:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        if text.isdigit() or time.monotonic() >= deadline:
            return text if text.isdigit() else ""
        time.sleep(0.05)
