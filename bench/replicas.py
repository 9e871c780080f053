"""Replicas (issue 19): what ``--replicas 2`` costs against ``--replicas 1`` at N sites, two instances.

Run as root from the repository root:

    .venv/bin/python bench/replicas.py [--sites 10000] [--seconds 60]

Two ``connmon run`` (``--shard 0/2`` and ``--shard 1/2``) probe the same N-site config (interval
10 s, 3 echoes 200 ms apart, as bench/scale.py) inside one network namespace whose loopback holds
every address; first with ``--replicas 1`` (each site once), then with ``--replicas 2`` (each site by
both). Over the same number of seconds it reads each daemon's CPU time (from /proc) and echoes sent
(from /metrics) and prints the daemons' CPU per echo and their total CPU: the expected cost of R = 2
is twice the echoes at the same CPU per echo, and nothing more. It never fails on a figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from icmp_cpu import Netns, loopback_addresses  # noqa: E402
from scale import Daemon, get_in_netns, metric_values, proc_cpu_seconds, wait_ready, write_config  # noqa: E402

PORT = 19980


def measure(netns: Netns, config: Path, replicas: int, seconds: float) -> dict[str, float]:
    daemons = [Daemon(netns, config, PORT + i, "--shard", f"{i}/2", "--replicas", str(replicas)) for i in range(2)]
    try:
        for d in daemons:
            wait_ready(d)
        time.sleep(12)  # one whole interval: every group has started
        start = [(proc_cpu_seconds(d.proc.pid), sent(netns, d)) for d in daemons]
        time.sleep(seconds)
        end = [(proc_cpu_seconds(d.proc.pid), sent(netns, d)) for d in daemons]
    finally:
        for d in daemons:
            d.stop()
    cpu = sum(e[0] - s[0] for s, e in zip(start, end, strict=True))
    echoes = sum(e[1] - s[1] for s, e in zip(start, end, strict=True))
    return {"cpu_s": cpu, "echoes": echoes, "us_per_echo": cpu / echoes * 1e6 if echoes else float("nan")}


def sent(netns: Netns, daemon: Daemon) -> float:
    _took, _size, body = get_in_netns(netns, daemon.url, False)
    return metric_values(body, ["connmon_icmp_echoes_sent_total"])["connmon_icmp_echoes_sent_total"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    addresses = loopback_addresses(args.sites)
    netns = Netns()
    try:
        netns.start()
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "sites.yaml"
            write_config(config, addresses)
            one = measure(netns, config, 1, args.seconds)
            two = measure(netns, config, 2, args.seconds)
    finally:
        netns.delete()
    print(f"{args.sites} sites, two instances, {args.seconds:g} s each run")
    for name, r in (("--replicas 1", one), ("--replicas 2", two)):
        print(f"  {name}: {r['echoes']:.0f} echoes, {r['cpu_s']:.2f} s CPU, {r['us_per_echo']:.1f} µs/echo")
    print(f"  R=2 / R=1: echoes ×{two['echoes'] / one['echoes']:.2f}, CPU ×{two['cpu_s'] / one['cpu_s']:.2f}, "
          f"CPU per echo ×{two['us_per_echo'] / one['us_per_echo']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
