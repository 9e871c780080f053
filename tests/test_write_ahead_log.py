"""The write-ahead log on small disks (issue 25): real tmpfs volumes of 2 MB (history) and 1 MB (spool).

SQLite's default log (checkpointed at ~1,000 pages, never shrunk) filled a 2 MiB volume by itself
and writing never resumed. These tests write for many checkpoint periods on volumes that small,
fill the volume with a file and free it again, and count every result.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from monitor import write_ahead_log
from monitor.agent.protocol import encode_icmp
from monitor.agent.site import spool as spool_module
from monitor.agent.site.spool import FILE_NAME, Spool
from monitor.config import Retention
from monitor.history import sqlite as sqlite_module
from monitor.history import writer as history_module
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import EndpointRecord
from monitor.history.writer import HistorySink
from monitor.results import Cycle, Gap, Result
from monitor.targets import Target
from tests.conftest import need_root
from tests.factories import KEEP_ALL, icmp, target
from tests.polling import wait_for
from tests.volumes import fill, small_volume

SITES = 30
RTTS = (0.011, 0.012, 0.013, 0.014, 0.015)


def log_bytes(database: Path) -> int:
    wal = Path(f"{database}-wal")
    return wal.stat().st_size if wal.exists() else 0


def log_restarts(database: Path) -> int:
    """The log's checkpoint sequence number (bytes 12..16 of its header): it counts the times the log started over."""
    try:
        with open(f"{database}-wal", "rb") as wal:
            header = wal.read(32)
    except FileNotFoundError:
        return 0
    return int.from_bytes(header[12:16], "big") if len(header) == 32 else 0


def sites(count: int = SITES) -> list[Target]:
    return [target(f"school-{i:03d}") for i in range(count)]


def cycle(targets: list[Target], at: float, rtts: tuple[float, ...] = RTTS) -> Cycle:
    return Cycle("icmp", "g", at, 1.0, tuple(icmp(t, at, *rtts) for t in targets))


@dataclass
class Seen:
    """What the test saw of the log after each of the store's commits."""

    commits: int = 0
    max_log_bytes: int = 0
    restarts: set[int] = field(default_factory=set)


class WatchedStore(SqliteStore):
    """The history store, looking at its log after each commit."""

    def __init__(self, path: Path, seen: Seen) -> None:
        super().__init__(path)
        self.seen = seen

    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap] = ()) -> None:
        super().write(endpoints, results, gaps)
        self.seen.commits += 1
        self.seen.max_log_bytes = max(self.seen.max_log_bytes, log_bytes(self.path))
        self.seen.restarts.add(log_restarts(self.path))


# ----------------------------------------------------------------------------- the bounds, without root
def test_a_large_write_leaves_the_history_log_truncated_within_its_bound(tmp_path: Path) -> None:
    """A transaction that grows the log past its bound (10,000 sites at once) is checkpointed and the log cut back."""
    path = database_path(tmp_path)
    store = SqliteStore(path)
    try:
        store.write([], list(cycle(sites(10_000), 60.0).results))
        assert log_bytes(path) <= sqlite_module.LOG_BOUNDS.limit_bytes
        assert len(list(store.icmp_cycles("school-9999", 0, 1e12))) == 1
    finally:
        store.close()


def test_a_large_append_leaves_the_spool_log_truncated_within_its_bound(tmp_path: Path) -> None:
    """A result bigger than the spool's log bound is kept, and the log is cut back after it."""
    spool = Spool.open(tmp_path)
    try:
        seq = spool.append(lambda s: {"seq": s, "pad": "x" * 600_000})
        assert log_bytes(tmp_path / FILE_NAME) <= spool_module.LOG_BOUNDS.limit_bytes
        assert spool.oldest(1)[0][0] == seq == 1
    finally:
        spool.close()


