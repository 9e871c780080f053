"""What agent sites cost the centre (issue 10): CPU per posted result, beside the centre probing itself.

Starts ``connmon run`` on 127.0.0.1 with N agent sites (``mode: agent``) and a history, posts from a
separate process B batches per site (each R ICMP results of C echoes, as an agent that was offline
for R intervals would) with K requests in flight, and reads the daemon's own CPU time from
/proc/PID/stat before and after. For scale it then runs the same daemon probing N loopback sites
itself (127.2.x.y, C echoes each) for the same number of results and prints both per result.
Every packet goes to 127.0.0.0/8. Prints figures, asserts nothing.

    .venv/bin/python bench/agent_ingest.py                    # 1,000 sites × 5 batches of 10 results
    .venv/bin/python bench/agent_ingest.py --sites 5000 --batches 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.agent.centre.registry import token_hash  # noqa: E402

PORT = 19931
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"connmon exited {proc.returncode}; see its log")
        try:
            with opener.open(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("connmon did not become ready")


def start(config: str, state: Path, port: int) -> subprocess.Popen[bytes]:
    path = state / "connmon.yaml"
    path.write_text(config, encoding="utf-8")
    log = (state / "connmon.log").open("wb")  # a pipe nobody reads would fill and stall the daemon's logging
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(path), "--listen",
                             f"127.0.0.1:{port}", "--state-dir", str(state)], stderr=log,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_ready(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


async def post_all(port: int, sites: int, batches: int, per_batch: int, count: int, inflight: int) -> float:
    """Every site posts ``batches`` batches in order; returns the wall time."""
    now = time.time() - batches * per_batch * 60
    rtts = [0.0005 + 0.00001 * i for i in range(count)]

    async def one_site(session: aiohttp.ClientSession, index: int, gate: asyncio.Semaphore) -> None:
        name = f"a{index}"
        seq = 0
        for b in range(batches):
            results = []
            for r in range(per_batch):
                seq += 1
                results.append({"seq": seq, "type": "icmp", "started_at": now + (b * per_batch + r) * 60,
                                "address": "127.0.0.1", "sent": count, "rtts_seconds": rtts})
            body = {"site": name, "agent": {"version": "bench", "instance": "i", "boot_id": "b",
                                            "uptime_seconds": 1000.0, "sent_at": time.time()}, "results": results}
            async with gate, session.post(f"http://127.0.0.1:{port}/api/v1/agent/results", json=body,
                                          headers={"Authorization": f"Bearer token-{index}"}) as response:
                answer = await response.json()
                if response.status != 200 or answer["accepted"] != per_batch:
                    raise SystemExit(f"{name}: {response.status} {answer}")

    gate = asyncio.Semaphore(inflight)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as session:
        await asyncio.gather(*(one_site(session, i, gate) for i in range(sites)))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--results", type=int, default=10, help="results per batch")
    parser.add_argument("--count", type=int, default=10, help="echoes per result")
    parser.add_argument("--inflight", type=int, default=20)
    args = parser.parse_args()
    n = args.sites
    total = n * args.batches * args.results

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "agents"
        state.mkdir()
        endpoints = "".join(f"      - {{name: a{i}, agent: {{token_sha256: {token_hash(f'token-{i}')}}}}}\n"
                            for i in range(n))
        proc = start(f"defaults:\n  icmp: {{interval: 1h}}\ngroups:\n  - name: agents\n    kind: school\n"
                     f"    mode: agent\n    endpoints:\n{endpoints}", state, PORT)
        try:
            time.sleep(1)
            before = cpu_seconds(proc.pid)
            wall = asyncio.run(post_all(PORT, n, args.batches, args.results, args.count, args.inflight))
            time.sleep(2)  # the history writer finishes in its thread
            ingest_cpu = cpu_seconds(proc.pid) - before
            ingest_rss = rss_mb(proc.pid)
        finally:
            stop(proc)

        state = Path(tmp) / "probing"
        state.mkdir()
        rounds = max(1, total // n)
        interval = 1 + args.count * 0.01 + 0.5
        endpoints = "".join(f"      - {{name: p{i}, host: 127.2.{i // 250}.{i % 250 + 1}}}\n" for i in range(n))
        proc = start(f"defaults:\n  icmp: {{interval: {interval:.2f}s, count: {args.count}, spacing: 10ms, "
                     f"timeout: 500ms}}\ngroups:\n  - name: probed\n    kind: school\n    endpoints:\n{endpoints}",
                     state, PORT + 1)
        try:
            time.sleep(interval)  # the first cycle starts at once; measure whole cycles after it
            before = cpu_seconds(proc.pid)
            time.sleep(rounds * interval)
            probe_cpu = cpu_seconds(proc.pid) - before
            probe_rss = rss_mb(proc.pid)
        finally:
            stop(proc)

    probe_results = n * rounds
    print(json.dumps({"sites": n, "results_posted": total, "echoes_per_result": args.count}))
    print("| what | results | daemon CPU s | CPU per result | results/s | RSS MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| agent results posted (batches of {args.results}, {args.inflight} in flight) | {total} | "
          f"{ingest_cpu:.2f} | {ingest_cpu / total * 1e6:.0f} µs | {total / wall:.0f} | {ingest_rss:.0f} |")
    print(f"| the centre probing {n} loopback sites itself | {probe_results} | {probe_cpu:.2f} | "
          f"{probe_cpu / probe_results * 1e6:.0f} µs | – | {probe_rss:.0f} |")
    print(f"ratio (agent result / own probe result): {ingest_cpu / total / (probe_cpu / probe_results):.2f}")


if __name__ == "__main__":
    main()
