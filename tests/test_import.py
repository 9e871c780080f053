"""``connmon import``: the ministry's spreadsheet into the site config (issue 22).

The spreadsheets are generated here: 500 sites with Russian names holding quotes (« », " ) and №, as an
XLSX workbook and three CSV exports (semicolons, decimal commas and a BOM; Windows-1251 with the
ministry's own headers; commas with decimal points). Windows-1251 has no Kazakh letters, so the names
are Russian: every variant then holds the same sites.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook

from monitor.config import load_config
from monitor.targets import build_targets

REPO = Path(__file__).resolve().parent.parent
DISTRICTS = ("Актобе", "Хромтау", "Шалкар", "Мугалжар", "Темир")
KEYS = ("name", "host", "kind", "district", "link", "lat", "lon", "provider", "target_mbps", "contracted_mbps",
        "status", "planned_date")
RUSSIAN = {"name": "Наименование", "host": "IP-адрес", "kind": "Тип", "district": "Район", "link": "Канал",
           "lat": "Широта", "lon": "Долгота", "provider": "Провайдер", "target_mbps": "Скорость, Мбит/с",
           "contracted_mbps": "По договору, Мбит/с", "status": "Статус", "planned_date": "Дата подключения"}
MAP = ",".join(f"{k}={v}" for k, v in RUSSIAN.items())


def sites(count: int = 500) -> list[dict[str, object]]:
    """The region's sites as typed values (numbers as numbers, dates as dates), every 25th one planned."""
    out: list[dict[str, object]] = []
    for n in range(count):
        kind = "clinic" if n % 5 == 4 else "school"
        quoted = f'Школа "Берёзка" №{n}' if n % 2 else f"Школа «Ромашка» №{n}"
        planned = n % 25 == 24
        out.append({
            "name": f"ФАП села №{n}" if kind == "clinic" else quoted,
            "host": "" if planned else (f"192.0.2.{n % 250 + 1}" if n < 250 else f"site{n}.aktobe.example.org"),
            "kind": kind, "district": DISTRICTS[n % 5], "link": ("fibre", "dsl", "lte", "satellite")[n % 4],
            "lat": round(46.0 + n * 0.0091, 4), "lon": round(55.0 + n * 0.0137, 4), "provider": "Казахтелеком",
            "target_mbps": 20 if kind == "school" else 10, "contracted_mbps": 50 if n % 3 == 0 else None,
            "status": "planned" if planned else "", "planned_date": dt.date(2027, 9, 1) if planned else None,
        })
    return out