# ----------------------------------------------------------------------------- the centre's history, 2 MB
def test_a_2_mb_volume_holds_a_working_history_for_many_checkpoint_periods(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """30 sites a minute, pruned to an hour, for 1,500 cycles: every result is written and the log stays small."""
    need_root()
    monkeypatch.setattr(history_module, "PRUNE_EVERY_SECONDS", 300.0)  # of the injected clock: every 5 cycles
    now = [0.0]
    seen = Seen()
    with small_volume(tmp_path / "state", "2m") as state:
        path = database_path(state)
        sink = HistorySink(lambda: WatchedStore(path, seen), Retention(icmp_seconds=3600, throughput_seconds=3600),
                           clock=lambda: now[0])
        targets = sites()
        try:
            for i in range(1, 1501):
                now[0] = 60.0 * i
                sink.consume(cycle(targets, now[0]))
                time.sleep(0.001)  # a few cycles per transaction, as a daemon's writer sees them
            wait_for(lambda: sink.stats.pending == 0, timeout=30)
        finally:
            sink.close()
        assert sum(sink.stats.errors.values()) == 0, sink.stats.errors
        assert sink.stats.written == 1500 * SITES and sink.stats.dropped == 0
        assert sink.stats.pruned > 0
        assert seen.commits >= 300, seen.commits
        assert len(seen.restarts) >= 50, seen.restarts  # the log started over that often: many checkpoint periods
        assert seen.max_log_bytes <= sqlite_module.LOG_BOUNDS.limit_bytes
        store = SqliteStore(path, read_only=True)
        try:
            assert store.integrity_check() == "ok"
            assert len(list(store.icmp_cycles("school-000", 0, 1e12))) >= 60  # the retained hour
        finally:
            store.close()


def test_a_full_history_volume_frees_its_own_log_before_the_write_fails(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full, log held long by a reader: a write checkpoints and truncates the log, and goes through."""
    need_root()
    monkeypatch.setattr(write_ahead_log, "READER_WAIT_MILLISECONDS", 1)  # the reader holds on: do not wait for it
    caplog.set_level(logging.WARNING, logger="monitor.history")
    targets = sites()
    with small_volume(tmp_path / "state", "2m") as state:
        path = database_path(state)
        store = SqliteStore(path)
        for i in range(200):  # rows, then pruned: free pages inside the file for the writes below
            store.write([], list(cycle(targets, float(i)).results))
        while store.prune(1e12, 1e12, 5000):
            pass
        store.close()  # the last connection checkpoints and removes the log
        store = SqliteStore(path)
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM icmp").fetchone()  # holds its snapshot: the log cannot start over
            at = 1000.0
            while log_bytes(path) < 2 * sqlite_module.LOG_BOUNDS.limit_bytes:
                at += 1
                store.write([], list(cycle(targets, at).results))
            reader.execute("COMMIT")
            filler = fill(state)
            held = log_bytes(path)
            store.write([], list(cycle(targets, at + 1).results))
            assert filler.exists() and log_bytes(path) < held
            assert any("the disk is full" in r.getMessage() and "write-ahead log" in r.getMessage()
                       for r in caplog.records), [r.getMessage() for r in caplog.records]
            assert [c.started_at for c in store.icmp_cycles("school-000", 0, 1e12)][-1] == at + 1
            assert store.integrity_check() == "ok"
        finally:
            reader.close()
            store.close()


def test_a_filled_history_volume_recovers_once_freed_and_loses_nothing_uncounted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file takes the free space: writes fail and are counted, results wait, and all land once it is deleted."""
    need_root()
    monkeypatch.setattr(history_module, "RETRY_SECONDS", 0.1)
    targets = sites()
    with small_volume(tmp_path / "state", "2m") as state:
        path = database_path(state)
        sink = HistorySink(lambda: SqliteStore(path), KEEP_ALL)
        sent = 0
        try:
            for i in range(100):
                sink.consume(cycle(targets, float(i)))
                sent += SITES
                time.sleep(0.001)
            wait_for(lambda: sink.stats.written == sent, timeout=30)
            filler = fill(state)
            at = 100.0
            while sink.stats.errors["write"] == 0:  # probing goes on; the file has to grow and cannot
                sink.consume(cycle(targets, at))
                sent += SITES
                at += 1
                time.sleep(0.005)
                assert at < 5000, "the full disk never failed a write"
            for _ in range(20):
                sink.consume(cycle(targets, at))
                sent += SITES
                at += 1
            wait_for(lambda: sum(sink.stats.errors.values()) >= 3)  # writes (or reopening) fail, and are counted
            assert sink.stats.written < sent
            filler.unlink()
            wait_for(lambda: sink.stats.pending == 0, timeout=30)
        finally:
            sink.close()
        stats = sink.stats
        assert stats.written + stats.dropped + stats.set_aside == sent
        assert stats.dropped == 0 and stats.set_aside == 0
        store = SqliteStore(path, read_only=True)
        try:
            stored = sum(len(list(store.icmp_cycles(t.name, 0, 1e12))) for t in targets)
            assert stored == stats.written == sent
            assert store.integrity_check() == "ok"
        finally:
            store.close()


# ----------------------------------------------------------------------------- the agent's spool, 1 MB
def spooled(seq: int) -> dict[str, Any]:
    """An agent's ICMP result as it waits in the spool (five echoes)."""
    return encode_icmp(seq, icmp(target("school-001"), 1_700_000_000.0 + seq, *RTTS))


def test_a_1_mb_volume_holds_a_working_spool_for_many_checkpoint_periods(tmp_path: Path) -> None:
    """Two results a cycle, acknowledged every ten cycles, 5,000 cycles: every result numbered and the log small."""
    need_root()
    with small_volume(tmp_path / "state", "1m") as state:
        spool = Spool.open(state)
        path = state / FILE_NAME
        restarts: set[int] = set()
        biggest = 0
        try:
            numbered = []
            for i in range(5000):
                numbered += [spool.append(spooled), spool.append(spooled)]
                if i % 10 == 9:
                    spool.acknowledge(numbered[-1])
                biggest = max(biggest, log_bytes(path))
                restarts.add(log_restarts(path))
            assert numbered == list(range(1, 10_001))
            assert len(spool) == 0 and spool.dropped == 0
            assert len(restarts) >= 50, restarts
            assert biggest <= spool_module.LOG_BOUNDS.limit_bytes
        finally:
            spool.close()


def test_a_filled_spool_volume_fails_without_numbering_and_recovers_once_freed(tmp_path: Path) -> None:
    """A file takes the free space: appends fail once the spool's own log is freed and the file cannot grow,
    no number is used by a failed append, and every numbered result is still there once the space returns."""
    need_root()
    with small_volume(tmp_path / "state", "1m") as state:
        spool = Spool.open(state)
        try:
            for _ in range(500):
                spool.append(spooled)
            spool.acknowledge(400)  # the centre had those: free pages in the file
            filler = fill(state)
            numbered = list(range(401, 501))
            failures = 0
            for _ in range(20_000):  # the centre is away: the spool has to grow, and cannot for ever
                try:
                    numbered.append(spool.append(spooled))
                except sqlite3.OperationalError as err:
                    assert "full" in str(err)
                    failures += 1
                    if failures == 5:
                        break
            assert failures == 5, "the full disk never failed an append"
            assert [seq for seq, _ in spool.oldest(100_000)] == numbered  # nothing numbered is missing
            filler.unlink()
            for _ in range(50):
                numbered.append(spool.append(spooled))
            assert numbered == list(range(401, numbered[-1] + 1))  # a failed append used no number
            assert [seq for seq, _ in spool.oldest(100_000)] == numbered and spool.dropped == 0
            assert spool.acknowledge(numbered[-1]) == len(numbered)
            for i in range(3000):  # and it works again, for many checkpoint periods
                numbered.append(spool.append(spooled))
                if i % 10 == 9:
                    spool.acknowledge(numbered[-1])
            assert numbered == list(range(401, numbered[-1] + 1)) and spool.dropped == 0
        finally:
            spool.close()
