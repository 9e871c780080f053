"""The shipped Prometheus and Alertmanager files, checked by the real promtool, amtool and Alertmanager.

``promtool test rules`` runs ``tests/rules/*.test.yml``: each alert of ``config/connmon.rules.yml``
firing and not firing on synthetic series (the satellite allowance included). ``amtool`` checks the
routing tree; a real Alertmanager (Debian's ``prometheus-alertmanager``) on a loopback port loads
``config/alertmanager.yml`` and is sent alerts, to show which ones its inhibit rules hold back.
"""

from __future__ import annotations

import json
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

from tests.conftest import need

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
    import yaml

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
        assert "$labels.endpoint" in annotations["summary"] or rule["labels"].get("kind") == "monitor", rule["alert"]


def test_prometheus_config_passes_promtool_check_config() -> None:
    """The example prometheus.yml is valid and loads the rule file next to it."""
    proc = run("promtool", "check", "config", str(CONFIG / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_alertmanager_config_passes_amtool() -> None:
    """amtool accepts config/alertmanager.yml."""
    proc = run("amtool", "check-config", str(CONFIG / "alertmanager.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("labels", "receivers"), [
    (["kind=school", "district=Aktobe", "severity=critical"], "aktobe-schools"),
    (["kind=school", "district=Martuk", "severity=warning"], "south-schools"),
    (["kind=school", "district=Khromtau", "severity=warning"], "education-ops"),
    (["kind=clinic", "district=Aktobe", "severity=critical"], "health-pager,aktobe-clinics"),
    (["kind=clinic", "district=Aktobe", "severity=warning"], "aktobe-clinics"),
    (["kind=clinic", "district=Kargaly", "severity=warning"], "health-ops"),
    # outside the districts with their own clinic team, a critical alert pages and reaches health-ops too
    (["kind=clinic", "district=Kargaly", "severity=critical"], "health-pager,health-ops"),
    (["kind=clinic", "district=Martuk", "severity=critical"], "health-pager,health-ops"),
    (["kind=clinic", "severity=critical"], "health-pager,health-ops"),
    (["kind=monitor", "severity=critical"], "monitoring-team"),
    (["alertname=Other"], "ops-default"),
])
def test_alertmanager_routes_by_kind_and_district(labels: list[str], receivers: str) -> None:
    """amtool's own router sends each kind/district to its team; a critical clinic also pages."""
    proc = run("amtool", "config", "routes", "test", f"--config.file={CONFIG / 'alertmanager.yml'}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receivers


def test_readme_describes_every_alert() -> None:
    """Each alert has a row in the README's Alerts table, with its `for:` and severity."""
    import yaml

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `"): line for line in section.splitlines() if line.startswith("| `Connmon")}
    for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                row = rows[rule["alert"]]
                cells = [c.strip() for c in row.split("|")]
                assert cells[3].startswith(rule.get("for", "none")), rule["alert"]
                assert cells[4] == rule["labels"]["severity"], rule["alert"]


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
    point at a closed loopback port, so no notification (nor a DNS look-up) leaves this host.
    """
    binary = shutil.which("prometheus-alertmanager")
    need(binary is not None, "needs prometheus-alertmanager (scripts/install --test installs it)")
    shipped = (CONFIG / "alertmanager.yml").read_text(encoding="utf-8")
    assert shipped.count("http://alerts.example.org/") == shipped.count("url:") > 0
    config = tmp_path / "alertmanager.yml"
    config.write_text(shipped.replace("http://alerts.example.org/", f"http://127.0.0.1:{CLOSED_PORT}/"),
                      encoding="utf-8")
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
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _alert(name: str, **labels: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": name},
            "startsAt": now.isoformat(), "endsAt": (now + timedelta(hours=1)).isoformat()}


SITE = {"kind": "school", "district": "Aktobe", "link": "fibre", "job": "connmon", "instance": "mon:9077"}


def test_alertmanager_inhibits_what_the_readme_says(alertmanager: str) -> None:
    """A down site holds back its own loss, latency, stale and test-failure alerts (not another site's,
    nor its below-target alert); connmon down holds back the stale alerts of that instance only.
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
    ]
    _http(f"{alertmanager}/api/v2/alerts", sent)
    held_back = {("ConnmonSiteHighLoss", "dead"): ("ConnmonSiteDown", "dead"),
                 ("ConnmonSiteHighLatency", "dead"): ("ConnmonSiteDown", "dead"),
                 ("ConnmonThroughputTestsFailing", "dead"): ("ConnmonSiteDown", "dead"),
                 ("ConnmonIcmpStale", "far"): ("ConnmonDown", "mon2:9077"),
                 ("ConnmonThroughputStale", "far"): ("ConnmonDown", "mon2:9077")}

    def key(alert: dict[str, Any]) -> tuple[str, str]:
        labels = alert["labels"]
        return labels["alertname"], labels.get("endpoint", labels["instance"])

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
