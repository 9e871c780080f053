"""CPU per ICMP echo: fping vs. connmon's engine (raw, unprivileged) vs. the whole `connmon probe` CLI.

Run as root from the repository root:

    /work/main/.venv/bin/python bench/icmp_cpu.py [--sites N] [--count C]

Every echo goes to a loopback address (127.1.x.y, 127.2.x.y, ...): the script refuses to build
any other target. All methods ping the SAME N addresses, C echoes each. Each measurement is
repeated (3 times by default, interleaved round-robin across methods) and the table shows the
median of the repeats; per-run figures are printed above the table.

What is measured:

* fping      `fping -C C -q -i 0 -p <spacing ms> -f <file>`; CPU = user+sys of that child (os.wait4).
* engine raw  in this process, `IcmpEngine.open("raw")`, one `await engine.ping(jobs)`;
              CPU = `time.process_time()` delta around the ping call only.
* engine unpriv  same, `IcmpEngine.open("unprivileged")`, run by `--inner-unprivileged` in a
              child process inside a throw-away network namespace whose
              net.ipv4.ping_group_range is "0 2147483647" (the host's stays untouched).
* CLI         `connmon probe --json --icmp-mode raw --config <temp yaml>` as a child process;
              CPU = user+sys of that child (os.wait4), i.e. including interpreter start-up,
              imports, config loading and JSON output. The start-up alone is measured with
              `python -c "import monitor.cli"` and a second row shows the CLI minus it.

The script prints figures only: it never asserts a timing and its exit status does not depend on
how fast anything was.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
SPACING_SECONDS = 0.2  # fping -p and connmon spacing
TIMEOUT_SECONDS = 1.0  # connmon timeout (fping keeps its default -t 500 ms)
Result = dict[str, Any]


# ----------------------------------------------------------------------------- addresses

def loopback_addresses(n: int) -> list[str]:
    """N distinct addresses 127.a.b.c with a >= 1, c in 1..254; all inside 127.0.0.0/8."""
    per_a = 256 * 254
    if n > 255 * per_a:
        raise SystemExit(f"--sites {n}: at most {255 * per_a} loopback addresses are generated")
    out = []
    for i in range(n):
        a, rest = divmod(i, per_a)
        b, c = divmod(rest, 254)
        out.append(f"127.{a + 1}.{b}.{c + 1}")
    for address in out:  # the network rule: loopback only, never anything else
        if ipaddress.ip_address(address) not in LOOPBACK:
            raise SystemExit(f"refusing non-loopback address {address}")
    return out


# ----------------------------------------------------------------------------- statistics

def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def rtt_summary(rtts_ms: list[float]) -> Result:
    rtts_ms.sort()
    return {
        "rtt_median_ms": statistics.median(rtts_ms) if rtts_ms else None,
        "rtt_p99_ms": percentile(rtts_ms, 99),
        "rtt_max_ms": rtts_ms[-1] if rtts_ms else None,
        "rtt_over_1ms": sum(1 for r in rtts_ms if r > 1.0),
    }


def median_of(runs: Sequence[Result], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


# ----------------------------------------------------------------------------- children

def run_child(argv: Sequence[str], stdin_data: bytes | None = None) -> tuple[int, float, float, bytes, bytes]:
    """Run argv; return (exit code, CPU seconds user+sys of that child, wall seconds, stdout, stderr).

    The child is reaped with os.wait4 so its own rusage is read (not a RUSAGE_CHILDREN delta that
    could include other children). Output goes through temporary files so that a large stdout
    cannot block the child while we are not reading.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as inp:
        if stdin_data is not None:
            inp.write(stdin_data)
            inp.seek(0)
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=inp if stdin_data is not None else subprocess.DEVNULL,
                                stdout=out, stderr=err, cwd=REPO)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: tell Popen
        out.seek(0)
        err.seek(0)
        return proc.returncode, usage.ru_utime + usage.ru_stime, wall, out.read(), err.read()


# ----------------------------------------------------------------------------- fping

