"""The centre's own way out cut, in real namespaces (issue 21): its silent sites are monitor_cut_off, not down.

The centre is ``connmon run`` in the lab's prober namespace; three sites and the centre's two uplink
checks (a "gateway" and an "isp" host) are namespaces of their own. Cutting the prober's way out is
iptables DROP of everything from those five addresses at the prober, and of everything arriving at
each of them: no echo and no reply passes either way. What /metrics, the API and the history say is
compared with what the kernel was made to do.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.history.sqlite import SqliteStore, database_path
from tests.factories import write_config
from tests.netlab import Lab, Site
from tests.running import Samples, one, request, running_daemon, scrape_when, value

PORT = 19900
SITES = ("school-a", "school-b", "clinic-c")
CHECKS = ("gateway", "isp-1")
CUT = "connmon-cut"  # the comment that marks the test's DROP rules, so they can be taken out again


@pytest.fixture(scope="module")
def hosts(lab: Lab) -> Iterator[dict[str, Site]]:
    yield {name: lab.add_site(name) for name in (*SITES, *CHECKS)}


def cut(lab: Lab, host: Site) -> None:
    """Nothing from ``host`` reaches the prober, and nothing reaches ``host`` at all."""
    lab.pr("iptables", "-I", "INPUT", "1", "-s", host.v4, "-m", "comment", "--comment", CUT, "-j", "DROP")
    host.exec("iptables", "-I", "INPUT", "1", "-m", "comment", "--comment", CUT, "-j", "DROP")


def uncut(lab: Lab, host: Site) -> None:
    lab.pr("iptables", "-D", "INPUT", "-s", host.v4, "-m", "comment", "--comment", CUT, "-j", "DROP")
    host.exec("iptables", "-D", "INPUT", "-m", "comment", "--comment", CUT, "-j", "DROP")


def site_state(parsed: Samples, name: str) -> str:
    """The site's one state from connmon_site_state: the state whose series is 1."""
    states = [dict(k)["state"] for k, v in parsed.get("connmon_site_state", {}).items()
              if dict(k).get("endpoint") == name and v == 1]
    assert len(states) == 1, f"{name}: states at 1: {states}"
    return states[0]


def cut_off_count(parsed: Samples, name: str) -> float:
    return value(parsed, "connmon_probe_errors_total", endpoint=name, probe="icmp", reason="monitor_cut_off")


def api_site(lab: Lab, name: str) -> dict[str, object]:
    status, _, body = request(f"http://{lab.prober_v4}:{PORT}/api/v1/sites/{name}")
    assert status == 200, body
    site: dict[str, object] = json.loads(body)
    return site


def icmp_error(lab: Lab, name: str) -> str | None:
    icmp = api_site(lab, name)["icmp"]
    assert isinstance(icmp, dict)
    error = icmp["error"]
    assert error is None or isinstance(error, str)
    return error


def test_a_cut_way_out_makes_every_site_monitor_cut_off_and_one_cut_site_is_down(
        lab: Lab, hosts: dict[str, Site], tmp_path: Path) -> None:
    """Cutting the centre's way out (uplink checks included) turns every site's silence into monitor_cut_off
    in /metrics, the API and the history within a few cycles; un-cutting brings them back up; cutting one
    site only makes that site down, with the centre not cut off."""
    state = tmp_path / "state"
    endpoints = "".join(f"      - {{name: {name}, host: {hosts[name].v4}}}\n" for name in SITES)
    uplink = "".join(f"    - {{name: {name}, host: {hosts[name].v4}}}\n" for name in CHECKS)
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 3, spacing: 50ms, timeout: 400ms}}
monitor:
  uplink:
{uplink}groups:
  - name: lab
    kind: school
    district: Test
    endpoints:
{endpoints}""")
    base = f"http://{lab.prober_v4}:{PORT}/metrics"
    with running_daemon(lab, cfg, PORT, "--state-dir", str(state)) as daemon:
        def when(ready: Callable[[Samples], bool]) -> Samples:
            return scrape_when(base, ready, daemon, attempts=120)  # bounded: 30 s of quarter-second scrapes

        healthy = when(lambda s: all(value(s, "connmon_up", endpoint=n) == 1 for n in SITES)
                       and value(s, "connmon_monitor_cut_off") == 0
                       and all(value(s, "connmon_uplink_up", check=c) == 1 for c in CHECKS))
        assert all(cut_off_count(healthy, n) == 0 for n in SITES)  # the series exists at 0 from start-up

        cut_at = time.time()
        for host in hosts.values():
            cut(lab, host)
        # every site's last result monitor_cut_off: its counter grew and the API's last result says so
        cut_off = when(lambda s: value(s, "connmon_monitor_cut_off") == 1
                       and all(value(s, "connmon_uplink_up", check=c) == 0 for c in CHECKS)
                       and all(cut_off_count(s, n) >= 1 and site_state(s, n) == "monitor_cut_off" for n in SITES)
                       and all(icmp_error(lab, n) == "monitor_cut_off" for n in SITES))
        for name in SITES:
            assert value(cut_off, "connmon_up", endpoint=name) == 0  # the raw truth stays
        # and so it stays, cycle after cycle (the event log's one line below covers them all)
        when(lambda s: all(cut_off_count(s, n) >= 3 for n in SITES) and value(s, "connmon_monitor_cut_off") == 1)

        for host in hosts.values():
            uncut(lab, host)
        back = when(lambda s: value(s, "connmon_monitor_cut_off") == 0
                    and all(value(s, "connmon_up", endpoint=n) == 1 and site_state(s, n) == "up" for n in SITES))
        back_at = time.time()
        counted = {n: cut_off_count(back, n) for n in SITES}

        one_site = hosts["school-b"]
        cut(lab, one_site)
        down = when(lambda s: value(s, "connmon_up", endpoint="school-b") == 0
                    and icmp_error(lab, "school-b") is None)  # down for no reason of the centre's
        assert value(down, "connmon_monitor_cut_off") == 0
        assert all(value(down, "connmon_up", endpoint=n) == 1 for n in SITES if n != "school-b")
        assert cut_off_count(down, "school-b") == counted["school-b"]  # down, not cut off
        assert {n: site_state(down, n) for n in SITES} == {"school-a": "up", "school-b": "down", "clinic-c": "up"}
        assert one(down, "connmon_uplink_up", check="gateway") == 1
        uncut(lab, one_site)

        daemon.send_signal(signal.SIGTERM)  # the history is flushed at shutdown
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr[-3000:]
    assert stderr.count("the centre is cut off:") == 1, stderr[-3000:]  # one line, not one per cycle
    assert stderr.count("the centre is no longer cut off:") == 1, stderr[-3000:]

    store = SqliteStore(database_path(state), read_only=True)
    try:
        for name in SITES:
            during = list(store.icmp_cycles(name, cut_at, back_at))
            assert any(c.error == "monitor_cut_off" for c in during), (name, during)
            assert {c.error for c in during} <= {"monitor_cut_off", None}, (name, during)
            # a silent cycle of the cut that is not monitor_cut_off can only be one that ended before the
            # uplink checks had run since the cut: the one under way at the cut, and the next
            assert len([c for c in during if c.received == 0 and c.error is None]) <= 2, (name, during)
            rows = list(store.icmp_cycles(name, back_at, time.time() + 1))
            assert all(c.error is None for c in rows), (name, rows)  # after the cut: down (b) or up, never cut off
    finally:
        store.close()
