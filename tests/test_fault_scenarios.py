"""Where is the fault (issue 21), end to end: a real network, a real Prometheus, a real Alertmanager.

The lab (:mod:`tests.fault_lab`): a centre, routers ``isp`` → ``agg``, three sites behind ``agg``,
two behind ``isp`` alone, one beside both, the centre's uplink checks on a branch of their own.
connmon runs in the centre with the lab's ``upstreams:``; Prometheus scrapes it and evaluates the
shipped rule file, and sends to Alertmanager with the shipped routing, whose receivers all point at
a webhook receiver in the centre that writes each notification to a file. Each scenario gets a
fresh Prometheus and Alertmanager (so one scenario's groups do not hold back the next one's), and
counts the notifications that arrive.

The rules' ``for:`` durations are divided by 30 in the copy Prometheus loads (5 minutes become 10
seconds) and Alertmanager's ``group_wait`` is 1 second: the expressions, labels, routes and inhibit
rules are the shipped ones; only the waiting is shortened.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import newer_alertmanager
from tests.conftest import need, need_root
from tests.factories import write_config
from tests.fault_lab import SITES_BEHIND, FaultLab
from tests.netlab import child_env
from tests.running import stop_process

ROOT = Path(__file__).resolve().parent.parent
CONNMON_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT, WEBHOOK_PORT = 19970, 19971, 19972, 19973
LEARNING_PORT = 19974  # a second connmon, with no upstreams: declared (the topology is learned from traces)
WATCHED = ("ConnmonSiteDown", "ConnmonUpstreamDown", "ConnmonMonitorCutOff", "ConnmonCommonFault")
SCALE = 30  # the rules' for: durations are divided by this
QUIET_SECONDS = 20  # after the expected notification, how long nothing else may arrive (> SiteDown's scaled for:)


def _scaled(duration: str) -> str:
    units = {"s": 1, "m": 60, "h": 3600}
    seconds = sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))
    return f"{max(2, seconds // SCALE)}s"


def _http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode("utf-8")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=10) as response:
        text = response.read().decode("utf-8")
    return json.loads(text) if text.strip().startswith(("[", "{")) else text


@dataclass
class Receiver:
    """What reached the webhook receiver: every notification, with the receiver it was routed to."""

    path: Path

    def notifications(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def firing(self) -> list[tuple[str, str, dict[str, str]]]:
        """(receiver path, alertname, labels) of every firing alert of a watched name, one per notification."""
        out = []
        for n in self.notifications():
            for alert in n["body"]["alerts"]:
                if alert["status"] == "firing" and alert["labels"]["alertname"] in WATCHED:
                    out.append((n["path"], alert["labels"]["alertname"], alert["labels"]))
        return out

    def counts(self) -> tuple[Counter[str], Counter[str]]:
        """(notifications, alerts) per watched alert name: a notification counts once per name it carries."""
        notifications: Counter[str] = Counter()
        alerts: Counter[str] = Counter()
        for n in self.notifications():
            names = [a["labels"]["alertname"] for a in n["body"]["alerts"]
                     if a["status"] == "firing" and a["labels"]["alertname"] in WATCHED]
            notifications.update(set(names))
            alerts.update(names)
        return notifications, alerts


@dataclass
class Centre:
    fl: FaultLab
    directory: Path
    state: Path
    port: int = CONNMON_PORT

    def api(self, path: str) -> Any:
        status, body = self.fl.lab.get(self.port, path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: {"state": s["state"], "cause": s["cause"]} for s in self.api("/api/v1/sites")["sites"]}

    def wait_for(self, what: str, ok: Callable[[], bool], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not ok():
            assert time.monotonic() < deadline, f"{what}: not within {seconds} s; states {self.states()}"
            time.sleep(0.5)

    @contextmanager
    def alerting(self, name: str) -> Iterator[Receiver]:
        """A fresh Prometheus (shipped rules, scaled waits) and Alertmanager (shipped routes) for one scenario."""
        need(shutil.which("prometheus") is not None, "needs prometheus (scripts/install --test installs it)")
        alertmanager = newer_alertmanager.binary("prometheus-alertmanager")  # >= 0.26: the shipped Telegram
        lab, v4 = self.fl.lab, self.fl.lab.prober_v4
        work = self.directory / name
        work.mkdir()
        rules = yaml.safe_load((ROOT / "config" / "connmon.rules.yml").read_text(encoding="utf-8"))
        for group in rules["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = _scaled(rule["for"])
        (work / "rules.yml").write_text(yaml.safe_dump(rules, allow_unicode=True), encoding="utf-8")
        shipped = (ROOT / "config" / "alertmanager.yml").read_text(encoding="utf-8")
        assert shipped.count("http://alerts.example.org/") == len(re.findall(r"\burl:", shipped)) > 0
        routing = yaml.safe_load(shipped.replace("http://alerts.example.org/", f"http://{v4}:{WEBHOOK_PORT}/"))
        for receiver in routing["receivers"]:
            receiver.pop("telegram_configs", None)  # the webhooks say where each alert went; Telegram stays home
        routing["route"]["group_wait"] = "1s"
        (work / "alertmanager.yml").write_text(yaml.safe_dump(routing), encoding="utf-8")
        (work / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(work / "rules.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{v4}:{ALERTMANAGER_PORT}"]}]}]},
            "scrape_configs": [{"job_name": "connmon", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]}],
        }), encoding="utf-8")
        receiver = Receiver(work / "notifications.jsonl")
        log = (work / "stack.log").open("w")
        procs = [
            subprocess.Popen(["ip", "netns", "exec", lab.prober, sys.executable, "-m", "tests.webhook_receiver", v4,
                              str(WEBHOOK_PORT), str(receiver.path)], stdout=log, stderr=log, env=child_env()),
            subprocess.Popen(["ip", "netns", "exec", lab.prober, str(alertmanager),
                              f"--config.file={work / 'alertmanager.yml'}", f"--storage.path={work / 'am'}",
                              f"--web.listen-address={v4}:{ALERTMANAGER_PORT}", "--cluster.listen-address="],
                             stdout=log, stderr=log),
            subprocess.Popen(["ip", "netns", "exec", lab.prober, "prometheus",
                              f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                              f"--web.listen-address={v4}:{PROMETHEUS_PORT}"],
                             stdout=log, stderr=log),
        ]
        try:
            deadline = time.monotonic() + 60
            while True:
                assert all(p.poll() is None for p in procs), (work / "stack.log").read_text()[-3000:]
                try:
                    _http_json(f"http://{v4}:{ALERTMANAGER_PORT}/-/ready")
                    _http_json(f"http://{v4}:{PROMETHEUS_PORT}/-/ready")
                    up = _http_json(f"http://{v4}:{PROMETHEUS_PORT}/api/v1/query?query=up")["data"]["result"]
                    if up and up[0]["value"][1] == "1":
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, \
                    "alerting stack not ready: " + (work / "stack.log").read_text()[-3000:]
                time.sleep(0.5)
            yield receiver
        finally:
            for p in procs:
                stop_process(p)
            log.close()

    def wait_for_notification(self, receiver: Receiver, alertname: str, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while not any(name == alertname for _, name, _ in receiver.firing()):
            assert time.monotonic() < deadline, (f"no {alertname} notification within {seconds} s; got "
                                                 f"{receiver.notifications()}; states {self.states()}")
            time.sleep(0.5)
        time.sleep(QUIET_SECONDS)  # anything else that was going to arrive has arrived


@contextmanager
def running_connmon(fl: FaultLab, directory: Path, port: int, *, upstreams: bool) -> Iterator[Centre]:
    """connmon in the lab's centre on ``port``, with the lab's uplink checks, and its upstreams if asked."""
    directory.mkdir(exist_ok=True)
    state = directory / "state"
    config = write_config(directory, fl.config_yaml(upstreams=upstreams, uplink=True))
    log = (directory / "connmon.log").open("w")
    proc = subprocess.Popen(fl.lab.connmon_argv("run", "--config", str(config), "--listen", f"0.0.0.0:{port}",
                                                "--state-dir", str(state)),
                            stdout=log, stderr=log, env=child_env())
    c = Centre(fl, directory, state, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (directory / "connmon.log").read_text()[-3000:]
            try:
                if all(s["state"] == "up" for s in c.states().values()):
                    break
            except (OSError, AssertionError, json.JSONDecodeError):
                pass
            assert time.monotonic() < deadline, (directory / "connmon.log").read_text()[-3000:]
            time.sleep(0.5)
        yield c
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def fault_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultLab, Path]]:
    need_root()
    with FaultLab(tag="fs").open() as fl:
        yield fl, tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def centre(fault_lab: tuple[FaultLab, Path]) -> Iterator[Centre]:
    """connmon in the lab's centre with the lab's upstreams and uplink checks."""
    fl, directory = fault_lab
    with running_connmon(fl, directory / "declared", CONNMON_PORT, upstreams=True) as c:
        yield c


def _all_up(c: Centre) -> Callable[[], bool]:
    return lambda: all(s["state"] == "up" for s in c.states().values())


def test_a_dead_router_makes_one_upstream_alert_for_its_three_sites(centre: Centre) -> None:
    """agg dead (INPUT, FORWARD and OUTPUT dropped): within two intervals exactly its three sites are
    upstream_down naming agg, the others stay up, and the receiver gets one ConnmonUpstreamDown for agg
    (3 sites behind it) and no ConnmonSiteDown."""
    c = centre
    with c.alerting("agg-cut") as receiver:
        with c.fl.router_cut("agg"):
            behind = set(SITES_BEHIND["agg"])
            c.wait_for("agg's sites upstream_down", lambda: all(
                c.states()[n]["state"] == "upstream_down" for n in behind), seconds=30)
            states = c.states()
            assert {n: s for n, s in states.items() if n in behind} == {
                n: {"state": "upstream_down", "cause": {"upstream": "agg"}} for n in behind}
            assert all(s["state"] == "up" for n, s in states.items() if n not in behind), states
            c.wait_for_notification(receiver, "ConnmonUpstreamDown")
            firing = receiver.firing()
            notifications, alerts = receiver.counts()
            assert [(path, name, labels["upstream"]) for path, name, labels in firing] == [
                ("/hook/network", "ConnmonUpstreamDown", "agg")], receiver.notifications()
            assert notifications == Counter({"ConnmonUpstreamDown": 1})
        c.wait_for("all sites up again", _all_up(c))
    metrics = c.fl.lab.get(c.port, "/metrics")[1]
    assert 'connmon_upstream_sites{upstream="agg",kind="router"} 3' in metrics
    assert 'connmon_upstream_sites{upstream="isp",kind="router"} 5' in metrics


def test_a_dead_site_alone_is_down_and_pages_once(centre: Centre) -> None:
    c = centre
    with c.alerting("site-cut") as receiver:
        c.fl.cut_site("agg-2")
        try:
            c.wait_for("agg-2 down", lambda: c.states()["agg-2"]["state"] == "down", seconds=30)
            assert all(s["state"] == "up" for n, s in c.states().items() if n != "agg-2")
            c.wait_for_notification(receiver, "ConnmonSiteDown")
            assert [(name, labels.get("endpoint")) for _, name, labels in receiver.firing()] == [
                ("ConnmonSiteDown", "agg-2")]
            # where the path ends: the trace taken when it went down stops at agg, the router before it
            trace = next(s for s in c.api("/api/v1/sites")["sites"] if s["name"] == "agg-2")["last_trace"]
            assert trace is not None and trace["last_answering_hop"] == c.fl.routers["agg"].v4, trace
        finally:
            c.fl.restore_site("agg-2")
        c.wait_for("all sites up again", _all_up(c))


def test_the_centre_cut_off_is_one_alert_and_charged_to_no_site(centre: Centre) -> None:
    c = centre
    with c.alerting("centre-cut") as receiver:
        cut_at = time.time()
        c.fl.cut_centre()
        try:
            c.wait_for("every site monitor_cut_off", lambda: all(
                s["state"] == "monitor_cut_off" for s in c.states().values()), seconds=30)
            c.wait_for_notification(receiver, "ConnmonMonitorCutOff")
            assert [name for _, name, _ in receiver.firing()] == ["ConnmonMonitorCutOff"], receiver.notifications()
            assert receiver.counts()[0] == Counter({"ConnmonMonitorCutOff": 1})
        finally:
            c.fl.restore_centre()
        c.wait_for("all sites up again", _all_up(c))
    # the history keeps those cycles as monitor_cut_off: none of them is a site's own downtime
    db = sqlite3.connect(f"file:{c.state / 'history.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT e.name, i.error FROM icmp i JOIN endpoints e ON e.id = i.endpoint_id "
                          "WHERE i.started_at >= ? AND e.grp != 'monitor.upstreams' AND i.error IS NOT NULL",
                          (cut_at,)).fetchall()
    finally:
        db.close()
    assert rows and {error for _, error in rows} == {"monitor_cut_off"}, rows
    # and the day's report (the API's summary) charges none of it to the sites: the cut-off time is stated,
    # and the sites that were never cut on their own have no downtime of their own nor an upstream's
    summary = c.api("/api/v1/summary?timezone=UTC")
    sites = {r["name"]: r for r in summary["sites"]}
    assert set(sites) == set(c.states())  # the upstream nodes are not sites
    assert all(r["monitor_cut_off_seconds"] > 0 for r in sites.values()), sites
    for name in ("beside", "isp-1", "isp-2"):
        assert (sites[name]["site_down_seconds"], sites[name]["upstream_down_seconds"]) == (0, {}), sites[name]
        assert sites[name]["availability_ratio"] == 1.0, sites[name]
    # the earlier scenarios are charged where they belong: agg's sites to agg, agg-2's own cut to agg-2
    assert all(set(sites[n]["upstream_down_seconds"]) == {"agg"} for n in SITES_BEHIND["agg"]), sites
    # agg-1 was never cut on its own: not even the cycle at the edge of agg's outage, whose echoes left while agg
    # was still dead and which was judged after agg's next run answered, is charged to it
    assert sites["agg-2"]["site_down_seconds"] > 0 and sites["agg-1"]["site_down_seconds"] == 0, sites
    # the nodes' own section: agg's own downtime and the site-hours behind it; isp never went down (the
    # centre's cut is not its fault either)
    nodes = {u["name"]: u for u in summary["upstreams"]}
    assert nodes["agg"]["down_seconds"] > 0 and nodes["agg"]["site_seconds"] > 0, nodes
    # not even a node run at the first edge of the centre's cut: one whose echoes left after the cut, while the
    # uplink run under way had left before it, is judged by a run of the checks begun after it
    assert nodes["isp"]["down_seconds"] == 0 and nodes["isp"]["site_seconds"] == 0, nodes


def test_a_dead_router_with_no_upstreams_declared_is_one_common_fault(fault_lab: tuple[FaultLab, Path]) -> None:
    """No upstreams: in the config: agg dead makes the traces of its three sites end at isp, and the receiver
    gets one ConnmonCommonFault naming isp's address, and no ConnmonSiteDown; nothing about isp's own sites."""
    fl, directory = fault_lab
    with running_connmon(fl, directory / "learned", LEARNING_PORT, upstreams=False) as c:
        with c.alerting("agg-cut-learned") as receiver, fl.router_cut("agg"):
            behind = set(SITES_BEHIND["agg"])
            c.wait_for("agg's sites down", lambda: all(c.states()[n]["state"] == "down" for n in behind), seconds=30)
            c.wait_for_notification(receiver, "ConnmonCommonFault")
            firing = receiver.firing()
            assert [(path, name, labels.get("hop")) for path, name, labels in firing] == [
                ("/hook/network", "ConnmonCommonFault", fl.routers["isp"].v4)], receiver.notifications()
            metrics = fl.lab.get(c.port, "/metrics")[1]
            named = set(re.findall(r'connmon_common_fault_site\{[^}]*endpoint="([^"]+)"', metrics))
            assert named == behind, metrics[-2000:]
            assert all(c.states()[n]["state"] == "up" for n in (*SITES_BEHIND["isp"], "beside"))
        c.wait_for("all sites up again", _all_up(c))
