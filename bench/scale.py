"""National scale (issue 9): connmon at 10,000 sites beside fping, smokeping_prober and prometheus-client.

Run as root from the repository root (fping needed; smokeping_prober is installed with apt if missing):

    .venv/bin/python bench/scale.py [--sites 10000] [--repeats 3] [--daemon-seconds 60] [--skip-smokeping]

Every echo goes to a loopback address (127.0.0.0/8), in the host or inside a network namespace this
script creates and deletes (lo up, ``net.ipv4.ping_group_range`` opened there only). In that
namespace an iptables rule drops echo requests to 10 % of the daemon's addresses for the
"10 % never answer" run. Nothing else is ever a target.

What runs, all in one invocation, so that ratios compare figures from the same minutes:

1. fping ``-C 3 -i 0 -p 200`` vs the engine (raw, in this process; unprivileged, in the namespace)
   on the same N addresses, ``--repeats`` times interleaved: CPU per echo, RTT median/p99 and
   per-site jitter (mean absolute difference of consecutive echoes, the same formula for both).
2. ``connmon run`` on an N-site config (interval 10 s, 3 echoes 200 ms apart, timeout 1 s) in the
   namespace: CPU per echo over whole cycles (probing, results, rendering, one gzip scrape every
   3 s, more often than a Prometheus would), RSS after each cycle, cycle durations.
   Then 10 scrapers (gzip, then plain), all starting a scrape at the same moment once a second
   (10 concurrent requests each time), still probing: latency p50/p99.
3. The same daemon with 10 % of the sites never answering: cycle duration vs
   ``count × spacing + timeout + 1 s``.
4. smokeping_prober 0.6.1 on 1,000 of the addresses at 1 s (privileged and ``protocol: udp``).
5. prometheus-client's naive ``generate_latest`` at N endpoints × (10 gauges + a 10-bucket histogram).
6. Loading and validating the N-site config (``load_config`` + ``build_targets``).

It prints figures and one table of ratios; it never fails because a figure looks slow.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import icmp_cpu  # noqa: E402  (the fping runner, loopback addresses, rusage of children)
from icmp_cpu import Netns, loopback_addresses, percentile, run_child  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
COUNT = 3
SPACING = 0.2
TIMEOUT = 1.0
INTERVAL = 10
BURST_SECONDS = 1.0  # the 10 scrapers start a scrape together once per this period
WATCH_SECONDS = 3.0  # the bench's own gzip scrape period while it measures CPU (Prometheus: 15 s)
TICKS = os.sysconf("SC_CLK_TCK")
Result = dict[str, Any]


# ----------------------------------------------------------------------------- small helpers

def jitter_of(rtts: Sequence[float | None]) -> float | None:
    diffs = [abs(b - a) for a, b in zip(rtts, rtts[1:], strict=False) if a is not None and b is not None]
    return statistics.fmean(diffs) if diffs else None


def rtt_figures(per_site: list[list[float | None]]) -> Result:
    """RTT median/p99 over all echoes and median per-site jitter, in milliseconds."""
    rtts = sorted(r for site in per_site for r in site if r is not None)
    jitters = sorted(j for j in (jitter_of(site) for site in per_site) if j is not None)
    return {"received": len(rtts), "rtt_median_ms": statistics.median(rtts) if rtts else None,
            "rtt_p99_ms": percentile(rtts, 99), "jitter_median_ms": statistics.median(jitters) if jitters else None,
            "jitter_p99_ms": percentile(jitters, 99)}


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def med(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def rng(values: Sequence[float | None], spec: str = ".1f") -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    lo, hi = min(present), max(present)
    return format(lo, spec) if format(lo, spec) == format(hi, spec) else f"{format(lo, spec)}–{format(hi, spec)}"


# ----------------------------------------------------------------------------- 1. fping vs engine

def measure_fping(addresses: list[str], address_file: str) -> Result:
    argv = ["fping", "-C", str(COUNT), "-q", "-i", "0", "-p", str(round(SPACING * 1000)), "-f", address_file]
    _code, cpu, _wall, _out, err = run_child(argv)
    per_site: list[list[float | None]] = []
    for line in err.decode(errors="replace").splitlines():
        host, sep, values = line.partition(" : ")
        if sep:
            per_site.append([None if v == "-" else float(v) for v in values.split()])
    sent = len(addresses) * COUNT
    return {"sent": sent, "cpu_us_per_echo": cpu / sent * 1e6, **rtt_figures(per_site)}


async def _engine(mode: str, addresses: list[str]) -> Result:
    from monitor.icmp.engine import EchoJob, IcmpEngine

    engine = IcmpEngine.open(mode)
    try:
        cpu0 = time.process_time()
        outcomes = await engine.ping([EchoJob(a, COUNT, SPACING, TIMEOUT) for a in addresses])
        cpu = time.process_time() - cpu0
    finally:
        engine.close()
    sent = sum(o.sent for o in outcomes)
    per_site = [[None if r is None else r * 1000 for r in o.rtts_seconds] for o in outcomes]
    return {"sent": sent, "cpu_us_per_echo": cpu / max(sent, 1) * 1e6, **rtt_figures(per_site),
            "drops": engine.stats.receive_buffer_drops}


def inner_engine(mode: str, sites: int) -> int:
    """Child mode (inside the namespace for the unprivileged engine): print one JSON result."""
    print(json.dumps(asyncio.run(_engine(mode, loopback_addresses(sites)))))
    return 0


def _json_child(argv: list[str]) -> Result:
    """Run a child mode of this script and return the JSON result it prints last (or the error)."""
    code, _cpu, _wall, out, err = run_child(argv)
    try:
        result: Result = json.loads(out.decode().strip().splitlines()[-1])
        return result
    except (ValueError, IndexError):
        return {"error": f"exit {code}: {err.decode(errors='replace')[-300:]}"}


def measure_engine_child(netns: Netns, mode: str, sites: int) -> Result:
    return _json_child(["ip", "netns", "exec", netns.name, PYTHON, __file__, "--inner-engine", mode,
                        "--sites", str(sites)])


# ----------------------------------------------------------------------------- 2./3. the daemon

def write_config(path: Path, addresses: list[str], groups: int = 20, interval: int = INTERVAL,
                 nodes: Sequence[str] = ()) -> None:
    """The daemon's N-site config; with ``nodes``, an ``upstreams:`` forest on those addresses (issue 21).

    The forest: the first tenth of the nodes are roots, each other node hangs from one of them, and
    the sites are dealt to the nodes in turn (so every node has sites behind it).
    """
    lines = ["# generated by bench/scale.py: loopback addresses only"]
    if nodes:
        roots = max(1, len(nodes) // 10)
        lines.append("upstreams:")
        lines += [f"  - {{name: node-{j:03d}, host: {a}, kind: router"
                  + (f", upstream: node-{j % roots:03d}}}" if j >= roots else "}")
                  for j, a in enumerate(nodes)]
    lines.append("groups:")
    per = -(-len(addresses) // groups)
    for g in range(groups):
        part = addresses[g * per:(g + 1) * per]
        if not part:
            break
        lines += [f"  - name: region-{g:02d}", "    kind: school", f"    district: District {g}",
                  f"    icmp: {{interval: {interval}s, count: {COUNT}, spacing: {round(SPACING * 1000)}ms, "
                  f"timeout: {TIMEOUT:g}s}}", "    endpoints:"]
        lines += [f"      - {{name: site-{g:02d}-{i:05d}, host: {a}, link: fibre, lat: 50.{i}, lon: 57.{i}"
                  + (f", upstream: node-{(g * per + i) % len(nodes):03d}}}" if nodes else "}")
                  for i, a in enumerate(part)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def get(url: str, gzipped: bool, timeout: float = 30, decode: bool = True) -> tuple[float, int, bytes]:
    """(seconds from request to last byte, bytes on the wire, decoded body; with ``decode=False``
    the body as it came)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip" if gzipped else "identity"})
    started = time.perf_counter()
    with opener.open(request, timeout=timeout) as response:
        body = response.read()
        took = time.perf_counter() - started
        encoded = response.headers.get("Content-Encoding") == "gzip"
    return took, len(body), gzip.decompress(body) if encoded and decode else body


