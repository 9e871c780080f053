"""Rows no store can take: how the writer tells them from a failing store, and the file they are kept in.

A row that no store can take (a lone surrogate in an address, a NUL byte for PostgreSQL, a number
out of range: :func:`is_row_fault`) would fail again on every retry and stop the history of every
site, so the writer (:class:`~monitor.history.writer.HistorySink`) sets it aside (issue 24): it is
kept as one line of JSON in :class:`SetAsideFile`, beside the history, for whoever wants to mend
and load it, and counted. This module knows the errors and the file; the writer decides what to
set aside, counts it and says it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import os
import re
import sqlite3
import struct
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from monitor.history.store import EndpointRecord
from monitor.results import Gap, Result, ThroughputResult
from monitor.text import printable

log = logging.getLogger("monitor.history")  # the history's one logger name (as before issue 23's split)

SET_ASIDE_FILE_NAME = "history-set-aside.jsonl"  # in the state directory (the daemon's, whatever the store)
SET_ASIDE_MAX_BYTES = 10 * 1024 * 1024  # beyond this, rows set aside are only counted: a disk is not filled


def is_row_fault(err: BaseException) -> bool:
    """Whether ``err``, raised by a store's ``write``, is about a value in the rows, not about the store.

    Why the writer must tell them apart (issue 24): a store fault (locked, full, read-only, gone, a
    lost connection) passes once the store is back, so the chunk waits and is retried. A row fault
    fails the same row on every retry, so retrying the chunk would stop the history of every site
    for good; the writer splits the chunk instead and sets the row aside. When unsure, the answer is
    "store": retrying costs only time, setting aside costs the row its place in the history.

    Row faults:

    * ``UnicodeError`` (a lone surrogate, which UTF-8 cannot encode), ``ValueError``, ``TypeError``,
      ``OverflowError`` (an integer beyond SQLite's 64 bits), ``struct.error`` (an RTT that is no
      float): the driver, or the store's own packing, could not convert a value;
    * ``sqlite3.DataError`` (a value too big) and ``sqlite3.IntegrityError`` (a NOT NULL column given
      NaN, which SQLite stores as NULL); ``sqlite3.InterfaceError`` and ``ProgrammingError`` only when
      they are about binding a parameter: a ProgrammingError is also "closed database", a store fault;
    * ``psycopg.DataError``: SQLSTATE class 22 "data exception" (a number out of range, an invalid
      text) and the driver's own refusal of a NUL byte in text; ``psycopg.IntegrityError``, class 23.
      psycopg is looked up among the loaded modules: it is imported only with PostgreSQL, and no
      error of it can exist before.

    Everything else is a store fault: ``sqlite3.OperationalError``, ``OSError``, psycopg's
    ``OperationalError`` (its pool's timeout too), ``InternalError`` (a read-only transaction), ...
    """
    if isinstance(err, UnicodeError | ValueError | TypeError | OverflowError | struct.error
                  | sqlite3.DataError | sqlite3.IntegrityError):
        return True
    if isinstance(err, sqlite3.InterfaceError | sqlite3.ProgrammingError):
        return "binding" in str(err)
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(err, psycopg.DataError | psycopg.IntegrityError)


# a quoted value ('\ud800', "abc"; not the apostrophe of "can't") or a number (a position, a byte)
_VALUES = re.compile(r"""(?<!\w)'[^']*'(?!\w)|(?<!\w)"[^"]*"(?!\w)|\d+""")


def cause(err: BaseException) -> str:
    """The shape of ``err``: its class and message without numbers and quoted values (a position, the
    character), so that every row failing for one reason is said once, not once per row."""
    shape = _VALUES.sub("…", str(err))[:200]
    return f"{type(err).__name__}: {shape}"


def _plain(value: object) -> object:
    """``value`` as JSON can hold it exactly: dataclasses as objects (without the target, named apart),
    enums as their values, dates as ISO text, NaN and infinities as text (strict JSON has none)."""
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "target"}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)  # not a type a result holds today; kept readable rather than lost


def _kind(item: EndpointRecord | Result | Gap) -> str:
    if isinstance(item, EndpointRecord):
        return "endpoint"
    if isinstance(item, Gap):
        return "gap"
    return "throughput" if isinstance(item, ThroughputResult) else "icmp"


_WHAT = {"icmp": "an ICMP result", "throughput": "a throughput test", "gap": "a gap", "endpoint": "the record"}


def what(item: EndpointRecord | Result | Gap) -> str:
    """What ``item`` is, for the log: "an ICMP result", "a throughput test", "a gap", "the record"."""
    return _WHAT[_kind(item)]


def entry(item: EndpointRecord | Result | Gap, err: Exception, at: float) -> dict[str, object]:
    """The set-aside file's line for ``item``, refused with ``err`` at ``at``: its kind, site, start,
    every field (without the target: its site is named) and the error."""
    name = item.name if isinstance(item, EndpointRecord) else item.target.name
    return {"kind": _kind(item), "endpoint": name,
            "started_at": None if isinstance(item, EndpointRecord) else _plain(item.started_at),
            "fields": _plain(item), "error": f"{type(err).__name__}: {err}", "set_aside_at": at}


def set_aside_file(state_dir: str | os.PathLike[str]) -> Path:
    """Where the daemon keeps the rows the store refused: beside the SQLite history, and in the state
    directory with PostgreSQL too (the daemon has one either way; a remote server's disk is not ours)."""
    return Path(state_dir) / SET_ASIDE_FILE_NAME


class SetAsideFile:
    """The JSON-lines file of rows set aside; ``path`` None keeps them nowhere (they are still counted).

    ``say(key, message)`` is the writer's log, at most once a minute per key: a failure to write the
    file is said there, never raised (it must not stop the writer it protects).
    """

    def __init__(self, path: Path | None, say: Callable[[str, str], None]) -> None:
        self.path = path
        self._say = say
        self._said_full = False  # the file reached SET_ASIDE_MAX_BYTES and the log said so

    def keep(self, line_entry: Mapping[str, object]) -> Path | None:
        """Append ``line_entry`` to the set-aside file as one line of ASCII JSON; the file, or None when not kept.

        ``ensure_ascii`` writes a lone surrogate as its ``\\ud800`` escape, so the line is valid UTF-8
        and ``json.loads`` gives back the very string the store refused. The file stops growing at
        :data:`SET_ASIDE_MAX_BYTES` (said once); a failure to write it is said and never raised: it
        must not stop the writer it protects.
        """
        path = self.path
        if path is None:
            return None
        try:
            line = (json.dumps(line_entry, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
                if os.fstat(out.fileno()).st_size + len(line) > SET_ASIDE_MAX_BYTES:
                    if not self._said_full:
                        self._said_full = True
                        log.error("history: the set-aside file %s has reached %d MiB; results set aside from now "
                                  "on are only counted (connmon_store_results_set_aside_lost_total)",
                                  printable(str(path)), SET_ASIDE_MAX_BYTES // (1024 * 1024))
                    return None
                out.write(line)
        except Exception as err:  # full disk, read-only or missing directory: counted by the caller, said here
            self._say("set-aside file", f"history: cannot write the set-aside file {path}: {err}; results set aside "
                                        "are only counted (connmon_store_results_set_aside_lost_total)")
            return None
        self._said_full = False  # emptied or rotated by hand: say it again when it fills up
        return path

    def where(self, kept: Path | None) -> str:
        """Where a row went, for the log line that says it was set aside."""
        if kept is not None:
            return f"kept in {kept}"
        if self.path is None:
            return "not kept (no set-aside file)"
        return f"not kept: {self.path} is full or cannot be written"
