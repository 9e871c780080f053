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
than sites. A torn last line (a crash while writing) is skipped. A journal that cannot be written is
said once in the log and the centre goes on with the figures in memory: never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

FILE_NAME = "agent-sequences.jsonl"
COMPACT_EXTRA_LINES = 10_000  # lines beyond one per site before the file is rewritten

Position = tuple[str | None, int]  # (agent installation, last sequence number accepted)


class SeqJournal:
    """Appends each accepted batch's last sequence number; gives them back after a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.positions: dict[str, Position] = {}
        self._file: IO[str] | None = None
        self._lines = 0
        self._failed = False

    @classmethod
    def in_dir(cls, state_dir: str | Path) -> SeqJournal:
        return cls(Path(state_dir) / FILE_NAME)

    def load(self) -> dict[str, Position]:
        """Read the journal (a missing file is an empty one) and rewrite it compacted."""
        positions: dict[str, Position] = {}
        try:
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        site, instance, seq = entry["site"], entry["instance"], entry["seq"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a crash, or not ours
                    if isinstance(site, str) and isinstance(seq, int) and isinstance(instance, str | None):
                        positions[site] = (instance, seq)
        except FileNotFoundError:
            pass
        except OSError as err:
            self._fail(f"cannot read {self.path}: {err}")
        self.positions = positions
        self.compact(positions)
        return dict(positions)

    def record(self, site: str, instance: str | None, seq: int,
               sites: Callable[[], Mapping[str, Position]] | None = None) -> None:
        """Journal that ``site``'s batches up to ``seq`` are in; ``sites`` gives all of them, for a compaction."""
        self.positions[site] = (instance, seq)
        if self._failed:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps({"site": site, "instance": instance, "seq": seq}, ensure_ascii=False) + "\n")
            self._file.flush()  # in the kernel's hands: a killed process loses nothing
        except OSError as err:
            self._fail(f"cannot write {self.path}: {err}")
            return
        self._lines += 1
        if self._lines > len(self.positions) + COMPACT_EXTRA_LINES:
            self.compact(sites() if sites is not None else self.positions)

    def compact(self, positions: Mapping[str, Position]) -> None:
        """Rewrite the journal with one line per site (atomically: a crash leaves the old or the new)."""
        if self._failed:
            return
        self.close()
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as f:
                for site, (instance, seq) in positions.items():
                    f.write(json.dumps({"site": site, "instance": instance, "seq": seq}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as err:
            self._fail(f"cannot rewrite {self.path}: {err}")
            return
        self.positions = dict(positions)
        self._lines = len(positions)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _fail(self, message: str) -> None:
        if not self._failed:
            log.error("agent sequence journal: %s; repeated batches after a restart of the centre may be "
                      "counted twice", message)
        self._failed = True
        self.close()
