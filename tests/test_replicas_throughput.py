"""One throughput test per site with replicas, through a kill -9 (issue 19): real daemons, iperf3 and PostgreSQL.

Three ``connmon run`` with ``--shard I/3 --replicas 2`` share one PostgreSQL history; four sites in
their own namespaces run real ``iperf3 -s``. Every site is pinged by two daemons, but its throughput
tests, as the shared history records them, never overlap and are never closer than the site's
``every``: one test per period, not two. Then the daemon that leads the most sites is killed with
SIGKILL (no clean hand-over): its sites' tests move to their second replica once its lease has
expired, and still never come closer than ``every`` to the last stored one.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import psycopg

from monitor.shard import ranking
from monitor.throughput_plan import SLOT_GRACE_SECONDS
from tests.conftest import need
from tests.factories import write_config
from tests.netlab import Lab, can_measure_throughput
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.running import one, running_daemon, scrape

PORT = 19950
EVERY = 10.0
LEASE = 4.0
NAMES = [f"tput{i}" for i in range(4)]


def stored_tests(url: str) -> dict[str, list[tuple[float, float, str | None]]]:
    """Each site's stored throughput tests: (start, end, error), oldest first."""
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('throughput')").fetchone() == (None,):
            return {}  # not created yet: the writers migrate at their first write
        rows = conn.execute("SELECT e.name, t.started_at, t.ended_at, t.error FROM throughput t "
                            "JOIN endpoints e ON e.id = t.endpoint_id ORDER BY t.started_at").fetchall()
    out: dict[str, list[tuple[float, float, str | None]]] = {}
    for name, start, end, error in rows:
        out.setdefault(name, []).append((float(start), float(end), error))
    return out


def test_replicas_run_one_test_per_period_and_take_over_a_killed_ones_sites(
        lab: Lab, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    ok, reason = can_measure_throughput()
    need(ok, reason)
    sites = {name: lab.add_site(f"rt{i}") for i, name in enumerate(NAMES)}
    for site in sites.values():
        site.shape(20, 20)
        site.start_iperf3()
    lines = "\n".join(f"      - {{name: {name}, host: {site.v4}, link: fibre}}" for name, site in sites.items())
    cfg = write_config(tmp_path, f"""
throughput: {{max_concurrent: 4}}
defaults:
  icmp: {{interval: 1s, count: 2, spacing: 50ms, timeout: 300ms}}
  throughput: {{method: iperf3, every: {EVERY:g}s, duration: 1s, omit: 0s, timeout: 4s, directions: [download]}}
groups:
  - name: schools
    kind: school
    district: Aktobe
    endpoints:
{lines}
""")
    leaders = {name: ranking(name, 3)[0] for name in NAMES}
    victim = max(range(3), key=lambda i: (sum(1 for v in leaders.values() if v == i), -i))
    moved = [n for n in NAMES if leaders[n] == victim]
    assert moved
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(running_daemon(lab, cfg, PORT + i, "--state-dir", str(tmp_path / f"state{i}"),
                                                    "--shard", f"{i}/3", "--replicas", "2",
                                                    "--replicas.lease", f"{LEASE:g}s", "--store", pg_url))
                 for i in range(3)]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # every site tested twice, all daemons up
            assert all(p.poll() is None for p in procs), [p.stderr.read() if p.stderr else "" for p in procs
                                                          if p.poll() is not None]
            tested = stored_tests(pg_url)
            if all(len(tested.get(n, [])) >= 2 for n in NAMES):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"tests not stored: {stored_tests(pg_url)}")
        # the follower catches up: its series show the tester's tests (read back from the shared history every
        # two leases), not only what it restored at start-up
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            tested = stored_tests(pg_url)
            shown = {(n, i): one(scrape(lab, PORT + i), "connmon_throughput_last_test_timestamp_seconds",
                                 endpoint=n) for n in NAMES for i in ranking(n, 3)[:2]}
            if all(v is not None and v >= sorted(s for s, _e, _r in tested[n])[-2] for (n, _i), v in shown.items()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"followers did not catch up: {shown} {tested}")
        # the replicas ping: each site's ICMP cycles come from two daemons
        for name in NAMES:
            pinging = [i for i in range(3) if one(scrape(lab, PORT + i), "connmon_up", endpoint=name)
                       is not None]
            assert sorted(pinging) == sorted(ranking(name, 3)[:2]), (name, pinging)
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(timeout=10)
        killed_at = time.time()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # each moved site tested twice after the kill by its second replica
            tested = stored_tests(pg_url)
            if all(sum(1 for s, _e, _r in tested.get(n, []) if s > killed_at) >= 2 for n in NAMES):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"not taken over: {stored_tests(pg_url)}")
    tested = stored_tests(pg_url)
    waits = []
    for name, tests in tested.items():
        starts = [s for s, _e, _r in tests]
        for (s1, e1, _), (s2, _e2, _) in zip(tests, tests[1:], strict=False):
            assert s2 >= e1, (name, tests)  # never two at once
            assert s2 - s1 >= EVERY - 0.01, (name, tests)  # one per period, whoever ran it
        if name in moved:
            before = max(s for s in starts if s <= killed_at)
            after = min(s for s in starts if s > killed_at)
            waits.append(after - before)
    # the take-over: within a period of the last test, or a lease and a follower's recheck, or, when the killed one
    # was testing the site, the region slot of its test (the test's bound and the grace: SLOT_GRACE_SECONDS)
    assert waits and all(w <= EVERY + LEASE * 1.5 + SLOT_GRACE_SECONDS + 15 for w in waits), (
        waits, killed_at, {n: tested[n] for n in moved})
    print(f"\nthroughput take-over after kill -9: gaps between tests of the moved sites {sorted(waits)} s "
          f"(every {EVERY:g}s, lease {LEASE:g}s)")
