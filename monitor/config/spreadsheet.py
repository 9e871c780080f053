"""Reading a site list as a ministry keeps it: an XLSX workbook or Excel's CSV export (issue 22).

The job here is only to turn the file into a header and rows of text cells, each row with its number
as the spreadsheet shows it, so that every later message can say "row 7, column C". What the columns
mean and whether a cell is valid is :mod:`monitor.config.site_rows`'s.

CSV as Excel writes it in this region: UTF-8 with or without a byte-order mark, or Windows-1251 (the
"CSV (разделители — запятые)" of a Russian Windows, which writes ``;`` because the decimal separator
is a comma); the separator is sniffed between ``;``, ``,`` and tab. XLSX is read with openpyxl (the first
sheet), values as Excel computed them: a number keeps its digits (``50.2839``), a date becomes
``YYYY-MM-DD``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ConfigError, ConfigProblem

_SEPARATORS = ";,\t"


Line = tuple[int, tuple[str, ...]]  # a row's number (1-based, as the spreadsheet shows it) and its cells


@dataclass(frozen=True, slots=True)
class Sheet:
    """A spreadsheet's header row and the data rows below it, cells as stripped text; blank rows left out.

    Ministries put a title above the table, so the header is the first row that names a column the
    caller looks for (:func:`read_sheet`'s ``is_header``), else the first row.
    """

    source: str
    header: tuple[str, ...]
    header_row: int
    rows: tuple[Line, ...]


def column_letter(index: int) -> str:
    """Excel's name of the 0-based column ``index``: A … Z, AA, AB …"""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def read_sheet(path: str | Path, is_header: Callable[[tuple[str, ...]], bool] = lambda _cells: True) -> Sheet:
    """Read an XLSX workbook's first sheet (told by its content, not its name), or a CSV file.

    Args:
        is_header: tells the header row from a title above it.

    Raises:
        ConfigError: the file cannot be read, is not a workbook or text in a known encoding, or has no header.
    """
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError([ConfigProblem(source, 1, 1, "", f"cannot read the file: {err.strerror}")]) from None
    lines = _xlsx_rows(data, source) if data[:4] == b"PK\x03\x04" else _csv_rows(data, source)
    numbered = [(n, cells) for n, cells in enumerate(lines, start=1) if any(cells)]
    if not numbered:
        raise ConfigError([ConfigProblem(source, 1, 1, "", "the spreadsheet is empty; it needs a header row "
                                         "(name, host, kind, district, ...) and a row per site")])
    at = next((i for i, (_, cells) in enumerate(numbered) if is_header(cells)), 0)
    (header_row, header), rest = numbered[at], numbered[at + 1:]
    return Sheet(source, header, header_row, tuple(rest))


def _decode(data: bytes) -> str:
    """UTF-8 (a BOM is dropped), else Windows-1251: the two encodings Excel writes here."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1251", errors="replace")


def _csv_rows(data: bytes, source: str) -> list[tuple[str, ...]]:
    text = _decode(data)
    separator = _separator(text)
    try:
        return [tuple(cell.strip() for cell in row) for row in csv.reader(io.StringIO(text, newline=""),
                                                                          delimiter=separator)]
    except csv.Error as err:
        raise ConfigError([ConfigProblem(source, 1, 1, "", f"not a CSV file: {err}")]) from None


def _separator(text: str) -> str:
    """The separator that splits the first rows into the same number of columns, the most of them.

    Not :class:`csv.Sniffer`: a header like ``Скорость, Мбит/с`` in a ``;`` file fools it. Decimal commas
    can make ``,`` consistent too, but into fewer columns than ``;``.
    """
    head = "\n".join([line for line in text.splitlines() if line.strip()][:50])
    best, best_columns = _SEPARATORS[0], 0
    for separator in _SEPARATORS:
        try:
            widths = {len(row) for row in csv.reader(io.StringIO(head), delimiter=separator)}
        except csv.Error:
            continue
        if len(widths) == 1 and (columns := widths.pop()) > best_columns:
            best, best_columns = separator, columns
    return best


def _xlsx_rows(data: bytes, source: str) -> list[tuple[str, ...]]:
    import zipfile

    from openpyxl import load_workbook  # only for an import of a workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as err:
        raise ConfigError([ConfigProblem(source, 1, 1, "", f"not an XLSX workbook: {err}")]) from None
    try:
        sheet = book.worksheets[0]
        return [tuple(_cell_text(value) for value in row) for row in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


def _cell_text(value: object) -> str:
    """A cell as text: a whole float without ``.0`` (Excel shows ``100``), a date as ``YYYY-MM-DD``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value).strip()
