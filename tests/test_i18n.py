"""Reports in the region's languages (issue 22): English, Russian and Kazakh through gettext catalogues.

Every message the code uses (Babel's extractor over monitor/report/ and the HTML template, as
``pybabel extract -F monitor/locale/babel.cfg`` finds them) is in each catalogue, with the same
placeholders; a catalogue that lacks one fails here. The October history of :mod:`tests.factories`
rendered in Russian and Kazakh matches tests/golden/report.{ru,kk}.*; figures have a decimal comma
and the same digits as in English; a missing or broken translation gives English, never a broken string.
"""

from __future__ import annotations

import datetime as dt
import gettext
import html
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from monitor import __version__
from monitor.config import load_config
from monitor.config.model import REPORT_LANGUAGES
from monitor.history.sqlite import SqliteStore, database_path
from monitor.report import i18n
from monitor.report.compliance import PEP_NOTE_MESSAGE, Period, build_report
from monitor.report.render import render
from monitor.results import PEP_NOTE
from tests.conftest import need
from tests.factories import OCT, cause_day, record_october, write_config
from tests.netlab import child_env

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
LOCALE = ROOT / "monitor" / "locale"
GENERATED_AT = dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.UTC).timestamp()
Message = str | tuple[str, str]


def used_messages() -> set[Message]:
    """What the code asks the catalogues for: Babel's extractor with the repo's own map (monitor/locale/babel.cfg)."""
    with (LOCALE / "babel.cfg").open(encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found: set[Message] = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=DEFAULT_KEYWORDS):
        if isinstance(message, tuple):
            found.add((message[0], message[1]))
        elif message:
            found.add(message)
    return found


def catalogue_gaps(po: bytes, language: str, messages: set[Message]) -> list[str]:
    """The messages ``po`` lacks, leaves empty or fuzzy, or translates with other placeholders (sorted)."""
    catalog = read_po(io.BytesIO(po), locale=language)
    gaps = []
    for message in messages:
        key = message[0] if isinstance(message, tuple) else message
        entry = catalog.get(key)
        english = [message] if isinstance(message, str) else list(message)
        strings = [entry.string] if entry is not None and isinstance(entry.string, str) else (
            list(entry.string) if entry is not None else [])
        if (entry is None or entry.fuzzy or not strings or not all(strings)
                or isinstance(message, tuple) != isinstance(entry.id, tuple)
                or any(i18n.placeholders(s) != i18n.placeholders(english[-1]) for s in strings)):
            gaps.append(key)
    return sorted(gaps)


def catalogue(language: str) -> bytes:
    return (LOCALE / language / "LC_MESSAGES" / "connmon.po").read_bytes()


def test_every_message_the_code_uses_is_in_each_catalogue() -> None:
    """Each extracted message (headers, sentences, the template's words) has a translation in ru and kk."""
    messages = used_messages()
    assert len(messages) > 100 and "availability %" in messages and "Summary" in messages  # the extractor works
    assert ("school", "schools") in messages and "Worst first. Click a column to sort. Verdicts:" in messages
    assert PEP_NOTE == PEP_NOTE_MESSAGE and PEP_NOTE in messages  # monitor.results' note, marked in compliance
    for language in ("ru", "kk"):
        assert catalogue_gaps(catalogue(language), language, messages) == [], language


def test_a_catalogue_missing_one_message_fails() -> None:
    """Removing one message from a catalogue, or breaking a placeholder, is found and named."""
    messages = used_messages()
    catalog = read_po(io.BytesIO(catalogue("ru")), locale="ru")
    del catalog["availability %"]
    catalog["{never} never did"].string = "{nevr} — ни разу"  # a typo in a placeholder
    out = io.BytesIO()
    write_po(out, catalog)
    assert catalogue_gaps(out.getvalue(), "ru", messages) == ["availability %", "{never} never did"]


def test_catalogues_ship_with_the_package_and_the_languages_agree() -> None:
    """The .po files are package data (no build step), and config, CLI and catalogues offer the same languages."""
    assert REPORT_LANGUAGES == i18n.LANGUAGES
    for language in ("ru", "kk"):
        assert resources.files("monitor").joinpath("locale", language, "LC_MESSAGES", "connmon.po").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"locale/*/LC_MESSAGES/*.po"' in pyproject and "babel" in pyproject


@pytest.fixture
def october(tmp_path: Path) -> Path:
    record_october(tmp_path)
    return tmp_path


def report_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-10-01", "--to", "2026-10-31",
                           "--timezone", "UTC", "--state-dir", str(state), *args], capture_output=True, text=True,
                          timeout=60, check=False, env=child_env())


