"""A spreadsheet's rows as sites: which column is which key, and whether each cell is valid (issue 22).

Columns are found by a header named with the config's own keys (``name``, ``host``, ``kind``, ...) or by
a map from key to header text (``--map name=Школа,host=IP-адрес``). Every cell is checked as the config
loader would check its key, with the spreadsheet's own habits allowed: a decimal comma (``50,2839``)
and a Russian date (``01.09.2027``). Every bad cell is a :class:`RowProblem` naming its row and column,
and a name used twice names the row that had it first. What the sites become in YAML, and how they are
merged into a file written before, is :mod:`monitor.config.importer`'s.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from monitor.config.hosts import host_problem
from monitor.config.model import ROLLOUT_STATUSES
from monitor.config.spreadsheet import Sheet, column_letter

# the config's keys a spreadsheet may give, in the order they are written in YAML
KEYS = ("name", "host", "kind", "district", "link", "lat", "lon", "provider", "target_mbps", "contracted_mbps",
        "status", "planned_date")
REQUIRED = ("name", "host")
_PAIRS = re.compile(r",(?=\s*\w+\s*=)")
_RUSSIAN_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")


@dataclass(frozen=True, slots=True)
class Box:
    """The region's box: a coordinate outside it is a bad row (``--region-box SOUTH,WEST,NORTH,EAST``)."""

    south: float
    west: float
    north: float
    east: float

    @classmethod
    def parse(cls, text: str) -> Box:
        """``SOUTH,WEST,NORTH,EAST`` in degrees. Raises ValueError with a message for people."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4:
            raise ValueError(f"{text!r}: write the box as SOUTH,WEST,NORTH,EAST (e.g. 45.5,54.5,51.0,63.0)")
        south, west, north, east = (float(p) for p in parts)
        if not (-90 <= south < north <= 90 and -180 <= west < east <= 180):
            raise ValueError(f"{text!r}: needs south < north and west < east, in degrees")
        return cls(south, west, north, east)


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A bad cell: printed ``FILE: row 7, column C (IP-адрес): message``."""

    source: str
    row: int
    column: str  # the letter, with the header in parentheses
    message: str

    def __str__(self) -> str:
        return f"{self.source}: row {self.row}, column {self.column}: {self.message}"


@dataclass(frozen=True, slots=True)
class Site:
    """One good row: the keys it gives (only those whose column the sheet has), typed as the config wants."""

    row: int
    values: Mapping[str, Any]  # key → str | float | int | date | None (None: the cell was empty)

    @property
    def name(self) -> str:
        return str(self.values["name"])


@dataclass(frozen=True, slots=True)
class Rows:
    """What the sheet held: its good sites, its problems, the names of the bad rows, and which keys it gives."""

    sites: tuple[Site, ...]
    problems: tuple[RowProblem, ...]
    bad_names: frozenset[str]  # names of rows that were bad (a re-import must not retire those sites)
    keys: tuple[str, ...]
    ignored: tuple[str, ...]  # header cells that are no key (the ministry's own columns)


def parse_map(texts: list[str]) -> dict[str, str]:
    """``--map name=Школа,host=IP-адрес`` (repeatable) → key → header. Raises ValueError for people.

    A comma starts a new pair only before ``KEY=``, so a header may hold one (``Скорость, Мбит/с``).
    """
    out: dict[str, str] = {}
    for text in texts:
        for pair in filter(None, (p.strip() for p in _PAIRS.split(text))):
            key, sep, header = pair.partition("=")
            key = key.strip()
            if not sep or not header.strip():
                raise ValueError(f"--map {pair!r}: write KEY=HEADER, e.g. name=Школа")
            if key not in KEYS:
                raise ValueError(f"--map {pair!r}: {key!r} is not a key a spreadsheet can give "
                                 f"({', '.join(KEYS)})")
            out[key] = header.strip()
    return out


def header_test(mapping: Mapping[str, str]) -> Callable[[tuple[str, ...]], bool]:
    """Whether a row is the header: it has the name column (``name``, or its mapped header)."""
    wanted = mapping.get("name", "name").strip().casefold()
    return lambda cells: any(cell.strip().casefold() == wanted for cell in cells)


def columns(sheet: Sheet, mapping: Mapping[str, str],
            required: tuple[str, ...] = REQUIRED) -> tuple[dict[str, int], list[str]]:
    """Key → column index, from ``mapping`` first, else a header equal to the key (case and spaces aside).

    Returns the columns and the problems (a mapped header that is not there, a required key without a column).
    """
    folded = [cell.strip().casefold() for cell in sheet.header]
    found: dict[str, int] = {}
    problems: list[str] = []
    for key in KEYS:
        wanted = mapping.get(key, key).strip().casefold()
        if wanted in folded:
            found[key] = folded.index(wanted)
        elif key in mapping:
            problems.append(f"--map {key}={mapping[key]}: the header row (row {sheet.header_row}) has no column "
                            f"'{mapping[key]}'; it has: {', '.join(h for h in sheet.header if h)}")
    for key in required:
        if key not in found and key not in mapping:
            problems.append(f"no column for '{key}' in the header row (row {sheet.header_row}): name one '{key}', "
                            f"or map it with --map {key}=HEADER")
    return found, problems


