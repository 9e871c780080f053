"""The history in a running daemon: SIGKILL mid-write and restart (database intact, figures restored).

Real ``connmon run`` processes in the prober namespace, a real iperf3 server in a site namespace
shaped to 10 Mbit/s, and a real SQLite file that the test opens between runs.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from monitor.history.sqlite import database_path
from tests.conftest import need
from tests.factories import write_config
from tests.netlab import Lab, can_measure_throughput, child_env
from tests.running import one, scrape

PORT = 9161


@contextlib.contextmanager
def daemon(lab: Lab, cfg: Path, state: Path, port: int = PORT) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        lab.connmon_argv("run", "--config", str(cfg), "--listen", f"{lab.prober_v4}:{port}", "--state-dir",
                         str(state)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr is not None and not proc.stderr.closed:  # a test may have read it already
            proc.communicate(timeout=30)


def integrity(state: Path) -> str:
    with contextlib.closing(sqlite3.connect(database_path(state))) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def journal_mode(state: Path) -> str:
    with contextlib.closing(sqlite3.connect(database_path(state))) as db:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])


def test_sigkill_and_restart_restore_the_last_test(lab: Lab, tmp_path: Path) -> None:
    """After kill -9, the restarted daemon shows the last rate and its original test time before any new test."""
    ok, reason = can_measure_throughput()
    need(ok, reason)
    site = lab.add_site("hist-a")
    site.shape(10, 10)
    site.start_iperf3()
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 2, spacing: 100ms, timeout: 500ms}}
  throughput: {{method: iperf3, every: 30s, duration: 1s, omit: 0s, timeout: 3s, directions: [download]}}
groups:
  - name: schools
    kind: school
    district: Aktobe
    endpoints:
      - {{name: a, host: {site.v4}, link: fibre}}
""")
    state = tmp_path / "state"
    try:
        with daemon(lab, cfg, state) as proc:
            before: dict = {}
            for _ in range(200):  # the first test starts within `every` (its phase), then is written
                before = scrape(lab, PORT)
                if (one(before, "connmon_throughput_tests_total") or 0) >= 1 \
                        and (one(before, "connmon_store_results_written_total") or 0) >= 5:
                    break
                assert proc.poll() is None
                time.sleep(0.25)
            rate = one(before, "connmon_throughput_bits_per_second", direction="download")
            tested_at = one(before, "connmon_throughput_last_test_timestamp_seconds")
            assert rate is not None and 8e6 < rate < 11e6 and tested_at is not None
            for _ in range(100):  # the test's row is written: nothing waits
                if one(scrape(lab, PORT), "connmon_store_pending_results") == 0:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert integrity(state) == "ok"
        with daemon(lab, cfg, state) as proc:
            after: dict = {}
            for _ in range(120):
                after = scrape(lab, PORT)
                if after:
                    break
                assert proc.poll() is None
                time.sleep(0.1)
            assert one(after, "connmon_throughput_tests_total") == 0  # no new test yet: these are restored
            assert one(after, "connmon_throughput_bits_per_second", direction="download") == rate
            assert one(after, "connmon_throughput_last_test_timestamp_seconds") == tested_at
            assert one(after, "connmon_target_met") == 1
            assert one(after, "connmon_target_missed_consecutive_tests") == 0
            assert one(after, "connmon_store_errors_total", operation="restore") == 0
    finally:
        site.stop_servers()


def test_kill_9_mid_write_never_damages_the_database(lab: Lab, tmp_path: Path) -> None:
    """300 endpoints answered every second, killed at random moments five times: the file stays intact and
    in WAL mode, nothing written is lost, every stored cycle is whole (a transaction is all or nothing),
    and at most the cycle in flight is lost: read from /metrics just before the kill, every cycle that
    had finished but the last is stored (counted exactly), so the newest stored cycle started no more
    than an interval before the last finished one (plus the scheduler's start jitter)."""
    need(can_measure_throughput()[0], "needs namespaces")
    site = lab.add_site("hist-b")
    endpoints = "\n".join(f"      - {{name: e{i:03d}, host: {site.v4}}}" for i in range(300))
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 1, timeout: 500ms}}
groups:
  - name: many
    endpoints:
{endpoints}
""")
    state = tmp_path / "state"
    rng = random.Random(5)
    stored = cycles = 0
    interval = 1.0
    for _round in range(5):
        with daemon(lab, cfg, state, PORT + 1) as proc:
            for _ in range(200):
                parsed = scrape(lab, PORT + 1)
                if (one(parsed, "connmon_store_results_written_total") or 0) >= 300:
                    break
                assert proc.poll() is None
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the next cycles and their writes
            last = scrape(lab, PORT + 1)  # what had finished just before the kill
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert integrity(state) == "ok"
        assert journal_mode(state) == "wal"
        finished = one(last, "connmon_cycle_duration_seconds_count", probe="icmp")
        last_started = max(v for k, v in last.get("connmon_last_probe_timestamp_seconds", {}).items()
                           if ("probe", "icmp") in k)
        skipped = one(last, "connmon_cycles_skipped_total", probe="icmp")
        assert finished is not None and finished >= 1 and skipped == 0, (finished, skipped)
        with contextlib.closing(sqlite3.connect(database_path(state))) as db:
            rows = db.execute("SELECT COUNT(*) FROM icmp").fetchone()[0]
            per_cycle = {n for (n,) in db.execute("SELECT COUNT(*) FROM icmp GROUP BY started_at")}
            newest = db.execute("SELECT MAX(started_at) FROM icmp").fetchone()[0]
        assert rows >= stored + 300  # this round wrote at least one cycle, and nothing earlier went
        assert per_cycle == {300}, per_cycle
        assert rows // 300 - cycles >= finished - 1, (rows // 300 - cycles, finished)  # lost: the one in flight
        # cycles start on a fixed grid, each up to a fraction of the interval late: allow half an interval
        assert newest >= last_started - 1.5 * interval, (last_started - newest)
        stored, cycles = rows, rows // 300


def test_a_read_only_state_dir_keeps_probing_and_metrics_going(lab: Lab, tmp_path: Path) -> None:
    """A daemon whose state dir is read-only probes, serves /metrics, counts the store errors, and
    says so in the log once (not once per cycle)."""
    need(can_measure_throughput()[0], "needs namespaces")
    site = lab.add_site("hist-c")
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 1, timeout: 500ms}}
groups:
  - name: g
    endpoints:
      - {{name: a, host: {site.v4}}}
""")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(state)], check=True)
        with daemon(lab, cfg, state, PORT + 2) as proc:
            parsed: dict = {}
            for _ in range(200):
                parsed = scrape(lab, PORT + 2)
                if (one(parsed, "connmon_icmp_packets_sent_total") or 0) >= 5 \
                        and (one(parsed, "connmon_store_errors_total", operation="open") or 0) >= 2:
                    break
                assert proc.poll() is None
                time.sleep(0.1)
            assert one(parsed, "connmon_up") == 1
            assert (one(parsed, "connmon_store_errors_total", operation="open") or 0) >= 2
            assert (one(parsed, "connmon_store_pending_results") or 0) >= 1
            assert one(parsed, "connmon_store_results_written_total") == 0
            proc.terminate()
            _out, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert stderr.count("history: open failed") == 1, stderr[-3000:]
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
