"""Metric names as the documentation writes them, for tests that hold the docs to what is exported."""

from __future__ import annotations

import re


def documented_metrics(readme: str) -> set[str]:
    """Every ``connmon_*`` name the README mentions, with ``connmon_icmp_{a,b}_total`` spelled out."""
    names = set(re.findall(r"connmon_[a-z_]*[a-z]", readme))
    for prefix, choices, suffix in re.findall(r"(connmon_[a-z_]*)\{([a-z_,]+)\}(_[a-z_]+)", readme):
        names.update(f"{prefix}{choice}{suffix}" for choice in choices.split(","))
    return names
