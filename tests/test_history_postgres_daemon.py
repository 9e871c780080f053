"""Two sharded daemons writing to one PostgreSQL history report the same as one daemon on its own SQLite.

Real ``connmon run`` processes in the prober namespace; the PostgreSQL server listens on a Unix
socket in a temporary directory, which the namespace reaches as a path. Sites: six that answer
every echo (availability 100%, loss 0%) and two that drop every echo request (0%, 100%), of
two kinds and districts, so every compared figure is known whatever the cycles' timing.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from monitor.history.postgres import PostgresStore
from monitor.history.store import EndpointRecord
from monitor.shard import owner
from monitor.throughput_plan import phase
from tests.conftest import need
from tests.factories import iperf3_test, throughput_target, write_config
from tests.netlab import Lab, can_make_namespaces, child_env
from tests.postgres import PgCluster, PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.running import one, scrape

PORT = 9171
LATE_PORT = 19510
NAMES = [f"site{i}" for i in range(8)]
DROPPING = {"site2", "site5"}
COMPARED = ("site", "kind", "district", "link", "target_mbps", "availability_percent", "loss_percent", "verdict")


@contextlib.contextmanager
def daemon(lab: Lab, cfg: Path, port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(lab.connmon_argv("run", "--config", str(cfg), "--listen", f"{lab.prober_v4}:{port}",
                                             *extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)


def report(*args: str) -> list[dict[str, str]]:
    today = dt.datetime.now(dt.UTC).date()
    proc = subprocess.run([sys.executable, "-m", "monitor", "report", "--from", str(today - dt.timedelta(days=1)),
                           "--to", str(today + dt.timedelta(days=1)), "--timezone", "UTC", "--format", "csv", *args],
                          capture_output=True, text=True, timeout=120, check=False, env=child_env())
    assert proc.returncode == 0, proc.stderr
    sites, kpis = proc.stdout.split("\n\n")  # the site table, then the KPI table
    assert kpis.startswith("kpi_scope,")
    return [{k: row[k] for k in COMPARED} for row in csv.DictReader(io.StringIO(sites))]


def test_two_shards_into_one_postgres_report_as_one_instance(lab: Lab, tmp_path: Path,
                                                              pg_url: str) -> None:  # noqa: F811
    """``--shard 0/2`` and ``--shard 1/2`` writing to one PostgreSQL give, site for site, the report of
    one unsharded daemon that probed every site into its own SQLite store over the same time."""
    need(can_make_namespaces()[0], "needs namespaces")
    shares = {name: owner(name, 2) for name in NAMES}
    assert set(shares.values()) == {0, 1}, shares  # both shards have sites, so both write
    sites = {name: lab.add_site(f"pg{i}") for i, name in enumerate(NAMES)}
    for name in DROPPING:
        sites[name].drop_icmp()
    groups: dict[str, list[str]] = {"clinic": [], "school": []}
    for i, (name, site) in enumerate(sites.items()):
        kind, district = ("school", "Aktobe") if i % 2 else ("clinic", "Khromtau")
        groups[kind].append(f"      - {{name: {name}, host: {site.v4}, district: {district}, link: fibre}}")
    body = "".join(f"  - name: {kind}s\n    kind: {kind}\n    endpoints:\n" + "\n".join(lines) + "\n"
                   for kind, lines in groups.items())
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 2, spacing: 50ms, timeout: 300ms}}
groups:
{body}""")
    own_state = tmp_path / "own"
    with daemon(lab, cfg, PORT, "--shard", "0/2", "--store", pg_url) as first, \
            daemon(lab, cfg, PORT + 1, "--shard", "1/2", "--store", pg_url) as second, \
            daemon(lab, cfg, PORT + 2, "--state-dir", str(own_state)) as whole:
        wanted = {PORT: 3 * list(shares.values()).count(0), PORT + 1: 3 * list(shares.values()).count(1),
                  PORT + 2: 3 * len(NAMES)}
        for _ in range(300):
            written = {port: one(scrape(lab, port), "connmon_store_results_written_total") or 0 for port in wanted}
            if all(written[p] >= wanted[p] for p in wanted):
                break
            assert first.poll() is None and second.poll() is None and whole.poll() is None
            time.sleep(0.1)
        else:
            raise AssertionError(f"not enough written: {written}")
        for port in wanted:
            assert one(scrape(lab, port), "connmon_store_errors_total", operation="write") == 0
    shared = report("--store", pg_url)
    alone = report("--state-dir", str(own_state))
    assert shared == alone
    assert [r["site"] for r in shared] and {r["site"] for r in shared} == set(NAMES)
    for row in shared:
        dropping = row["site"] in DROPPING
        assert (row["availability_percent"], row["loss_percent"]) == (
            ("0.0000", "100.0000") if dropping else ("100.0000", "0.0000")), row
        assert (row["kind"], row["district"]) == (("school", "Aktobe") if int(row["site"][-1]) % 2
                                                   else ("clinic", "Khromtau"))


