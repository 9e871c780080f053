"""The daemon end to end: real sites in namespaces, ``connmon run``, /metrics scraped over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import write_config
from tests.netlab import Lab, child_env
from tests.promtool import promtool_problems
from tests.running import samples, value

PORT = 9077
CYRILLIC = "№12 мектеп"


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("daemon") / "connmon.yaml"


@pytest.fixture(scope="module")
def daemon(lab: Lab, config_file: Path) -> Iterator[subprocess.Popen[str]]:
    healthy, lossy, dead = lab.add_site("healthy"), lab.add_site("lossy"), lab.add_site("dead")
    lossy.drop_icmp(probability=0.3)
    dead.drop_icmp()
    cfg = write_config(config_file.parent, f"""
defaults:
  target_mbps: 4
  icmp: {{interval: 2s, count: 10, spacing: 50ms, timeout: 500ms}}
groups:
  - name: schools
    kind: school
    district: Aktobe
    endpoints:
      - {{name: healthy, host: {healthy.v4}, link: fibre, lat: 50.28, lon: 57.17}}
      - {{name: healthy-v6, host: "{healthy.v6}", link: fibre}}
      - {{name: "{CYRILLIC}", host: 127.0.0.12, link: dsl, district: Ақтөбе}}
      - {{name: by-name, host: healthy.lab.test, link: lte}}
  - name: clinics
    kind: clinic
    district: Shalkar
    target_mbps: 2
    endpoints:
      - {{name: lossy, host: {lossy.v4}, link: satellite, target_mbps: 1.5, icmp: {{count: 100, spacing: 5ms}}}}
      - {{name: dead, host: {dead.v4}, link: satellite}}
      - {{name: broken-name, host: nosuch.lab.test, link: lte}}
