"""Corrupt and unwritable SQLite files (issue 25): a corrupt history or spool is moved aside with its -wal and -shm,
a fresh one is used, one ERROR line names both files and the fix, and the count is in /metrics; a file that may
not be written is named with the user and the fix.

Daemons probe loopback addresses only and listen on 127.0.0.1 (ports 19993-19994).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from monitor.agent.site.spool import Spool
from monitor.history.sqlite import SqliteStore, database_path
from monitor.sqlite_files import Unwritable, corrupt_name, move_aside
from tests.conftest import need_root
from tests.factories import ONE_LOOPBACK_SITE, SOME_TIME, icmp, target, write_config
from tests.netlab import child_env
from tests.running import request, samples

HOST = "127.0.0.1"
PORT = 19993  # this module's range: 19993-19994
SITES = ONE_LOOPBACK_SITE


def real_history(path: Path) -> bytes:
    """A sound history of a few hundred pages at ``path``; its bytes."""
    store = SqliteStore(path)
    t = target("old-site")
    store.write([], [icmp(t, SOME_TIME + i * 60.0, 0.01, 0.02, None) for i in range(5000)])
    store.close()  # the last connection checkpoints the log into the file
    return path.read_bytes()


def truncated(path: Path) -> None:
    data = real_history(path)
    path.write_bytes(data[: len(data) // 3])


def garbage_header(path: Path) -> None:
    data = real_history(path)
    path.write_bytes(b"\xde\xad\xbe\xef" * 25 + data[100:])


def text_file(path: Path) -> None:
    path.write_text("this is not a database\n" * 200, encoding="utf-8")
    Path(f"{path}-wal").write_bytes(b"\x00garbage log\x00" * 10)  # a companion goes with it


CORRUPTIONS: dict[str, Callable[[Path], None]] = {"truncated": truncated, "garbage-header": garbage_header,
                                                   "text-file": text_file}


def scrape(port: int) -> dict:
    try:
        status, _headers, text = request(f"http://{HOST}:{port}/metrics")
    except OSError:
        return {}
    return samples(text) if status == 200 else {}


def metric(parsed: dict, name: str) -> float:
    series = parsed.get(name, {})
    return next(iter(series.values())) if series else -1.0


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_history_at_start_is_moved_aside_and_a_fresh_one_written(tmp_path: Path, kind: str) -> None:
    """A truncated, garbage-headed or non-database history at start-up is moved aside unchanged (with its -wal),
    one ERROR line names both files, the count is 1 and the results are written to a fresh file."""
    need_root()
    state = tmp_path / "state"
    state.mkdir()
    history = database_path(state)
    CORRUPTIONS[kind](history)
    original = history.read_bytes()
    wal = Path(f"{history}-wal")
    original_wal = wal.read_bytes() if wal.exists() else None
    cfg = write_config(tmp_path, SITES)
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg), "--listen",
                             f"{HOST}:{PORT}", "--state-dir", str(state)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        parsed: dict = {}
        deadline = time.monotonic() + 60
        while not (metric(parsed, "connmon_store_corrupt_files_total") == 1
                   and metric(parsed, "connmon_store_results_written_total") >= 2):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"not recovered: {parsed.get('connmon_store_errors_total')}"
            time.sleep(0.2)
            parsed = scrape(PORT)
        assert metric(parsed, "connmon_store_corrupt_files_total") == 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _out, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-3000:]
    moved = sorted(p for p in state.iterdir() if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm")))
    assert len(moved) == 1, sorted(p.name for p in state.iterdir())
    assert moved[0].read_bytes() == original  # nothing overwritten, nothing changed
    if original_wal is not None:
        assert Path(f"{moved[0]}-wal").read_bytes() == original_wal
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert str(history) in errors[0] and str(moved[0]) in errors[0] and "recover" in errors[0], errors[0]
    with contextlib.closing(sqlite3.connect(history)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT count(*) FROM icmp i JOIN endpoints e ON e.id = i.endpoint_id "
                          "WHERE e.name = 'a'").fetchone()[0]
    assert rows >= 2


def test_a_sound_history_is_left_where_it_is(tmp_path: Path) -> None:
    """A sound file is opened in place: nothing moved, the store says nothing was moved."""
    path = tmp_path / "history.sqlite3"
    real_history(path)
    store = SqliteStore(path, recover=True)
    try:
        assert store.moved_aside is None
        assert store.integrity_check() == "ok"
    finally:
        store.close()
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name] == []


def test_a_name_in_use_is_never_overwritten(tmp_path: Path) -> None:
    """Two corrupt files moved aside within one second get different names; neither is lost."""
    path = tmp_path / "history.sqlite3"
    path.write_text("first\n")
    first = move_aside(path, SOME_TIME)
    path.write_text("second\n")
    assert corrupt_name(path, SOME_TIME) != first
    second = move_aside(path, SOME_TIME)
    assert first.read_text() == "first\n" and second.read_text() == "second\n"
    assert first.name == "history.sqlite3.corrupt-20231114T221320Z" and second.name.startswith(first.name + "-")


def test_a_corrupt_spool_is_moved_aside_and_a_fresh_one_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The agent's spool: a file that is not a database is moved aside, said once, and a fresh spool numbers from 1."""
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"SQLite format 2\x00" + b"\x07" * 4000)
    original = path.read_bytes()
    with caplog.at_level(logging.ERROR):
        spool = Spool.open(tmp_path)
    try:
        assert spool.moved_aside is not None and spool.moved_aside.read_bytes() == original
        assert spool.append(lambda seq: {"seq": seq}) == 1
        assert spool.oldest(10) == [(1, {"seq": 1})]
    finally:
        spool.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and str(spool.moved_aside) in errors[0], errors


