"""Latency under load against real queues (issue 20): tc tbf at 4 Mbit/s, deep and shallow, in namespaces.

Layout (names ``h20…``, addresses in 10.220.0.0/16, ports 19500-19549)::

    prober ns ──h20p/h20r── router ns ──h20a── site A   download: DEEP tbf on the router (forwarded traffic)
    (connmon)    10.220.0.0/30    │                     upload:   shallow tbf on A's own eth
                                  └──h20b── site B      download: shallow tbf on the router
                                                        upload:   DEEP tbf on B's own eth (the sender's interface)

So each case is checked once with the deep queue on a router between the ends and once on the
sender's own interface, the other direction of each site shaped separately with a shallow queue.
The deep queue's delay at line rate is what ``tc`` prints (``lat …``), not a figure of ours.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need
from tests.factories import write_config

PREFIX = "10.220.0.0/16"
RATE = "4mbit"
BURST = "16kbit"  # 2 kB: tc's lat figure is (limit - burst) / rate
DEEP_LIMIT = 200_000  # bytes: ≈ 390 ms at 4 Mbit/s
SHALLOW_LIMIT = 10_000  # bytes: ≈ 16 ms
IPERF3_PORT = 19500
HTTP_PORT = 19501
TOLERANCE = 0.25  # the issue: p90 added latency within ±25% of the deep queue's delay at line rate
SHALLOW_MAX_SECONDS = 0.060
# Streams of the lab's tests: the default (parallel: 4). The loaded samples are those of the span the data
# surely flowed in, warm-up included (monitor.probes.loaded_latency's module doc).
STREAMS = 4
HTTP_SITE = Path(__file__).resolve().parent / "http_site.py"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class QueueLab:
    tag: str
    procs: list[subprocess.Popen[bytes]]

    @property
    def prober(self) -> str:
        return f"h20{self.tag}pr"

    @property
    def router(self) -> str:
        return f"h20{self.tag}rt"

    def site(self, name: str) -> str:
        return f"h20{self.tag}s{name}"

    def ns(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", ns, *args, check=check)

    def delay_of(self, ns: str, dev: str) -> float:
        """The tbf's queue delay at line rate in seconds, as ``tc`` prints it (``lat 390ms``)."""
        shown = self.ns(ns, "tc", "qdisc", "show", "dev", dev).stdout
        found = re.search(r"lat (\d+(?:\.\d+)?)(ms|us|s)\b", shown)
        assert found, shown
        return float(found.group(1)) * {"ms": 1e-3, "us": 1e-6, "s": 1.0}[found.group(2)]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        for name in _sh("ip", "netns", "list").stdout.split("\n"):
            ns = name.split(" ")[0]
            if ns.startswith(f"h20{self.tag}"):
                _sh("ip", "netns", "del", ns, check=False)


def _tbf(ns: str, dev: str, limit: int) -> list[str]:
    return ["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", RATE,
            "burst", BURST, "limit", str(limit)]


