"""Agents served by any instance (issue 19, point 5): two real ``connmon run`` on one real PostgreSQL.

Several instances behind one centre URL: an agent's posts reach whichever one a load balancer picks.
Their sequence positions, refused results, throughput slots and enrolled tokens live in the shared
PostgreSQL history, so

* a batch posted to both is stored once, and the second answers it as duplicates;
* a result refused (held) by one is refused again by the other, never called a duplicate;
* five agents asking both for a slot at once with ``max_concurrent: 1`` test one at a time;
* a token revoked through the store is refused (401) by both, within the token refresh.

The instances serve agent sites only, over loopback: they send no traffic anywhere. The agents are
the test itself, posting as :mod:`monitor.agent.site.upload` does (protocol version 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.centre.enrolment import is_code
from monitor.agent.centre.registry import token_hash
from monitor.agent.protocol import MAX_FUTURE_SKEW_SECONDS, PROTOCOL_HEADER, encode_throughput
from monitor.results import DirectionResult, ThroughputResult
from monitor.shard import owner
from tests.factories import target
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.running import request, stop_process

HOST = "127.0.0.1"
PORT = 19700
SITES = [f"vsat-{i}" for i in range(1, 6)]
TOKENS = {site: f"token-of-{site}" for site in [*SITES, "heard-1"]}
PERIOD = 20  # the agents' test period in the tests of due times: a slow answer on a loaded machine stays inside it
STALE_AFTER_SECONDS = 25  # heard-1's: beyond the contacts' refresh (5 s) and the instances' start-up


def config_text(max_concurrent: int = 1, own_site_port: int | None = None, agent_budget: str | None = None,
                agent_every: int = 10) -> str:
    """Agent sites only; with ``own_site_port``, also a site the centre tests itself (a web server on loopback)."""
    endpoints = "\n".join(f"      - {{name: {s}, agent: {{token_sha256: {token_hash(TOKENS[s])}}}}}" for s in SITES)
    own = "" if own_site_port is None else (
        "  - name: fibre\n    kind: school\n    endpoints:\n      - {name: own-1, host: 127.0.0.1}\n"
        f"    throughput: {{method: http, url: 'http://{HOST}:{own_site_port}/blob', every: 10s, duration: 1s, "
        "omit: 0s, timeout: 3s, directions: [upload]}\n")
    return (f"defaults:\n  icmp: {{interval: 60s}}\nthroughput: {{max_concurrent: {max_concurrent}}}\n"
            "groups:\n  - name: vsat\n    kind: school\n    mode: agent\n"
            f"    throughput: {{method: http, every: {agent_every}s, duration: 1s, omit: 0s, timeout: 3s, "
            f"directions: [download]{'' if agent_budget is None else f', monthly_budget: {agent_budget}'}}}\n"
            f"    endpoints:\n      - {{name: enrolled-1}}\n{endpoints}\n"
            f"      - {{name: heard-1, agent: {{token_sha256: {token_hash(TOKENS['heard-1'])}, "
            f"stale_after: {STALE_AFTER_SECONDS}s}}}}\n{own}")


class Instance:
    """One ``connmon run`` of the pair: ``--shard I/2 --replicas 2`` on the shared PostgreSQL history."""

    def __init__(self, tmp: Path, url: str, index: int, port: int, replicas: int = 2) -> None:
        self.port = port
        self.stderr = tmp / f"stderr-{index}.log"
        with self.stderr.open("w", encoding="utf-8") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--config", str(tmp / "centre.yaml"), "--listen",
                 f"{HOST}:{port}", "--state-dir", str(tmp / f"state-{index}"), "--store", url,
                 "--shard", f"{index}/2", "--replicas", str(replicas)],
                stdout=subprocess.DEVNULL, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(OSError):
                if request(self.base + "/-/ready")[0] == 200:
                    return
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)


@contextlib.contextmanager
def two_instances(tmp: Path, url: str, pg: PgServer, port: int, max_concurrent: int = 1,
                  own_site_port: int | None = None, replicas: int = 2, agent_budget: str | None = None,
                  agent_every: int = 10) -> Iterator[list[Instance]]:
    (tmp / "centre.yaml").write_text(config_text(max_concurrent, own_site_port, agent_budget, agent_every),
                                     encoding="utf-8")
    instances = [Instance(tmp, url, index, port + index, replicas) for index in range(2)]
    try:
        for instance in instances:
            instance.wait_ready()
        database = urllib.parse.urlsplit(url).path.lstrip("/")
        deadline = time.monotonic() + 60
        while "agent_sequences" not in pg.psql("SELECT tablename FROM pg_tables", database):
            assert time.monotonic() < deadline, instances[0].log()  # the history writer migrates at start-up
            time.sleep(0.2)
        yield instances
    finally:
        for instance in instances:
            stop_process(instance.proc)


def post(url: str, body: Any, token: str, *, retry_503: bool = True) -> tuple[int, Any]:
    """POST JSON as an agent (protocol version 2); a 503 is retried as the agent would (the test's bound)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = json.dumps(body).encode()
    deadline = time.monotonic() + 60
    while True:
        req = urllib.request.Request(url, data=data, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {token}", PROTOCOL_HEADER: "2"})
        try:
            with opener.open(req, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read()
        if status != 503 or not retry_503 or time.monotonic() > deadline:
            return status, json.loads(text) if text.startswith(b"{") else text
        time.sleep(0.3)


def icmp_batch(site: str, first: int, count: int, at: float, instance: str = "agent-install-1") -> dict[str, Any]:
    return {"site": site,
            "agent": {"version": "0.1.0", "instance": instance, "boot_id": "b1", "uptime_seconds": 5000.0,
                      "sent_at": time.time(), "spool_dropped": 0},
            "results": [{"seq": first + i, "type": "icmp", "path": "centre", "started_at": at + i,
                         "address": "10.77.0.1", "sent": 3, "rtts_seconds": [0.6, 0.61, None], "error": None,
                         "error_detail": ""} for i in range(count)]}


def outcomes(answer: dict[str, Any]) -> dict[int, str]:
    return {line["seq"]: line["outcome"] for line in answer["results"]}


def rows(pg: PgServer, url: str, sql: str) -> list[list[str]]:
    database = urllib.parse.urlsplit(url).path.lstrip("/")
    return [line.split("|") for line in pg.psql(sql, database).splitlines() if line]


def stored_icmp(pg: PgServer, url: str, site: str) -> list[list[str]]:
    return rows(pg, url, "SELECT c.started_at, c.instance FROM icmp c JOIN endpoints e ON e.id = c.endpoint_id "
                         f"WHERE e.name = '{site}' ORDER BY c.started_at")


def test_a_batch_posted_to_two_instances_is_stored_once(pg_server: PgServer, pg_url: str,  # noqa: F811
                                                        tmp_path: Path) -> None:
    """Batches posted alternately to both instances, each also to the other: every result is stored once, and
    the instance that did not store it answers it as a duplicate; the same batch to both at once is stored once;
    a result refused (held: stamped ahead) by one is refused again by the other, then stored once it may be."""
    site, token = SITES[0], TOKENS[SITES[0]]
    at = time.time() - 3600
    with two_instances(tmp_path, pg_url, pg_server, PORT) as (a, b):
        results = "{}/api/v1/agent/results"
        for number, (first, second) in enumerate([(a, b), (b, a), (a, b), (b, a)]):
            body = icmp_batch(site, 1 + 3 * number, 3, at + 10 * number)
            status, answer = post(results.format(first.base), body, token)
            assert status == 200 and set(outcomes(answer).values()) == {"stored"}, answer
            status, answer = post(results.format(second.base), body, token)  # its answer was lost: posted again
            assert status == 200 and answer["accepted"] == 0 and answer["duplicates"] == 3, answer
            assert set(outcomes(answer).values()) == {"duplicate"} and answer["last_seq"] == 3 + 3 * number
        assert len(stored_icmp(pg_server, pg_url, site)) == 12

        # the same batch to both at once: each takes it or calls it a duplicate; the history holds it once
        body = icmp_batch(site, 13, 3, at + 100)
        answers: list[tuple[int, Any]] = []
        threads = [threading.Thread(target=lambda i=i: answers.append(post(results.format(i.base), body, token)))
                   for i in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [status for status, _ in answers] == [200, 200], answers
        for _, answer in answers:
            assert set(outcomes(answer)) == {13, 14, 15} and set(outcomes(answer).values()) <= {"stored", "duplicate"}
        assert "stored" in {o for _, answer in answers for o in outcomes(answer).values()}

        # a result stamped ahead of the centre's clock is held: refused with a retry by both, never a duplicate
        soon = time.time() + MAX_FUTURE_SKEW_SECONDS + 10  # both posts below are answered before it may be taken
        body = icmp_batch(site, 16, 1, at + 200) | {"results": [
            *icmp_batch(site, 16, 1, at + 200)["results"], *icmp_batch(site, 17, 1, soon)["results"]]}
        status, answer = post(results.format(a.base), body, token)
        assert status == 200 and outcomes(answer) == {16: "stored", 17: "refused"}, answer
        status, answer = post(results.format(b.base), body, token)
        assert status == 200 and outcomes(answer) == {16: "duplicate", 17: "refused"}, answer
        time.sleep(max(0.0, soon - MAX_FUTURE_SKEW_SECONDS + 0.5 - time.time()))  # the centre's clock catches up
        status, answer = post(results.format(b.base), body, token)
        assert status == 200 and outcomes(answer) == {16: "duplicate", 17: "stored"}, answer
        status, answer = post(results.format(a.base), body, token)
        assert status == 200 and outcomes(answer) == {16: "duplicate", 17: "duplicate"}, answer

        stored = stored_icmp(pg_server, pg_url, site)
        times = [float(row[0]) for row in stored]
        assert len(times) == 17 and len(set(times)) == 17, stored  # every result once: no duplicate row
        assert {row[1] for row in stored} == {""}  # an agent's cycles: measured once, whichever instance took them
        assert rows(pg_server, pg_url, "SELECT agent_instance, seq FROM agent_sequences "
                                       f"WHERE site = '{site}'") == [["agent-install-1", "17"]]
        assert rows(pg_server, pg_url, "SELECT count(*) FROM agent_refusals") == [["0"]]  # taken since: not held


def throughput_result(site: str, slot: str, started: float, ended: float, moved: int, seq: int = 1) -> dict[str, Any]:
    direction = DirectionResult("download", started, ended, moved * 8 / max(ended - started, 1e-3), moved,
                                ended - started)
    return encode_throughput(seq, ThroughputResult(target(site), "http", started, ended, "127.0.0.1", (direction,)),
                             slot)


def test_max_concurrent_holds_across_instances(pg_server: PgServer, pg_url: str,  # noqa: F811
                                               tmp_path: Path) -> None:
    """Five agents ask both instances for a slot at once, with ``max_concurrent: 1``, while the centre tests a site
    of its own every 10 s; each granted agent downloads its test bytes from the other instance (the grant is
    shared) and posts its result to either: the recorded test intervals, the agents' and the centre's own, never
    overlap, and every agent got its test."""
    web_port = PORT + 10
    site = subprocess.Popen([sys.executable, str(Path(__file__).parent / "http_site.py"), "--port", str(web_port),
                             "--host", HOST], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with contextlib.ExitStack() as stack:
        stack.callback(stop_process, site)
        instances = stack.enter_context(two_instances(tmp_path, pg_url, pg_server, PORT + 2, own_site_port=web_port))
        own_tests = "SELECT count(*) FROM throughput t JOIN endpoints e ON e.id = t.endpoint_id WHERE e.name = 'own-1'"
        failures: list[str] = []
        granted_by: dict[str, set[int]] = {site: set() for site in SITES}
        stop = threading.Event()

        def agent(site: str, number: int) -> None:
            """Test whenever granted, until the centre has tested its own site four times meanwhile."""
            token, chooser, seq = TOKENS[site], random.Random(number), 0
            deadline = time.monotonic() + 150
            while not stop.is_set() and time.monotonic() < deadline:
                index = chooser.randrange(2)
                status, answer = post(instances[index].base + "/api/v1/agent/slot", {"site": site}, token)
                if status != 200:
                    failures.append(f"{site}: slot answered {status}: {answer}")
                    return
                if not answer["granted"]:
                    time.sleep(min(0.3, answer["retry_after_seconds"]) + chooser.random() * 0.1)
                    continue
                granted_by[site].add(index)
                started = time.time()
                other = instances[1 - index]
                got = request(f"{other.base}/api/v1/agent/download?slot={answer['slot']}&bytes=65536",
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
                time.sleep(1.0)  # the test's span: long enough that two tests at once would overlap
                ended = time.time()
                if got[0] != 200:
                    failures.append(f"{site}: download from the other instance answered {got[0]}: {got[2][:200]}")
                seq += 1
                body = {"site": site, "agent": {"version": "0.1.0", "instance": f"install-{site}", "boot_id": "b1",
                                                "uptime_seconds": 5000.0, "sent_at": time.time(), "spool_dropped": 0},
                        "results": [throughput_result(site, answer["slot"], started, ended, 65536, seq)]}
                status, answer = post(instances[chooser.randrange(2)].base + "/api/v1/agent/results", body, token)
                if status != 200 or answer["accepted"] != 1:
                    failures.append(f"{site}: result answered {status}: {answer}")
            if not seq:
                failures.append(f"{site}: never granted")

        threads = [threading.Thread(target=agent, args=(site, number)) for number, site in enumerate(SITES)]
        for thread in threads:
            thread.start()
        measured = own_tests + " AND t.error IS NULL"
        until(lambda: rows(pg_server, pg_url, measured), lambda got: int(got[0][0]) >= 4, 150)  # 4 more meanwhile
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures, (failures, instances[0].log(), instances[1].log())
        tests = rows(pg_server, pg_url, "SELECT e.name, t.started_at, t.ended_at, t.error FROM throughput t "
                                        "JOIN endpoints e ON e.id = t.endpoint_id ORDER BY t.started_at")
        assert {row[0] for row in tests} == {*SITES, "own-1"}, tests
        assert sum(row[0] == "own-1" and not row[3] for row in tests) >= 4, tests  # the centre's own, measured
        spans = [(float(row[1]), float(row[2])) for row in tests]
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, tests  # one test at a time in the whole region
        assert set().union(*granted_by.values()) == {0, 1}, granted_by  # both instances granted, from the one pool
        # every agent's slot freed; the centre's own test may hold one now
        assert int(rows(pg_server, pg_url, "SELECT count(*) FROM throughput_slots WHERE site <> 'own-1'")[0][0]) == 0


def granted_slot(instance: Instance, site: str, token: str) -> dict[str, Any]:
    """Ask ``instance`` for ``site``'s slot until granted, as an agent does: after the answer's ``retry_after_seconds``
    (at most a second here), and after a 429 (each token's request rate) a second; the grant."""
    deadline = time.monotonic() + 60
    while True:
        status, answer = post(instance.base + "/api/v1/agent/slot", {"site": site}, token)
        assert status in (200, 429) and time.monotonic() < deadline, (status, answer, instance.log())
        if status == 200 and answer["granted"]:
            return dict(answer)
        time.sleep(1.0 if status == 429 else min(1.0, answer["retry_after_seconds"]) + 0.05)


def test_a_test_booked_by_one_instance_is_not_granted_again_by_the_other_within_the_period(
        pg_server: PgServer, pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    """An agent's test granted and booked by one instance: the other, which booked nothing, refuses the next grant
    as ``not_due`` until a period (``every: 20s``) after the test began, then grants it. Without the shared last
    test, the other's plan had the site due at once and the metered link paid for a second test."""
    site, token = SITES[1], TOKENS[SITES[1]]
    with two_instances(tmp_path, pg_url, pg_server, PORT + 12, agent_every=PERIOD) as (a, b):
        slot = "{}/api/v1/agent/slot"
        answer = granted_slot(a, site, token)
        started = time.time()
        body = {"site": site, "agent": {"version": "0.1.0", "instance": f"install-{site}", "boot_id": "b1",
                                        "uptime_seconds": 5000.0, "sent_at": time.time(), "spool_dropped": 0},
                "results": [throughput_result(site, answer["slot"], started, started + 1.0, 65536)]}
        status, answer = post(a.base + "/api/v1/agent/results", body, token)
        assert status == 200 and answer["accepted"] == 1, answer
        status, answer = post(slot.format(b.base), {"site": site}, token)
        assert status == 200 and answer["granted"] is False and answer["reason"] == "not_due", answer
        assert 0 < answer["retry_after_seconds"] <= PERIOD, answer
        answer = granted_slot(b, site, token)
        granted_at = time.time()
        assert granted_at >= started + PERIOD, (granted_at - started, answer)  # a period after the test began


def test_an_instance_of_another_share_grants_by_the_region_history(pg_server: PgServer, pg_url: str,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """``--replicas 1``: the instance that is not the site's own grants its agent a test too (a load balancer
    that pins the agent there would otherwise never let it test), by the region's history: after a test it
    booked, the site's own instance answers ``not_due`` for the period, and its next grant is capped to the
    month's budget left after that test, not the whole budget."""
    site, token = SITES[2], TOKENS[SITES[2]]
    moved = 65536
    with two_instances(tmp_path, pg_url, pg_server, PORT + 14, replicas=1, agent_budget="10MB",
                       agent_every=PERIOD) as instances:
        own, other = instances[owner(site, 2)], instances[1 - owner(site, 2)]
        slot = "{}/api/v1/agent/slot"
        first = granted_slot(other, site, token)  # was: "busy", always
        started = time.time()
        body = {"site": site, "agent": {"version": "0.1.0", "instance": f"install-{site}", "boot_id": "b1",
                                        "uptime_seconds": 5000.0, "sent_at": time.time(), "spool_dropped": 0},
                "results": [throughput_result(site, first["slot"], started, started + 1.0, moved)]}
        status, answer = post(other.base + "/api/v1/agent/results", body, token)
        assert status == 200 and answer["accepted"] == 1, answer
        status, answer = post(slot.format(own.base), {"site": site}, token)
        assert status == 200 and answer["granted"] is False and answer["reason"] == "not_due", answer
        second = granted_slot(own, site, token)
        assert time.time() >= started + PERIOD  # a period after the test began
        assert second["max_bytes"] == first["max_bytes"] - moved, (first, second)  # the region's month


def test_a_revoked_token_is_refused_by_every_instance(pg_server: PgServer, pg_url: str,  # noqa: F811
                                                      tmp_path: Path) -> None:
    """A token enrolled through one instance is taken by both within the token refresh; revoked with
    ``connmon agent-revoke`` on the store, it is refused (401) by both within the same refresh."""
    site = "enrolled-1"
    cli = [sys.executable, "-m", "monitor"]
    with two_instances(tmp_path, pg_url, pg_server, PORT + 4) as (a, b):
        done = subprocess.run([*cli, "agent-invite", site, "--config", str(tmp_path / "centre.yaml"),
                               "--store", pg_url], capture_output=True, text=True, timeout=60, check=False)
        code = done.stdout.strip()
        assert is_code(code), done.stderr
        status, answer = post(a.base + "/api/v1/agent/enrol", {"code": code}, "")
        assert status == 200 and answer["site"] == site, answer
        token = answer["token"]
        body = icmp_batch(site, 1, 1, time.time() - 60)
        for instance in (a, b):  # the other instance reads the new token from the store within its refresh
            status, answer = until(lambda i=instance: post(i.base + "/api/v1/agent/results", body, token),
                                   lambda got: got[0] == 200)
            assert status == 200, answer
        revoked = subprocess.run([*cli, "agent-revoke", site, "--store", pg_url, "--state-dir", str(tmp_path / "cli")],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert revoked.returncode == 0 and "token revoked" in revoked.stdout, revoked.stderr
        began = time.monotonic()
        for instance in (a, b):
            status, _ = until(lambda i=instance: post(i.base + "/api/v1/agent/results", body, token,
                                                      retry_503=False), lambda got: got[0] == 401)
            assert status == 401
        print(f"revoked token refused by both instances after {time.monotonic() - began:.1f}s")
        for instance in (a, b):  # and stays refused
            assert post(instance.base + "/api/v1/agent/results", body, token, retry_503=False)[0] == 401


def until(call: Any, done: Any, bound_seconds: float = 60.0) -> Any:
    """``call()`` again until ``done(its answer)``, within the test's bound; the last answer."""
    deadline = time.monotonic() + bound_seconds
    while True:
        got = call()
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def test_the_shared_state_stays_out_of_a_sqlite_centre() -> None:
    """SQLite and no history keep today's single-instance state: the module that needs psycopg is not imported."""
    code = ("import sys; import monitor.daemon, monitor.agent.centre.api, monitor.throughput_plan; "
            "assert 'monitor.agent.centre.shared' not in sys.modules and 'psycopg' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("replicas", [2, 1])
def test_a_site_that_posts_to_one_instance_is_not_silent_on_the_other(pg_server: PgServer, pg_url: str,  # noqa: F811
                                                                     tmp_path: Path, replicas: int) -> None:
    """An agent whose posts all reach one instance (a load balancer's choice) for twice its ``stale_after``: the
    other instance, which watches the site too (R = N = 2), or alone (R = 1, and the posts go to the instance
    whose share the site is not), reads its last contact from the store and never declares it silent; no gap is
    written to the shared history."""
    site, token = "heard-1", TOKENS["heard-1"]
    with two_instances(tmp_path, pg_url, pg_server, PORT + 6 + 2 * (replicas - 1), replicas=replicas) as instances:
        a = instances[1 - owner(site, 2)]  # the instance the posts reach: with R = 1 not the site's own
        first, seq = time.time(), 0
        while time.time() < first + 2 * STALE_AFTER_SECONDS:
            seq += 1
            status, answer = post(a.base + "/api/v1/agent/results", icmp_batch(site, seq, 1, time.time() - 1), token)
            assert status == 200 and answer["accepted"] == 1, answer
            time.sleep(1.0)
        for instance in instances:
            status, _, text = request(instance.base + "/metrics")
            assert status == 200
            silent = [line for line in text.splitlines()
                      if line.startswith("connmon_agent_silent{") and f'endpoint="{site}"' in line]
            assert all(line.endswith((" 0", " 0.0")) for line in silent), silent
            if instance is instances[owner(site, 2)]:
                assert silent, text  # its own instance has the site's series, and it is not silent
        assert rows(pg_server, pg_url, "SELECT count(*) FROM gaps g JOIN endpoints e ON e.id = g.endpoint_id "
                                       f"WHERE e.name = '{site}'") == [["0"]]
        # the instance the posts reach shows the site's results, its share or not (review finding: with R = 1 the
        # site had no series anywhere), so the merged rules have a live view of it
        _status, _, text = request(a.base + "/metrics")
        up = [line for line in text.splitlines() if line.startswith("connmon_up{") and f'endpoint="{site}"' in line]
        assert up and all(line.endswith(" 1") for line in up), text


def test_an_agent_heard_while_the_database_is_away_is_not_silent(tmp_path: Path) -> None:
    """Review finding: with the shared PostgreSQL stopped, an agent that keeps posting is heard (its batches are
    taken by the instance's own position; the answer waits for the history, so it may be 503 and the agent
    keeps them), never declared silent and down; when the server is back its results are stored once."""
    from tests.postgres import PgCluster

    cluster = PgCluster.create()
    try:
        cluster.start()
        database = cluster.server.new_database()
        url = cluster.server.url(database)
        site, token = "heard-1", TOKENS["heard-1"]
        (tmp_path / "centre.yaml").write_text(config_text(), encoding="utf-8")
        instance = Instance(tmp_path, url, owner(site, 2), PORT + 20, replicas=1)  # the site's own: it watches
        try:
            instance.wait_ready()
            deadline = time.monotonic() + 60
            while "agent_sequences" not in cluster.server.psql("SELECT tablename FROM pg_tables", database):
                assert time.monotonic() < deadline, instance.log()
                time.sleep(0.2)
            assert post(instance.base + "/api/v1/agent/results", icmp_batch(site, 1, 1, time.time() - 1),
                        token)[0] == 200
            cluster.stop()
            seq, until = 1, time.time() + 2 * STALE_AFTER_SECONDS
            while time.time() < until:
                seq += 1
                status, _answer = post(instance.base + "/api/v1/agent/results",
                                       icmp_batch(site, seq, 1, time.time() - 1), token, retry_503=False)
                assert status in (200, 503), status
                time.sleep(1.0)
            _status, _, text = request(instance.base + "/metrics")
            silent = [line for line in text.splitlines()
                      if line.startswith("connmon_agent_silent{") and f'endpoint="{site}"' in line]
            assert silent and all(line.endswith((" 0", " 0.0")) for line in silent), silent
            down = [line for line in text.splitlines() if line.startswith("connmon_site_state{")
                    and f'endpoint="{site}"' in line and 'state="down"' in line]
            assert down and all(line.endswith(" 0") for line in down), down
        finally:
            stop_process(instance.proc)
    finally:
        cluster.remove()
