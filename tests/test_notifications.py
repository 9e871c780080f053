"""Notifications that reach people (issue 22): the shipped Alertmanager config and its message templates.

The routing names no district (amtool's router sends a district no list knows to its kind's team),
the templates render a site's Cyrillic name with its kind, district, cause, link type and dashboard
link (amtool), and a real Alertmanager (Debian's ``prometheus-alertmanager``, loopback ports
19453-19456) sends an e-mail with them to a local SMTP sink, logging in with the password from the
file the config names.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import need
from tests.running import stop_process
from tests.smtp_sink import SmtpSink

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "alertmanager.yml"
TEMPLATES = ROOT / "config" / "alertmanager.tmpl"
ALERTMANAGER_PORT, SMTP_PORT, CLOSED_PORT = 19453, 19454, 19456

SITE = "№12 мектеп «Балапан»"
DISTRICT = "Шалқар ауданы"  # in no list: the config names no district at all
DASHBOARD = "/d/connmon-site-detail/connmon-site-detail?var-endpoint=" + urllib.parse.quote_plus(SITE)
LABELS = {"alertname": "ConnmonSiteDown", "endpoint": SITE, "kind": "school", "district": DISTRICT,
          "link": "satellite", "severity": "critical", "job": "connmon", "instance": "mon:9077"}
ANNOTATIONS = {"summary": f"Site {SITE} (school, {DISTRICT}) is down",
               "description": f"{SITE} has answered no ping for 5 minutes (satellite link). Check first: power.",
               "dashboard": DASHBOARD}
EXPECTED_LINES = [
    f"CRITICAL: Site {SITE} (school, {DISTRICT}) is down",
    f"Site:      {SITE}",
    "Kind:      school",
    f"District:  {DISTRICT}",
    "Link type: satellite",
    "Cause:     no reply to any ping: the site is down",
    f"Dashboard: https://grafana.example.org{DASHBOARD}",
]


def amtool(*argv: str) -> subprocess.CompletedProcess[str]:
    need(shutil.which("amtool") is not None, "needs amtool (scripts/install --test installs it)")
    return subprocess.run(["amtool", *argv], capture_output=True, text=True, check=False, timeout=60, cwd=ROOT)


def test_the_routing_names_no_district_and_groups_by_district() -> None:
    """No matcher of the routing tree is on district, and the top route groups by it (one message per district)."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))

    def matchers(route: dict[str, Any]) -> Iterator[str]:
        yield from route.get("matchers", [])
        for child in route.get("routes", []):
            yield from matchers(child)

    assert not [m for m in matchers(config["route"]) if "district" in m]
    assert "district" in config["route"]["group_by"]
    assert config["templates"] == ["alertmanager.tmpl"] and TEMPLATES.is_file()
    emails = [c for r in config["receivers"] for c in r.get("email_configs", [])]
    assert emails and all("connmon.email" in c["text"] and "connmon.email" in c["headers"]["Subject"] for c in emails)
    assert "smtp_auth_password" not in config["global"] and config["global"]["smtp_auth_password_file"]


@pytest.mark.parametrize(("labels", "receivers"), [
    ([f"district={DISTRICT}", "kind=school", "severity=critical"], "education-ops"),
    (["kind=school", "severity=warning"], "education-ops"),  # no district label at all
    ([f"district={DISTRICT}", "kind=clinic", "severity=critical"], "health-pager,health-ops"),
    ([f"district={DISTRICT}", "kind=clinic", "severity=warning"], "health-ops"),
    ([f"district={DISTRICT}", "kind=hospital", "severity=critical"], "ops-default"),  # a kind no team has
    (["kind=monitor", "alertname=ConnmonResolverFailing", "severity=critical"], "monitoring-team"),
])
def test_a_district_in_no_list_reaches_its_kinds_team(labels: list[str], receivers: str) -> None:
    """amtool's own router: a new district's alerts reach the team of their kind the day they appear."""
    proc = amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == receivers


def template_data(tmp_path: Path) -> Path:
    data = {"receiver": "education-ops", "status": "firing", "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": "firing", "labels": LABELS, "annotations": ANNOTATIONS,
                        "startsAt": "2026-12-06T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": "1"}],
            "groupLabels": {k: LABELS[k] for k in ("alertname", "kind", "district")},
            "commonLabels": LABELS, "commonAnnotations": ANNOTATIONS}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("template", ["connmon.email.text", "connmon.telegram.message"])
