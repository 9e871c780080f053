"""Roll-out tracking on a running daemon (issue 11): a planned site is counted and never probed.

The planned site has a real host, a lab namespace whose iptables INPUT chain counts what arrives
(ICMP, and every IPv4 packet), so "never probed" is the kernel's own count staying at 0 while the
daemon runs several cycles of a connected site next to it. A reload that turns it connected must
make the same counters move and ``connmon_up`` appear. Namespaces are named ``ro<pid>-…`` and the
daemon listens on 19601 inside the lab's prober, so other test runs cannot collide with this one.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.history.sqlite import SqliteStore, database_path
from tests.arrivals import arrivals, count_arrivals
from tests.conftest import need
from tests.factories import write_config
from tests.netlab import Lab, can_make_namespaces
from tests.running import running_daemon, scrape_when, value

PORT = 19601
CONFIG = """\
defaults:
  icmp: {{interval: 1s, count: 2, spacing: 50ms, timeout: 300ms}}
groups:
  - name: clinics
    kind: clinic
    district: Temir
    link: satellite
    throughput: {{method: iperf3, every: 10s, duration: 1s, omit: 0s, timeout: 2s}}
    endpoints:
      - {{name: working, host: {working}}}
      - {{name: waiting, host: {waiting}, status: {status}, planned_date: 2026-12-15, provider: KazSat}}
"""


class RolloutLab(Lab):
    """The shared lab, with namespaces named ``ro<pid>-pr`` and ``ro<pid>-sN``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base = f"ro{os.getpid() % 100000}"
        self.prober = f"{self.base}-pr"
        self.etc = Path("/etc/netns") / self.prober
        self.host_if = f"{self.base}h"[:15]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    ok, reason = can_make_namespaces()
    need(ok, reason)
    the_lab = RolloutLab(tag="").open()
    try:
        yield the_lab
    finally:
        the_lab.close()


def test_a_planned_site_is_counted_and_never_probed_until_connected(lab: Lab, tmp_path: Path) -> None:
    """Several cycles: the planned site receives nothing, is counted in connmon_sites and has no connmon_up;
    `connmon probe` skips it and refuses it by name; after SIGHUP with status connected it is probed."""
    working, waiting = lab.add_site("ro-working"), lab.add_site("ro-waiting")
    count_arrivals(waiting)
    cfg = write_config(tmp_path, CONFIG.format(working=working.v4, waiting=waiting.v4, status="planned"))
    state = tmp_path / "state"
    url = f"http://{lab.prober_v4}:{PORT}/metrics"
    with running_daemon(lab, cfg, PORT, "--state-dir", str(state)) as proc:
        planned = scrape_when(url, lambda p: p.get("connmon_icmp_packets_sent_total", {}) != {} and value(
            p, "connmon_icmp_packets_sent_total", endpoint="working") >= 10, proc)  # 5 cycles of 2 echoes
        assert arrivals(waiting) == (0, 0, 0)
        assert value(planned, "connmon_sites", status="planned") == 1
        assert value(planned, "connmon_sites", status="connected", kind="clinic", district="Temir",
                     link="satellite") == 1
        assert value(planned, "connmon_endpoint_info", endpoint="waiting", status="planned", provider="KazSat") == 1
        assert value(planned, "connmon_up", endpoint="working") == 1
        for name, series in planned.items():  # no up, ICMP, target or throughput series for it
            if name != "connmon_endpoint_info":
                assert not any(dict(k).get("endpoint") == "waiting" for k in series), name

        one_shot = lab.connmon("probe", "--config", str(cfg), "--json")
        assert one_shot.returncode == 0, one_shot.stderr
        assert [json.loads(line)["endpoint"] for line in one_shot.stdout.splitlines()] == ["working"]
        named = lab.connmon("probe", "--config", str(cfg), "--endpoint", "waiting")
        assert named.returncode == 2 and named.stdout == ""
        assert "not probed" in named.stderr and "waiting (status: planned)" in named.stderr
        assert arrivals(waiting) == (0, 0, 0)

        records = {e.name: e for e in SqliteStore(database_path(state), read_only=True).endpoints()}
        assert records["waiting"].status == "planned" and records["waiting"].provider == "KazSat"

        cfg.write_text(CONFIG.format(working=working.v4, waiting=waiting.v4, status="connected"), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        connected = scrape_when(url, lambda p: any(dict(k).get("endpoint") == "waiting"
                                                   for k in p.get("connmon_up", {}))
                                and value(p, "connmon_up", endpoint="waiting") == 1, proc)
        icmp, every, echoes_v6 = arrivals(waiting)
        assert icmp > 0 and every >= icmp and echoes_v6 == 0
        assert value(connected, "connmon_sites", status="connected") == 2
        assert "planned" not in {dict(k)["status"] for k in connected["connmon_sites"]}
        assert value(connected, "connmon_endpoint_info", endpoint="waiting", status="connected") == 1
