"""Throughput scheduling in the running daemon: the global limit, windows, budgets, metrics.

A real ``connmon run`` in the prober namespace tests real iperf3/HTTP servers in site namespaces;
/metrics is sampled while it runs, and the tests' recorded start times and durations are checked.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.factories import write_config
from tests.netlab import Lab, Site, can_measure_throughput, child_env
from tests.promtool import promtool_problems
from tests.running import samples

PORT = 9079
OBSERVE_SECONDS = 180  # an upper bound on waiting; the test stops as soon as it has seen enough


@pytest.fixture(scope="module")
def running(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], dict]]:
    ok, reason = can_measure_throughput()
    need(ok, reason)
    sites: dict[str, Site] = {name: lab.add_site(f"td-{name}") for name in ("a", "b", "c", "sat", "refused")}
    for name in ("a", "b", "c"):
        sites[name].shape(10, 10)
        sites[name].start_iperf3()
    sites["sat"].shape(10, 10)
    sites["sat"].start_http(8080)
    hour = dt.datetime.now(dt.UTC).hour
    outside = f"{(hour + 6) % 24:02d}:00-{(hour + 8) % 24:02d}:00"  # hours away from now, in UTC
    inside = f"{(hour - 1) % 24:02d}:00-{(hour + 2) % 24:02d}:00"
    cfg = write_config(tmp_path_factory.mktemp("td"), f"""
throughput: {{max_concurrent: 1}}
defaults:
  icmp: {{interval: 2s, count: 2, spacing: 100ms, timeout: 500ms}}
  throughput: {{method: iperf3, every: 12s, duration: 1s, omit: 0s, timeout: 3s, directions: [download]}}
groups:
  - name: schools
    kind: school
    district: Aktobe
    endpoints:
      - {{name: a, host: {sites['a'].v4}, link: fibre}}
      - {{name: b, host: {sites['b'].v4}, link: fibre}}
      - {{name: c, host: {sites['c'].v4}, link: dsl, target_mbps: 20}}
      - {{name: night-only, host: {sites['a'].v4}, throughput: {{windows: ["{outside}"], timezone: UTC}}}}
      - {{name: day-window, host: {sites['b'].v4}, throughput: {{windows: ["{inside}"], timezone: UTC}}}}
      - {{name: refused, host: {sites['refused'].v4}, link: lte}}
  - name: satellite
    kind: clinic
    link: satellite
    endpoints:
      - {{name: sat, host: {sites['sat'].v4},
          throughput: {{method: http, url: "http://{{host}}:8080/blob", directions: [upload],
                        monthly_budget: 600kB, duration: 3s}}}}