def read_rows(sheet: Sheet, found: Mapping[str, int], box: Box | None = None, *,
              need_district: bool = False) -> Rows:
    """Check every row; the good ones become sites, each bad cell a problem (a row may have several).

    ``need_district``: with ``--output-dir`` every site goes to its district's file, so it needs one.
    """
    sites: list[Site] = []
    problems: list[RowProblem] = []
    bad_names: set[str] = set()
    first_row: dict[str, int] = {}
    for number, cells in sheet.rows:
        values, wrong = _read_row(cells, found, box, first_row)
        if need_district and values.get("district") is None and "district" in found and "district" not in wrong:
            wrong = {**wrong, "district": "empty: with --output-dir each site goes to its district's file"}
            wrong = {key: wrong[key] for key in KEYS if key in wrong}
        name = values.get("name")
        if isinstance(name, str) and "name" not in wrong:
            first_row.setdefault(name, number)
        if wrong:
            problems.extend(_located(sheet, found, number, key, message) for key, message in wrong.items())
            if isinstance(name, str):
                bad_names.add(name)
        else:
            sites.append(Site(number, values))
    keys = tuple(k for k in KEYS if k in found)
    ignored = tuple(h for i, h in enumerate(sheet.header) if h and i not in found.values())
    return Rows(tuple(sites), tuple(problems), frozenset(bad_names), keys, ignored)


def _read_row(cells: tuple[str, ...], found: Mapping[str, int], box: Box | None,
              first_row: Mapping[str, int]) -> tuple[dict[str, Any], dict[str, str]]:
    """One row's values, and its problems as key → message (one per cell, in the keys' order)."""
    values: dict[str, Any] = {}
    wrong: dict[str, str] = {}
    for key, index in found.items():
        text = cells[index].strip() if index < len(cells) else ""
        try:
            values[key] = _value(key, text)
        except ValueError as err:
            wrong[key] = str(err)
    name = values.get("name")
    if isinstance(name, str) and name in first_row:
        wrong["name"] = f"duplicate name '{name}' (first in row {first_row[name]})"
    if "host" in found and values.get("host") is None and "host" not in wrong and values.get("status") != "planned":
        wrong["host"] = "empty: every site needs its address (only a site with status planned may leave it out)"
    lat, lon = values.get("lat"), values.get("lon")
    if box is not None and isinstance(lat, float) and not box.south <= lat <= box.north:
        wrong["lat"] = f"{lat:g} is outside the region's box ({box.south:g} to {box.north:g})"
    if box is not None and isinstance(lon, float) and not box.west <= lon <= box.east:
        wrong["lon"] = f"{lon:g} is outside the region's box ({box.west:g} to {box.east:g})"
    return values, {key: wrong[key] for key in KEYS if key in wrong}


def _located(sheet: Sheet, found: Mapping[str, int], number: int, key: str, message: str) -> RowProblem:
    index = found[key]
    header = sheet.header[index] if index < len(sheet.header) else key
    return RowProblem(sheet.source, number, f"{column_letter(index)} ({header})", message)


def _number(text: str) -> float:
    """A number as a spreadsheet writes it: ``50,2839`` or ``50.2839``, spaces as thousands separators."""
    cleaned = text.replace("\u00a0", "").replace(" ", "")
    if "," in cleaned and "." not in cleaned:
        cleaned = cleaned.replace(",", ".")
    value = float(cleaned)  # ValueError for people below
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _value(key: str, text: str) -> Any:
    """A cell's value for ``key``, or None when empty. Raises ValueError with the message for the row."""
    if not text:
        if key == "name":
            raise ValueError("empty: every site needs a name")
        return None
    if key == "host":
        wrong = host_problem(text)
        if wrong is not None:
            raise ValueError(wrong)
        return text
    if key in ("lat", "lon", "target_mbps", "contracted_mbps"):
        try:
            value = _number(text)
        except ValueError:
            raise ValueError(f"'{text}' is not a number") from None
        limit = {"lat": 90.0, "lon": 180.0}.get(key)
        if limit is not None:
            if not -limit <= value <= limit:
                raise ValueError(f"{text} is not a {'latitude' if key == 'lat' else 'longitude'} "
                                 f"(-{limit:g} to {limit:g})")
            return value
        if not 0 < value <= 1_000_000:
            raise ValueError(f"{text}: megabits per second, more than 0")
        return int(value) if value.is_integer() else value
    if key == "status":
        status = text.casefold()
        if status not in ROLLOUT_STATUSES:
            raise ValueError(f"'{text}': must be one of {', '.join(ROLLOUT_STATUSES)}")
        return status
    if key == "planned_date":
        return _date(text)
    return text


def _date(text: str) -> dt.date:
    russian = _RUSSIAN_DATE.fullmatch(text)
    try:
        if russian:
            day, month, year = (int(g) for g in russian.groups())
            return dt.date(year, month, day)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a date (write YYYY-MM-DD or DD.MM.YYYY)") from None
