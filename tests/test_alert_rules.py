"""The shipped Prometheus and Alertmanager files, checked by the real promtool, amtool and Alertmanager.

``promtool test rules`` runs ``tests/rules/*.test.yml``: each alert of ``config/connmon.rules.yml``
firing and not firing on synthetic series (the satellite allowance included). ``amtool`` checks the
routing tree; a real Alertmanager (Debian's ``prometheus-alertmanager``) on a loopback port loads
``config/alertmanager.yml`` and is sent alerts, to show which ones its inhibit rules hold back.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import newer_alertmanager
from tests.conftest import need
from tests.running import stop_process

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
RULES = CONFIG / "connmon.rules.yml"
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.test.yml"))
ALERTMANAGER_PORT = 9520  # on 127.0.0.1
CLOSED_PORT = 9521  # the receivers' webhooks are pointed here: nothing listens, nothing leaves the host


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    need(shutil.which(argv[0]) is not None, f"needs {argv[0]} (scripts/install --test installs it)")
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=ROOT, timeout=120)


def test_rule_file_passes_promtool_check_rules() -> None:
    """promtool accepts the rule file, lint included (no duplicate rules)."""
    proc = run("promtool", "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_unit_tests_pass() -> None:
    """Every alert fires where the unit tests say and stays silent where they say (promtool test rules)."""
    assert RULE_TESTS, "no tests/rules/*.test.yml"
    proc = run("promtool", "test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_and_the_labels_routing_needs() -> None:
    """Each alert appears in a rule unit test, has a severity, and names the site or the monitor."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    tested = "".join(path.read_text(encoding="utf-8") for path in RULE_TESTS)
    assert len(alerts) >= 10
    for rule in alerts:
        assert f"alertname: {rule['alert']}" in tested, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert "Check first" in annotations["description"], rule["alert"]
        # a per-site alert names the site; a monitor alert says so in kind (for Alertmanager's routing)
        assert ("$labels.endpoint" in annotations["summary"] or rule["labels"].get("kind") == "monitor"
                or (("$labels.upstream" in annotations["summary"] or "$labels.hop" in annotations["summary"])
                    and rule["labels"].get("kind") == "upstream")), rule["alert"]