def measure_fping(addresses: list[str], count: int, address_file: str) -> Result:
    period_ms = round(SPACING_SECONDS * 1000)
    argv = ["fping", "-C", str(count), "-q", "-i", "0", "-p", str(period_ms), "-f", address_file]
    code, cpu, wall, _out, err = run_child(argv)
    wanted = set(addresses)
    rtts: list[float] = []
    received = 0
    lines = 0
    for line in err.decode(errors="replace").splitlines():
        host, sep, values = line.partition(" : ")
        if not sep or host.strip() not in wanted:
            continue
        lines += 1
        for value in values.split():
            if value != "-":
                received += 1
                rtts.append(float(value))
    sent = len(addresses) * count
    result: Result = {"sent": sent, "received": received, "cpu_s": cpu, "wall_s": wall,
                      "cpu_us_per_echo": cpu / sent * 1e6, **rtt_summary(rtts), "exit": code}
    if code > 1 or lines != len(addresses):
        result["note"] = f"fping exit {code}, {lines} result lines: {err.decode(errors='replace')[-300:]!r}"
    return result


# ----------------------------------------------------------------------------- the engine

async def _engine_once(mode: str, addresses: list[str], count: int) -> Result:
    from monitor.icmp.engine import EchoJob, IcmpEngine

    engine = IcmpEngine.open(mode)
    try:
        jobs = [EchoJob(a, count, SPACING_SECONDS, TIMEOUT_SECONDS) for a in addresses]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        outcomes = await engine.ping(jobs)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        stats = engine.stats
        described = engine.describe()
    finally:
        engine.close()
    sent = sum(o.sent for o in outcomes)
    rtts = [r * 1000 for o in outcomes for r in o.rtts_seconds if r is not None]
    errors = sum(1 for o in outcomes if o.error is not None)
    return {
        "sent": sent, "received": len(rtts), "cpu_s": cpu, "wall_s": wall,
        "cpu_us_per_echo": cpu / max(sent, 1) * 1e6, **rtt_summary(rtts),
        "unmatched": stats.replies_unmatched, "late": stats.replies_late,
        "rcvbuf_drops": stats.receive_buffer_drops, "send_errors": stats.send_errors,
        "job_errors": errors, "engine": described,
    }


def measure_engine(mode: str, addresses: list[str], count: int) -> Result:
    return asyncio.run(_engine_once(mode, addresses, count))


class Netns:
    """A throw-away network namespace with lo up and unprivileged ICMP allowed for every group."""

    def __init__(self) -> None:
        self.name = f"connmon-bench-{os.getpid()}-{os.urandom(3).hex()}"
        self.created = False
        self.ready = False

    def start(self) -> None:
        """Create it; raises OSError or CalledProcessError (call :meth:`delete` either way)."""
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.created = True
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-q", "-w",
                        "net.ipv4.ping_group_range=0 2147483647"], check=True, capture_output=True)
        self.ready = True

    def delete(self) -> None:
        self.ready = False
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.created = False


def measure_unprivileged(netns: Netns, sites: int, count: int) -> Result:
    argv = ["ip", "netns", "exec", netns.name, PYTHON, str(Path(__file__).resolve()),
            "--inner-unprivileged", "--sites", str(sites), "--count", str(count)]
    code, _cpu, _wall, out, err = run_child(argv)
    try:
        result: Result = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"inner run exit {code}: {err.decode(errors='replace')[-400:]!r}"}
    return result


# ----------------------------------------------------------------------------- the CLI

