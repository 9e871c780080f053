"""The last sequence number accepted from each agent, kept across restarts of the centre (issue 10).

Why: uploads must be idempotent. An agent that did not get the centre's answer (the centre
restarted, or the answer was lost) posts the same batch again; the centre must ignore what it
already has. Held only in memory, the last sequence number was gone after a restart, and the
repeated batch was counted twice in the metrics and written twice to the history.

How: a journal file under the state dir, one JSON line ``{"site", "instance", "seq"}`` appended
(and flushed to the kernel, so it survives the process being killed) for each batch accepted. The
last line of a site wins, which is right because a site's lines are appended in the order
its batches are accepted, and a new installation (``instance``) numbers from 1 again. The file is
rewritten compacted (temporary file, then rename) at start-up and whenever it holds many more lines
than sites. A torn last line (a crash while writing) is skipped.

Journal, then publish (issue 24): a batch is journalled before any of it reaches a sink, and a
journal that cannot be written (a full or read-only disk) refuses the batch: the agent keeps it
and posts it again, so a refusal never leaves a batch published but not journalled (which its
retry would then count twice after a restart, or see as a duplicate). Said in the log once a
minute at most; tried again with every batch.

Stored, then confirmed (issue 25): the line written before publishing is *pending*
(``"pending": true``); once the history has the batch, a second line confirms it, and only then
does the centre answer 200. A restart reads confirmed lines only, so a centre killed between the
two (the batch journalled but not yet in the history) takes the agent's retry as new and stores it
(the history's writes are idempotent: a batch stored twice is one row each). A confirmation that
cannot be written is said in the log and leaves the older position, which costs at most a retry
taken twice by the metrics after a restart, never a result.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "agent-sequences.jsonl"
COMPACT_EXTRA_LINES = 10_000  # lines beyond one per site before the file is rewritten
LOG_EVERY_SECONDS = 60.0

Position = tuple[str | None, int]  # (agent installation, last sequence number accepted)


class JournalError(OSError):
    """The journal could not record a batch: the batch must not be taken (the agent will post it again)."""


class SeqJournal:
    """Appends each accepted batch's last sequence number; gives them back after a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.positions: dict[str, Position] = {}
        self._fd: int | None = None
        self._lines = 0
        self._torn = False  # a write failed part-way: the next line starts on a fresh line
        self._last_logged = -LOG_EVERY_SECONDS
        self._failing = False

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> SeqJournal:
        return cls(Path(state_dir) / FILE_NAME)

    def load(self) -> dict[str, Position]:
        """Read the journal (a missing file is an empty one) and rewrite it compacted."""
        positions: dict[str, Position] = {}
        try:
            with self.path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        site, instance, seq = entry["site"], entry["instance"], entry["seq"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a crash, or not ours
                    if entry.get("pending") is True:
                        continue  # journalled, never confirmed stored: the agent's retry must be taken again
                    if isinstance(site, str) and isinstance(seq, int) and isinstance(instance, str | None):
                        positions[site] = (instance, seq)
        except FileNotFoundError:
            pass
        except OSError as err:
            self._say(f"cannot read {self.path}: {err}")
        self.positions = positions
        self.compact(positions)
        return dict(positions)

    def record(self, site: str, instance: str | None, seq: int,
               sites: Callable[[], Mapping[str, Position]] | None = None) -> None:
        """Journal, *pending*, that ``site``'s batches up to ``seq`` are taken (before any of it is published).

        ``sites`` is no longer read (a compaction keeps confirmed positions only); kept for callers.

        Raises:
            JournalError: the line could not be written (a full or read-only disk). Nothing is
                recorded, in the file or in memory: the caller refuses the batch, and the agent,
                which keeps it, posts it again (issue 24: a refusal changes nothing).
        """
        self._write(_line(site, instance, seq, pending=True), raise_error=True)

    def confirm(self, site: str, instance: str | None, seq: int) -> bool:
        """Journal that ``site``'s batches up to ``seq`` are in the history; False (said) if it cannot be written.

        Only confirmed positions are read back after a restart, and only they are kept at a compaction.
        """
        if not self._write(_line(site, instance, seq), raise_error=False):
            return False
        self.positions[site] = (instance, seq)
        if self._lines > len(self.positions) + COMPACT_EXTRA_LINES:
            self.compact(self.positions)
        return True

    def _write(self, line: bytes, *, raise_error: bool) -> bool:
        """Append ``line`` in one system call; on failure say so and raise :class:`JournalError` or return False."""
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            data = (b"\n" if self._torn else b"") + line
            written = os.write(self._fd, data)  # one system call: in the kernel's hands, a kill loses nothing
            if written != len(data):
                self._torn = True
                raise OSError(errno.ENOSPC, "short write (is the disk full?)")
        except OSError as err:
            self._torn = True  # a part of the line may be in the file: the next starts after a newline
            self.close()
            self._say(f"cannot write {self.path}: {err}")
            if raise_error:
                raise JournalError(err.errno, f"cannot write {self.path}: {err.strerror or err}") from None
            return False
        self._torn = False
        self._lines += 1
        if self._failing:
            self._failing = False
            log.warning("agent sequence journal: writing %s works again", self.path)
        return True

    def compact(self, positions: Mapping[str, Position]) -> None:
        """Rewrite the journal with one line per site (atomically: a crash leaves the old or the new).

        A compaction that fails leaves the old file, which still holds every position: appending goes on.
        """
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as f:
                for site, (instance, seq) in positions.items():
                    f.write(_line(site, instance, seq))
                f.flush()
                os.fsync(f.fileno())
            self.close()
            os.replace(temporary, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                temporary.unlink()
            self._say(f"cannot rewrite {self.path}: {err}")
            return
        self._torn = False
        self.positions = dict(positions)
        self._lines = len(positions)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _say(self, message: str) -> None:
        """One ERROR a minute at most: a full disk must not fill the log as well."""
        self._failing = True
        now = time.monotonic()
        if now - self._last_logged >= LOG_EVERY_SECONDS:
            self._last_logged = now
            log.error("agent sequence journal: %s; agents' batches are refused (503) until it can be written, "
                      "and the agents keep them", message)


def _line(site: str, instance: str | None, seq: int, *, pending: bool = False) -> bytes:
    # ASCII escapes: any string the caller holds can be written (a lone surrogate cannot be UTF-8)
    entry: dict[str, object] = {"site": site, "instance": instance, "seq": seq}
    if pending:
        entry["pending"] = True
    return (json.dumps(entry) + "\n").encode("ascii")