def test_prometheus_config_passes_promtool_check_config() -> None:
    """The example prometheus.yml is valid and loads the rule file next to it."""
    proc = run("promtool", "check", "config", str(CONFIG / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_alertmanager_config_passes_amtool() -> None:
    """amtool accepts config/alertmanager.yml."""
    proc = run(newer_alertmanager.binary("amtool"), "check-config", str(CONFIG / "alertmanager.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("labels", "receivers"), [
    # by kind to the team, whatever the district (issue 22: no district's name in the routing)
    (["kind=school", "district=Aktobe", "severity=critical"], "education-ops"),
    (["kind=school", "district=Martuk", "severity=warning"], "education-ops"),
    (["kind=school", 'district="Жаңа аудан"', "severity=warning"], "education-ops"),
    (["kind=clinic", "district=Aktobe", "severity=critical"], "health-pager,health-ops"),
    (["kind=clinic", "district=Aktobe", "severity=warning"], "health-ops"),
    (["kind=clinic", "district=Kargaly", "severity=warning"], "health-ops"),
    # a critical clinic alert pages and reaches health-ops too
    (["kind=clinic", "district=Kargaly", "severity=critical"], "health-pager,health-ops"),
    (["kind=clinic", "district=Martuk", "severity=critical"], "health-pager,health-ops"),
    (["kind=clinic", "severity=critical"], "health-pager,health-ops"),
    (["kind=monitor", "severity=critical"], "monitoring-team"),
    (["kind=upstream", "upstream=agg", "severity=critical"], "network-ops"),
    (["alertname=Other"], "ops-default"),
])
def test_alertmanager_routes_by_kind_and_district(labels: list[str], receivers: str) -> None:
    """amtool's own router sends each kind/district to its team; a critical clinic also pages."""
    proc = run(newer_alertmanager.binary("amtool"), "config", "routes", "test",
               f"--config.file={CONFIG / 'alertmanager.yml'}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receivers


def readme_alert_rows() -> dict[str, list[str]]:
    """The Alerts table of docs/alerts.md: alert name → its cells (alert, fires when, for, severity, check first)."""
    section = (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8")
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in section.splitlines()
            if line.startswith("| `Connmon")]
    named = {row[0].strip("`"): row for row in rows}
    assert len(named) == len(rows), "an alert has two rows in docs/alerts.md"
    return named


def rule_file() -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """(alert name → rule, recording rule name → its rules) of config/connmon.rules.yml."""
    rules = [rule for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]
    alerts = {rule["alert"]: rule for rule in rules if "alert" in rule}
    recorded: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        if "record" in rule:
            recorded.setdefault(rule["record"], []).append(rule)
    return alerts, recorded


README_METRIC = re.compile(r"(?<![\w:])(connmon[_:][\w:]+|process_\w+|scrape_\w+|up(?=\{))")


def test_readme_describes_every_alert() -> None:
    """The docs' Alerts table lists exactly the rule file's alerts, each with its `for:` and severity."""
    rows = readme_alert_rows()
    alerts, _ = rule_file()
    assert set(rows) == set(alerts)
    for name, rule in alerts.items():
        cells = rows[name]
        assert cells[2].startswith(rule.get("for", "none")), name
        assert cells[3] == rule["labels"]["severity"], name


def test_readme_alert_conditions_name_what_the_rules_query() -> None:
    """Every metric a docs "fires when" cell names in backticks is in that alert's expression, or in
    the expression of a recording rule the alert uses."""
    rows = readme_alert_rows()
    alerts, recorded = rule_file()
    checked = 0
    for name, rule in alerts.items():
        exprs = [rule["expr"]] + [r["expr"] for rec, rs in recorded.items() if rec in rule["expr"] for r in rs]
        names = {n for e in exprs for n in re.findall(r"[a-zA-Z_:][\w:]*", e)}
        for span in re.findall(r"`([^`]+)`", rows[name][1]):
            for metric in README_METRIC.findall(span):
                assert metric in names, f"{name}: docs/alerts.md names {metric}, the rule does not query it"
                checked += 1
    assert checked >= 5


def test_readme_latency_allowances_are_the_recording_rules() -> None:
    """The latency row's allowance per link type, and for any other link type, are the rule file's."""
    cell = readme_alert_rows()["ConnmonSiteHighLatency"][1]
    seconds = {"s": 1.0, "ms": 0.001}
    other = re.search(r"any other link type (\d+(?:\.\d+)?) (ms|s)\b", cell)
    assert other is not None, cell
    listed = cell.split("allowance of the site's `link`:", 1)[1].split("any other link type", 1)[0]
    in_readme = {link: round(float(value) * seconds[unit], 6)
                 for link, value, unit in re.findall(r"(\w+) (\d+(?:\.\d+)?) (ms|s)\b", listed)}
    in_readme["*"] = round(float(other.group(1)) * seconds[other.group(2)], 6)
    alerts, recorded = rule_file()
    in_rules = {}
    for rule in recorded["connmon:link_rtt_alert_threshold_seconds"]:
        value = re.fullmatch(r"vector\(([\d.]+)\)", rule["expr"].strip())
        assert value is not None, rule
        in_rules[rule["labels"]["link"]] = round(float(value.group(1)), 6)
    default = re.search(r"unless on \(link\) connmon:link_rtt_alert_threshold_seconds\s*\)\s*>\s*([\d.]+)",
                        alerts["ConnmonSiteHighLatency"]["expr"])
    assert default is not None
    in_rules["*"] = round(float(default.group(1)), 6)
    assert in_readme == in_rules


# ------------------------------------------------------------------------------ a real Alertmanager
def _http(url: str, body: Any = None) -> Any:
    """GET (or POST ``body`` as JSON) on the loopback Alertmanager, bypassing any proxy."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        text = response.read().decode("utf-8")
    return json.loads(text) if text.strip().startswith(("[", "{")) else text


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """``prometheus-alertmanager`` with the shipped config on 127.0.0.1, no cluster; its URL.

    The config is the shipped file with one change: the placeholder webhooks on alerts.example.org
    and the mail relay point at a closed loopback port, so no notification (nor a DNS look-up) leaves this host.
    """
    binary = newer_alertmanager.binary("prometheus-alertmanager")  # >= 0.26: the shipped Telegram receivers
    shipped = (CONFIG / "alertmanager.yml").read_text(encoding="utf-8")
    assert shipped.count("http://alerts.example.org/") == len(re.findall(r"\burl:", shipped)) > 0
    config = tmp_path / "alertmanager.yml"
    config.write_text(shipped.replace("http://alerts.example.org/", f"http://127.0.0.1:{CLOSED_PORT}/")
                      .replace("https://api.telegram.org", f"http://127.0.0.1:{CLOSED_PORT}")
                      .replace("smtp.example.org:587", f"127.0.0.1:{CLOSED_PORT}"), encoding="utf-8")
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{ALERTMANAGER_PORT}", "--cluster.listen-address="],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ALERTMANAGER_PORT}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                _http(f"{url}/-/ready")
                break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < deadline, "Alertmanager not ready: " + log_path.read_text()[-3000:]
                time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)


def _alert(name: str, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": name},
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}


SITE = {"kind": "school", "district": "Aktobe", "link": "fibre", "job": "connmon", "instance": "mon:9077"}


def test_alertmanager_inhibits_what_the_readme_says(alertmanager: str) -> None:
    """A down site holds back its own loss, latency, stale and test-failure alerts (not another site's,
    nor its below-target alert); connmon down holds back the stale alerts of that instance only, and
    a cut-off connmon (issue 21) the loss and test-failure alerts of its own sites only, and its
    upstream-node alerts (not another instance's).
    A critical clinic alert outside Aktobe goes to the pager and to health-ops."""
    sent = [
        _alert("ConnmonSiteDown", endpoint="dead", severity="critical", **SITE),
        _alert("ConnmonSiteHighLoss", endpoint="dead", severity="warning", **SITE),
        _alert("ConnmonSiteHighLatency", endpoint="dead", severity="warning", stat="avg", **SITE),
        _alert("ConnmonThroughputTestsFailing", endpoint="dead", severity="warning", probe="throughput", **SITE),
        _alert("ConnmonSiteBelowTarget", endpoint="dead", severity="warning", **SITE),
        _alert("ConnmonSiteHighLoss", endpoint="alive", severity="warning", **SITE),
        _alert("ConnmonDown", job="connmon", instance="mon2:9077", kind="monitor", severity="critical"),
        _alert("ConnmonIcmpStale", endpoint="far", severity="warning", probe="icmp",
               **{**SITE, "instance": "mon2:9077"}),
        _alert("ConnmonThroughputStale", endpoint="far", severity="warning", **{**SITE, "instance": "mon2:9077"}),
        _alert("ConnmonIcmpStale", endpoint="near", severity="warning", probe="icmp", **SITE),
        _alert("ConnmonSiteDown", endpoint="clinic-k", kind="clinic", district="Kargaly", link="lte",
               severity="critical", job="connmon", instance="mon:9077"),
        _alert("ConnmonMonitorCutOff", job="connmon", instance="mon3:9077", kind="monitor", severity="critical"),
        _alert("ConnmonSiteHighLoss", endpoint="cut", severity="warning", **{**SITE, "instance": "mon3:9077"}),
        _alert("ConnmonThroughputTestsFailing", endpoint="cut", severity="warning", probe="throughput",
               **{**SITE, "instance": "mon3:9077"}),
        _alert("ConnmonUpstreamDown", upstream="agg", node_kind="router", kind="upstream", severity="critical",
               job="connmon", instance="mon3:9077"),
        _alert("ConnmonUpstreamDown", upstream="isp", node_kind="pop", kind="upstream", severity="critical",
               job="connmon", instance="mon:9077"),
    ]
    _http(f"{alertmanager}/api/v2/alerts", sent)
    held_back = {("ConnmonSiteHighLoss", "dead"): ("ConnmonSiteDown", "dead"),
                 ("ConnmonSiteHighLatency", "dead"): ("ConnmonSiteDown", "dead"),
                 ("ConnmonThroughputTestsFailing", "dead"): ("ConnmonSiteDown", "dead"),
                 ("ConnmonIcmpStale", "far"): ("ConnmonDown", "mon2:9077"),
                 ("ConnmonThroughputStale", "far"): ("ConnmonDown", "mon2:9077"),
                 ("ConnmonSiteHighLoss", "cut"): ("ConnmonMonitorCutOff", "mon3:9077"),
                 ("ConnmonThroughputTestsFailing", "cut"): ("ConnmonMonitorCutOff", "mon3:9077"),
                 ("ConnmonUpstreamDown", "agg"): ("ConnmonMonitorCutOff", "mon3:9077")}

    def key(alert: dict[str, Any]) -> tuple[str, str]:
        labels = alert["labels"]
        return labels["alertname"], labels.get("endpoint", labels.get("upstream", labels["instance"]))

    deadline = time.monotonic() + 60
    while True:  # the inhibitor sees new alerts shortly after they are stored
        alerts = {key(a): a for a in _http(f"{alertmanager}/api/v2/alerts")}
        states = {k: a["status"]["state"] for k, a in alerts.items()}
        if len(alerts) == len(sent) and all(
                states[k] == ("suppressed" if k in held_back else "active") for k in alerts):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(alerts) == {key(a) for a in sent}
    for k, alert in alerts.items():
        expected = [alerts[held_back[k]]["fingerprint"]] if k in held_back else []
        assert (alert["status"]["state"], alert["status"]["inhibitedBy"]) == (
            "suppressed" if k in held_back else "active", expected), k
    receivers = sorted(r["name"] for r in alerts[("ConnmonSiteDown", "clinic-k")]["receivers"])
    assert receivers == ["health-ops", "health-pager"]


def test_site_alerts_are_built_on_the_merged_series() -> None:
    """No per-site alert selects a per-site gauge raw where a recording rule merges its replicas (issue 19), and
    every counter a per-site alert reads is aggregated without shard and instance: a site is down only when
    every live replica sees it down, and one dead replica changes nothing (tests/rules/replicas.test.yml)."""
    alerts, recorded = rule_file()
    merged = {name.split(":")[1]: name for name in recorded if name.startswith("endpoint:")}
    assert {"connmon_up", "connmon_site_state", "connmon_icmp_loss_ratio", "connmon_icmp_rtt_last_seconds",
            "connmon_last_probe_timestamp_seconds", "connmon_target_missed_consecutive_tests",
            "connmon_latency_under_load_ok", "connmon_agent_state"} <= set(merged)
    site_alerts = [rule for rule in alerts.values() if "$labels.endpoint" in rule["annotations"]["summary"]]
    assert len(site_alerts) >= 10
    for rule in site_alerts:
        expr = rule["expr"]
        for metric in merged:
            assert not re.search(r"(?<![\w:])" + re.escape(metric) + r"(?![\w:])", expr), (rule["alert"], metric)
        for counter in re.findall(r"(?<![\w:])(connmon_\w+_total)\b", expr):
            summed = r"without \([^)]*\bshard, instance\b[^)]*\) \(\s*increase\("
            assert re.search(summed + counter, expr), rule["alert"]
    for rules in recorded.values():
        for rule in rules:
            if rule["record"].startswith("endpoint:"):
                assert "without (shard, instance)" in rule["expr"], rule["record"]