def metric_values(text: bytes, names: Sequence[str]) -> dict[str, float]:
    """Sum of each named sample over its series (enough for counts and sums)."""
    out = dict.fromkeys(names, 0.0)
    for line in text.split(b"\n"):
        if line.startswith(b"connmon_"):
            name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
            if name in out:
                out[name] += float(line.rsplit(b" ", 1)[1])
    return out


class Daemon:
    """``connmon run`` inside the namespace, scraped over loopback in that namespace via a helper."""

    def __init__(self, netns: Netns, config: Path, port: int, *extra: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop(); 1,000 sites down log 1,000 lines)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, PYTHON, "-m", "monitor", "run", "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--icmp-mode", "raw", "--log-level", "warning",
             "--state-dir", tempfile.mkdtemp(prefix="connmon-bench-state-"), *extra],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log)  # a file: a full pipe would block the daemon
        self.netns = netns

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def in_netns_scraper(netns: Netns, url: str, mode: str, seconds: float, clients: int) -> Result:
    """Run this script's scraper mode inside the namespace (the daemon listens on its loopback)."""
    return _json_child(["ip", "netns", "exec", netns.name, PYTHON, __file__, "--inner-scrape", url,
                        "--scrape-mode", mode, "--scrape-seconds", str(seconds), "--scrape-clients", str(clients)])