def without_libraries(page: str) -> str:
    """The HTML report less the inlined libraries (Chart.js and tablesort: not ours to keep in a golden file)
    and connmon's version (which changes with every release)."""
    page = page.replace(f"connmon {__version__}", "connmon VERSION")
    for name in ("chart.umd.min.js", "tablesort.min.js", "tablesort.number.min.js"):
        library = resources.files("monitor.report").joinpath("assets", name).read_text(encoding="utf-8")
        assert library in page
        page = page.replace(library, f"/* {name} */")
    return page


@pytest.mark.parametrize("language", ["ru", "kk"])
def test_report_in_the_language_matches_the_golden_files(october: Path, language: str) -> None:
    """``connmon report --lang`` in table, Markdown and JSON, and the HTML page, are tests/golden/report.<lang>.*."""
    for fmt, suffix in (("table", "txt"), ("markdown", "md"), ("json", "json")):
        proc = report_cli(october, "--format", fmt, "--lang", language)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == (GOLDEN / f"report.{language}.{suffix}").read_text(encoding="utf-8"), fmt
    store = SqliteStore(database_path(october), read_only=True)
    page = render(build_report(store, OCT, now=GENERATED_AT), "html", language)
    assert without_libraries(page) == (GOLDEN / f"report.{language}.html").read_text(encoding="utf-8")
    assert f'<html lang="{language}">' in page


def test_figures_have_a_decimal_comma_and_the_english_digits(october: Path) -> None:
    """Russian and Kazakh write 85,71 where English writes 85.71; no figure is rounded differently."""
    store = SqliteStore(database_path(october), read_only=True)
    report = build_report(store, OCT)
    english = render(report, "table")
    for language in ("ru", "kk"):
        text = render(report, "table", language)
        assert "85,71%" in text and "650,000" in text and "85.71" not in text
        figures = re.findall(r"(?<![\w.,])\d+[.,]\d+(?![\w.,])", text)
        assert sorted(f.replace(",", ".") for f in figures) == sorted(
            re.findall(r"(?<![\w.,])\d+\.\d+(?![\w.,])", english))
    with i18n.language("ru") as ru:
        assert (ru.decimal(2.675, 2), ru.decimal(0.125, 2)) == ("2,67", "0,12")  # as f"{:.2f}" rounds, not Decimal's
        assert (ru.decimal(1.5, 2, signed=True), ru.decimal(-1.5, 2, signed=True), ru.decimal(7.0, 0)) == \
            ("+1,50", "-1,50", "7")
        assert ru.date(dt.date(2026, 10, 1)) == "1 октября 2026\u202fг."  # CLDR: a narrow no-break space
    assert i18n.translator("kk").date(dt.date(2026, 10, 31)) == "2026\u202fж. 31 қазан"
    assert i18n.number(99.5, 2) == "99.50"  # outside a rendering: English


def test_plural_forms_follow_each_language() -> None:
    """Russian has three forms (1 день, 2 дня, 5 дней, 21 день), Kazakh one after a numeral (5 күн)."""
    ru, kk = i18n.translator("ru"), i18n.translator("kk")
    days = [ru.ngettext("{days} day", "{days} days", n).format(days=n) for n in (1, 2, 5, 11, 21, 22)]
    assert days == ["1 день", "2 дня", "5 дней", "11 дней", "21 день", "22 дня"]
    assert kk.ngettext("{days} day", "{days} days", 5).format(days=5) == "5 күн"
    assert [ru.ngettext("school", "schools", n) for n in (1, 3, 5)] == ["школа", "школы", "школы"]


def test_csv_is_the_same_in_every_language_and_json_keeps_its_keys(october: Path) -> None:
    """CSV is data (keys as headers, a decimal point); JSON's keys never change, only its sentences' language."""
    english_csv = report_cli(october, "--format", "csv")
    english_json = json.loads(report_cli(october, "--format", "json").stdout)
    for language in ("ru", "kk"):
        assert report_cli(october, "--format", "csv", "--lang", language).stdout == english_csv.stdout
        doc = json.loads(report_cli(october, "--format", "json", "--lang", language).stdout)
        assert doc.pop("language") == language

        def keys(value: object) -> Iterator[str]:
            if isinstance(value, dict):
                for key, inner in value.items():
                    yield key
                    yield from keys(inner)
            elif isinstance(value, list):
                for inner in value:
                    yield from keys(inner)
        assert list(keys(doc)) == list(keys(english_json))
        assert doc["kpis"] == english_json["kpis"]


