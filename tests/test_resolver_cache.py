"""Names that survive a resolver hiccup (issue 22): the last good address stands in for a configured while.

The end-to-end test runs ``connmon run`` in a network namespace of its own (``h22b-…``) whose
``resolv.conf`` names a DNS server the test runs there (:mod:`tests.dns_responder`); the sites are
loopback addresses of that namespace. Nothing is looked up outside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from monitor.config import IcmpSettings
from monitor.errors import ProbeErrorReason
from monitor.icmp.engine import EchoJob, EchoOutcome
from monitor.probes import ProbeContext, icmp, resolver
from monitor.probes.last_good import LastGoodAddresses, LookupOutcome
from monitor.probes.resolver import Fallback, resolve_all
from tests.conftest import need_root
from tests.factories import target
from tests.netlab import child_env
from tests.running import samples, stop_process, value

KEY = ("a.example", "ipv4")


def test_a_failed_look_up_uses_the_last_good_address_for_the_configured_intervals() -> None:
    """Within N intervals (and half an interval of slack) of the last good answer a failure gets that
    address; after that, nothing; 0 intervals turns it off; a name that never resolved has nothing."""
    book = LastGoodAddresses()
    book.resolved(KEY, "192.0.2.1", 1000.0, 60.0, 3)
    assert book.failed(KEY, 1060.0, 60.0, 3) == "192.0.2.1"
    assert book.failed(KEY, 1180.0, 60.0, 3) == "192.0.2.1"
    assert book.failed(KEY, 1210.0, 60.0, 3) == "192.0.2.1"  # 3.5 intervals: the scheduler's slack
    assert book.failed(KEY, 1240.0, 60.0, 3) is None
    assert book.counts()[LookupOutcome.FAILED] == 1
    book.resolved(KEY, "192.0.2.9", 1300.0, 60.0, 3)  # the record moved meanwhile: the new one counts
    assert book.failed(KEY, 1360.0, 60.0, 3) == "192.0.2.9"
    assert book.failed(KEY, 1420.0, 60.0, 0) is None
    assert book.failed(("never.example", "ipv4"), 1420.0, 60.0, 3) is None


def test_names_are_counted_by_their_last_look_up_and_forgotten_when_no_longer_asked_for() -> None:
    """The counts follow each name's last look-up; a name not asked for in a while (its site removed) goes."""
    book = LastGoodAddresses()
    for i in range(3):
        book.resolved((f"n{i}", "any"), f"192.0.2.{i}", 0.0, 60.0, 5)
    book.failed(("n0", "any"), 60.0, 60.0, 5)
    assert book.counts() == {LookupOutcome.RESOLVED: 2, LookupOutcome.LAST_GOOD: 1, LookupOutcome.FAILED: 0}
    for t in (120.0, 600.0):  # (5 + 3) intervals after the others were last asked for
        book.resolved(("n1", "any"), "192.0.2.1", t, 60.0, 5)
    assert book.counts() == {LookupOutcome.RESOLVED: 1, LookupOutcome.LAST_GOOD: 0, LookupOutcome.FAILED: 0}


class Pinger:
    """Answers every echo (the ICMP probe's engine, faked: this test is about names)."""

    families = frozenset({socket.AF_INET})

    def __init__(self) -> None:
        self.addresses: list[str] = []

    async def ping(self, jobs: Sequence[EchoJob]) -> list[EchoOutcome]:
        self.addresses += [job.address for job in jobs]
        return [EchoOutcome(job.count, [0.001] * job.count) for job in jobs]


