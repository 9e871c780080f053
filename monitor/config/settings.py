"""Readers of the site config's settings blocks (``icmp``, ``throughput``, ``maintenance``, ``report``).

Each reader takes a node and its key path, reports problems on the :class:`~monitor.config.walker.Walker`
and returns the value in base units, or None when it was invalid. They are written once and used at
every level that may carry the block (defaults, group, endpoint); the structure of the file around
them is :mod:`monitor.config.sites`.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
import zoneinfo
from typing import Any, get_args

from yaml.nodes import Node, ScalarNode

from monitor.config.hosts import expand_url
from monitor.config.model import (
    DIRECTIONS,
    AddressFamilyChoice,
    Overrides,
    ReportSettings,
    ThroughputMethod,
)
from monitor.config.sizes import parse_size
from monitor.config.walker import TAG, Walker
from monitor.config.windows import MaintenanceWindows, TimeWindow, parse_maintenance_window, parse_window

ICMP_KEYS = {
    # config key: IcmpSettings field
    "interval": "interval_seconds",
    "count": "count",
    "spacing": "spacing_seconds",
    "timeout": "timeout_seconds",
    "payload_bytes": "payload_bytes",
    "family": "family",
    "dns_fallback_intervals": "dns_fallback_intervals",
}
THROUGHPUT_KEYS = {
    # config key: ThroughputSettings field
    "method": "method",
    "every": "every_seconds",
    "windows": "windows",
    "timezone": "timezone",
    "directions": "directions",
    "duration": "duration_seconds",
    "omit": "omit_seconds",
    "bytes": "max_bytes",
    "parallel": "parallel",
    "port": "port",
    "timeout": "timeout_seconds",
    "url": "url",
    "upload_url": "upload_url",
    "upload_method": "upload_method",
    "monthly_budget": "monthly_budget_bytes",
}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def icmp_overrides(w: Walker, node: Node, path: str) -> Overrides | None:
    """An ``icmp:`` block: the keys written, as :class:`~monitor.config.model.IcmpSettings` fields."""
    values = w.mapping(node, path, tuple(ICMP_KEYS))
    if values is None:
        return None
    read = w.fields(values, path, {
        "interval": lambda n, p: w.duration(n, p, 1.0, 86400.0),
        "count": lambda n, p: w.number(n, p, 1, 10_000, integer=True),
        "spacing": lambda n, p: w.duration(n, p, 0.001, 60.0),
        "timeout": lambda n, p: w.duration(n, p, 0.001, 60.0),
        "payload_bytes": lambda n, p: w.number(n, p, 16, 1400, integer=True),
        "family": lambda n, p: w.choice(n, p, get_args(AddressFamilyChoice)),
        "dns_fallback_intervals": lambda n, p: w.number(n, p, 0, 10_000, integer=True),
    })
    return Overrides({ICMP_KEYS[k]: v for k, v in read.items()}, w.where(node), path)


def throughput_overrides(w: Walker, node: Node, path: str) -> Overrides | None:
    """A ``throughput:`` block: the keys written, as :class:`~monitor.config.model.ThroughputSettings` fields."""
    values = w.mapping(node, path, tuple(THROUGHPUT_KEYS))
    if values is None:
        return None
    read = w.fields(values, path, {
        "method": lambda n, p: w.choice(n, p, get_args(ThroughputMethod)),
        "every": lambda n, p: w.duration(n, p, 10.0, 31 * 86400.0),
        "windows": lambda n, p: windows(w, n, p),
        "timezone": lambda n, p: timezone(w, n, p),
        "directions": lambda n, p: directions(w, n, p),
        "duration": lambda n, p: w.duration(n, p, 1.0, 600.0),
        "omit": lambda n, p: w.duration(n, p, 0.0, 60.0),
        "bytes": lambda n, p: size(w, n, p),
        "parallel": lambda n, p: w.number(n, p, 1, 128, integer=True),
        "port": lambda n, p: w.number(n, p, 1, 65535, integer=True),
        "timeout": lambda n, p: w.duration(n, p, 1.0, 600.0),
        "url": lambda n, p: url(w, n, p),
        "upload_url": lambda n, p: url(w, n, p),
        "upload_method": lambda n, p: w.choice(n, p, ("POST", "PUT")),
        "monthly_budget": lambda n, p: size(w, n, p),
    })
    return Overrides({THROUGHPUT_KEYS[k]: v for k, v in read.items()}, w.where(node), path)


def windows(w: Walker, node: Node, path: str) -> tuple[TimeWindow, ...] | None:
    items = w.sequence(node, path)
    if items is None:
        return None
    out = []
    for index, item in enumerate(items):
        text = w.string(item, f"{path}[{index}]")
        if text is None:
            continue
        try:
            out.append(parse_window(text))
        except ValueError as err:
            w.problem(item, f"{path}[{index}]", str(err))
    return tuple(out) if len(out) == len(items) else None


def maintenance(w: Walker, node: Node, path: str, default_zone: str = "UTC") -> MaintenanceWindows | None:
    """``maintenance: {timezone: Asia/Almaty, windows: ["Sun 02:00-04:00", "2026-11-14 08:00-2026-11-14 12:00"]}``.

    ``default_zone``: the windows' zone when the block names none: ``monitor.timezone``, else UTC (issue 22).
    """
    values = w.mapping(node, path, ("timezone", "windows"), required=("windows",))
    if values is None:
        return None
    read = w.fields(values, path, {"timezone": lambda n, p: timezone(w, n, p)})
    bad = "timezone" in values and "timezone" not in read  # the windows are still checked, for every problem at once
    items = w.sequence(values["windows"], f"{path}.windows") if "windows" in values else None
    if items is None:
        return None
    weekly: list[TimeWindow] = []
    once: list[tuple[Any, Any]] = []
    for index, item in enumerate(items):
        text = w.string(item, f"{path}.windows[{index}]")
        if text is None:
            bad = True
            continue
        try:
            window = parse_maintenance_window(text)
        except ValueError as err:
            w.problem(item, f"{path}.windows[{index}]", str(err))
            bad = True
            continue
        if isinstance(window, TimeWindow):
            weekly.append(window)
        else:
            once.append(window)
    if bad:
        return None
    return MaintenanceWindows(read.get("timezone", default_zone), tuple(weekly), tuple(once))


def report_settings(w: Walker, node: Node) -> ReportSettings:
    """The ``report:`` block; ``dropped_days`` must exceed ``at_risk_days`` (defaults 21 and 28)."""
    values = w.mapping(node, "report", ("at_risk_days", "dropped_days")) or {}
    read = w.fields(values, "report", {
        "at_risk_days": lambda n, p: w.number(n, p, 0.0, 3650.0, low_inclusive=False),
        "dropped_days": lambda n, p: w.number(n, p, 0.0, 3650.0, low_inclusive=False),
    })
    settings = ReportSettings(**read)
    if settings.dropped_days <= settings.at_risk_days and len(read) == len(values):
        where = values.get("dropped_days") or values.get("at_risk_days") or node
        w.problem(where, "report.dropped_days", f"must be more than at_risk_days ({settings.at_risk_days:g}), "
                  f"got {settings.dropped_days:g}")
    return settings


def timezone(w: Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        w.problem(node, path, f"unknown time zone '{text}'; use an IANA name such as Asia/Almaty or UTC")
        return None
    return text


def directions(w: Walker, node: Node, path: str) -> tuple[str, ...] | None:
    if isinstance(node, ScalarNode) and node.tag == TAG + "str":  # `directions: download` is a list of one
        one = w.choice(node, path, DIRECTIONS)
        return None if one is None else (one,)
    items = w.sequence(node, path)
    if items is None:
        return None
    chosen = [w.choice(item, f"{path}[{i}]", DIRECTIONS) for i, item in enumerate(items)]
    if any(c is None for c in chosen):
        return None
    if not chosen:
        w.problem(node, path, "must name at least one of download, upload")
        return None
    return tuple(d for d in DIRECTIONS if d in chosen)


def size(w: Walker, node: Node, path: str) -> int | None:
    scalar = w.scalar(node, path, ("str", "int"), "a size like 25MB or 2GB")
    if scalar is None:
        return None
    try:
        got = parse_size(str(scalar.value))
    except ValueError as err:
        w.problem(node, path, str(err))
        return None
    if got <= 0:
        w.problem(node, path, "must be more than 0 bytes")
        return None
    return got


def url(w: Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    parts = urllib.parse.urlsplit(expand_url(text.strip(), "example.net"))
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:  # a port that is not a number or out of range
        valid = False
    if not valid or any(c.isspace() for c in text.strip()):
        w.problem(node, path, f"'{text}' is not an http:// or https:// URL ({{host}} stands for the endpoint's host)")
        return None
    return text.strip()


def mbps(w: Walker, node: Node, path: str) -> float | None:
    """A rate in megabits per second (``target_mbps``, ``contracted_mbps``): more than 0."""
    return w.number(node, path, 0.0, 1_000_000.0, low_inclusive=False)


def date(w: Walker, node: Node, path: str) -> dt.date | None:
    """A calendar date written YYYY-MM-DD; YAML tags it a timestamp unless quoted, either is fine."""
    scalar = w.scalar(node, path, ("str", "timestamp"), "a date like 2026-11-30")
    if scalar is None:
        return None
    text = str(scalar.value).strip()
    try:
        if not _DATE.fullmatch(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        w.problem(node, path, f"must be a date written YYYY-MM-DD, got '{text}'")
        return None