def test_the_message_names_site_kind_district_cause_link_and_dashboard(tmp_path: Path, template: str) -> None:
    """The e-mail's text and the Telegram message, rendered by amtool, carry every fact, the Cyrillic name intact."""
    proc = amtool("template", "render", f"--template.glob={TEMPLATES}", f"--template.data={template_data(tmp_path)}",
                  f"--template.text={{{{ template \"{template}\" . }}}}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for expected in EXPECTED_LINES:
        assert expected in lines, proc.stdout
    assert "Since:     2026-12-06 10:00 UTC" in lines


def test_the_subject_names_the_site_the_cause_and_the_district(tmp_path: Path) -> None:
    """One alert: the subject says its severity, the site, the cause, kind and district."""
    proc = amtool("template", "render", f"--template.glob={TEMPLATES}", f"--template.data={template_data(tmp_path)}",
                  '--template.text={{ template "connmon.email.subject" . }}')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"[CRITICAL] {SITE}: no reply to any ping: the site is down (school, {DISTRICT})"


# ------------------------------------------------------------------------------ a real Alertmanager
def _http(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return response.read().decode("utf-8")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, SmtpSink, str]]:
    """The shipped config and templates in a real Alertmanager on loopback; (its URL, the SMTP sink, the password).

    The copy differs from the shipped file only where it must to stay on this host: the mail relay is
    the sink (without STARTTLS, which the sink lacks), the password file is the test's, the webhooks
    point at a closed loopback port, and group_wait is 1s.
    """
    binary = shutil.which("prometheus-alertmanager")
    need(binary is not None, "needs prometheus-alertmanager (scripts/install --test installs it)")
    password = "пароль from a file"
    # no newline at the end: Alertmanager 0.25 sends the file's bytes as they are, a newline included
    (tmp_path / "smtp_password").write_text(password, encoding="utf-8")
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["global"].update(smtp_smarthost=f"127.0.0.1:{SMTP_PORT}", smtp_require_tls=False,
                            smtp_auth_password_file=str(tmp_path / "smtp_password"))
    config["route"]["group_wait"] = "1s"
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace("http://alerts.example.org/", f"http://127.0.0.1:{CLOSED_PORT}/")
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    shutil.copy(TEMPLATES, tmp_path / "alertmanager.tmpl")
    sink = SmtpSink("127.0.0.1", SMTP_PORT)
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(binary), f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'data'}",
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
        yield url, sink, password
    finally:
        stop_process(proc)
        sink.close()


def test_a_real_alertmanager_mails_the_district_team_with_the_cyrillic_name_intact(
        alertmanager: tuple[str, SmtpSink, str]) -> None:
    """A site-down alert of a school in a district no list names reaches education's mailbox through the
    shipped routing: the subject and both parts name the site (Cyrillic intact), kind, district, cause,
    link type and dashboard; Alertmanager logged in with the password from the file."""
    url, sink, password = alertmanager
    now = datetime.now(UTC)
    _http(f"{url}/api/v2/alerts", [{"labels": LABELS, "annotations": ANNOTATIONS, "startsAt": now.isoformat(),
                                    "endsAt": (now + timedelta(hours=1)).isoformat()}])
    deadline = time.monotonic() + 60
    while not sink.deliveries:
        assert time.monotonic() < deadline, "no e-mail reached the sink"
        time.sleep(0.2)
    mail = sink.deliveries[0]
    assert mail.recipients == ["education@example.org"] and mail.sender == "connmon@example.org"
    assert mail.credentials == ("connmon@example.org", password)
    message = mail.message
    assert str(message["Subject"]) == f"[CRITICAL] {SITE}: no reply to any ping: the site is down (school, {DISTRICT})"
    assert message["To"] == "education@example.org"
    text = message.get_body(("plain",))
    rich = message.get_body(("html",))
    assert text is not None and rich is not None
    lines = text.get_content().splitlines()
    for expected in EXPECTED_LINES:
        assert expected in lines, text.get_content()
    page = html.unescape(rich.get_content())  # html/template writes the link's + as &#43;
    for fact in (SITE, DISTRICT, "satellite", "no reply to any ping", f'href="https://grafana.example.org{DASHBOARD}"'):
        assert fact in page, page