""")
    proc = subprocess.Popen(
        lab.connmon_argv("run", "--config", str(cfg), "--listen", f"{lab.prober_v4}:{PORT}", "--log-format", "json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def scrape_when(lab: Lab, ready: callable, attempts: int = 60) -> str:
    """Scrape until ``ready(parsed)`` holds (bounded: ``attempts`` half-second tries)."""
    text = ""
    for _ in range(attempts):
        try:
            status, text = lab.get(PORT, "/metrics")
        except OSError:
            status = 0
        if status == 200 and ready(samples(text)):
            return text
        time.sleep(0.5)
    shown = "\n".join(line for line in text.splitlines() if line.startswith(("connmon_up", "connmon_probe_err")))
    raise AssertionError(f"condition not met; last scrape's up/error series:\n{shown}")


def test_metrics_report_every_site_truly(lab: Lab, daemon: subprocess.Popen[str]) -> None:
    """After a cycle, /metrics says who is up, lossy, down or unresolvable, with the right labels."""
    # ≥ 300 echoes to the 30 %-lossy site: ±0.10 is then ~3.8 standard deviations of the loss estimate
    text = scrape_when(lab, lambda p: len(p.get("connmon_up", {})) == 7
                       and value(p, "connmon_icmp_packets_sent_total", endpoint="lossy") >= 300)
    p = samples(text)
    for name in ("healthy", "healthy-v6", CYRILLIC, "by-name", "lossy"):
        assert value(p, "connmon_up", endpoint=name) == 1, name
    for name in ("dead", "broken-name"):
        assert value(p, "connmon_up", endpoint=name) == 0, name
    assert value(p, "connmon_icmp_loss_ratio", endpoint="healthy") == 0
    assert value(p, "connmon_icmp_loss_ratio", endpoint="dead") == 1
    assert value(p, "connmon_up", endpoint=CYRILLIC, kind="school", district="Ақтөбе", link="dsl") == 1
    assert value(p, "connmon_up", endpoint="lossy", kind="clinic", district="Shalkar", link="satellite") == 1
    assert value(p, "connmon_probe_errors_total", endpoint="broken-name", probe="icmp", reason="dns") >= 1
    assert value(p, "connmon_probe_errors_total", endpoint="healthy", probe="icmp", reason="dns") == 0
    assert value(p, "connmon_target_bits_per_second", endpoint="healthy") == 4_000_000
    assert value(p, "connmon_target_bits_per_second", endpoint="dead") == 2_000_000
    assert value(p, "connmon_target_bits_per_second", endpoint="lossy") == 1_500_000
    assert value(p, "connmon_endpoint_info", endpoint="healthy", lat="50.28", lon="57.17", group="schools") == 1
    sent = value(p, "connmon_icmp_packets_sent_total", endpoint="healthy")
    assert sent >= 10 and sent % 10 == 0
    assert value(p, "connmon_icmp_packets_received_total", endpoint="healthy") == sent
    assert value(p, "connmon_icmp_packets_received_total", endpoint="dead") == 0
    lossy_sent = value(p, "connmon_icmp_packets_sent_total", endpoint="lossy")
    lossy_received = value(p, "connmon_icmp_packets_received_total", endpoint="lossy")
    assert abs((1 - lossy_received / lossy_sent) - 0.30) <= 0.10
    assert value(p, "connmon_icmp_rtt_seconds_count", endpoint="healthy") == sent
    assert value(p, "connmon_icmp_rtt_seconds_bucket", endpoint="healthy", le="+Inf") == sent
    last = {stat: value(p, "connmon_icmp_rtt_last_seconds", endpoint="healthy", stat=stat)
            for stat in ("min", "avg", "max")}
    assert 0 < last["min"] <= last["avg"] <= last["max"]
    assert value(p, "connmon_cycle_duration_seconds_count", probe="icmp", group="schools") >= 1
    assert value(p, "connmon_cycles_skipped_total", probe="icmp", group="schools") == 0
    assert value(p, "connmon_config_last_reload_successful") == 1
    assert value(p, "connmon_build_info") == 1
    assert value(p, "connmon_icmp_receive_buffer_drops_total") == 0
    assert value(p, "connmon_icmp_echoes_sent_total") >= sum(
        v for k, v in p["connmon_icmp_packets_sent_total"].items())
    assert promtool_problems(text) == []


def test_daemon_keeps_probing_and_serving_health(lab: Lab, daemon: subprocess.Popen[str]) -> None:
    """Cycles keep coming despite a failing name, and the health endpoints answer."""
    first = samples(scrape_when(lab, lambda p: "connmon_up" in p))
    sent_before = value(first, "connmon_icmp_packets_sent_total", endpoint="healthy")
    dns_before = value(first, "connmon_probe_errors_total", endpoint="broken-name", reason="dns")
    later = samples(scrape_when(
        lab, lambda p: value(p, "connmon_icmp_packets_sent_total", endpoint="healthy") > sent_before
        and value(p, "connmon_probe_errors_total", endpoint="broken-name", reason="dns") > dns_before))
    assert value(later, "connmon_up", endpoint="healthy") == 1
    assert lab.get(PORT, "/-/healthy")[0] == 200
    assert lab.get(PORT, "/-/ready")[0] == 200
    assert daemon.poll() is None


def test_sighup_reload_keeps_the_last_good_config_and_drops_removed_sites(
        lab: Lab, daemon: subprocess.Popen[str], config_file: Path) -> None:
    """A broken file on SIGHUP changes nothing but the reload gauge; a good one removes gone sites' series."""
    good = config_file.read_text(encoding="utf-8")
    before = samples(scrape_when(lab, lambda p: "connmon_up" in p))
    stamp = value(before, "connmon_config_last_reload_success_timestamp_seconds")
    config_file.write_text(good.replace("host: nosuch.lab.test", "hots: nosuch.lab.test"), encoding="utf-8")
    daemon.send_signal(signal.SIGHUP)
    failed = samples(scrape_when(lab, lambda p: value(p, "connmon_config_last_reload_successful") == 0))
    assert value(failed, "connmon_config_last_reload_success_timestamp_seconds") == stamp
    assert len(failed["connmon_endpoint_info"]) == 7  # the running config is untouched
    without_dead = "\n".join(line for line in good.splitlines() if "name: dead," not in line) + "\n"
    config_file.write_text(without_dead, encoding="utf-8")
    daemon.send_signal(signal.SIGHUP)
    reloaded = samples(scrape_when(lab, lambda p: value(p, "connmon_config_last_reload_successful") == 1))
    names = {dict(k)["endpoint"] for k in reloaded["connmon_endpoint_info"]}
    assert "dead" not in names and len(names) == 6
    assert not any(dict(k).get("endpoint") == "dead" for series in reloaded.values() for k in series)
    assert value(reloaded, "connmon_config_last_reload_success_timestamp_seconds") > stamp
    assert daemon.poll() is None


def test_sigterm_exits_zero_and_logs_are_json_lines(lab: Lab, daemon: subprocess.Popen[str]) -> None:
    """SIGTERM stops the daemon with exit 0; every log line is JSON with level and endpoint."""
    scrape_when(lab, lambda p: "connmon_up" in p)
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, stderr
    entries = [json.loads(line) for line in stderr.splitlines()]
    assert all({"ts", "level", "msg"} <= set(e) for e in entries)
    down = [e for e in entries if e.get("endpoint") == "dead"]
    assert down and down[0]["level"] == "warning" and "down" in down[0]["msg"]
    dns = [e for e in entries if e.get("endpoint") == "broken-name"]
    assert dns and dns[0]["reason"] == "dns"
    assert any(e.get("endpoint") == CYRILLIC and e["msg"].startswith("up") for e in entries)
    assert entries[-1]["msg"] == "stopped"
    assert any(e["level"] == "error" and "reload failed" in e["msg"] and "hots" in e["msg"] for e in entries)
