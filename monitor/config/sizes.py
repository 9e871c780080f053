"""Parsing of data sizes (``25MB``, ``2GiB``, ``500000``) at the config boundary.

Budgets on metered satellite links are written the way contracts write them (``5GB`` a month);
inside the program every size is an int of bytes with ``_bytes`` in its name.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Return the number of bytes in ``text``: decimal units (kB, MB, GB, TB) or binary (KiB, MiB, GiB).

    Raises:
        ValueError: with a message fit to show to an operator.
    """
    found = _SIZE.match(text)
    unit = found[2].lower() if found else ""
    if found is None or unit not in _UNITS:
        raise ValueError(f"'{text}' is not a size; write e.g. 25MB, 2GB or 512MiB")
    return int(float(found[1]) * _UNITS[unit])