def test_the_icmp_result_says_when_its_address_came_from_the_last_good_look_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A look-up that fails after a good one probes the old address, up, with address_from_cache set;
    a literal host or a fresh answer never has the flag; once the allowance is spent the reason is dns."""
    answers: dict[str, str | None] = {"school.example": "192.0.2.7"}

    def lookup(host: str, _family: int) -> tuple[object, BaseException | None, float]:
        address = answers[host]
        if address is None:
            return None, socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), 0.0
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (address, 0))], None, 0.0

    monkeypatch.setattr(resolver, "_timed_lookup", lookup)
    now = {"t": 1000.0}
    pinger = Pinger()
    ctx = ProbeContext(pinger, lambda: now["t"])
    settings = IcmpSettings(interval_seconds=60.0, count=1, dns_fallback_intervals=2)
    named = target("named", host="school.example", address=None, icmp=settings)
    literal = target("literal", host="192.0.2.50", address="192.0.2.50", icmp=settings)

    def cycle(at: float) -> dict[str, tuple[bool, str | None, ProbeErrorReason | None, bool]]:
        now["t"] = at
        results = asyncio.run(icmp.run([named, literal], ctx))
        return {r.target.name: (r.up, r.address, r.error, r.address_from_cache) for r in results}

    assert cycle(1000.0)["named"] == (True, "192.0.2.7", None, False)
    answers["school.example"] = None
    assert cycle(1060.0) == {"named": (True, "192.0.2.7", None, True), "literal": (True, "192.0.2.50", None, False)}
    assert cycle(1120.0)["named"] == (True, "192.0.2.7", None, True)
    assert cycle(1180.0)["named"] == (False, None, ProbeErrorReason.DNS, False)
    assert pinger.addresses.count("192.0.2.7") == 3


def test_an_answer_without_a_usable_family_is_the_names_own_record_not_a_hiccup(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a failed look-up (dns) falls back; an IPv6-only answer where only IPv4 can be probed is the
    record's own answer (unsupported_family) and stands, the last good address left unused."""
    monkeypatch.setattr(resolver, "_timed_lookup", lambda host, family: (
        [(socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::1", 0, 0, 0))], None, 0.0))
    book = LastGoodAddresses()
    book.resolved(("moved.example", "any"), "192.0.2.1", 0.0, 60.0, 5)
    answer = asyncio.run(resolve_all([("moved.example", "any", 1.0)], frozenset({socket.AF_INET}), book, 60.0,
                                     [Fallback(60.0, 5)]))[0]
    assert (answer.address, answer.error, answer.from_cache) == (None, ProbeErrorReason.UNSUPPORTED_FAMILY, False)


# ------------------------------------------------------------------------------ a real resolver, silenced
NAMES = {"a.h22b.test": "127.0.0.2", "b.h22b.test": "127.0.0.3", "c.h22b.test": "127.0.0.4"}
PORT = 19460


class Namespace:
    """A network namespace with its own resolv.conf (a DNS server on 127.0.0.53 that the test runs) and
    nsswitch (DNS only), so the daemon's getaddrinfo asks that server and nothing else."""

    def __init__(self, directory: Path) -> None:
        self.name = f"h22b-dns{os.getpid() % 100000}"
        self.etc = Path("/etc/netns") / self.name
        self.zone, self.queries = directory / "zone.json", directory / "queries.log"
        self.procs: list[subprocess.Popen[str]] = []

    def open(self) -> Namespace:
        self.close()
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.exec("ip", "link", "set", "lo", "up")
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.53\noptions timeout:1 attempts:1\n")
        (self.etc / "nsswitch.conf").write_text("hosts: dns\n")
        (self.etc / "hosts").write_text("127.0.0.1 localhost\n")
        self.answer(silent=False)
        self.queries.touch()
        self.spawn(sys.executable, "-m", "tests.dns_responder", "127.0.0.53", "53", str(self.zone), str(self.queries))
        return self

    def answer(self, *, silent: bool) -> None:
        self.zone.write_text(json.dumps({"silent": silent, "records": NAMES}), encoding="utf-8")

    def silent_queries(self) -> dict[str, int]:
        lines = [line.split() for line in self.queries.read_text(encoding="utf-8").splitlines()]
        return {name: sum(1 for said, n, _ in lines if said == "silent" and n == name) for name in NAMES}

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True, capture_output=True, text=True)

    def spawn(self, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=child_env())
        self.procs.append(proc)
        return proc

    def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        script = ("import urllib.request, sys; o = urllib.request.build_opener(urllib.request.ProxyHandler({})); "
                  f"sys.stdout.write(o.open('http://127.0.0.1:{PORT}/metrics', timeout=5).read().decode())")
        done = subprocess.run(["ip", "netns", "exec", self.name, sys.executable, "-c", script],
                              capture_output=True, text=True, check=False)
        return samples(done.stdout) if done.returncode == 0 else {}

    def close(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    need_root()
    ns = Namespace(tmp_path).open()
    try:
        yield ns
    finally:
        ns.close()


def wait_until(what: str, ns: Namespace, daemon: subprocess.Popen[str], ok: object,
               seconds: float = 60) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    deadline = time.monotonic() + seconds
    last: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    while time.monotonic() < deadline:
        assert daemon.poll() is None, daemon.communicate()[1][-3000:]
        last = ns.scrape()
        try:
            if last and ok(last):  # type: ignore[operator]
                return last
        except AssertionError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what}: not met; last connmon_up {last.get('connmon_up')}, "
                         f"resolver {last.get('connmon_resolver_names')}")


def names(parsed: dict[str, dict[tuple[tuple[str, str], ...], float]], outcome: str) -> float:
    return value(parsed, "connmon_resolver_names", outcome=outcome)


def test_sites_stay_up_on_their_last_good_addresses_while_the_resolver_is_silent(
        namespace: Namespace, tmp_path: Path) -> None:
    """The DNS server stops answering: for three look-ups of each name and more, every site stays up on its
    last good address (no dns error, the API's address_from_cache true, connmon_resolver_names counting them
    last_good), and the scrape's figures make ConnmonResolverFailing's expression true; once the allowance
    is spent the names fail; when the server answers again they resolve and the sites are up."""
    ns = namespace
    config = tmp_path / "sites.yaml"
    config.write_text(
        "defaults: {icmp: {interval: 1s, count: 1, timeout: 300ms, family: ipv4, dns_fallback_intervals: 8}}\n"
        "groups:\n  - name: g\n    kind: school\n    endpoints:\n"
        + "".join(f"      - {{name: {n.split('.')[0]}, host: {n}}}\n" for n in NAMES), encoding="utf-8")
    daemon = ns.spawn(sys.executable, "-m", "monitor", "run", "--config", str(config), "--listen",
                      f"127.0.0.1:{PORT}", "--no-history", "--web.access-log", "off")
    try:
        wait_until("every site up on a fresh look-up", ns, daemon,
                   lambda p: all(value(p, "connmon_up", endpoint=s) == 1 for s in "abc")
                   and names(p, "resolved") == 3)
        ns.answer(silent=True)
        seen_last_good = None
        deadline = time.monotonic() + 60
        while min(ns.silent_queries().values()) < 3:  # three intervals' look-ups have met silence
            assert time.monotonic() < deadline, ns.silent_queries()
            parsed = ns.scrape()
            if parsed:
                for site in "abc":  # the per-site alert has nothing to fire on: every scrape says up
                    assert value(parsed, "connmon_up", endpoint=site) == 1
                    assert value(parsed, "connmon_probe_errors_total", endpoint=site, reason="dns") == 0
                if names(parsed, "last_good") == 3:
                    seen_last_good = parsed
            time.sleep(0.2)
        parsed = wait_until("the three names counted last_good", ns, daemon, lambda p: names(p, "last_good") == 3)
        seen_last_good = seen_last_good or parsed
        assert all(value(parsed, "connmon_up", endpoint=s) == 1 for s in "abc")
        sites = json.loads(ns.exec(sys.executable, "-c", (
            "import urllib.request, sys; o = urllib.request.build_opener(urllib.request.ProxyHandler({})); "
            f"sys.stdout.write(o.open('http://127.0.0.1:{PORT}/api/v1/sites', timeout=5).read().decode())")).stdout)
        flagged = {s["name"]: (s["icmp"]["address"], s["icmp"]["address_from_cache"]) for s in sites["sites"]}
        assert flagged == {n.split(".")[0]: (a, True) for n, a in NAMES.items()}
        # ConnmonResolverFailing's expression on these figures: more than half failing, at least two names
        total = sum(names(seen_last_good, o) for o in ("resolved", "last_good", "failed"))
        assert total >= 2 and (total - names(seen_last_good, "resolved")) / total > 0.5
        assert promtool_says_it_fires(tmp_path, seen_last_good)

        wait_until("the allowance spent, the names fail", ns, daemon, lambda p: names(p, "failed") == 3, seconds=90)
        ns.answer(silent=False)
        wait_until("resolving again, every site up", ns, daemon,
                   lambda p: names(p, "resolved") == 3 and all(value(p, "connmon_up", endpoint=s) == 1 for s in "abc"))
    finally:
        stop_process(daemon)


def promtool_says_it_fires(directory: Path, parsed: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> bool:
    """The shipped ConnmonResolverFailing's expression, fed the daemon's own connmon_resolver_names figures,
    is true for the instance (promtool evaluates it), with the share of failing names as its value."""
    rules = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "connmon.rules.yml").read_text())
    expr = next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == "ConnmonResolverFailing")
    counts = {o: int(names(parsed, o)) for o in ("resolved", "last_good", "failed")}
    series = [{"series": f'connmon_resolver_names{{job="connmon",instance="mon:9077",outcome="{o}"}}',
               "values": f"{n}x3"} for o, n in counts.items()]
    share = (counts["last_good"] + counts["failed"]) / sum(counts.values())
    test = {"evaluation_interval": "1m", "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": expr, "eval_time": "2m", "exp_samples": [{"labels": '{instance="mon:9077",job="connmon"}',
                                                            "value": share}]}]}]}
    path = directory / "resolver.test.yml"
    path.write_text(json.dumps(test), encoding="utf-8")  # JSON is YAML
    done = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return True