def inner_scrape(url: str, mode: str, seconds: float, clients: int) -> int:
    """Child mode: ``clients`` threads scrape ``url`` together once per BURST_SECONDS; or ``watch`` mode:
    one gzip scrape every WATCH_SECONDS, printing cycle counters (CPU and RSS are read by the parent)."""
    if mode == "watch":
        names = ("connmon_cycle_duration_seconds_count", "connmon_cycle_duration_seconds_sum",
                 "connmon_icmp_echoes_sent_total", "connmon_icmp_replies_matched_total")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                _took, _size, body = get(url, True)
                print(json.dumps({"t": time.monotonic(), **metric_values(body, names)}), flush=True)
            except OSError:
                pass
            time.sleep(WATCH_SECONDS)
        return 0
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop() -> None:
        nonlocal errors
        while time.monotonic() < end:
            # All clients start together at every whole BURST_SECONDS: 10 concurrent scrapes each time.
            time.sleep(BURST_SECONDS - time.monotonic() % BURST_SECONDS)
            try:
                # Not inflated: ten 43 MB inflations a second (~0.1 s of CPU each) took a core of
                # the two from the daemon being measured, and put their wait into later scrapes.
                took, size, _body = get(url, mode == "gzip", decode=False)
            except OSError:
                with lock:
                    errors += 1
                continue
            with lock:
                latencies.append(took)
                sizes.append(size)

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    print(json.dumps({"scrapes": len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50) * 1000,
                      "p99_ms": percentile(latencies, 99) * 1000, "max_ms": latencies[-1] * 1000,
                      "wire_bytes": statistics.median(sizes)} if latencies else {"error": f"{errors} errors"}))
    return 0


def wait_ready(daemon: Daemon, limit: float = 90) -> float:
    """Seconds until /-/ready answers 200 (start-up: config load, first render, listening)."""
    started = time.perf_counter()
    code = ("import urllib.request as u,sys; o=u.build_opener(u.ProxyHandler({})); "
            f"sys.exit(0 if o.open('http://127.0.0.1:{daemon.port}/-/ready', timeout=2).status == 200 else 1)")
    while time.perf_counter() - started < limit:
        if daemon.proc.poll() is not None:
            daemon.log.seek(0)
            raise RuntimeError(f"daemon exited: {daemon.log.read().decode(errors='replace')[-500:]}")
        if subprocess.run(["ip", "netns", "exec", daemon.netns.name, PYTHON, "-c", code],
                          capture_output=True).returncode == 0:
            return time.perf_counter() - started
        time.sleep(0.3)
    raise RuntimeError("daemon not ready")


