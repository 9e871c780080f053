"""``connmon agent`` against the real centre (``connmon run`` with a ``mode: agent`` site).

The agent runs in a site namespace of the lab and the centre in the prober; the site's default
route leads to the prober, so the agent reaches the centre's listening address and nothing
leaves the lab. The NAT topology of the issue is in tests/test_agent_nat.py; this module covers
what the centre shows of the agent and what happens when the *centre* goes away.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor import __version__
from monitor.agent.centre.registry import token_hash
from monitor.agent.site.spool import FILE_NAME
from monitor.history.sqlite import SqliteStore, database_path
from tests.factories import write_config
from tests.netlab import Lab, Site, child_env
from tests.running import running_daemon, scrape_when, value

PORT = 19720
TOKEN = "token-of-school-agent-real-centre"


@pytest.fixture(scope="module")
def site(lab: Lab) -> Iterator[Site]:
    the_site = lab.add_site("agent-real")
    the_site.exec("ip", "route", "add", "default", "via", f"10.77.{the_site.index}.1")
    yield the_site


def centre_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 3, spacing: 50ms, timeout: 500ms}}
groups:
  - name: vsat
    kind: school
    district: Shalkar
    link: satellite
    mode: agent
    endpoints:
      - {{name: school-agent, agent: {{token_sha256: {token_hash(TOKEN)}}}}}
""")


def agent_config(tmp_path: Path, lab: Lab, port: int) -> Path:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    return write_config(tmp_path, f"""
centre: http://{lab.prober_v4}:{port}
site: school-agent
token_file: {token}
state_dir: {tmp_path / "agent-state"}
interval: 1s
icmp: {{count: 3, spacing: 50ms, timeout: 500ms}}
gateway: auto
""", name="agent.yaml")


@contextlib.contextmanager
def running_agent(site: Site, config: Path) -> Iterator[subprocess.Popen[str]]:
    env = {**child_env(), "CONNMON_AGENT_BOOT_ID": "boot-real", "CONNMON_AGENT_BOOTED_AT": str(time.time() - 500)}
    proc = subprocess.Popen(["ip", "netns", "exec", site.ns, sys.executable, "-m", "monitor", "agent", "--config",
                             str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def spooled(tmp_path: Path) -> int:
    if not (tmp_path / "agent-state" / FILE_NAME).exists():
        return 0
    with contextlib.closing(sqlite3.connect(tmp_path / "agent-state" / FILE_NAME, timeout=10)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM results").fetchone()[0])
        except sqlite3.OperationalError as err:  # the file exists a moment before the agent made its table
            if "no such table" not in str(err):
                raise
            return 0


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode == 0, proc.communicate()[1][-3000:]


def test_the_agents_results_make_the_site_up_in_the_centres_metrics(lab: Lab, site: Site, tmp_path: Path) -> None:
    base = f"http://{lab.prober_v4}:{PORT}"
    with running_daemon(lab, centre_config(tmp_path), PORT, "--state-dir", str(tmp_path / "state")) as centre, \
            running_agent(site, agent_config(tmp_path, lab, PORT)) as agent:
        parsed = scrape_when(f"{base}/metrics", lambda s: value(s, "connmon_icmp_packets_sent_total",
                                                                endpoint="school-agent") >= 6, centre)
        assert agent.poll() is None
        stop(agent)
    assert value(parsed, "connmon_up", endpoint="school-agent", kind="school", district="Shalkar",
                 link="satellite") == 1
    assert value(parsed, "connmon_agent_silent", endpoint="school-agent") == 0
    assert value(parsed, "connmon_agent_info", endpoint="school-agent", version=__version__) == 1
    assert value(parsed, "connmon_agent_gateway_up", endpoint="school-agent") == 1
    assert value(parsed, "connmon_icmp_packets_received_total", endpoint="school-agent") == \
        value(parsed, "connmon_icmp_packets_sent_total", endpoint="school-agent")  # the lab loses nothing
    assert value(parsed, "connmon_agent_uptime_seconds", endpoint="school-agent") >= 500


def test_a_centre_outage_is_backfilled_into_history_at_the_measured_times(lab: Lab, site: Site,
                                                                         tmp_path: Path) -> None:
    """The centre stops; the agent measures on into its spool; the centre starts again and gets every cycle,
    stored at the time it was measured, and the site was up all along (only the centre was away)."""
    port = PORT + 1
    base = f"http://{lab.prober_v4}:{port}"
    state = tmp_path / "state"
    config = centre_config(tmp_path)
    with running_agent(site, agent_config(tmp_path, lab, port)) as agent:
        with running_daemon(lab, config, port, "--state-dir", str(state)) as centre:
            scrape_when(f"{base}/metrics", lambda s: value(s, "connmon_up", endpoint="school-agent") == 1, centre)
            stop(centre)
        stopped_at = time.time()
        deadline = time.monotonic() + 60
        while spooled(tmp_path) < 10:  # ten results (centre + gateway per cycle): five cycles while away
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.2)
        restarted_at = time.time()
        with running_daemon(lab, config, port, "--state-dir", str(state)) as centre:
            scrape_when(f"{base}/metrics", lambda s: spooled(tmp_path) <= 2 and value(
                s, "connmon_agent_results_total", endpoint="school-agent", outcome="accepted") >= 10, centre)
            stop(centre)
        stop(agent)
    store = SqliteStore(database_path(state))
    try:
        away = list(store.icmp_cycles("school-agent", stopped_at, restarted_at))
    finally:
        store.close()
    assert len(away) >= 4, away
    assert all(c.received == c.sent == 3 and c.error is None for c in away), away
    gaps = [b.started_at - a.started_at for a, b in zip(away, away[1:], strict=False)]
    assert all(0.5 < gap < 2.5 for gap in gaps), gaps  # one a second, as measured, not bunched at the upload


def test_an_https_centre_with_a_private_ca_takes_results_and_serves_the_http_test(lab: Lab, site: Site,
                                                                                  tmp_path: Path) -> None:
    """ca_file: the agent trusts the centre's private CA for its uploads, slot requests and the HTTP test's
    transfers (download and upload, each with the token); without it, nothing reaches the centre."""
    from tests.pki import make_pki

    pki = make_pki(tmp_path, lab.prober_v4)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n")
    port = PORT + 2
    config = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 3, spacing: 50ms, timeout: 500ms}}
