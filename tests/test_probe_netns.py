"""ICMP probing of real test hosts in network namespaces, through ``connmon probe --json``.

What the kernel was made to do (iptables drops, missing routes, failing names) is compared
with what connmon reports.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import write_config
from tests.netlab import Lab, Site

RESPONDER_DELAY_SECONDS = 0.3


@pytest.fixture(scope="module")
def sites(lab: Lab) -> Iterator[dict[str, Site]]:
    healthy = lab.add_site("healthy")
    lossy = lab.add_site("lossy")
    lossy.drop_icmp(probability=0.3)
    dead = lab.add_site("dead")
    dead.drop_icmp()
    rejecting = lab.add_site("rejecting")  # a firewall that answers "host unreachable"
    rejecting.exec("iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "REJECT",
                   "--reject-with", "icmp-host-unreachable")
    rejecting.exec("ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "REJECT",
                   "--reject-with", "icmp6-addr-unreachable")
    slow = lab.add_site("slow")
    slow.exec("sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    responder = subprocess.Popen(
        ["ip", "netns", "exec", slow.ns, sys.executable, str(Path(__file__).with_name("echo_responder.py")),
         "--delay", str(RESPONDER_DELAY_SECONDS)], stdout=subprocess.PIPE, text=True)
    try:
        assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
        yield {"healthy": healthy, "lossy": lossy, "dead": dead, "slow": slow, "rejecting": rejecting}
    finally:
        responder.kill()
        responder.wait()


DEFAULT_ICMP = "{interval: 60s, count: 5, spacing: 50ms, timeout: 1s}"


def _config(tmp_path: Path, endpoints: str, icmp: str = DEFAULT_ICMP) -> Path:
    return write_config(tmp_path, f"""
defaults:
  icmp: {icmp}
groups:
  - name: lab
    kind: school
    district: Test
    endpoints:
{endpoints}
""")


def test_healthy_site_answers_every_echo_over_ipv4_ipv6_names_and_loopback(
        lab: Lab, sites: dict[str, Site], tmp_path: Path) -> None:
    """A reachable site answers all echoes over IPv4, IPv6, a hosts-file name, and loopback."""
    h = sites["healthy"]
    cfg = _config(tmp_path, f"""
      - {{name: v4, host: {h.v4}, link: fibre}}
      - {{name: v6, host: "{h.v6}", link: fibre}}
      - {{name: by-name, host: healthy.lab.test, link: dsl}}
      - {{name: "№12 мектеп", host: 127.0.0.1, link: lte}}
""")
    code, results = lab.probe_json(cfg)
    assert code == 0
    assert set(results) == {"v4", "v6", "by-name", "№12 мектеп"}
    assert results["v6"]["address"] == h.v6
    assert results["by-name"]["address"] == h.v4
    for r in results.values():
        assert (r["up"], r["sent"], r["received"], r["loss_ratio"], r["error"]) == (True, 5, 5, 0.0, None)
        assert 0 < r["rtt_min_seconds"] <= r["rtt_avg_seconds"] <= r["rtt_max_seconds"] <= 1.0
        assert r["jitter_seconds"] is not None and r["jitter_seconds"] >= 0


def test_loss_equals_what_iptables_dropped(lab: Lab, sites: dict[str, Site], tmp_path: Path) -> None:
    """With 30 % of echo requests dropped at random, connmon's loss is exactly the kernel's drop count."""
    lossy = sites["lossy"]
    cfg = _config(tmp_path, f"      - {{name: lossy, host: {lossy.v4}}}",
                  icmp="{interval: 60s, count: 400, spacing: 5ms, timeout: 1s}")
    dropped_before = lossy.dropped_echoes()
    _, results = lab.probe_json(cfg)
    dropped = lossy.dropped_echoes() - dropped_before
    r = results["lossy"]
    assert r["sent"] == 400
    assert r["received"] == 400 - dropped  # every echo the kernel let through was answered and counted
    assert abs(r["loss_ratio"] - 0.30) <= 0.10
    assert r["loss_ratio"] == pytest.approx(dropped / 400)
    assert r["up"] is True


def test_site_dropping_everything_is_down_with_full_loss(lab: Lab, sites: dict[str, Site], tmp_path: Path) -> None:
    """A site that drops every echo is down with loss 1 and no error reason; the exit code is 1."""
    dead = sites["dead"]
    cfg = _config(tmp_path, f"""
      - {{name: dead, host: {dead.v4}}}
      - {{name: alive, host: {sites["healthy"].v4}}}
""", icmp="{interval: 60s, count: 3, spacing: 50ms, timeout: 300ms}")
    code, results = lab.probe_json(cfg)
    assert code == 1
    assert (results["dead"]["up"], results["dead"]["loss_ratio"], results["dead"]["received"]) == (False, 1.0, 0)
    assert results["dead"]["sent"] == 3 and results["dead"]["error"] is None
    assert results["alive"]["up"] is True


def test_unresolvable_name_and_missing_route_are_reasons_not_crashes(
        lab: Lab, sites: dict[str, Site], tmp_path: Path) -> None:
    """A name that does not resolve gives 'dns', an address without a route 'no_route'; others still run."""
    cfg = _config(tmp_path, f"""
      - {{name: no-such-name, host: nosuch.lab.test}}
      - {{name: no-route, host: 10.77.250.2}}
      - {{name: alive, host: {sites["healthy"].v4}}}
