"""The reports' languages (issue 22): English, Russian and Kazakh, through gettext catalogues read with Babel.

The people who read the reports in the region work in Russian and Kazakh. The English text in the code is
the message id; each other language is a ``.po`` catalogue shipped in the package
(``monitor/locale/<code>/LC_MESSAGES/connmon.po``), read and compiled in memory the first time it is
needed (Babel's ``read_po`` then ``write_mo``: no build step, and the ``.po`` in the repo is the one that
runs). What is not translated falls back to English, never to a broken string: an empty or fuzzy
entry is English, and so is a translation whose ``{placeholders}`` differ from the English ones (a typo
in a catalogue cannot raise a ``KeyError`` in a report).

Numbers and dates are written the locale's way with Babel (a decimal comma in Russian and Kazakh): the
figure is rounded first exactly as the English report rounds it, so every language shows the same digits.

The language in force is a context variable set around one rendering (:func:`language`), so the
renderers call :func:`gettext` (imported as ``_``) without a translator threaded through every helper.
Machine-readable output keeps its keys: CSV headers and JSON keys are never translated (see
docs/reports.md). Which strings exist and whether each catalogue has them is checked by
tests/test_i18n.py, with Babel's extractor over ``monitor/report/`` and the HTML template.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import gettext as _gettext
import io
import string
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from typing import Literal

Language = Literal["en", "ru", "kk"]
LANGUAGES: tuple[Language, ...] = ("en", "ru", "kk")
DOMAIN = "connmon"
DEFAULT_LANGUAGE: Language = "en"


def N_(message: str) -> str:
    """Marks a string for the catalogues where it is defined (a header constant); translated where shown."""
    return message


def placeholders(message: str) -> frozenset[str]:
    """The ``{names}`` of a message: a translation must use the same ones, or English is used instead."""
    try:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(message) if name is not None)
    except ValueError:  # an unbalanced brace: never the same as a well-formed English message
        return frozenset({"\x00unbalanced"})


@dataclass(frozen=True, slots=True)
class Translator:
    """One language: its messages (English when missing) and its way of writing numbers and dates."""

    language: Language
    messages: _gettext.NullTranslations

    def gettext(self, message: str) -> str:
        if not message:  # gettext's "" is the catalogue's header, never a message
            return message
        translated = self.messages.gettext(message)
        return translated if placeholders(translated) == placeholders(message) else message

    def ngettext(self, singular: str, plural: str, count: int) -> str:
        translated = self.messages.ngettext(singular, plural, count)
        english = singular if count == 1 else plural
        return translated if placeholders(translated) == placeholders(english) else english

    def decimal(self, value: float, digits: int, *, signed: bool = False) -> str:
        """``value`` rounded to ``digits`` as Python rounds it (the English report), written the locale's way."""
        text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
        if self.language == "en":
            return text
        from babel.numbers import format_decimal  # Babel only for another language: the agent never loads it

        pattern = "0" + ("." + "0" * digits if digits else "")
        written = format_decimal(decimal.Decimal(text), format=pattern, locale=self.language,
                                 decimal_quantization=True, group_separator=False)
        return ("+" + written) if signed and text.startswith("+") else written

    def date(self, day: dt.date) -> str:
        """A day: ISO 8601 in English (as the reports always wrote it), the locale's long form otherwise."""
        if self.language == "en":
            return day.isoformat()
        from babel.dates import format_date

        return format_date(day, format="long", locale=self.language)


def _catalogue(language: str) -> _gettext.NullTranslations:
    """The language's catalogue compiled in memory from its ``.po`` (fuzzy entries left out, so English)."""
    if language == "en":
        return _gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    po = resources.files("monitor").joinpath("locale", language, "LC_MESSAGES", f"{DOMAIN}.po")
    with po.open("rb") as source:
        catalog = read_po(source, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return _gettext.GNUTranslations(compiled)


@functools.cache
def translator(language: str) -> Translator:
    """The translator of ``language`` (read once per process).

    Raises:
        ValueError: not one of :data:`LANGUAGES` (the command line and the config offer only those).
    """
    if language not in LANGUAGES:
        raise ValueError(f"no such language: {language!r} (one of {', '.join(LANGUAGES)})")
    return Translator(language, _catalogue(language))


_current: ContextVar[Translator | None] = ContextVar("connmon_report_language", default=None)


def current() -> Translator:
    """The translator in force: English outside :func:`language`."""
    return _current.get() or translator(DEFAULT_LANGUAGE)


@contextmanager
def language(code: str) -> Iterator[Translator]:
    """Render in ``code`` inside the block (the renderers read it with :func:`gettext` and :func:`number`)."""
    token = _current.set(translator(code))
    try:
        yield _current.get() or translator(code)
    finally:
        _current.reset(token)


def gettext(message: str) -> str:
    """``message`` in the language in force (English when its catalogue lacks it)."""
    return current().gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The form of a message for ``count`` (Russian has three, Kazakh and English two)."""
    return current().ngettext(singular, plural, count)


def number(value: float, digits: int, *, signed: bool = False) -> str:
    """A figure with ``digits`` decimals in the language in force: "99.50", "99,50"."""
    return current().decimal(value, digits, signed=signed)


def date(day: dt.date) -> str:
    """A day in the language in force: "2026-10-01", "1 октября 2026 г.", "2026 ж. 1 қазан"."""
    return current().date(day)