groups:
  - name: vsat
    kind: school
    mode: agent
    throughput: {{method: http, every: 10s, duration: 1s, omit: 0s, timeout: 3s}}
    endpoints:
      - {{name: school-agent, agent: {{token_sha256: {token_hash(TOKEN)}}}}}
""")
    agent_yaml = agent_config(tmp_path, lab, port)
    plain = agent_yaml.read_text().replace("http://", "https://")
    agent_yaml.write_text(plain + "throughput: {enabled: true}\n")
    context = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://{lab.prober_v4}:{port}"
    with running_daemon(lab, config, port, "--state-dir", str(tmp_path / "state"), "--web.config.file",
                        str(web)) as centre:
        with running_agent(site, agent_yaml) as agent:  # no ca_file: the centre's certificate is not trusted
            deadline = time.monotonic() + 60
            while spooled(tmp_path) < 6:
                assert time.monotonic() < deadline and agent.poll() is None
                time.sleep(0.2)
            stop(agent)
            assert "certificate verify failed" in agent.communicate()[1]
        agent_yaml.write_text(plain + f"throughput: {{enabled: true}}\nca_file: {pki.ca}\n")
        with running_agent(site, agent_yaml) as agent:
            parsed = scrape_when(f"{base}/metrics", lambda s: value(
                s, "connmon_throughput_tests_total", endpoint="school-agent") >= 1, centre, attempts=4 * 60,
                context=context)
            stop(agent)
    assert value(parsed, "connmon_up", endpoint="school-agent") == 1
    for direction in ("download", "upload"):  # the unshaped veth: fast, and measured, in both directions
        assert value(parsed, "connmon_throughput_bits_per_second", endpoint="school-agent", direction=direction) > 1e6
    assert value(parsed, "connmon_probe_errors_total", endpoint="school-agent", probe="throughput",
                 reason="http_status") == 0
