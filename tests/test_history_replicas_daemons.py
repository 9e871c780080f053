"""Replicas into one PostgreSQL history through a kill -9 (issue 19): real daemons on loopback, the merged read.

Three ``connmon run --shard I/3 --replicas 2 --store postgresql://…`` ping six sites on 127.0.19.0/24
(loopback answers every address in 127/8, so no traffic leaves the host) every 2 s. Each writes its
cycles under its shard index; one is killed with SIGKILL halfway. The history then holds, per site,
the rows of its two replicas (one of them stopping at the kill), and reads them as one stream: one
cycle per 2-s interval from the site's first row to its last, all up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from monitor.history.postgres import PostgresStore
from monitor.history.store import EndpointRecord
from monitor.report.compliance import Period, site_row
from monitor.report.kpis import DEFAULT_THRESHOLDS, Span, site_kpi
from monitor.shard import Shard
from tests.factories import write_config
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.running import one, request, samples, stop_process

PORT = 19600  # 19600-19602
INTERVAL = 2.0
NAMES = [f"rep{i}" for i in range(6)]


@contextlib.contextmanager
def daemon(cfg: Path, index: int, state: Path, pg_url: str) -> Iterator[subprocess.Popen[str]]:  # noqa: F811
    log = state.parent / f"stderr-{index}.log"
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(cfg), "--listen",
                                 f"127.0.0.1:{PORT + index}", "--state-dir", str(state), "--shard", f"{index}/3",
                                 "--replicas", "2", "--store", pg_url],
                                stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1",
                                     "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        yield proc
    finally:
        stop_process(proc)


def written(port: int) -> float:
    """The results the daemon on ``port`` has stored so far (0 while it does not answer)."""
    try:
        status, _, body = request(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except OSError:
        return 0.0
    return (one(samples(body), "connmon_store_results_written_total") or 0.0) if status == 200 else 0.0


def test_three_daemons_two_replicas_a_kill_and_one_stream_per_site(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    """Each site is written by its two replicas under their shard indexes; after one is killed its sites go on in
    the other's rows; read back, every site has one cycle per interval over its whole time, all up, half the rows."""
    owners = {name: sorted(i for i in range(3) if Shard(i, 3, 2).owns(name)) for name in NAMES}
    assert all(len(o) == 2 for o in owners.values()), owners
    sites = "\n".join(f"      - {{name: {name}, host: 127.0.19.{i + 1}, district: Aktobe, link: fibre}}"
                      for i, name in enumerate(NAMES))
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: {INTERVAL:g}s, count: 2, spacing: 50ms, timeout: 500ms}}
groups:
  - name: schools
    kind: school
    endpoints:
{sites}
""")
    # the instance that replicates the most sites dies: its sites must go on in their other replica's rows
    killed = max(range(3), key=lambda i: sum(i in o for o in owners.values()))
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(daemon(cfg, i, tmp_path / f"state{i}", pg_url)) for i in range(3)]
        for target in (4 * 2 * len(NAMES) / 3, 8 * 2 * len(NAMES) / 3):  # ~4 cycles per site, then ~8
            deadline = time.monotonic() + 120
            while min(written(PORT + i) for i in range(3)) < target:
                assert all(p.poll() is None for p in procs), [
                    (tmp_path / f"stderr-{i}.log").read_text(encoding="utf-8") for i in range(3)]
                assert time.monotonic() < deadline, [written(PORT + i) for i in range(3)]
                time.sleep(0.2)
        procs[killed].send_signal(signal.SIGKILL)
        procs[killed].wait()
        with psycopg.connect(pg_url) as conn:
            (killed_at,) = conn.execute("SELECT max(started_at) FROM icmp WHERE instance = %s",
                                        (str(killed),)).fetchone() or (None,)
        alive = [i for i in range(3) if i != killed]
        start = min(written(PORT + i) for i in alive)
        deadline = time.monotonic() + 120
        while min(written(PORT + i) for i in alive) < start + 8 * 2 * len(NAMES) / 3:  # ~8 more cycles per site
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert killed_at is not None
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT e.name, i.instance, count(*), min(i.started_at), max(i.started_at) FROM icmp i "
                            "JOIN endpoints e ON e.id = i.endpoint_id GROUP BY e.name, i.instance").fetchall()
    per_site: dict[str, dict[str, tuple[int, float, float]]] = {}
    for name, instance, count, first, last in rows:
        per_site.setdefault(name, {})[instance] = (count, first, last)
    assert {name: sorted(int(i) for i in found) for name, found in per_site.items()} == owners
    reader = PostgresStore(pg_url, read_only=True)
    try:
        for name in NAMES:
            found = per_site[name]
            first = min(f for _c, f, _l in found.values())
            last = max(end for _c, _f, end in found.values())
            intervals = round((last - first) / INTERVAL) + 1  # the site's time, one cycle an interval
            cycles = list(reader.icmp_cycles(name, first, last + 1))
            # one cycle per interval: a site-interval cut by the ends of the span, or by the kill, may count twice
            assert intervals - 1 <= len(cycles) <= intervals + 2, (name, len(cycles), intervals, found)
            assert all(c.received > 0 for c in cycles), name
            if killed in owners[name]:  # after the kill, the other replica's cycles stand alone, one per interval
                after = [c for c in cycles if c.started_at > killed_at + INTERVAL]
                assert len(after) >= round((last - killed_at) / INTERVAL) - 2, (name, len(after))
            record = EndpointRecord(name, "school", "Aktobe", "fibre", "schools", 0.0)
            days = Period(dt.datetime.fromtimestamp(first, dt.UTC).date(),
                          dt.datetime.fromtimestamp(last, dt.UTC).date(), "UTC")  # only this test's rows in them
            row = site_row(reader, record, days)
            kpi = site_kpi(reader, record, Span(days.start, days.end), None, DEFAULT_THRESHOLDS)
            assert row.cycles == row.cycles_up == kpi.cycles == kpi.cycles_up == len(cycles)
    finally:
        reader.close()
