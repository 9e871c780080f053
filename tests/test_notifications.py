"""Notifications that reach people (issue 22): the shipped Alertmanager config and its message templates.

The routing names no district (amtool's router sends a district no list knows to its kind's team),
the templates render a site's Cyrillic name with its kind, district, cause, link type and dashboard
link (amtool), and a real Alertmanager (loopback ports 19453-19456 and 19800) sends an e-mail with them
to a local SMTP sink, logging in with the password from the file the config names, and Telegram
messages to a fake Bot API (tests/telegram_sink.py), with the bot token read from its file: one
message per district, in the chat of the site's kind's team.

The shipped config reads the bot token from a file (``bot_token_file``, Alertmanager 0.26 or later),
so the Alertmanager and amtool here are Debian trixie's (tests/newer_alertmanager.py), not Debian
12's 0.25, which refuses the file.
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.newer_alertmanager import binary
from tests.running import stop_process
from tests.smtp_sink import SmtpSink
from tests.telegram_sink import TelegramSink

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "alertmanager.yml"
TEMPLATES = ROOT / "config" / "alertmanager.tmpl"
ALERTMANAGER_PORT, SMTP_PORT, CLOSED_PORT, TELEGRAM_PORT = 19453, 19454, 19456, 19800
TELEGRAM_API = "https://api.telegram.org"  # the shipped api_url: Telegram's own, used as it is

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
    return subprocess.run([binary("amtool"), *argv], capture_output=True, text=True, check=False, timeout=60,
                          cwd=ROOT)


def test_amtool_accepts_the_shipped_config() -> None:
    """amtool (>= 0.26) checks config/alertmanager.yml, Telegram receivers and templates included, and passes it."""
    proc = amtool("check-config", str(CONFIG))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    assert " - 1 templates" in proc.stdout, proc.stdout


def telegram_configs(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Receiver name → its telegram_configs (anchors and merge keys resolved by the YAML loader)."""
    return {r["name"]: r["telegram_configs"] for r in config["receivers"] if r.get("telegram_configs")}


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
    # Telegram is live for the schools' and the clinics' teams: the token from a file, Telegram's own API,
    # plain text (a site name is never markup), each team in its own chat
    telegram = telegram_configs(config)
    assert set(telegram) == {"education-ops", "health-ops"}
    bots = [c for configs in telegram.values() for c in configs]
    assert all("bot_token" not in c and c["bot_token_file"].startswith("/etc/alertmanager/secrets/") for c in bots)
    assert all(c["api_url"] == TELEGRAM_API and c["parse_mode"] == "" for c in bots)
    assert all(c["message"] == '{{ template "connmon.telegram.message" . }}' and c["send_resolved"] for c in bots)
    assert len({c["chat_id"] for c in bots}) == len(bots)