def run_daemon(netns: Netns, config: Path, port: int, seconds: float, scrape_seconds: float) -> Result:
    """CPU per echo over whole cycles, RSS per cycle, cycle durations; then concurrent scrapes."""
    daemon = Daemon(netns, config, port)
    try:
        wait_ready(daemon)
        watcher = subprocess.Popen(["ip", "netns", "exec", netns.name, PYTHON, __file__, "--inner-scrape",
                                    daemon.url, "--scrape-mode", "watch", "--scrape-seconds", str(seconds)],
                                   stdout=subprocess.PIPE, text=True, cwd=REPO)
        marks: list[Result] = []  # one per completed cycle count change
        last_cycles = -1.0
        assert watcher.stdout is not None
        for line in watcher.stdout:
            row = json.loads(line)
            if row["connmon_cycle_duration_seconds_count"] != last_cycles:
                last_cycles = row["connmon_cycle_duration_seconds_count"]
                row["cpu_s"] = proc_cpu_seconds(daemon.proc.pid)
                row["rss_mb"] = proc_rss_mb(daemon.proc.pid)
                marks.append(row)
        watcher.wait()
        per_cycle = []
        for a, b in zip(marks[1:], marks[2:], strict=False):
            echoes = b["connmon_icmp_echoes_sent_total"] - a["connmon_icmp_echoes_sent_total"]
            if echoes:
                per_cycle.append({"echoes": echoes, "cpu_s": b["cpu_s"] - a["cpu_s"], "rss_mb": b["rss_mb"]})
        total_echoes = sum(p["echoes"] for p in per_cycle)
        total_cpu = sum(p["cpu_s"] for p in per_cycle)
        cycles = marks[-1]["connmon_cycle_duration_seconds_count"] if marks else 0
        mean_cycle = marks[-1]["connmon_cycle_duration_seconds_sum"] / cycles if cycles else None
        rss, next_at = [], 0.0  # RSS once per interval (every group has had a cycle in between)
        for m in marks[1:]:
            if m["t"] >= next_at:
                rss.append(m["rss_mb"])
                next_at = m["t"] + INTERVAL
        scrapes = {}
        if scrape_seconds:
            for mode in ("gzip", "plain"):
                scrapes[mode] = in_netns_scraper(netns, daemon.url, mode, scrape_seconds, 10)
        _took, plain_size, plain = get_in_netns(netns, daemon.url, False)
        _took, gzip_size, _body = get_in_netns(netns, daemon.url, True)
        max_cycle = max_cycle_seconds(plain)
        return {"cpu_us_per_echo": total_cpu / total_echoes * 1e6 if total_echoes else None,
                "echoes": total_echoes, "cpu_s": total_cpu, "rss_mb": rss, "mean_cycle_s": mean_cycle,
                "max_cycle_s": max_cycle, "scrapes": scrapes, "plain_bytes": plain_size, "gzip_bytes": gzip_size,
                "matched": marks[-1]["connmon_icmp_replies_matched_total"] if marks else 0,
                "sent": marks[-1]["connmon_icmp_echoes_sent_total"] if marks else 0}
    finally:
        daemon.stop()


def get_in_netns(netns: Netns, url: str, gzipped: bool) -> tuple[float, int, bytes]:
    code = (f"import sys,json; sys.path.insert(0, {str(Path(__file__).parent)!r}); from scale import get; "
            f"t,n,b=get({url!r}, {gzipped!r}); sys.stdout.buffer.write(json.dumps([t,n]).encode()+b'\\n'+b)")
    done = subprocess.run(["ip", "netns", "exec", netns.name, PYTHON, "-c", code], capture_output=True)
    if done.returncode:
        raise RuntimeError(f"GET {url} failed: {done.stderr.decode(errors='replace')[-400:]}")
    out = done.stdout
    head, _, body = out.partition(b"\n")
    took, size = json.loads(head)
    return took, size, body