""")
    code, results = lab.probe_json(cfg)
    assert code == 1
    assert (results["no-such-name"]["error"], results["no-such-name"]["up"]) == ("dns", False)
    assert results["no-such-name"]["sent"] == 0 and results["no-such-name"]["loss_ratio"] == 1.0
    assert (results["no-route"]["error"], results["no-route"]["sent"]) == ("no_route", 0)
    assert results["alive"]["received"] == 5


def test_unprivileged_datagram_icmp_measures_the_same(lab: Lab, sites: dict[str, Site], tmp_path: Path) -> None:
    """Without CAP_NET_RAW but inside ping_group_range, datagram ICMP probes IPv4 and IPv6 correctly."""
    h, lossy = sites["healthy"], sites["lossy"]
    cfg = _config(tmp_path, f"""
      - {{name: v4, host: {h.v4}}}
      - {{name: v6, host: "{h.v6}"}}
      - {{name: lossy, host: {lossy.v4}}}
""", icmp="{interval: 60s, count: 200, spacing: 5ms, timeout: 1s}")
    lab.allow_unprivileged_icmp(True)
    try:
        before = lossy.dropped_echoes()
        code, results = lab.probe_json(cfg, "--icmp-mode", "unprivileged", no_net_raw=True)
        dropped = lossy.dropped_echoes() - before
    finally:
        lab.allow_unprivileged_icmp(False)
    assert results["v4"]["received"] == results["v6"]["received"] == 200
    assert results["lossy"]["received"] == 200 - dropped
    assert code == 0


def test_no_icmp_permission_stops_start_up_with_the_fix(lab: Lab, tmp_path: Path) -> None:
    """With neither CAP_NET_RAW nor ping_group_range, run and probe stop at once and name both fixes."""
    cfg = _config(tmp_path, "      - {name: lo, host: 127.0.0.1}")
    lab.allow_unprivileged_icmp(False)
    for command in (["run", "--listen", "127.0.0.1:9077"], ["probe"]):
        proc = lab.connmon(*command, "--config", str(cfg), no_net_raw=True, timeout=30)
        assert proc.returncode == 3, proc.stderr
        assert "CAP_NET_RAW" in proc.stderr and "net.ipv4.ping_group_range" in proc.stderr
        assert "Traceback" not in proc.stderr


def _probe_slow_site(lab: Lab, site: Site, tmp_path: Path, timeout: str) -> tuple[int, dict]:
    cfg = _config(tmp_path, f"      - {{name: slow, host: {site.v4}}}",
                  icmp=f"{{interval: 60s, count: 5, spacing: 50ms, timeout: {timeout}}}")
    code, results = lab.probe_json(cfg)
    return code, results["slow"]


def test_rtt_equals_the_delay_the_site_adds(lab: Lab, sites: dict[str, Site], tmp_path: Path) -> None:
    """A site that answers 300 ms late is reported at 300 ms (plus the responder's own few ms), not less."""
    _, r = _probe_slow_site(lab, sites["slow"], tmp_path, "2s")
    assert r["received"] == 5
    for rtt in r["rtts_seconds"]:
        assert RESPONDER_DELAY_SECONDS <= rtt < RESPONDER_DELAY_SECONDS + 0.2
    assert r["jitter_seconds"] < 0.1


def test_replies_after_the_timeout_count_as_lost(lab: Lab, sites: dict[str, Site], tmp_path: Path) -> None:
    """Each echo waits up to `timeout`: replies 300 ms late against a 200 ms timeout are all lost."""
    code, r = _probe_slow_site(lab, sites["slow"], tmp_path, "200ms")
    assert (code, r["up"], r["sent"], r["received"], r["loss_ratio"]) == (1, False, 5, 0, 1.0)


@pytest.mark.parametrize("mode", ["raw", "unprivileged"])
def test_destination_unreachable_is_a_reason_and_harms_no_other_site(
        lab: Lab, sites: dict[str, Site], tmp_path: Path, mode: str) -> None:
    """A site answering "unreachable" gets that reason and who said it; others in the batch are untouched."""
    rej, h = sites["rejecting"], sites["healthy"]
    cfg = _config(tmp_path, f"""
      - {{name: rej-v4, host: {rej.v4}}}
      - {{name: rej-v6, host: "{rej.v6}"}}
      - {{name: v4, host: {h.v4}}}
      - {{name: v6, host: "{h.v6}"}}
""", icmp="{interval: 60s, count: 20, spacing: 10ms, timeout: 1s}")
    lab.allow_unprivileged_icmp(mode == "unprivileged")
    try:
        code, results = lab.probe_json(cfg, "--icmp-mode", mode, no_net_raw=mode == "unprivileged")
    finally:
        lab.allow_unprivileged_icmp(False)
    assert code == 1
    for name, address, what in (("rej-v4", rej.v4, "host unreachable"), ("rej-v6", rej.v6, "address unreachable")):
        r = results[name]
        assert (r["error"], r["up"], r["sent"], r["received"], r["loss_ratio"]) == ("unreachable", False, 20, 0, 1.0)
        assert r["error_detail"] == f"{what} from {address}"
    for name in ("v4", "v6"):  # a pending socket error from the rejecting site must not hit their sends
        assert (results[name]["received"], results[name]["error"]) == (20, None)