class _Recording(gettext.NullTranslations):
    """A catalogue that says what was asked of it (so a test sees every message a report shows)."""

    def __init__(self, inner: gettext.NullTranslations, asked: set[str]) -> None:
        super().__init__()
        self.inner, self.asked = inner, asked

    def gettext(self, message: str) -> str:
        self.asked.add(message)
        return self.inner.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        self.asked.add(singular)
        return self.inner.ngettext(singular, plural, n)


def test_every_message_a_rich_report_shows_is_translated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream nodes, maintenance, a cut-off monitor and downtime by cause, in every human format: each message
    asked for has a translation (headers other modules add included, which the extractor cannot see)."""
    store = SqliteStore(database_path(tmp_path))
    day = dt.datetime(2026, 11, 10, tzinfo=dt.UTC).timestamp()
    store.write([], cause_day(day))
    report = build_report(store, Period(dt.date(2026, 11, 10), dt.date(2026, 11, 10), "UTC"), now=GENERATED_AT)
    assert report.upstreams and report.by_cause and report.monitor_cut_off and report.maintenance
    for language in ("ru", "kk"):
        asked: set[str] = set()
        real = i18n.translator(language)
        recording = i18n.Translator(real.language, _Recording(real.messages, asked))
        monkeypatch.setattr(i18n, "translator", lambda code, r=recording: r)
        for fmt in ("table", "markdown", "html", "json"):
            render(report, fmt, language)
        monkeypatch.undo()
        catalog = read_po(io.BytesIO(catalogue(language)), locale=language)
        untranslated = sorted(m for m in asked if catalog.get(m) is None or not catalog.get(m).string)
        assert untranslated == [], language
        assert len(asked) > 60


def doctored(language: str, drop: str, bad: str, replacement: str) -> i18n.Translator:
    """The real catalogue of ``language`` less ``drop``, with ``bad``'s translation replaced by ``replacement``."""
    catalog: Catalog = read_po(io.BytesIO(catalogue(language)), locale=language)
    del catalog[drop]
    catalog[bad].string = replacement
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return i18n.Translator(language, gettext.GNUTranslations(compiled))  # type: ignore[arg-type]