def write_config(path: str, addresses: list[str], count: int) -> None:
    interval = max(60, math.ceil(count * SPACING_SECONDS + TIMEOUT_SECONDS) + 1)
    spacing_ms = round(SPACING_SECONDS * 1000)
    lines = [
        "# generated by bench/icmp_cpu.py: loopback addresses only",
        "groups:",
        "  - name: bench",
        "    kind: school",
        f"    icmp: {{interval: {interval}s, count: {count}, spacing: {spacing_ms}ms, "
        f"timeout: {TIMEOUT_SECONDS:g}s}}",
        "    endpoints:",
    ]
    lines += [f"      - {{name: site-{i:06d}, host: {a}}}" for i, a in enumerate(addresses)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def connmon_argv() -> list[str]:
    script = Path(PYTHON).parent / "connmon"
    return [str(script)] if script.exists() else [PYTHON, "-m", "monitor"]


def measure_cli(config_path: str, count: int) -> Result:
    argv = connmon_argv() + ["probe", "--config", config_path, "--json", "--icmp-mode", "raw",
                             "--log-level", "warning"]
    code, cpu, wall, out, err = run_child(argv)
    sent = received = 0
    rtts: list[float] = []
    for line in out.decode(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        sent += row["sent"]
        received += row["received"]
        rtts += [r * 1000 for r in row["rtts_seconds"] if r is not None]
    result: Result = {"sent": sent, "received": received, "cpu_s": cpu, "wall_s": wall,
                      "cpu_us_per_echo": cpu / max(sent, 1) * 1e6, **rtt_summary(rtts), "exit": code}
    if code > 1 or not sent:
        result["note"] = f"connmon exit {code}: {err.decode(errors='replace')[-300:]!r}"
    return result


def measure_startup() -> Result:
    code, cpu, wall, _out, err = run_child([PYTHON, "-c", "import monitor.cli"])
    result: Result = {"cpu_s": cpu, "wall_s": wall}
    if code:
        result["note"] = err.decode(errors="replace")[-300:]
    return result


# ----------------------------------------------------------------------------- report

def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def describe_run(name: str, index: int, r: Result) -> str:
    if "error" in r:
        return f"  {name:<26} run {index}: ERROR {r['error']}"
    text = (f"  {name:<26} run {index}: sent {r.get('sent', '-')}, recv {r.get('received', '-')}, "
            f"CPU {r['cpu_s'] * 1000:.1f} ms ({fmt(r.get('cpu_us_per_echo'), '.1f')} µs/echo), "
            f"wall {r['wall_s']:.2f} s, RTT med/p99/max {fmt(r.get('rtt_median_ms'), '.4f')}/"
            f"{fmt(r.get('rtt_p99_ms'), '.4f')}/{fmt(r.get('rtt_max_ms'), '.3f')} ms, "
            f">1ms {r.get('rtt_over_1ms', '-')}")
    if "unmatched" in r:
        text += (f"; engine: unmatched {r['unmatched']}, late {r['late']}, "
                 f"rcvbuf drops {r['rcvbuf_drops']}, send errors {r['send_errors']}")
    if r.get("note"):
        text += f"\n      note: {r['note']}"
    return text


def print_table(rows: list[tuple[str, list[Result]]], fping_us: float | None,
                cpu_override: dict[str, float]) -> None:
    header = ("method", "echoes", "received", "CPU µs/echo", "ratio to fping", "RTT median ms", "RTT p99 ms")
    lines = [header]
    for name, runs in rows:
        ok = [r for r in runs if "error" not in r]
        if not ok:
            lines.append((name, "-", "-", "skipped", "-", "-", "-"))
            continue
        us = cpu_override.get(name, median_of(ok, "cpu_us_per_echo"))
        sent = median_of(ok, "sent")
        recv = median_of(ok, "received")
        lines.append((
            name,
            fmt(sent, ".0f"),
            fmt(recv, ".0f"),
            fmt(us, ".1f"),
            f"{us / fping_us:.2f}×" if us is not None and fping_us else "-",
            fmt(median_of(ok, "rtt_median_ms"), ".4f"),
            fmt(median_of(ok, "rtt_p99_ms"), ".4f"),
        ))
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    for n, row in enumerate(lines):
        print(" | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


def machine_line() -> str:
    fping = shutil.which("fping")
    fping_version = "not found"
    if fping:
        done = subprocess.run([fping, "-v"], capture_output=True, text=True)
        fping_version = (done.stdout or done.stderr).strip().split(":")[-1].strip()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"machine: nproc {os.cpu_count()} ({model or 'unknown CPU'}), kernel {platform.release()}, "
            f"Python {platform.python_version()}, fping {fping_version}")


# ----------------------------------------------------------------------------- main

def inner_unprivileged(sites: int, count: int) -> int:
    """Child mode, run inside the bench's network namespace: one unprivileged engine measurement."""
    try:
        result = measure_engine("unprivileged", loopback_addresses(sites), count)
    except Exception as err:  # report, do not crash: the parent prints it in the table
        result = {"error": f"{type(err).__name__}: {err}"}
    print(json.dumps(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=1000, help="loopback addresses to ping (default 1000)")
    parser.add_argument("--count", type=int, default=3, help="echoes per address (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the table shows the median")
    parser.add_argument("--inner-unprivileged", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    if args.inner_unprivileged:
        return inner_unprivileged(args.sites, args.count)

    started = time.perf_counter()
    addresses = loopback_addresses(args.sites)
    echoes = args.sites * args.count
    print(machine_line())
    print(f"sites {args.sites} ({addresses[0]} … {addresses[-1]}), count {args.count}, "
          f"spacing {SPACING_SECONDS * 1000:.0f} ms, connmon timeout {TIMEOUT_SECONDS:g} s; "
          f"{args.repeats} runs per method, interleaved; table = median of the {args.repeats} runs")

    have_fping = shutil.which("fping") is not None
    runs: dict[str, list[Result]] = {k: [] for k in
                                     ("fping", "engine raw", "engine unpriv", "CLI", "start-up")}
    with tempfile.TemporaryDirectory(prefix="connmon-bench-") as tmp:
        address_file = os.path.join(tmp, "addresses.txt")
        Path(address_file).write_text("\n".join(addresses) + "\n", encoding="ascii")
        config_path = os.path.join(tmp, "bench.yaml")
        write_config(config_path, addresses, args.count)

        netns = Netns()
        try:
            try:
                netns.start()
            except (OSError, subprocess.CalledProcessError) as err:
                detail = getattr(err, "stderr", b"") or str(err)
                print(f"note: no network namespace for the unprivileged run: {detail!r}")
            for _ in range(args.repeats):
                runs["fping"].append(measure_fping(addresses, args.count, address_file) if have_fping
                                     else {"error": "fping not installed"})
                try:
                    runs["engine raw"].append(measure_engine("raw", addresses, args.count))
                except Exception as err:
                    runs["engine raw"].append({"error": f"{type(err).__name__}: {err}"})
                runs["engine unpriv"].append(measure_unprivileged(netns, args.sites, args.count)
                                             if netns.ready else {"error": "no network namespace"})
                runs["CLI"].append(measure_cli(config_path, args.count))
                runs["start-up"].append(measure_startup())
        finally:
            netns.delete()

    print("\nper run (CPU = user+sys; engine rows: process_time around ping() only):")
    for name, results in runs.items():
        if name == "start-up":
            continue
        for i, r in enumerate(results, 1):
            print(describe_run(name, i, r))
    startup_cpu = median_of(runs["start-up"], "cpu_s")
    print("  start-up (`python -c 'import monitor.cli'`): CPU "
          + ", ".join(f"{r['cpu_s'] * 1000:.1f} ms" for r in runs["start-up"])
          + f"; median {fmt(startup_cpu and startup_cpu * 1000, '.1f')} ms")

    fping_us = median_of([r for r in runs["fping"] if "error" not in r], "cpu_us_per_echo")
    cli_ok = [r for r in runs["CLI"] if "error" not in r]
    cli_cpu = median_of(cli_ok, "cpu_s")
    override: dict[str, float] = {}
    if cli_cpu is not None and startup_cpu is not None:
        override["CLI minus start-up"] = (cli_cpu - startup_cpu) / echoes * 1e6
    rows = [
        ("fping -C -i 0", runs["fping"]),
        ("engine raw (in-process)", runs["engine raw"]),
        ("engine unprivileged (netns)", runs["engine unpriv"]),
        ("connmon probe CLI, incl. start-up", runs["CLI"]),
        ("CLI minus start-up", runs["CLI"]),
    ]
    print(f"\nmedian of {args.repeats} runs; {args.sites} sites × {args.count} echoes = {echoes} "
          "echoes per run; CPU per echo = CPU / echoes sent")
    print_table(rows, fping_us, override)
    startup_ms = fmt(startup_cpu and startup_cpu * 1000, ".1f")
    startup_us = fmt(startup_cpu and startup_cpu / echoes * 1e6, ".1f")
    print(f"start-up = `python -c 'import monitor.cli'` CPU, median {startup_ms} ms "
          f"(= {startup_us} µs/echo at this size); 'CLI minus start-up' = CLI child CPU (median) "
          "− start-up (median): config load, resolve, ping, JSON.")
    print(f"total wall time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