def without_dac(*argv: str) -> list[str]:
    """``argv`` as root without CAP_DAC_OVERRIDE: file modes then bind root as they bind any user."""
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]


def test_a_read_only_history_file_is_named_with_the_fix(tmp_path: Path) -> None:
    """A history file the daemon's user may not write: the writer's log names the file, the user and chown/chmod."""
    need_root()
    state = tmp_path / "state"
    state.mkdir()
    history = database_path(state)
    real_history(history)
    history.chmod(0o444)
    script = ("import logging, time\n"
              "logging.basicConfig(level=logging.ERROR, format='%(levelname)s %(message)s')\n"
              "from monitor.history.store_url import opener\n"
              "from monitor.history.writer import HistorySink\n"
              "from tests.factories import KEEP_ALL, target\n"
              f"sink = HistorySink(opener(None, {str(state)!r}, recover=True), KEEP_ALL)\n"
              "sink.set_targets([target('a')])\n"
              "time.sleep(1.0)\n"
              "sink.close(1.0)\n")
    proc = subprocess.run(without_dac(sys.executable, "-c", script), capture_output=True, text=True, timeout=60,
                          check=False, env=child_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = [line for line in proc.stderr.splitlines() if "history: open failed" in line]
    assert len(failed) == 1, proc.stderr[-3000:]
    assert f"cannot write {history}" in failed[0] and "connmon runs as root (uid 0)" in failed[0], failed[0]
    assert f"chown root {history}*" in failed[0] and "chmod u+rw" in failed[0], failed[0]
    assert history.stat().st_mode & 0o777 == 0o444  # nothing was moved or changed: it is not corrupt
    assert [p.name for p in state.iterdir() if ".corrupt-" in p.name] == []


def test_a_read_only_mount_is_named_with_the_fix(tmp_path: Path) -> None:
    """A state directory on a read-only mount: the error names the file and says to remount it read-write."""
    need_root()
    state = tmp_path / "state"
    state.mkdir()
    real_history(database_path(state))
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        with pytest.raises(Unwritable) as caught:
            SqliteStore(database_path(state), recover=True)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
    assert str(database_path(state)) in str(caught.value) and "mounted read-only" in str(caught.value)
    assert isinstance(caught.value, sqlite3.OperationalError)  # still a store fault for the writer