def test_missing_or_broken_translations_fall_back_to_english(october: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message a catalogue lacks, or translates with a wrong placeholder, is written in English, whole."""
    t = doctored("ru", "availability %", "{never} never did", "{nevr} — ни разу")
    monkeypatch.setattr(i18n, "translator", lambda code: t)
    report = build_report(SqliteStore(database_path(october), read_only=True), OCT)
    text = render(report, "table", "ru")
    assert "availability %" in text and "доступность, %" not in text
    assert "0 never did" in text and "1 never did" in text and "nevr" not in text
    assert "Отчёт connmon" in text and "{" not in text
    assert t.gettext("a message no catalogue has") == "a message no catalogue has"


def test_language_from_the_config_and_the_command_line(october: Path) -> None:
    """``monitor: {language: kk}`` sets the report's language with --config; --lang overrides it; a language
    that is not offered is a located config error."""
    config = write_config(october, "monitor:\n  language: kk\ngroups:\n  - name: schools\n    kind: school\n"
                                   "    district: Aktobe\n    endpoints:\n      - {name: s1, host: 192.0.2.1}\n")
    assert load_config(config).monitor.language == "kk"
    kk = report_cli(october, "--config", str(config))
    assert kk.returncode == 0, kk.stderr
    assert kk.stdout.startswith("connmon есебі, 2026\u202fж. 1 қазан – 2026\u202fж. 31 қазан (UTC)\n")
    en = report_cli(october, "--config", str(config), "--lang", "en")
    assert en.stdout.startswith("connmon report, 2026-10-01 to 2026-10-31 (UTC)\n")
    assert report_cli(october).stdout.startswith("connmon report, ")  # no config, no --lang: English
    bad = write_config(october, "monitor:\n  language: fr\ngroups:\n  - name: g\n    endpoints:\n"
                                "      - {name: s1, host: 192.0.2.1}\n", "bad.yaml")
    check = subprocess.run([sys.executable, "-m", "monitor", "check", "--config", str(bad)], capture_output=True,
                           text=True, timeout=60, check=False, env=child_env())
    assert check.returncode == 2
    assert f"{bad}:2:13: monitor.language: must be one of en, ru, kk, got 'fr'" in check.stdout + check.stderr
    unknown = report_cli(october, "--lang", "fr")
    assert unknown.returncode == 2 and "invalid choice: 'fr'" in unknown.stderr


# ------------------------------------------------------------------------------ Alertmanager's messages
TEMPLATES = ROOT / "config" / "alertmanager.tmpl"
CLINIC = "Шалқар аудандық емханасы"
DISTRICT = "Шалқар ауданы"
ALERT_LABELS = {"alertname": "ConnmonSiteDown", "endpoint": CLINIC, "kind": "clinic", "district": DISTRICT,
                "link": "fibre", "severity": "critical", "job": "connmon", "instance": "mon:9077"}
ALERT_ANNOTATIONS = {"summary": f"Site {CLINIC} (clinic, {DISTRICT}) is down",
                     "description": f"{CLINIC} has answered no ping for 5 minutes (fibre link). Check first: power.",
                     "dashboard": "/d/connmon-site-detail/connmon-site-detail?var-endpoint=clinic"}
# what each language's message must say of that alert (the site's own words untouched)
SAYS = {
    "ru": ["КРИТИЧНО: Шалқар аудандық емханасы — нет ответа ни на один ping: объект недоступен",
           f"Объект:      {CLINIC}", "Тип:         поликлиника", f"Район:       {DISTRICT}",
           "Тип канала:  оптоволокно", "Причина:     нет ответа ни на один ping: объект недоступен",
           "Начало:      06.12.2026 10:00 UTC",
           "Дашборд:     https://grafana.example.org/d/connmon-site-detail/connmon-site-detail?var-endpoint=clinic"],
    "kk": ["ҚАУІПТІ: Шалқар аудандық емханасы — бірде-бір ping-ке жауап жоқ: нысан қолжетімсіз",
           f"Нысан:      {CLINIC}", "Түрі:       емхана", f"Аудан:      {DISTRICT}",
           "Арна түрі:  оптикалық талшық", "Себебі:     бірде-бір ping-ке жауап жоқ: нысан қолжетімсіз",
           "Басталуы:   06.12.2026 10:00 UTC",
           "Дашборд:    https://grafana.example.org/d/connmon-site-detail/connmon-site-detail?var-endpoint=clinic"],
}


def amtool_render(tmp_path: Path, template: str, labels: dict[str, str] | None = None) -> str:
    """``template`` rendered by amtool for one firing alert (``labels``, default ALERT_LABELS)."""
    need(shutil.which("amtool") is not None, "needs amtool (scripts/install --test installs it)")
    labels = labels or ALERT_LABELS
    data = {"receiver": "health-ops", "status": "firing", "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": "firing", "labels": labels, "annotations": ALERT_ANNOTATIONS,
                        "startsAt": "2026-12-06T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "", "fingerprint": "1"}],
            "groupLabels": {k: labels[k] for k in ("alertname", "kind", "district")},
            "commonLabels": labels, "commonAnnotations": ALERT_ANNOTATIONS}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(["amtool", "template", "render", f"--template.glob={TEMPLATES}", f"--template.data={path}",
                           f'--template.text={{{{ template "{template}" . }}}}'], capture_output=True, text=True,
                          check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def english_messages() -> list[str]:
    """The messages a receiver names (connmon.email.*, connmon.telegram.*), as the template file defines them."""
    text = TEMPLATES.read_text(encoding="utf-8")
    return sorted(set(re.findall(r'define "connmon\.((?:email|telegram)\.\w+)"', text)))


def test_every_language_defines_every_message_english_has(tmp_path: Path) -> None:
    """connmon.{en,ru,kk}.<message> exist for each message a receiver can name, and each renders."""
    messages = english_messages()
    assert messages == ["email.html", "email.subject", "email.text", "telegram.message"]
    text = TEMPLATES.read_text(encoding="utf-8")
    for language in ("en", "ru", "kk"):
        for message in messages:
            assert f'define "connmon.{language}.{message}"' in text, (language, message)
            assert CLINIC in amtool_render(tmp_path, f"connmon.{language}.{message}")
    assert amtool_render(tmp_path, "connmon.en.email.subject") == amtool_render(tmp_path, "connmon.email.subject")


@pytest.mark.parametrize("language", ["ru", "kk"])
def test_alert_messages_in_russian_and_kazakh(tmp_path: Path, language: str) -> None:
    """Text, Telegram and HTML name the site (its Cyrillic intact), kind, district, link type, cause and
    dashboard in the language; the rule's own description is kept."""
    for message in ("email.text", "telegram.message"):
        lines = amtool_render(tmp_path, f"connmon.{language}.{message}").splitlines()
        for expected in SAYS[language]:
            assert expected in lines, (message, expected)
        assert any(line.endswith("Check first: power.") for line in lines)
    html = amtool_render(tmp_path, f"connmon.{language}.email.html")
    assert f'<html lang="{language}">' in html and CLINIC in html
    assert SAYS[language][0].split(": ", 1)[1] in html  # the headline's cause
    subject = amtool_render(tmp_path, f"connmon.{language}.email.subject").strip()
    kind = {"ru": "поликлиника", "kk": "емхана"}[language]
    assert subject.startswith(f"[{SAYS[language][0].split(':')[0]}] {CLINIC}: ") and subject.endswith(
        f"({kind}, {DISTRICT})")


def test_an_alert_or_kind_no_language_knows_is_written_in_english(tmp_path: Path) -> None:
    """A new alert's cause is its (English) summary and an unknown kind and link are written as they are."""
    labels = {**ALERT_LABELS, "alertname": "ConnmonSomethingNew", "kind": "observatory", "link": "laser"}
    for language in ("ru", "kk"):
        text = amtool_render(tmp_path, f"connmon.{language}.email.text", labels)
        assert f"Site {CLINIC} (clinic, {DISTRICT}) is down" in text
        assert "observatory" in text and "laser" in text


def test_a_receiver_picks_its_language_in_alertmanager_yml(tmp_path: Path) -> None:
    """A receiver whose e-mail and Telegram name the Kazakh messages is a valid Alertmanager config."""
    need(shutil.which("amtool") is not None, "needs amtool (scripts/install --test installs it)")
    (tmp_path / "alertmanager.tmpl").write_text(TEMPLATES.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "alertmanager.yml").write_text(
        "global: {smtp_smarthost: 'localhost:25', smtp_from: 'connmon@example.org'}\n"
        "templates: ['alertmanager.tmpl']\n"
        "route: {receiver: shalqar-kk}\n"
        "receivers:\n"
        "  - name: shalqar-kk\n"
        "    email_configs:\n"
        "      - to: 'shalqar@example.org'\n"
        "        headers: {Subject: '{{ template \"connmon.kk.email.subject\" . }}'}\n"
        "        text: '{{ template \"connmon.kk.email.text\" . }}'\n"
        "        html: '{{ template \"connmon.kk.email.html\" . }}'\n", encoding="utf-8")
    proc = subprocess.run(["amtool", "check-config", str(tmp_path / "alertmanager.yml")], capture_output=True,
                          text=True, check=False, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_the_docs_samples_are_what_connmon_writes(tmp_path: Path) -> None:
    """docs/reports.md's Russian lines are in the golden report; docs/alerts.md's Kazakh message is amtool's."""
    reports = (ROOT / "docs" / "reports.md").read_text(encoding="utf-8").split("\n## Languages\n", 1)[1]
    sample = reports.split("```text\n", 1)[1].split("```", 1)[0]
    assert (GOLDEN / "report.ru.txt").read_text(encoding="utf-8").startswith(sample)
    alerts = (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8").split("### Messages in Russian and Kazakh", 1)[1]
    kazakh, russian = alerts.split("```text\n", 1)[1].split("```", 1)[0].split("\n\nКРИТИЧНО", 1)
    subject, body = kazakh.split("\n\n", 1)
    assert subject == "Subject: " + amtool_render(tmp_path, "connmon.kk.email.subject").strip()
    rendered = amtool_render(tmp_path, "connmon.kk.telegram.message").splitlines()
    for line in body.splitlines():
        assert line in rendered or (line.endswith("=...") and any(r.startswith(line[:-3]) for r in rendered)), line
    ru = amtool_render(tmp_path, "connmon.ru.telegram.message").splitlines()
    assert all(line in ru for line in ("КРИТИЧНО" + russian).rstrip("\n").splitlines())


def test_the_kazakh_html_page_runs_its_scripts_in_chromium(october: Path, tmp_path: Path) -> None:
    """The Kazakh page in headless Chromium: the scripts ran (the translated chart labels are valid JS), the chart
    drew a bar per district with its Kazakh target line, and the tables are sortable."""
    browser = shutil.which("chromium")
    need(browser is not None, "needs Debian's chromium (scripts/install --test installs it)")
    assert browser is not None
    page = tmp_path / "october.kk.html"
    page.write_text(render(build_report(SqliteStore(database_path(october), read_only=True), OCT), "html", "kk"),
                    encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="connmon-chromium-") as profile:
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-ready="1"' in dom and 'data-chart-bars="2"' in dom
    canvas = re.search(r'<canvas id="download-chart"([^>]*)>', dom)
    assert canvas is not None
    labels = re.search(r'data-target-labels="([^"]*)"', canvas.group(1))
    assert labels is not None and json.loads(html.unescape(labels.group(1))) == ["мақсат 4 Мбит/с"]
    assert "<h2>Нысандар</h2>" in dom and "орындалды" in dom