def max_cycle_seconds(text: bytes) -> float | None:
    """Upper bound of the slowest cycle from the cycle-duration histogram (smallest bucket holding all)."""
    buckets: dict[float, float] = {}
    counts: dict[str, float] = {}
    for line in text.split(b"\n"):
        if line.startswith(b"connmon_cycle_duration_seconds_bucket"):
            le = float(line.split(b'le="', 1)[1].split(b'"', 1)[0].replace(b"+Inf", b"inf"))
            buckets[le] = buckets.get(le, 0) + float(line.rsplit(b" ", 1)[1])
        elif line.startswith(b"connmon_cycle_duration_seconds_count"):
            counts["n"] = counts.get("n", 0) + float(line.rsplit(b" ", 1)[1])
    total = counts.get("n", 0)
    for le in sorted(buckets):
        if buckets[le] >= total:
            return le
    return None


# ----------------------------------------------------------------------------- 4. smokeping_prober

def ensure_smokeping() -> str | None:
    path = shutil.which("prometheus-smokeping-prober") or shutil.which("smokeping_prober")
    if path is None and shutil.which("apt-get"):
        print("installing prometheus-smokeping-prober with apt-get …", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus-smokeping-prober"],
                       env=env, capture_output=True)
        subprocess.run(["systemctl", "stop", "prometheus-smokeping-prober"], capture_output=True)
        path = shutil.which("prometheus-smokeping-prober")
    return path