""")
    proc = subprocess.Popen(
        lab.connmon_argv("run", "--config", str(cfg), "--listen", f"{lab.prober_v4}:{PORT}", "--log-format", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    seen: dict[str, set[tuple[float, float]]] = {}
    last: dict = {}
    text = ""
    try:
        deadline = time.monotonic() + OBSERVE_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                _status, text = lab.get(PORT, "/metrics")
            except OSError:
                time.sleep(0.2)
                continue
            last = samples(text)
            starts = last.get("connmon_throughput_last_test_timestamp_seconds", {})
            durations = last.get("connmon_throughput_test_duration_seconds", {})
            for labels, start in starts.items():
                name = dict(labels)["endpoint"]
                seen.setdefault(name, set()).add((start, durations.get(labels, 0.0)))
            tests = {dict(k)["endpoint"]: v for k, v in last.get("connmon_throughput_tests_total", {}).items()}
            if all(len(seen.get(n, ())) >= 2 for n in ("a", "b", "c")) and tests.get("sat", 0) >= 2 \
                    and tests.get("refused", 0) >= 1 and tests.get("day-window", 0) >= 1:
                break
            time.sleep(0.25)
        yield proc, {"seen": seen, "last": last, "text": text}
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)
        for site in sites.values():
            site.stop_servers()


def _by_endpoint(parsed: dict, name: str, **labels: str) -> dict[str, float]:
    return {dict(k)["endpoint"]: v for k, v in parsed.get(name, {}).items() if set(labels.items()) <= set(k)}


def test_no_two_tests_overlap_with_max_concurrent_one(running: tuple) -> None:
    """With max_concurrent 1 the recorded (start, start + duration) spans of all sites never overlap."""
    _proc, state = running
    spans = sorted((start, start + duration, name) for name, pairs in state["seen"].items()
                   for start, duration in pairs if duration > 0)
    assert len({name for _, _, name in spans}) >= 3 and len(spans) >= 6
    for (_s1, end1, n1), (start2, _e2, n2) in zip(spans, spans[1:], strict=False):
        assert start2 >= end1 - 0.01, f"{n1} ran until {end1}, {n2} started at {start2}"


def test_rates_target_and_counters_are_exported(running: tuple) -> None:
    """Measured sites have a download rate, a verdict against their own target, bytes and test counts."""
    _proc, state = running
    parsed = state["last"]
    rates = _by_endpoint(parsed, "connmon_throughput_bits_per_second", direction="download")
    assert all(8e6 < rates[n] < 11e6 for n in ("a", "b", "c")), rates
    met = _by_endpoint(parsed, "connmon_target_met")
    assert met["a"] == 1 and met["b"] == 1 and met["c"] == 0  # c's contract says 20 Mbit/s
    moved = _by_endpoint(parsed, "connmon_throughput_bytes_total", direction="download")
    assert moved["a"] > 1_000_000
    errors = _by_endpoint(parsed, "connmon_probe_errors_total", probe="throughput", reason="refused")
    assert errors["refused"] >= 1 and errors["a"] == 0
    assert _by_endpoint(parsed, "connmon_up")["refused"] == 1  # ICMP goes on for a site whose test fails
    tools = parsed["connmon_throughput_tool_available"]
    assert list(tools.values()) == [1.0]


def test_a_window_is_honoured(running: tuple) -> None:
    """A site whose window is hours away is never tested; one inside its window is."""
    _proc, state = running
    tests = _by_endpoint(state["last"], "connmon_throughput_tests_total")
    assert tests["night-only"] == 0
    assert tests["day-window"] >= 1


def test_an_exhausted_budget_skips_with_reason_budget(running: tuple) -> None:
    """600 kB a month: the first test is capped to the budget, the next is skipped with reason 'budget'."""
    _proc, state = running
    parsed = state["last"]
    skipped = _by_endpoint(parsed, "connmon_probe_errors_total", probe="throughput", reason="budget")
    assert skipped["sat"] >= 1
    remaining = _by_endpoint(parsed, "connmon_throughput_budget_remaining_bytes")["sat"]
    moved = _by_endpoint(parsed, "connmon_throughput_bytes_total", direction="upload")["sat"]
    assert remaining < 256 * 1024 and moved <= 600_000 + 64 * 1024  # at most one read beyond the cap


def test_exposition_passes_promtool(running: tuple) -> None:
    """The exposition with throughput families passes promtool (bar the allowed bits lint)."""
    _proc, state = running
    assert promtool_problems(state["text"]) == []


def test_missing_iperf3_warns_at_start_and_icmp_goes_on(lab: Lab, tmp_path: Path) -> None:
    """Without iperf3 the daemon starts, warns once naming the fix, exports tool_available 0, keeps probing."""
    need(can_measure_throughput()[0], "needs namespaces")
    cfg = write_config(tmp_path, """
defaults:
  icmp: {interval: 1s, count: 1, timeout: 500ms}
groups:
  - name: g
    throughput: {method: iperf3, every: 10s, duration: 1s, omit: 0s, timeout: 2s}
    endpoints:
      - {name: loop, host: 127.0.0.1}
""")
    argv = ["env", "PATH=/usr/sbin", *lab.connmon_argv("run", "--config", str(cfg), "--listen",
                                                        f"{lab.prober_v4}:{PORT + 1}")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        parsed: dict = {}
        for _ in range(120):
            try:
                parsed = samples(lab.get(PORT + 1, "/metrics")[1])
            except OSError:
                parsed = {}
            errors = _by_endpoint(parsed, "connmon_probe_errors_total", probe="throughput", reason="tool_missing")
            if errors.get("loop", 0) >= 1:
                break
            assert proc.poll() is None
            time.sleep(0.25)
        assert errors["loop"] >= 1
        assert list(parsed["connmon_throughput_tool_available"].values()) == [0.0]
        assert _by_endpoint(parsed, "connmon_up")["loop"] == 1
    finally:
        proc.terminate()
        _out, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert stderr.count("apt install iperf3") == 1  # the start-up warning, once; each test logs its own line
