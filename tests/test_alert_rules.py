"""The shipped Prometheus and Alertmanager files, checked by the real promtool and amtool.

``promtool test rules`` runs ``tests/rules/*.test.yml``: each alert of ``config/connmon.rules.yml``
firing and not firing on synthetic series (the satellite allowance included).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
RULES = CONFIG / "connmon.rules.yml"
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.test.yml"))


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
