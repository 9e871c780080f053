"""The agent's spool: real SQLite files in temporary directories, reopened as a restarted agent would."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from monitor.agent.site.spool import FILE_NAME, Spool

REPO = Path(__file__).resolve().parent.parent


def item(seq: int) -> dict[str, object]:
    return {"seq": seq, "type": "icmp", "note": f"result {seq}"}


def test_results_come_back_oldest_first_numbered_from_one(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "state")
    assert [spool.append(item) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert [seq for seq, _ in spool.oldest(3)] == [1, 2, 3]
    assert spool.oldest(10)[4] == (5, item(5))
    assert len(spool) == 5 and spool.dropped == 0
    assert (tmp_path / "state" / FILE_NAME).stat().st_mode & 0o077 == 0


def test_acknowledged_results_are_forgotten_and_numbers_never_go_back(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path)
    for _ in range(4):
        spool.append(item)
    assert spool.acknowledge(3) == 3
    assert [seq for seq, _ in spool.oldest(10)] == [4]
    assert spool.acknowledge(4) == 1 and len(spool) == 0
    assert spool.append(item) == 5  # empty, yet the next number follows on
    assert spool.dropped == 0  # acknowledged is not dropped


def test_beyond_the_cap_the_oldest_are_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_results=10)
    for _ in range(25):
        spool.append(item)
    assert len(spool) == 10
    assert [seq for seq, _ in spool.oldest(100)] == list(range(16, 26))
    assert spool.dropped == 15
    assert spool.drop_through(18) == 3  # a batch given up on counts as dropped too
    assert spool.dropped == 18 and spool.oldest(1)[0][0] == 19


def test_a_restart_keeps_instance_numbers_results_and_the_dropped_count(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_results=3)
    instance = spool.instance
    for _ in range(5):
        spool.append(item)
    spool.close()
    again = Spool.open(tmp_path, max_results=3)
    assert again.instance == instance and len(instance) == 32
    assert again.dropped == 2 and [seq for seq, _ in again.oldest(10)] == [3, 4, 5]
    assert again.append(item) == 6
    assert Spool.open(tmp_path / "other").instance != instance  # a new installation is a new instance


_WRITER = """
import sys
from monitor.agent.site.spool import Spool
spool = Spool.open(sys.argv[1], max_results=1000)
print("ready", flush=True)
while True:
    spool.append(lambda seq: {"seq": seq, "pad": "x" * 2000})
"""


def test_kill_9_while_writing_loses_nothing_committed(tmp_path: Path) -> None:
    """A writer killed mid-stream leaves a consistent spool: contiguous numbers, whole results, the next number."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until it has written past the cap at least once
        with sqlite3.connect(tmp_path / FILE_NAME, timeout=10) as db:
            if int(db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0]) > 1500:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    spool = Spool.open(tmp_path, max_results=1000)
    seqs = [seq for seq, _ in spool.oldest(2000)]
    assert len(seqs) == 1000 and seqs == list(range(seqs[0], seqs[0] + 1000))
    assert all(body == {"seq": seq, "pad": "x" * 2000} for seq, body in spool.oldest(2000))
    assert spool.next_seq == seqs[-1] + 1
    assert spool.dropped == seqs[0] - 1
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