def test_an_unreachable_postgres_keeps_probing(lab: Lab, tmp_path: Path) -> None:
    """A daemon whose --store cannot be reached probes and serves /metrics, counting open errors."""
    need(can_make_namespaces()[0], "needs namespaces")
    site = lab.add_site("pg-gone")
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 1, timeout: 300ms}}
groups:
  - name: g
    endpoints:
      - {{name: a, host: {site.v4}}}
""")
    url = f"postgresql://connmon:s3cret@/h?host={tmp_path}/nobody-here&connect_timeout=1"
    with daemon(lab, cfg, PORT + 3, "--store", url) as proc:
        parsed: dict = {}
        for _ in range(300):
            parsed = scrape(lab, PORT + 3)
            if (one(parsed, "connmon_icmp_packets_sent_total") or 0) >= 3 \
                    and (one(parsed, "connmon_store_errors_total", operation="open") or 0) >= 1:
                break
            assert proc.poll() is None
            time.sleep(0.1)
        assert one(parsed, "connmon_up") == 1
        assert (one(parsed, "connmon_store_errors_total", operation="open") or 0) >= 1
        proc.terminate()
        _out, stderr = proc.communicate(timeout=30)
    assert "s3cret" not in stderr, stderr[-2000:]


def test_a_postgres_that_answers_late_gets_the_backlog_and_restores(lab: Lab, tmp_path: Path) -> None:
    """A daemon started while its PostgreSQL server is down probes and serves /metrics at once, counts the
    failed opens and keeps its results; once the server is up, the last test is restored from it and
    every result kept meanwhile is written (the cycles from before the server started are there)."""
    need(can_make_namespaces()[0], "needs namespaces")
    site = lab.add_site("pg-late")
    name = "pgwait"
    assert phase(name) > 0.5  # its first own test is over 12 h away: the rate shown can only be the restored one
    cluster = PgCluster.create()
    try:
        cluster.start()
        url = cluster.server.url("postgres")
        tested_at = time.time() - 600
        seeded = PostgresStore(url)
        seeded.write([EndpointRecord.of(throughput_target(name))],
                     [iperf3_test(throughput_target(name), tested_at, 5e6)])
        seeded.close()
        cluster.stop()
        cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 1, timeout: 300ms}}
  throughput: {{method: iperf3, every: 24h, duration: 1s, omit: 0s, timeout: 3s, directions: [download]}}
groups:
  - name: g
    endpoints:
      - {{name: {name}, host: {site.v4}}}
""")
        with daemon(lab, cfg, LATE_PORT, "--store", url) as proc:
            down: dict = {}
            for _ in range(300):  # at once: probing, /metrics, open errors counted, results kept
                down = scrape(lab, LATE_PORT)
                if (one(down, "connmon_icmp_packets_sent_total") or 0) >= 3 \
                        and (one(down, "connmon_store_errors_total", operation="open") or 0) >= 1 \
                        and (one(down, "connmon_store_pending_results") or 0) >= 3:
                    break
                assert proc.poll() is None
                time.sleep(0.1)
            else:
                raise AssertionError(f"the daemon did not go on without its store: {down}")
            assert one(down, "connmon_store_results_written_total") == 0
            assert one(down, "connmon_throughput_bits_per_second", direction="download") is None
            assert lab.get(LATE_PORT, "/-/ready")[0] == 200
            server_up_at = time.time()
            cluster.start()
            up: dict = {}
            for _ in range(600):  # the writer retries every 10 s
                up = scrape(lab, LATE_PORT)
                if one(up, "connmon_throughput_bits_per_second", direction="download") is not None \
                        and one(up, "connmon_store_pending_results") == 0:
                    break
                assert proc.poll() is None
                time.sleep(0.1)
            else:
                raise AssertionError(f"nothing restored or written once the server was up: {up}")
            assert one(up, "connmon_throughput_bits_per_second", direction="download") == 5e6
            assert one(up, "connmon_throughput_last_test_timestamp_seconds") == tested_at
            assert one(up, "connmon_throughput_tests_total") == 0
            assert one(up, "connmon_store_errors_total", operation="restore") == 0
            written = one(up, "connmon_store_results_written_total") or 0
            proc.terminate()
            _out, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr[-2000:]
        assert stderr.count("history: open failed") == 1, stderr[-3000:]  # the tries, said once a minute
        assert "restored the last throughput test of 1 endpoints" in stderr, stderr[-3000:]
        reader = PostgresStore(url, read_only=True)
        try:
            early = list(reader.icmp_cycles(name, 0, server_up_at))
            assert len(early) >= 3 and len(list(reader.icmp_cycles(name, 0, time.time() + 1))) >= written
        finally:
            reader.close()
    finally:
        cluster.remove()