def cell_text(value: object, decimal_comma: bool, russian_dates: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return str(value).replace(".", ",") if decimal_comma else str(value)
    if isinstance(value, dt.date):
        return value.strftime("%d.%m.%Y") if russian_dates else value.isoformat()
    return str(value)


def write_csv(path: Path, rows: list[dict[str, object]], *, delimiter: str, encoding: str, decimal_comma: bool,
              headers: dict[str, str] | None = None) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")  # as Excel writes it
    writer.writerow([(headers or {}).get(k, k) for k in KEYS])
    for row in rows:
        writer.writerow([cell_text(row[k], decimal_comma, russian_dates=decimal_comma) for k in KEYS])
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


def write_xlsx(path: Path, rows: list[dict[str, object]]) -> Path:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Сайты региона"])  # a title row above a blank one, as ministries do: the header comes after
    sheet.append([])
    sheet.append(list(KEYS))
    for row in rows:
        sheet.append([dt.datetime.combine(v, dt.time()) if isinstance(v, dt.date) else (v if v != "" else None)
                      for v in (row[k] for k in KEYS)])
    book.save(path)
    return path


def connmon_import(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "monitor", "import", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=120, check=False)


def variants(tmp: Path, rows: list[dict[str, object]]) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """The four spreadsheets of ``rows``, each with the options it needs."""
    return {
        "xlsx": (write_xlsx(tmp / "sites.xlsx", rows), ()),
        "semicolon-bom": (write_csv(tmp / "bom.csv", rows, delimiter=";", encoding="utf-8-sig",
                                    decimal_comma=True), ()),
        "windows-1251": (write_csv(tmp / "cp1251.csv", rows, delimiter=";", encoding="cp1251", decimal_comma=True,
                                   headers=RUSSIAN), ("--map", MAP)),
        "comma": (write_csv(tmp / "comma.csv", rows, delimiter=",", encoding="utf-8", decimal_comma=False), ()),
    }


def test_xlsx_and_three_csv_exports_give_the_same_yaml_for_500_sites(tmp_path: Path) -> None:
    """The same 500 sites as XLSX, BOM+semicolon+decimal-comma CSV, Windows-1251 CSV with Russian headers and a
    comma CSV: byte-identical YAML, which loads as 500 sites with their names, quotes and numbers intact."""
    rows = sites()
    texts = {}
    for label, (sheet, options) in variants(tmp_path, rows).items():
        output = tmp_path / f"{label}.yaml"
        result = connmon_import(sheet, "--output", output, *options)
        assert result.returncode == 0, (label, result.stderr)
        assert result.stdout.splitlines()[-1] == f"500 added, 0 changed, 0 retired, 0 unchanged; wrote {output}"
        texts[label] = output.read_text(encoding="utf-8")
    assert len(set(texts.values())) == 1, [label for label in texts if texts[label] != texts["xlsx"]]
    targets = {t.name: t for t in build_targets(load_config(tmp_path / "xlsx.yaml", allow_empty=False))}
    assert len(targets) == 500
    for row in rows:
        target = targets[str(row["name"])]
        assert (target.host or "", target.kind, target.district, target.link) == (
            row["host"], row["kind"], row["district"], row["link"])
        assert (target.lat, target.lon, target.provider) == (row["lat"], row["lon"], row["provider"])
        assert target.target_bits_per_second == float(row["target_mbps"]) * 1e6  # type: ignore[arg-type]
        assert target.status == (row["status"] or "connected")
        assert target.planned_date == row["planned_date"]
    assert 'Школа "Берёзка" №1' in targets and "Школа «Ромашка» №0" in targets


def test_four_bad_rows_are_reported_exactly_and_nothing_is_written(tmp_path: Path) -> None:
    """A duplicate name, a bad address, a coordinate outside the region's box and an unreadable number: each
    reported with its row and column, exit 2, and no file written."""
    rows = sites(30)
    rows[4]["name"] = rows[1]["name"]
    rows[9]["host"] = "10.0.0.300"
    rows[14]["lon"] = 71.25  # east of the region
    rows[20]["target_mbps"] = "двадцать"
    sheet = write_csv(tmp_path / "bad.csv", rows, delimiter=";", encoding="utf-8-sig", decimal_comma=True)
    output = tmp_path / "sites.yaml"
    result = connmon_import(sheet, "--output", output, "--region-box", "45.5,54.5,51.0,63.0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{sheet}: row 6, column A (name): duplicate name 'Школа \"Берёзка\" №1' (first in row 3)",
        f"{sheet}: row 11, column B (host): '10.0.0.300' is not an IP address or host name",
        f"{sheet}: row 16, column G (lon): 71.25 is outside the region's box (54.5 to 63)",
        f"{sheet}: row 22, column I (target_mbps): 'двадцать' is not a number",
        f"connmon: 4 bad rows in {sheet}; nothing written (fix them, or --skip-bad to import the 26 good ones)",
    ]
    assert result.stdout == "" and not output.exists()

    skipped = connmon_import(sheet, "--output", output, "--region-box", "45.5,54.5,51.0,63.0", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert {t.name for t in build_targets(load_config(output))} == {str(r["name"]) for i, r in enumerate(rows)
                                                                    if i not in (9, 14, 20)}


def test_reimport_changes_only_what_changed_and_keeps_hand_made_keys(tmp_path: Path) -> None:
    """A second import after hand edits: a dry run lists the added, changed and retired sites and writes nothing;
    the import then changes exactly those lines and keeps the keys added by hand."""
    rows = sites(40)
    first = write_csv(tmp_path / "v1.csv", rows, delimiter=";", encoding="utf-8-sig", decimal_comma=True)
    output = tmp_path / "sites.yaml"
    assert connmon_import(first, "--output", output).returncode == 0
    by_hand = output.read_text(encoding="utf-8").replace(
        "- name: clinic\n  kind: clinic\n", "- name: clinic\n  kind: clinic\n  throughput: {method: none}\n").replace(
        "{name: Школа «Ромашка» №2,", "{icmp: {interval: 30s}, name: Школа «Ромашка» №2,")
    output.write_text(by_hand, encoding="utf-8")

    rows[2]["link"] = "fibre"  # was lte
    rows[7]["host"] = "198.51.100.7"
    gone = rows.pop(11)
    rows.append({**rows[0], "name": "Школа «Новая»", "host": "198.51.100.99"})
    second = write_csv(tmp_path / "v2.csv", rows, delimiter=";", encoding="utf-8-sig", decimal_comma=True)
    dry = connmon_import(second, "--output", output, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "changed  Школа «Ромашка» №2: link lte → fibre",
        'changed  Школа "Берёзка" №7: host 192.0.2.8 → 198.51.100.7',
        "added    Школа «Новая»: school",
        f"retired  {gone['name']}",
        "dry run: 1 added, 2 changed, 1 retired, 37 unchanged; would write 1 files",
    ]
    assert output.read_text(encoding="utf-8") == by_hand

    assert connmon_import(second, "--output", output).returncode == 0
    after = output.read_text(encoding="utf-8")
    diff = [line for line in difflib.unified_diff(by_hand.splitlines(), after.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert diff == [
        "-  - {icmp: {interval: 30s}, name: Школа «Ромашка» №2, host: 192.0.2.3, district: Шалкар, link: lte, "
        "lat: 46.0182, lon: 55.0274, provider: Казахтелеком, target_mbps: 20}",
        "+  - {icmp: {interval: 30s}, name: Школа «Ромашка» №2, host: 192.0.2.3, district: Шалкар, link: fibre, "
        "lat: 46.0182, lon: 55.0274, provider: Казахтелеком, target_mbps: 20}",
        '-  - {name: Школа "Берёзка" №7, host: 192.0.2.8, district: Шалкар, link: satellite, lat: 46.0637, '
        "lon: 55.0959, provider: Казахтелеком, target_mbps: 20}",
        '+  - {name: Школа "Берёзка" №7, host: 198.51.100.7, district: Шалкар, link: satellite, lat: 46.0637, '
        "lon: 55.0959, provider: Казахтелеком, target_mbps: 20}",
        '-  - {name: Школа "Берёзка" №11, host: 192.0.2.12, district: Хромтау, link: satellite, lat: 46.1001, '
        "lon: 55.1507, provider: Казахтелеком, target_mbps: 20}",
        '+  - {name: Школа "Берёзка" №11, host: 192.0.2.12, district: Хромтау, link: satellite, lat: 46.1001, '
        "lon: 55.1507, provider: Казахтелеком, target_mbps: 20, status: retired}",
        "+  - {name: Школа «Новая», host: 198.51.100.99, district: Актобе, link: fibre, lat: 46.0, lon: 55.0, "
        "provider: Казахтелеком, target_mbps: 20, contracted_mbps: 50}",
    ]
    assert "throughput: {method: none}" in after
    again = connmon_import(second, "--output", output)
    assert again.stdout.splitlines() == ["0 added, 0 changed, 0 retired, 40 unchanged; wrote nothing (no change)"]


def test_output_dir_writes_a_file_per_district_that_include_loads_as_the_single_file(tmp_path: Path) -> None:
    """--output-dir: one file per district, a group per kind in each; `include: sites.d/*.yaml` of them gives
    the same sites as --output's single file."""
    sheet = write_xlsx(tmp_path / "sites.xlsx", sites(100))
    assert connmon_import(sheet, "--output", tmp_path / "single.yaml").returncode == 0
    result = connmon_import(sheet, "--output-dir", tmp_path / "sites.d")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "sites.d").iterdir()) == sorted(
        f"{d.lower()}.yaml" for d in DISTRICTS)
    main = tmp_path / "connmon.yaml"
    main.write_text("include: sites.d/*.yaml\n", encoding="utf-8")
    split = build_targets(load_config(main))
    single = build_targets(load_config(tmp_path / "single.yaml"))

    def facts(targets: tuple[object, ...]) -> dict[str, tuple[object, ...]]:
        return {t.name: (t.host, t.kind, t.district, t.link, t.lat, t.lon, t.status)  # type: ignore[attr-defined]
                for t in targets}

    assert facts(split) == facts(single)
    assert len(split) == 100
    shalkar = load_config(tmp_path / "sites.d" / "шалкар.yaml", allow_empty=True)
    assert [(g.name, g.kind, g.district) for g in shalkar.groups] == [("Шалкар school", "school", "Шалкар")]


@pytest.mark.parametrize(("options", "message"), [
    (("--map", "name=Школа"), "--map name=Школа: the header row (row 1) has no column 'Школа'"),
    (("--map", "nmae=Школа"), "--map 'nmae=Школа': 'nmae' is not a key a spreadsheet can give"),
    (("--region-box", "1,2,3"), "'1,2,3': write the box as SOUTH,WEST,NORTH,EAST"),
])
def test_unusable_options_and_columns_exit_2_and_say_why(tmp_path: Path, options: tuple[str, ...],
                                                         message: str) -> None:
    """A mapped header that is not there, a key that is none, a box that is not four numbers: exit 2, said."""
    sheet = write_csv(tmp_path / "s.csv", sites(3), delimiter=",", encoding="utf-8", decimal_comma=False)
    result = connmon_import(sheet, "--output", tmp_path / "out.yaml", *options)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out.yaml").exists()


def test_a_bad_row_skipped_on_reimport_leaves_its_site_as_it_was(tmp_path: Path) -> None:
    """--skip-bad on a re-import: the site of the bad row keeps its entry (not retired, not changed)."""
    rows = sites(10)
    output = tmp_path / "sites.yaml"
    assert connmon_import(write_csv(tmp_path / "v1.csv", rows, delimiter=",", encoding="utf-8",
                                    decimal_comma=False), "--output", output).returncode == 0
    before = output.read_text(encoding="utf-8")
    rows[3]["host"] = "not a host"
    second = write_csv(tmp_path / "v2.csv", rows, delimiter=",", encoding="utf-8", decimal_comma=False)
    result = connmon_import(second, "--output", output, "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == (f"{second}: row 5, column B (host): 'not a host' is not an IP "
                                             "address or host name")
    assert result.stdout.splitlines() == ["0 added, 0 changed, 0 retired, 9 unchanged; wrote nothing (no change)"]
    assert output.read_text(encoding="utf-8") == before


def test_a_site_whose_district_changed_moves_to_that_districts_file_with_its_own_keys(tmp_path: Path) -> None:
    """--output-dir: a re-import after a site changed district moves it, hand-made keys and all."""
    rows = sites(10)
    directory = tmp_path / "sites.d"
    assert connmon_import(write_xlsx(tmp_path / "v1.xlsx", rows), "--output-dir", directory).returncode == 0
    aktobe = directory / "актобе.yaml"
    aktobe.write_text(aktobe.read_text(encoding="utf-8").replace(
        "{name: Школа «Ромашка» №0,", "{name: Школа «Ромашка» №0, mode: probe,"), encoding="utf-8")
    rows[0]["district"] = "Темир"
    result = connmon_import(write_xlsx(tmp_path / "v2.xlsx", rows), "--output-dir", directory)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "changed  Школа «Ромашка» №0: moved to group Темир school"
    assert "Ромашка» №0" not in aktobe.read_text(encoding="utf-8")
    main = tmp_path / "connmon.yaml"
    main.write_text("include: sites.d/*.yaml\n", encoding="utf-8")
    moved = {t.name: t for t in build_targets(load_config(main))}["Школа «Ромашка» №0"]
    assert (moved.district, moved.mode, moved.host) == ("Темир", "probe", "192.0.2.1")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)
                      .filter(lambda s: s.strip() == s and s), min_size=1, max_size=8, unique=True))
def test_any_name_a_cell_can_hold_is_written_so_that_it_loads_back_the_same(tmp_path: Path, names: list[str]) -> None:
    """Whatever text a name cell holds (quotes, colons, `#`, `- `, `yes`, `123`, `null`, Cyrillic), the written
    YAML loads back as exactly those names."""
    from monitor.config import importer, parse_config, site_rows
    from monitor.config.spreadsheet import Sheet

    sheet = Sheet("s.csv", ("name", "host"), 1,
                  tuple((i + 2, (name, f"192.0.2.{i + 1}")) for i, name in enumerate(names)))
    found, problems = site_rows.columns(sheet, {})
    rows = site_rows.read_rows(sheet, found)
    assert problems == [] and rows.problems == ()
    output = tmp_path / f"{abs(hash(tuple(names)))}.yaml"
    plan = importer.plan(rows, output=str(output))
    config = parse_config(plan.texts[str(output)], str(output))
    assert [e.name for g in config.groups for e in g.endpoints] == names