def measure_smokeping(binary: str, netns: Netns, addresses: list[str], protocol: str, seconds: float,
                      port: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "smokeping.yml"
        cfg.write_text("targets:\n- hosts: [" + ", ".join(addresses) + f"]\n  interval: 1s\n  network: ip4\n"
                       f"  protocol: {protocol}\n  size: 56\n")
        argv = ["ip", "netns", "exec", netns.name, binary, f"--config.file={cfg}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"]
        if protocol == "icmp":
            argv.append("--privileged")
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            sent0 = None
            for _ in range(30):  # start-up with many targets takes a while
                time.sleep(1)
                if proc.poll() is not None:
                    return {"error": proc.stderr.read().decode()[-300:]}  # type: ignore[union-attr]
                try:
                    sent0 = smokeping_sent(netns, port)
                    break
                except RuntimeError:
                    continue
            if sent0 is None:
                return {"error": "smokeping_prober did not serve /metrics within 30 s"}
            cpu0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = proc_cpu_seconds(proc.pid), time.monotonic()
            sent1 = smokeping_sent(netns, port)
        finally:
            proc.terminate()
            proc.wait()
    scheduled = len(addresses) * (t1 - t0)
    sent = sent1 - sent0
    return {"cpu_us_per_echo": (cpu1 - cpu0) / max(sent, 1) * 1e6, "sent": sent, "scheduled": scheduled,
            "cores": (cpu1 - cpu0) / (t1 - t0)}


def smokeping_sent(netns: Netns, port: int) -> float:
    _t, _n, body = get_in_netns(netns, f"http://127.0.0.1:{port}/metrics", False)
    total = 0.0
    for line in body.split(b"\n"):
        if line.startswith(b"smokeping_requests_total"):
            total += float(line.rsplit(b" ", 1)[1])
    return total


# ----------------------------------------------------------------------------- 5./6. exposition, start-up

def inner_naive(sites: int) -> int:
    """Child mode: prometheus-client's own registry, N endpoints × (10 gauges + a 10-bucket histogram)."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    labels = ("endpoint", "kind", "district", "link")
    gauges = [Gauge(f"naive_gauge_{i}", "a gauge", labels, registry=registry) for i in range(10)]
    histogram = Histogram("naive_rtt_seconds", "a histogram", labels, registry=registry,
                          buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0))
    for n in range(sites):
        lb = (f"site-{n:05d}", "school", f"District {n % 20}", "fibre")
        for g in gauges:
            g.labels(*lb).set(n)
        histogram.labels(*lb).observe(0.004)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "bytes": len(body), "rss_mb": proc_rss_mb(os.getpid())}))
    return 0


def measure_config_load(config: Path) -> list[float]:
    code = ("import time; t=time.perf_counter(); from monitor.config import load_config; "
            f"from monitor.targets import build_targets; n=len(build_targets(load_config({str(config)!r}))); "
            "print(time.perf_counter()-t, n)")
    out = []
    for _ in range(3):
        done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
        out.append(float(done.stdout.split()[0]))
    return out


# ----------------------------------------------------------------------------- main

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="fping/engine runs, interleaved")
    parser.add_argument("--daemon-seconds", type=float, default=70, help="how long the daemon runs (cycles of 10 s)")
    parser.add_argument("--scrape-seconds", type=float, default=15, help="10 concurrent scrapers, per encoding")
    parser.add_argument("--smokeping-sites", type=int, default=1000)
    parser.add_argument("--skip-smokeping", action="store_true")
    parser.add_argument("--upstreams", type=int, default=0,
                        help="also run the daemon with this many upstream nodes above the sites (issue 21: 200)")
    parser.add_argument("--groups", type=int, default=1,
                        help="groups in the daemon's config (1: one cycle of all sites; a region has ~540)")
    parser.add_argument("--inner-engine", help=argparse.SUPPRESS)
    parser.add_argument("--inner-scrape", help=argparse.SUPPRESS)
    parser.add_argument("--scrape-mode", default="gzip", help=argparse.SUPPRESS)
    parser.add_argument("--scrape-clients", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--inner-naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner_engine:
        return inner_engine(args.inner_engine, args.sites)
    if args.inner_scrape:
        return inner_scrape(args.inner_scrape, args.scrape_mode, args.scrape_seconds, args.scrape_clients)
    if args.inner_naive:
        return inner_naive(args.sites)

    started = time.perf_counter()
    print(icmp_cpu.machine_line())
    addresses = loopback_addresses(args.sites + args.upstreams)
    addresses, node_addresses = addresses[:args.sites], addresses[args.sites:]
    print(f"{args.sites} sites ({addresses[0]} … {addresses[-1]}), {COUNT} echoes {SPACING * 1000:.0f} ms apart, "
          f"timeout {TIMEOUT:g} s", flush=True)
    runs: dict[str, list[Result]] = {"fping": [], "raw": [], "unpriv": []}
    netns = Netns()
    with tempfile.TemporaryDirectory(prefix="connmon-scale-") as tmp_name:
        tmp = Path(tmp_name)
        address_file = tmp / "addresses.txt"
        address_file.write_text("\n".join(addresses) + "\n")
        config = tmp / "sites.yaml"
        write_config(config, addresses, groups=args.groups)
        try:
            netns.start()
            for i in range(args.repeats):
                runs["fping"].append(measure_fping(addresses, str(address_file)))
                runs["raw"].append(asyncio.run(_engine("raw", addresses)))
                runs["unpriv"].append(measure_engine_child(netns, "unprivileged", args.sites))
                print(f"  run {i + 1}: " + "; ".join(
                    f"{k} {r.get('cpu_us_per_echo', float('nan')):.1f} µs/echo, "
                    f"recv {r.get('received')}, RTT med {r.get('rtt_median_ms', float('nan')):.4f} ms "
                    f"p99 {r.get('rtt_p99_ms', float('nan')):.4f} ms, "
                    f"jitter med {r.get('jitter_median_ms', float('nan')):.4f} ms"
                    for k, r in (("fping", runs["fping"][-1]), ("raw", runs["raw"][-1]),
                                 ("unpriv", runs["unpriv"][-1]))), flush=True)

            print(f"daemon, all answering, {args.daemon_seconds:g} s …", flush=True)
            daemon = run_daemon(netns, config, 9390, args.daemon_seconds, args.scrape_seconds)
            print(f"  CPU {daemon['cpu_s']:.2f} s for {daemon['echoes']:.0f} echoes; "
                  f"RSS per cycle (MB): {' '.join(f'{r:.0f}' for r in daemon['rss_mb'])}; "
                  f"matched {daemon['matched']:.0f} of {daemon['sent']:.0f}; scrapes {daemon['scrapes']}", flush=True)

            with_nodes: Result | None = None
            if node_addresses:  # the same daemon and sites with an upstream forest above them, right after
                noded = tmp / "sites-upstreams.yaml"
                write_config(noded, addresses, groups=args.groups, nodes=node_addresses)
                print(f"daemon, all answering, {len(node_addresses)} upstream nodes, {args.daemon_seconds:g} s …",
                      flush=True)
                with_nodes = run_daemon(netns, noded, 9394, args.daemon_seconds, 0)
                print(f"  CPU {with_nodes['cpu_s']:.2f} s for {with_nodes['echoes']:.0f} echoes (the nodes' "
                      f"included): {with_nodes.get('cpu_us_per_echo') or float('nan'):.1f} µs/echo against "
                      f"{daemon.get('cpu_us_per_echo') or float('nan'):.1f} without nodes "
                      f"({(with_nodes.get('cpu_us_per_echo') or 0) / (daemon.get('cpu_us_per_echo') or 1):.3f}×)",
                      flush=True)

            # 3. 10 % never answer: the last tenth of the addresses is dropped inside the namespace.
            dropped = addresses[-(args.sites // 10):]
            subprocess.run(["ip", "netns", "exec", netns.name, "iptables", "-A", "INPUT", "-p", "icmp",
                            "--icmp-type", "echo-request", "-m", "iprange", "--dst-range",
                            f"{dropped[0]}-{dropped[-1]}", "-j", "DROP"], check=True)
            one_group = tmp / "one-group.yaml"
            write_config(one_group, addresses, groups=1)
            print("daemon, one group of all sites, 10 % never answering …", flush=True)
            lossy = run_daemon(netns, one_group, 9391, 3 * INTERVAL + 5, 0)
            subprocess.run(["ip", "netns", "exec", netns.name, "iptables", "-F", "INPUT"], check=True)

            smoke: dict[str, Result] = {}
            binary = None if args.skip_smokeping else ensure_smokeping()
            if binary:
                for protocol in ("icmp", "udp"):
                    try:
                        smoke[protocol] = measure_smokeping(binary, netns, addresses[:args.smokeping_sites],
                                                            protocol, 10, 9392 + (protocol == "udp"))
                    except Exception as err:  # a peer failing must not lose the table
                        smoke[protocol] = {"error": f"{type(err).__name__}: {err}"}
                    print(f"  smokeping_prober {protocol}: {smoke[protocol]}", flush=True)
        finally:
            netns.delete()
        naive = json.loads(subprocess.run([PYTHON, __file__, "--inner-naive", "--sites", str(args.sites)],
                                          capture_output=True, text=True, check=True).stdout)
        load = measure_config_load(config)

    fping_us = med([r["cpu_us_per_echo"] for r in runs["fping"]])
    print_table(args, runs, daemon, lossy, smoke, naive, load, fping_us)
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    return 0


def print_table(args: argparse.Namespace, runs: dict[str, list[Result]], daemon: Result, lossy: Result,
                smoke: dict[str, Result], naive: Result, load: list[float], fping_us: float | None) -> None:
    n = args.sites
    rows: list[tuple[str, str, str, str]] = []  # what, connmon, peer / goal, ratio or verdict

    def ratio_row(name: str, values: list[float], goal: float) -> None:
        if not values or not fping_us:
            rows.append((name, "-", "-", "-"))
            return
        ratios = [v / fping_us for v in values]
        verdict = "met" if med(ratios) is not None and med(ratios) <= goal else "NOT met"  # type: ignore[operator]
        rows.append((name, f"{rng(values)} µs/echo", f"fping {fping_us:.1f} µs/echo; goal ≤ {goal:g}×",
                     f"{rng(ratios, '.2f')}× ({verdict})"))

    rows.append((f"fping -C {COUNT} -i 0, {n} addresses", rng([r["cpu_us_per_echo"] for r in runs["fping"]]) +
                 " µs/echo", "reference", "1.00×"))
    ratio_row("engine, raw sockets", [r["cpu_us_per_echo"] for r in runs["raw"]], 1.5)
    ratio_row("engine, unprivileged", [r["cpu_us_per_echo"] for r in runs["unpriv"] if "cpu_us_per_echo" in r], 2.0)
    ratio_row(f"whole daemon, {args.groups} group(s) (+1 gzip scrape/3 s)",
              [daemon["cpu_us_per_echo"]] if daemon.get("cpu_us_per_echo") else [], 3.0)
    bound = COUNT * SPACING + TIMEOUT + 1
    mean = lossy.get("mean_cycle_s")
    rows.append((f"daemon cycle of all {n} sites in one group, 10 % never answer",
                 f"mean {mean or float('nan'):.2f} s (slowest ≤ {lossy['max_cycle_s']:g} s bucket)",
                 f"bound count×spacing+timeout+1 s = {bound:g} s",
                 "met" if mean is not None and mean <= bound else "NOT met"))
    for key, goal, label in (("rtt_median_ms", 0.05, "RTT median"), ("rtt_p99_ms", 0.5, "RTT p99")):
        diffs = [abs(a[key] - b[key]) for a, b in zip(runs["raw"], runs["fping"], strict=True)
                 if a.get(key) is not None and b.get(key) is not None]
        rows.append((f"{label}, raw engine vs fping", rng([r[key] for r in runs["raw"]], ".4f") + " ms",
                     "fping " + rng([r[key] for r in runs["fping"]], ".4f") + f" ms; |diff| ≤ {goal} ms",
                     f"|diff| {rng(diffs, '.4f')} ms ({'met' if diffs and max(diffs) <= goal else 'NOT met'})"))
    jit = [r["jitter_median_ms"] for r in runs["raw"] if r.get("jitter_median_ms") is not None]
    rows.append(("loopback jitter (median per site), raw engine", rng(jit, ".4f") + " ms",
                 "fping " + rng([r.get("jitter_median_ms") for r in runs["fping"]], ".4f") + " ms; goal < 0.05 ms",
                 "met" if jit and max(jit) < 0.05 else "NOT met"))
    for mode in ("gzip", "plain"):
        s = daemon["scrapes"].get(mode, {})
        if "p99_ms" in s:
            rows.append((f"/metrics {mode}, 10 concurrent scrapers while probing",
                         f"p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms ({s['scrapes']} scrapes)",
                         "goal p99 ≤ 100 ms", "met" if s["p99_ms"] <= 100 else "NOT met"))
    rows.append(("/metrics payload",
                 f"{daemon['plain_bytes'] / 1e6:.1f} MB plain, {daemon['gzip_bytes'] / 1e6:.2f} MB gzip",
                 f"prometheus-client generate_latest: {naive['seconds'] * 1000:.0f} ms, {naive['bytes'] / 1e6:.1f} MB "
                 f"(10 gauges + 10-bucket histogram)", "cached: 0 ms render per scrape"))
    if lossy.get("cpu_us_per_echo"):
        ratio_row("whole daemon, 1 group, 10 % never answer", [lossy["cpu_us_per_echo"]], 3.0)
    rss = daemon["rss_mb"]
    rows.append(("daemon RSS after each cycle", f"{rss[0]:.0f} → {rss[-1]:.0f} MB (max {max(rss):.0f})" if rss else "-",
                 f"goal ≤ 150 MB, no growth ({args.daemon_seconds:g} s run)",
                 "met" if rss and max(rss) <= 150 else "NOT met"))
    rows.append(("load + validate config", f"{rng(load, '.2f')} s", "goal ≤ 2 s",
                 "met" if load and max(load) <= 2 else "NOT met"))
    for protocol, r in smoke.items():
        if "cpu_us_per_echo" in r and daemon.get("cpu_us_per_echo"):
            rows.append((f"smokeping_prober 0.6.1 {protocol}, {args.smokeping_sites} at 1 s",
                         f"{r['cpu_us_per_echo']:.0f} µs/echo ({r['cores']:.2f} cores, {r['sent']:.0f} of "
                         f"{r['scheduled']:.0f} scheduled)",
                         f"connmon daemon {daemon['cpu_us_per_echo']:.1f} µs/echo",
                         f"{r['cpu_us_per_echo'] / daemon['cpu_us_per_echo']:.0f}× connmon's CPU"))
    widths = [max(len(r[i]) for r in rows + [("what", "connmon", "peer / goal", "ratio")]) for i in range(4)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(("what", "connmon", "peer / goal", "ratio"), widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    raise SystemExit(main())
