"""What counts as clean text from outside, and how any text is made safe to write (issue 24).

Why: strings that arrive over HTTP are JSON, and JSON can carry what Unicode text cannot: lone
UTF-16 surrogates (``"\\ud800"``) decode into a Python ``str`` that no UTF-8 encoder accepts. One
such string in an agent's version made every ``/metrics`` scrape fail; in an address it stopped
the history writer for every site. Control characters and bidirectional overrides are valid
Unicode, but in a label or a name they hide or reorder what an operator reads.

So text is checked once, at the edge (:func:`text_fault`), and refused with the field's name; and
as a second line, every sink that writes text out makes it encodable (:func:`scalar_text`), so a
value that slipped past (or came from a config) can never fail a whole page, row or answer.
"""

from __future__ import annotations

import re

# Bidirectional controls: embeddings, overrides and isolates, and the marks that steer them.
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_TAB = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")
# What a JSON Schema pattern can say of the same rules (openapi.yaml's CleanName and FreeText).
NAME_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]*$"
FREE_TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000a-\\u001f\\u007f-\\u009f]*$"


def text_fault(value: str, *, free_text: bool = False) -> str | None:
    """Why ``value`` is not clean text for a field, or None when it is.

    Args:
        value: the decoded string.
        free_text: a detail meant for people (an error's detail): tab and bidirectional marks are
            allowed there (Arabic or Hebrew text may need them); names, versions, ids and labels
            allow neither.
    """
    found = _SURROGATE.search(value)
    if found:
        return f"holds a lone surrogate (U+{ord(found.group()):04X}); text must be Unicode scalar values"
    found = (_CONTROL_BUT_TAB if free_text else _CONTROL).search(value)
    if found:
        return f"holds the control character U+{ord(found.group()):04X}"
    if not free_text:
        found = _BIDI.search(value)
        if found:
            return f"holds the bidirectional control U+{ord(found.group()):04X}"
    return None


def scalar_text(value: str) -> str:
    """``value`` with any lone surrogate replaced by U+FFFD: always encodable as UTF-8 (cheap when clean)."""
    if value.isascii():
        return value
    return _SURROGATE.sub("\ufffd", value)


def printable(value: str) -> str:
    """``value`` for one log line: surrogates replaced, control characters shown as ``\\xNN`` escapes."""
    value = scalar_text(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value) if _CONTROL.search(value) else value


def clean_detail(value: str, limit: int) -> str:
    """A probe's error detail as the agent sends it: one line of at most ``limit`` characters that the
    centre's :func:`text_fault` accepts as free text (a tool's multi-line message becomes one line)."""
    value = _CONTROL_BUT_TAB.sub(" ", scalar_text(value))
    return value[:limit]