@pytest.mark.parametrize(("labels", "receivers"), [
    ([f'district="{DISTRICT}"', "kind=school", "severity=critical"], "education-ops"),
    (["kind=school", "severity=warning"], "education-ops"),  # no district label at all
    ([f'district="{DISTRICT}"', "kind=clinic", "severity=critical"], "health-pager,health-ops"),
    ([f'district="{DISTRICT}"', "kind=clinic", "severity=warning"], "health-ops"),
    ([f'district="{DISTRICT}"', "kind=hospital", "severity=critical"], "ops-default"),  # a kind no team has
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


@dataclass(frozen=True)
class Running:
    """A real Alertmanager with the shipped config, and what it notifies: the SMTP sink, the fake Telegram."""

    url: str
    sink: SmtpSink
    password: str
    telegram: TelegramSink
    token: str


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Running]:
    """The shipped config and templates in a real Alertmanager (>= 0.26) on loopback.

    The copy differs from the shipped file only where it must to stay on this host: the mail relay is
    the sink (without STARTTLS, which the sink lacks), Telegram's api_url is the fake Bot API, the
    password and token files are the test's, the webhooks point at a closed loopback port, and
    group_wait is 1s.
    """
    alertmanager_binary = binary("prometheus-alertmanager")
    password = "пароль from a file"
    # no newline at the end: Alertmanager 0.25 sent the file's bytes as they are, a newline included
    (tmp_path / "smtp_password").write_text(password, encoding="utf-8")
    token = "7012345678:AAF-connmon_test-token-from-a-file"
    # written as `echo` would, newline and all: Alertmanager trims the token it reads
    (tmp_path / "telegram_bot_token").write_text(token + "\n", encoding="utf-8")
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["global"].update(smtp_smarthost=f"127.0.0.1:{SMTP_PORT}", smtp_require_tls=False,
                            smtp_auth_password_file=str(tmp_path / "smtp_password"))
    config["route"]["group_wait"] = "1s"
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace("http://alerts.example.org/", f"http://127.0.0.1:{CLOSED_PORT}/")
        for bot in receiver.get("telegram_configs", []):
            assert bot["api_url"] == TELEGRAM_API
            bot.update(api_url=f"http://127.0.0.1:{TELEGRAM_PORT}", bot_token_file=str(tmp_path / "telegram_bot_token"))
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    shutil.copy(TEMPLATES, tmp_path / "alertmanager.tmpl")
    sink = SmtpSink("127.0.0.1", SMTP_PORT)
    telegram = TelegramSink("127.0.0.1", TELEGRAM_PORT, token)
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [alertmanager_binary, f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'data'}",
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
        yield Running(url, sink, password, telegram, token)
    finally:
        stop_process(proc)
        sink.close()
        telegram.close()


def test_a_real_alertmanager_mails_the_district_team_with_the_cyrillic_name_intact(
        alertmanager: Running) -> None:
    """A site-down alert of a school in a district no list names reaches education's mailbox through the
    shipped routing: the subject and both parts name the site (Cyrillic intact), kind, district, cause,
    link type and dashboard; Alertmanager logged in with the password from the file."""
    url, sink, password = alertmanager.url, alertmanager.sink, alertmanager.password
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


SCHOOL_2, DISTRICT_2 = "Мектеп-гимназия №3 им. Абая", "Ырғыз ауданы"  # another district no list names
CLINIC = "Ауылдық емхана «Шипа»"


def test_a_real_alertmanager_sends_telegram_per_district_to_the_kinds_chat(alertmanager: Running) -> None:
    """Two schools in two districts and a clinic reach Telegram through the shipped routing: one message per
    district in the schools' chat, one in the clinics' chat, each with the site (Cyrillic intact), kind,
    district, cause, link type and dashboard; the bot token in the URL is the one read from the file."""
    now = datetime.now(UTC)
    school_2 = {**LABELS, "endpoint": SCHOOL_2, "district": DISTRICT_2, "link": "fibre"}
    clinic = {**LABELS, "alertname": "ConnmonSiteHighLoss", "endpoint": CLINIC, "kind": "clinic",
              "link": "lte", "severity": "warning"}
    alerts = [(LABELS, ANNOTATIONS), (school_2, {"summary": f"Site {SCHOOL_2} (school, {DISTRICT_2}) is down"}),
              (clinic, {"summary": f"Site {CLINIC} (clinic, {DISTRICT}) loses pings"})]
    _http(f"{alertmanager.url}/api/v2/alerts",
          [{"labels": labels, "annotations": annotations, "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(hours=1)).isoformat()} for labels, annotations in alerts])
    chats = {name: str(configs[0]["chat_id"])
             for name, configs in telegram_configs(yaml.safe_load(CONFIG.read_text(encoding="utf-8"))).items()}
    deadline = time.monotonic() + 60
    while len(alertmanager.telegram.messages()) < 3:
        assert time.monotonic() < deadline, f"not three Telegram messages: {alertmanager.telegram.calls}"
        time.sleep(0.2)
    sent = alertmanager.telegram.messages()
    assert len(sent) == 3, sent
    # every call carried the token from the file, and nothing was refused
    assert [c.path for c in alertmanager.telegram.calls] == [f"/bot{alertmanager.token}/sendMessage"] * 3
    assert all(not c.body.get("parse_mode") for c in sent)  # plain text

    def lines_of(chat: str, site: str) -> list[str]:
        [text] = [c.body["text"] for c in sent
                  if str(c.body["chat_id"]) == chat and f"Site:      {site}" in c.body["text"]]
        return text.splitlines()

    first = lines_of(chats["education-ops"], SITE)
    for expected in EXPECTED_LINES:
        assert expected in first, first
    assert not [line for line in first if SCHOOL_2 in line or DISTRICT_2 in line]  # a message per district
    second = lines_of(chats["education-ops"], SCHOOL_2)
    for expected in (f"CRITICAL: Site {SCHOOL_2} (school, {DISTRICT_2}) is down", "Kind:      school",
                     f"District:  {DISTRICT_2}", "Link type: fibre",
                     "Cause:     no reply to any ping: the site is down",
                     "Dashboard: https://grafana.example.org/d/connmon-region-overview/connmon-region-overview"
                     f"?var-district={urllib.parse.quote_plus(DISTRICT_2)}"):
        assert expected in second, second
    health = lines_of(chats["health-ops"], CLINIC)
    for expected in (f"WARNING: Site {CLINIC} (clinic, {DISTRICT}) loses pings", "Kind:      clinic",
                     f"District:  {DISTRICT}", "Link type: lte",
                     "Cause:     pings lost on the way: a lossy or saturated link"):
        assert expected in health, health