@pytest.fixture(scope="module")
def queues() -> Iterator[QueueLab]:
    need(os.geteuid() == 0, "needs root to create network namespaces")
    for tool in ("ip", "tc", "iperf3", "ss"):
        need(shutil.which(tool) is not None, f"needs the '{tool}' command")
    # Safety first: before any namespace exists, the whole prefix is unreachable from the host.
    _sh("ip", "route", "replace", "unreachable", PREFIX)
    lab = QueueLab(f"{os.environ.get('CONNMON_TEST_LAB_TAG', '')}{os.getpid() % 1000}", [])
    lab.close()
    pr, rt, a, b = lab.prober, lab.router, lab.site("a"), lab.site("b")
    for ns in (pr, rt, a, b):
        _sh("ip", "netns", "add", ns)
        lab.ns(ns, "ip", "link", "set", "lo", "up")
        lab.ns(ns, "ip", "route", "add", "unreachable", PREFIX)
    _sh("ip", "-n", pr, "link", "add", "h20p", "type", "veth", "peer", "name", "h20r", "netns", rt)
    _sh("ip", "-n", rt, "link", "add", "h20a", "type", "veth", "peer", "name", "h20a", "netns", a)
    _sh("ip", "-n", rt, "link", "add", "h20b", "type", "veth", "peer", "name", "h20b", "netns", b)
    links = ((pr, "h20p", "10.220.0.1/30"), (rt, "h20r", "10.220.0.2/30"), (rt, "h20a", "10.220.1.1/30"),
             (a, "h20a", "10.220.1.2/30"), (rt, "h20b", "10.220.2.1/30"), (b, "h20b", "10.220.2.2/30"))
    for ns, dev, address in links:
        lab.ns(ns, "ip", "addr", "add", address, "dev", dev)
        lab.ns(ns, "ip", "link", "set", dev, "up")
    lab.ns(rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.ns(pr, "ip", "route", "add", "10.220.1.0/24", "via", "10.220.0.2")
    lab.ns(pr, "ip", "route", "add", "10.220.2.0/24", "via", "10.220.0.2")
    for ns, gateway in ((a, "10.220.1.1"), (b, "10.220.2.1")):
        lab.ns(ns, "ip", "route", "add", "10.220.0.0/30", "via", gateway)
    # Site A: the deep queue on the router, fed by forwarded traffic (download); its upload shallow.
    _sh(*_tbf(rt, "h20a", DEEP_LIMIT))
    _sh(*_tbf(a, "h20a", SHALLOW_LIMIT))
    # Site B: the deep queue on the sender's own interface (B sends: upload); its download shallow.
    _sh(*_tbf(rt, "h20b", SHALLOW_LIMIT))
    _sh(*_tbf(b, "h20b", DEEP_LIMIT))
    env = dict(os.environ)
    for ns in (a, b):
        for argv in (["iperf3", "-s", "-p", str(IPERF3_PORT)],
                     [sys.executable, str(HTTP_SITE), "--port", str(HTTP_PORT)]):
            lab.procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    for ns in (a, b):
        for port in (IPERF3_PORT, HTTP_PORT):
            _wait_listening(lab, ns, port)
    yield lab
    lab.close()


def _wait_listening(lab: QueueLab, ns: str, port: int) -> None:
    import time

    for _ in range(200):
        if lab.ns(ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} in {ns}")


def _probe(lab: QueueLab, tmp: Path, method: str) -> dict[str, dict]:
    http = (f'url: "http://{{host}}:{HTTP_PORT}/blob", upload_url: "http://{{host}}:{HTTP_PORT}/upload", '
            if method == "http" else f"port: {IPERF3_PORT}, ")
    config = write_config(tmp, f"""
throughput: {{max_concurrent: 2}}
defaults:
  icmp: {{count: 1, timeout: 1s}}
groups:
  - name: queues
    kind: school
    throughput: {{method: {method}, {http}duration: 6s, omit: 1s, timeout: 10s, parallel: {STREAMS}}}
    endpoints:
      - {{name: deep-router, host: 10.220.1.2}}
      - {{name: deep-sender, host: 10.220.2.2}}
""", name=f"{method}.yaml")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
               CONNMON_STATE_DIR=tempfile.mkdtemp(prefix="connmon-h20-"))
    proc = subprocess.run(["ip", "netns", "exec", lab.prober, sys.executable, "-m", "monitor", "probe", "--config",
                           str(config), "--json", "--throughput"], capture_output=True, text=True, timeout=180,
                          check=False, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    return {r["endpoint"]: r for r in map(json.loads, proc.stdout.splitlines())}


def _directions(entry: dict) -> dict[str, dict]:
    assert entry["throughput_error"] is None, (entry["throughput_error_detail"], entry["throughput_directions"])
    return {d["direction"]: d for d in entry["throughput_directions"]}


@pytest.mark.parametrize("method", ["iperf3", "http"])
def test_deep_queue_shows_in_added_latency_and_shallow_does_not(queues: QueueLab, method: str,
                                                                tmp_path: Path) -> None:
    """Deep tbf: p90 added latency within ±25% of tc's queue delay; shallow (other direction too): under 60 ms."""
    deep = queues.delay_of(queues.router, "h20a")
    assert deep == pytest.approx(queues.delay_of(queues.site("b"), "h20b"))
    assert 0.35 < deep < 0.43, deep  # the lab is what the issue asks: ≈ 390 ms at 4 Mbit/s
    got = _probe(queues, tmp_path, method)
    shallow = queues.delay_of(queues.router, "h20b")
    cases = (("deep-router", "download", "upload"), ("deep-sender", "upload", "download"))
    rows = []
    for site, deep_direction, shallow_direction in cases:
        directions = _directions(got[site])
        loaded = directions[deep_direction]
        assert loaded["idle_rtt_seconds"] is not None and loaded["idle_rtt_seconds"] < 0.01, loaded
        added_p90 = loaded["loaded_rtt_p90_seconds"] - loaded["idle_rtt_seconds"]
        error = added_p90 / deep - 1
        other = directions[shallow_direction]
        other_p90 = other["loaded_rtt_p90_seconds"] - other["idle_rtt_seconds"]
        for direction, queue, figures, p90, err in ((deep_direction, deep, loaded, added_p90, f"{error:+.1%}"),
                                                    (shallow_direction, shallow, other, other_p90, "-")):
            rows.append(f"| {method} | {site} {direction} | {queue * 1000:.0f} ms | "
                        f"{figures['added_latency_seconds'] * 1000:.0f} ms | {p90 * 1000:.0f} ms | {err} |")
        assert abs(error) <= TOLERANCE, (site, deep_direction, added_p90, deep)
        assert loaded["added_latency_seconds"] > 0.1, loaded  # the median is under load too, beside the p90
        assert loaded["round_trips_per_minute"] == pytest.approx(60 / loaded["loaded_rtt_seconds"])
        assert other_p90 < SHALLOW_MAX_SECONDS, (site, shallow_direction, other)
        assert other["added_latency_seconds"] < SHALLOW_MAX_SECONDS
    print("\n" + "\n".join(rows))
