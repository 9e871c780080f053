"""Parsing of human durations (``250ms``, ``60s``, ``1h30m``) at the config boundary.

Inside the program every duration is a float of seconds with ``_seconds`` in its name;
strings like ``"250ms"`` exist only in YAML and on the command line.
"""

from __future__ import annotations

import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text``.

    Units are ms, s, m, h, d and may be combined largest first (``1h30m``), as in
    Prometheus. A bare number is refused: ``60`` could mean seconds or milliseconds.

    Raises:
        ValueError: with a message fit to show to an operator.
    """
    cleaned = text.strip()
    if not _WHOLE.fullmatch(cleaned):
        raise ValueError(f"{text!r} is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h")
    seconds = 0.0
    last_rank = len(_UNIT_SECONDS)
    ranks = {unit: rank for rank, unit in enumerate(("ms", "s", "m", "h", "d"))}
    for number, unit in _PART.findall(cleaned):
        if ranks[unit] >= last_rank:
            raise ValueError(f"{text!r}: units must go from largest to smallest, each once (e.g. 1h30m)")
        last_rank = ranks[unit]
        seconds += float(number) * _UNIT_SECONDS[unit]
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds back in the config's notation (for messages and logs)."""
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    if seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if whole >= size and whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    return f"{seconds:g}s"
