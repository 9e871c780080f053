"""Figures and nouns as the report's reader says them, in the report's language (issue 22): a target in
Mbit/s written as people write it, a kind of site as a noun for a count ("schools", "школ", "мектеп").
"""

from __future__ import annotations

from monitor.report.i18n import ngettext, number


def plural(kind: str, count: int) -> str:
    if count == 1 or kind.endswith("s"):
        return kind
    return kind + "s"


def format_mbps(bits_per_second: float) -> str:
    """4000000 → "4", 2500000 → "2.5": targets are written as people say them."""
    return f"{bits_per_second / 1e6:.2f}".rstrip("0").rstrip(".")


def say_mbps(bits_per_second: float) -> str:
    """:func:`format_mbps` for people, in the report's language: "2.5", "2,5" (CSV and JSON keep the point)."""
    text = format_mbps(bits_per_second)
    return number(float(text), len(text.partition(".")[2]))


def kind_noun(kind: str, count: int) -> str:
    """A kind as a noun for ``count`` sites in the report's language: "schools", "школ", "мектеп".

    The kinds a config names are its own words; the common ones are in the catalogues, any other is
    written as :func:`plural` writes it (English, or whatever word the config uses).
    """
    known = {
        "school": lambda n: ngettext("school", "schools", n),
        "clinic": lambda n: ngettext("clinic", "clinics", n),
        "hospital": lambda n: ngettext("hospital", "hospitals", n),
        "library": lambda n: ngettext("library", "libraries", n),
        "kindergarten": lambda n: ngettext("kindergarten", "kindergartens", n),
        "office": lambda n: ngettext("office", "offices", n),
    }
    return known[kind](count) if kind in known else plural(kind, count)
