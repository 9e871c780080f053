"""The config model and its loader: YAML text → validated, frozen :class:`Config`.

The loader walks PyYAML's node graph rather than loaded Python objects, because nodes keep
their marks: every problem is reported as ``FILE:LINE:COL: path.to.key: message`` and the
loader collects *all* problems before raising one :class:`~monitor.errors.ConfigError`.
It does not apply the defaults → group → endpoint cascade for the rest of the program
(that is :mod:`monitor.targets`); it only uses :func:`merge_icmp` to check that each
endpoint's final ICMP settings make sense.

Work is bounded: composing is linear in the text, and the walk counts visited nodes so that
alias tricks ("billion laughs") end in an error instead of unbounded time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import ipaddress
import re
import socket
import urllib.parse
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from monitor.config.durations import format_duration, parse_duration
from monitor.config.sizes import parse_size
from monitor.config.windows import MaintenanceWindows, TimeWindow, parse_maintenance_window, parse_window
from monitor.errors import ConfigError, ConfigProblem

try:  # libyaml's C composer is ~10x faster on large site lists; marks are kept either way.
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

_RESOLVED_CACHE_LIMIT = 200_000
_RESOLVED: dict[str, str] = {}  # plain scalar text → implicit tag


class _Loader(_BaseLoader):  # type: ignore[valid-type, misc]
    """The safe loader, with the tag of each distinct plain scalar resolved once.

    Even with libyaml composing, every scalar's implicit tag (int? float? bool? null?) is resolved
    in Python, a handful of regular expressions each: a third of loading a 10,000-site list (issue 9:
    ≤ 2 s). Keys (``name``, ``host``, ``link``…) and values (``school``, ``fibre``) repeat thousands
    of times; a plain scalar's tag depends only on its text, since safe loading has no path resolvers.
    """

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool] | bool) -> str:
        if kind is ScalarNode and isinstance(implicit, tuple) and implicit[0]:  # (a collection gets a bool)
            tag = _RESOLVED.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_RESOLVED) >= _RESOLVED_CACHE_LIMIT:
                    _RESOLVED.clear()
                _RESOLVED[value] = tag
            return tag
        resolved: str = super().resolve(kind, value, implicit)
        return resolved


assert not _Loader.yaml_path_resolvers  # else a scalar's tag would depend on its place, not only its text

AddressFamilyChoice = Literal["any", "ipv4", "ipv6"]
ThroughputMethod = Literal["none", "iperf3", "http"]
Direction = Literal["download", "upload"]
SiteMode = Literal["probe", "agent"]
DIRECTIONS: tuple[Direction, ...] = ("download", "upload")
SiteStatus = Literal["planned", "connected", "retired"]
# Roll-out (issue 11): only connected sites are probed; planned ones are counted, retired ones kept for history.
SITE_STATUSES: tuple[SiteStatus, ...] = ("planned", "connected", "retired")
_MAX_NODE_VISITS = 5_000_000  # far above 10,000 sites × ~10 nodes; stops alias bombs
# Without aliases a walk visits well under one node per character of text; the budget allows 8
# per character (plus a floor) so that aliases that multiply are refused in time proportional to
# the file's size rather than after millions of visits.
_VISITS_PER_CHARACTER = 8
_MIN_NODE_VISITS = 10_000
_TAG = "tag:yaml.org,2002:"


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was written: 1-based line and column, as editors count."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class IcmpSettings:
    """Final ICMP settings of one endpoint, in base units."""

    interval_seconds: float = 60.0
    count: int = 5
    spacing_seconds: float = 0.2
    timeout_seconds: float = 2.0
    payload_bytes: int = 56
    family: AddressFamilyChoice = "any"

    @property
    def cycle_bound_seconds(self) -> float:
        """Longest a cycle may take: the last echo leaves by count×spacing, then waits timeout."""
        return self.count * self.spacing_seconds + self.timeout_seconds


@dataclass(frozen=True, slots=True)
class ThroughputSettings:
    """Final throughput-test settings of one endpoint, in base units.

    Directions are the site's: *download* is data flowing to the site, *upload* data from it.
    A test runs ``omit_seconds`` of warm-up (TCP slow start, not counted) and then measures for
    ``duration_seconds``, or until ``max_bytes`` have moved, whichever comes first.
    """

    method: ThroughputMethod = "none"
    every_seconds: float = 6 * 3600.0
    windows: tuple[TimeWindow, ...] = ()
    timezone: str = "UTC"
    directions: tuple[Direction, ...] = ()  # empty: every direction the method and URLs allow
    duration_seconds: float = 10.0
    omit_seconds: float = 1.0
    max_bytes: int | None = None
    parallel: int = 1
    port: int = 5201
    timeout_seconds: float = 10.0  # allowed beyond omit + duration for connecting and results
    url: str | None = None  # http: fetched by connmon, so it measures the site's upload
    upload_url: str | None = None  # http: receives a generated body, so it measures the site's download
    upload_method: Literal["POST", "PUT"] = "POST"
    monthly_budget_bytes: int | None = None

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def effective_directions(self) -> tuple[Direction, ...]:
        """The directions to test: as configured, else all the method can do with the URLs given."""
        if self.directions:
            return self.directions
        if self.method == "http":
            urls: tuple[tuple[Direction, str | None], ...] = (("download", self.upload_url), ("upload", self.url))
            return tuple(d for d, url in urls if url)
        return DIRECTIONS

    @property
    def test_bound_seconds(self) -> float:
        """Longest one direction's test may take before it is stopped as a timeout."""
        return self.omit_seconds + self.duration_seconds + self.timeout_seconds


@dataclass(frozen=True, slots=True)
class Overrides:
    """The keys of one settings block (``icmp``, ``throughput``) written at one level, validated."""

    values: Mapping[str, Any]
    location: Location
    path: str = "icmp"


IcmpOverrides = Overrides


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One site as written in the file; inherited values are resolved in :mod:`monitor.targets`."""

    name: str
    host: str | None  # None only for a planned site (its address may not be known yet)
    location: Location
    path: str = ""  # e.g. groups[1].endpoints[3], for problems found after the walk
    district: str | None = None
    link: str | None = None
    lat: float | None = None
    lon: float | None = None
    target_mbps: float | None = None
    target_upload_mbps: float | None = None
    icmp: Overrides | None = None
    throughput: Overrides | None = None
    maintenance: MaintenanceWindows | None = None  # declared maintenance, left out of the KPIs' availability
    status: SiteStatus | None = None  # None: the group's, else connected
    planned_date: dt.date | None = None
    provider: str | None = None
    contracted_mbps: float | None = None  # what the contract says, when it differs from target_mbps
    mode: SiteMode | None = None  # None: the group's, else "probe"
    agent: AgentSettings | None = None


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A group of sites sharing a kind and, optionally, settings and labels."""

    name: str
    kind: str
    location: Location
    endpoints: tuple[EndpointConfig, ...] = ()
    district: str | None = None
    link: str | None = None
    target_mbps: float | None = None
    target_upload_mbps: float | None = None
    icmp: Overrides | None = None
    throughput: Overrides | None = None
    maintenance: MaintenanceWindows | None = None
    status: SiteStatus | None = None  # the roll-out keys are defaults for the group's endpoints
    planned_date: dt.date | None = None
    provider: str | None = None
    contracted_mbps: float | None = None
    mode: SiteMode | None = None


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How the centre knows a site's agent (issue 10): the hash of its token, and when silence means down.

    Only a hash is in the file: the config is read by many (git, backups, ops), the token only by the
    agent. The agent sends the token; the centre hashes it and finds the site it was issued for.
    """

    token_sha256: str | None = None
    stale_after_seconds: float | None = None  # None: 3 × the site's ICMP interval


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """The ``report:`` block: days without a success before a site is "at risk" / "dropped" (issue 11)."""

    at_risk_days: float = 21.0
    dropped_days: float = 28.0


@dataclass(frozen=True, slots=True)
class Defaults:
    """Top-level defaults that cascade to groups, then endpoints."""

    target_mbps: float = 4.0
    target_upload_mbps: float | None = None
    icmp: Overrides | None = None
    throughput: Overrides | None = None


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the history keeps each kind of result.

    Raw ICMP rows are many (one per endpoint per cycle) and serve the monthly report, so they are
    kept a little over a month; throughput tests are few and a year-on-year comparison needs them.
    """

    icmp_seconds: float = 35 * 86400.0
    throughput_seconds: float = 400 * 86400.0


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid config file."""

    source: str
    defaults: Defaults = field(default_factory=Defaults)
    groups: tuple[GroupConfig, ...] = ()
    throughput_max_concurrent: int = 2  # tests at once across all sites, so our own uplink is not the bottleneck
    retention: Retention = field(default_factory=Retention)
    report: ReportSettings = field(default_factory=ReportSettings)


_S = TypeVar("_S", IcmpSettings, ThroughputSettings)


def _merge(settings: _S, levels: Sequence[Overrides | None]) -> _S:
    for level in levels:
        if level is not None and level.values:
            settings = dataclasses.replace(settings, **level.values)
    return settings


def merge_icmp(*levels: Overrides | None) -> IcmpSettings:
    """Apply ICMP overrides from the least to the most specific level onto the built-in defaults."""
    return _merge(IcmpSettings(), levels)


def merge_throughput(*levels: Overrides | None) -> ThroughputSettings:
    """Apply throughput overrides from the least to the most specific level onto the defaults."""
    return _merge(ThroughputSettings(), levels)


def expand_url(template: str, host: str) -> str:
    """Put the endpoint's host into a URL template (``http://{host}:8080/blob``); IPv6 gets brackets."""
    return template.replace("{host}", f"[{host}]" if ":" in host else host)


# ----------------------------------------------------------------------------- host names

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@functools.lru_cache(maxsize=65_536)
def normalize_ip(text: str) -> str | None:
    """Return the canonical text of an IP literal (``::0001`` → ``::1``), or None if it is not one.

    IPv4 goes through ``inet_pton`` (strict: no leading zeros, as ``ipaddress``) because
    ``ipaddress`` costs ~30 µs a call and a 10,000-site config asks several times per host.
    """
    if ":" not in text:
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
        except OSError:
            return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def is_host_name(text: str) -> bool:
    """True for a syntactically valid DNS name (RFC 1123; the last label may not be all digits)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


# ----------------------------------------------------------------------------- the walk

T = TypeVar("T")


class _TooManyNodes(Exception):
    """Raised inside the walk when the visit budget is spent (an alias bomb)."""


class _Walker:
    """Checks nodes against the schema, collecting located problems instead of stopping."""

    def __init__(self, file: str, max_visits: int = _MAX_NODE_VISITS) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self.visits = 0
        self.max_visits = max_visits
        self.endpoint_readers: dict[str, Callable[[Node, str], Any]] | None = None

    # -- reporting
    def where(self, node: Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def problem(self, node: Node, path: str, message: str) -> None:
        loc = self.where(node)
        self.problems.append(ConfigProblem(self.file, loc.line, loc.column, path, message))

    def visit(self) -> None:
        self.visits += 1
        if self.visits > self.max_visits:
            raise _TooManyNodes

    # -- structure
    def mapping(
        self, node: Node, path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Node] | None:
        """Return key → value node for a mapping; report wrong type, unknown/duplicate/missing keys."""
        self.visit()
        if not isinstance(node, MappingNode):
            self.problem(node, path or "(top level)", f"must be a mapping with keys {', '.join(allowed)}")
            return None
        out: dict[str, Node] = {}
        key_nodes: dict[str, Node] = {}
        for key_node, value_node in node.value:
            self.visit()
            if not isinstance(key_node, ScalarNode) or key_node.tag != _TAG + "str":
                self.problem(key_node, path or "(top level)", "keys must be plain words")
                continue
            key = key_node.value
            key_path = f"{path}.{key}" if path else key
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
                self.problem(key_node, key_path, f"unknown key '{key}'; {hint}")
                continue
            if key in out:
                first = self.where(key_nodes[key])
                self.problem(key_node, key_path, f"duplicate key (first given at line {first.line})")
                continue
            out[key] = value_node
            key_nodes[key] = key_node
        for key in required:
            if key not in out:
                self.problem(node, path or "(top level)", f"missing required key '{key}'")
        return out

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        self.visit()
        if isinstance(node, ScalarNode) and node.tag == _TAG + "null":
            return []
        if not isinstance(node, SequenceNode):
            self.problem(node, path, "must be a list")
            return None
        return list(node.value)

    # -- scalars
    def scalar(self, node: Node, path: str, tags: tuple[str, ...], what: str) -> ScalarNode | None:
        self.visit()
        if not isinstance(node, ScalarNode) or node.tag.removeprefix(_TAG) not in tags:
            got = "a list" if isinstance(node, SequenceNode) else "a mapping" if isinstance(
                node, MappingNode) else f"'{node.value}'"
            self.problem(node, path, f"must be {what}, got {got}")
            return None
        return node

    def string(self, node: Node, path: str) -> str | None:
        scalar = self.scalar(node, path, ("str",), "text (quote it if it looks like a number)")
        if scalar is None:
            return None
        if not scalar.value.strip():
            self.problem(node, path, "must not be empty")
            return None
        return str(scalar.value)

    def number(self, node: Node, path: str, low: float, high: float, *, integer: bool = False,
               low_inclusive: bool = True) -> float | None:
        tags = ("int",) if integer else ("int", "float")
        scalar = self.scalar(node, path, tags, "a whole number" if integer else "a number")
        if scalar is None:
            return None
        construct = (_YAML_SCALARS.construct_yaml_int if scalar.tag == _TAG + "int"
                     else _YAML_SCALARS.construct_yaml_float)
        try:  # stateless, unlike construct_object, which caches every node it has seen
            value: float = construct(scalar)
        except (ValueError, IndexError):  # tagged a number, but e.g. `0x_`, `!!int ten`, `!!float ""`
            self.problem(node, path, f"must be {'a whole number' if integer else 'a number'}, "
                         f"got '{scalar.value}'")
            return None
        too_low = value < low or (not low_inclusive and value == low)
        if too_low or value > high or value != value:  # the last test catches .nan
            bound = f"{'≥' if low_inclusive else '>'} {low:g} and ≤ {high:g}"
            self.problem(node, path, f"must be {bound}, got {scalar.value}")
            return None
        return int(value) if integer else float(value)

    def duration(self, node: Node, path: str, low: float, high: float) -> float | None:
        scalar = self.scalar(node, path, ("str", "int", "float"), "a duration like 250ms, 60s or 6h")
        if scalar is None:
            return None
        try:
            seconds = parse_duration(str(scalar.value))
        except ValueError as err:
            self.problem(node, path, str(err))
            return None
        if not low <= seconds <= high:
            self.problem(node, path, f"must be between {format_duration(low)} and {format_duration(high)}")
            return None
        return seconds

    def choice(self, node: Node, path: str, options: Sequence[str]) -> str | None:
        value = self.string(node, path)
        if value is not None and value not in options:
            self.problem(node, path, f"must be one of {', '.join(options)}, got '{value}'")
            return None
        return value

    def fields(self, values: dict[str, Node], path: str,
               readers: Mapping[str, Callable[[Node, str], Any]]) -> dict[str, Any]:
        """Read every present key with its reader; keys whose value was invalid are left out."""
        out: dict[str, Any] = {}
        for key, reader in readers.items():
            if key in values:
                value = reader(values[key], f"{path}.{key}" if path else key)
                if value is not None:
                    out[key] = value
        return out


_YAML_SCALARS = yaml.constructor.SafeConstructor()

_ICMP_KEYS = {
    # config key: IcmpSettings field
    "interval": "interval_seconds",
    "count": "count",
    "spacing": "spacing_seconds",
    "timeout": "timeout_seconds",
    "payload_bytes": "payload_bytes",
    "family": "family",
}
_THROUGHPUT_KEYS = {
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
_ROLLOUT_KEYS = ("status", "planned_date", "provider", "contracted_mbps")  # group and endpoint (issue 11)
_ENDPOINT_KEYS = ("name", "host", "district", "link", "lat", "lon", "target_mbps", "target_upload_mbps", "icmp",
                  "throughput", "maintenance", *_ROLLOUT_KEYS, "mode", "agent")
_GROUP_KEYS = ("name", "kind", "district", "link", "target_mbps", "target_upload_mbps", "icmp", "throughput",
               "endpoints", "maintenance", *_ROLLOUT_KEYS, "mode")
_AGENT_KEYS = ("token_sha256", "stale_after")
SITE_MODES = ("probe", "agent")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DEFAULT_KEYS = ("target_mbps", "target_upload_mbps", "icmp", "throughput")
_TOP_KEYS = ("defaults", "groups", "throughput", "history", "report")


def _icmp_overrides(w: _Walker, node: Node, path: str) -> IcmpOverrides | None:
    values = w.mapping(node, path, tuple(_ICMP_KEYS))
    if values is None:
        return None
    read = w.fields(values, path, {
        "interval": lambda n, p: w.duration(n, p, 1.0, 86400.0),
        "count": lambda n, p: w.number(n, p, 1, 10_000, integer=True),
        "spacing": lambda n, p: w.duration(n, p, 0.001, 60.0),
        "timeout": lambda n, p: w.duration(n, p, 0.001, 60.0),
        "payload_bytes": lambda n, p: w.number(n, p, 16, 1400, integer=True),
        "family": lambda n, p: w.choice(n, p, ("any", "ipv4", "ipv6")),
    })
    return IcmpOverrides({_ICMP_KEYS[k]: v for k, v in read.items()}, w.where(node), path)


def _throughput_overrides(w: _Walker, node: Node, path: str) -> Overrides | None:
    values = w.mapping(node, path, tuple(_THROUGHPUT_KEYS))
    if values is None:
        return None
    read = w.fields(values, path, {
        "method": lambda n, p: w.choice(n, p, ("none", "iperf3", "http")),
        "every": lambda n, p: w.duration(n, p, 10.0, 31 * 86400.0),
        "windows": lambda n, p: _windows(w, n, p),
        "timezone": lambda n, p: _timezone(w, n, p),
        "directions": lambda n, p: _directions(w, n, p),
        "duration": lambda n, p: w.duration(n, p, 1.0, 600.0),
        "omit": lambda n, p: w.duration(n, p, 0.0, 60.0),
        "bytes": lambda n, p: _size(w, n, p),
        "parallel": lambda n, p: w.number(n, p, 1, 128, integer=True),
        "port": lambda n, p: w.number(n, p, 1, 65535, integer=True),
        "timeout": lambda n, p: w.duration(n, p, 1.0, 600.0),
        "url": lambda n, p: _url(w, n, p),
        "upload_url": lambda n, p: _url(w, n, p),
        "upload_method": lambda n, p: w.choice(n, p, ("POST", "PUT")),
        "monthly_budget": lambda n, p: _size(w, n, p),
    })
    return Overrides({_THROUGHPUT_KEYS[k]: v for k, v in read.items()}, w.where(node), path)


def _windows(w: _Walker, node: Node, path: str) -> tuple[TimeWindow, ...] | None:
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


def _maintenance(w: _Walker, node: Node, path: str) -> MaintenanceWindows | None:
    """``maintenance: {timezone: Asia/Almaty, windows: ["Sun 02:00-04:00", "2026-11-14 08:00-2026-11-14 12:00"]}``."""
    values = w.mapping(node, path, ("timezone", "windows"), required=("windows",))
    if values is None:
        return None
    read = w.fields(values, path, {"timezone": lambda n, p: _timezone(w, n, p)})
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
    return MaintenanceWindows(read.get("timezone", "UTC"), tuple(weekly), tuple(once))


def _report_settings(w: _Walker, node: Node) -> ReportSettings:
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


def _timezone(w: _Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        w.problem(node, path, f"unknown time zone '{text}'; use an IANA name such as Asia/Almaty or UTC")
        return None
    return text


def _directions(w: _Walker, node: Node, path: str) -> tuple[str, ...] | None:
    if isinstance(node, ScalarNode) and node.tag == _TAG + "str":  # `directions: download` is a list of one
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


def _size(w: _Walker, node: Node, path: str) -> int | None:
    scalar = w.scalar(node, path, ("str", "int"), "a size like 25MB or 2GB")
    if scalar is None:
        return None
    try:
        size = parse_size(str(scalar.value))
    except ValueError as err:
        w.problem(node, path, str(err))
        return None
    if size <= 0:
        w.problem(node, path, "must be more than 0 bytes")
        return None
    return size


def _url(w: _Walker, node: Node, path: str) -> str | None:
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


def _target_mbps(w: _Walker, node: Node, path: str) -> float | None:
    return w.number(node, path, 0.0, 1_000_000.0, low_inclusive=False)


def _agent_settings(w: _Walker, node: Node, path: str) -> AgentSettings | None:
    values = w.mapping(node, path, _AGENT_KEYS, required=("token_sha256",))
    if values is None:
        return None
    read = w.fields(values, path, {
        "token_sha256": lambda n, p: _token_hash(w, n, p),
        "stale_after": lambda n, p: w.duration(n, p, 1.0, 30 * 86400.0),
    })
    return AgentSettings(read.get("token_sha256"), read.get("stale_after"))


def _token_hash(w: _Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    if not _SHA256_HEX.fullmatch(text.strip().lower()):
        w.problem(node, path, "must be the SHA-256 of the agent's token as 64 hex digits "
                              "(`connmon agent-token` makes a token and prints its hash)")
        return None
    return text.strip().lower()


def _rollout_readers(w: _Walker) -> dict[str, Callable[[Node, str], Any]]:
    """Readers of the roll-out keys, shared by groups and endpoints."""
    return {
        "status": lambda n, p: w.choice(n, p, SITE_STATUSES),
        "planned_date": lambda n, p: _date(w, n, p),
        "provider": w.string,
        "contracted_mbps": lambda n, p: _target_mbps(w, n, p),
    }


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date(w: _Walker, node: Node, path: str) -> dt.date | None:
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


def _endpoint(w: _Walker, node: Node, path: str, group_status: SiteStatus | None = "connected",
              group_mode: str | None = None) -> EndpointConfig | None:
    """One endpoint; ``group_status``: the group's status (None when it was invalid); ``group_mode``: its mode."""
    values = w.mapping(node, path, _ENDPOINT_KEYS, required=("name",))
    if values is None:
        return None
    if w.endpoint_readers is None:  # built once per file: 10,000 endpoints need not build 10,000 dicts
        w.endpoint_readers = {
            "name": w.string,
            "host": lambda n, p: _host(w, n, p),
            "district": w.string,
            "link": w.string,
            "lat": lambda n, p: w.number(n, p, -90.0, 90.0),
            "lon": lambda n, p: w.number(n, p, -180.0, 180.0),
            "target_mbps": lambda n, p: _target_mbps(w, n, p),
            "target_upload_mbps": lambda n, p: _target_mbps(w, n, p),
            "icmp": lambda n, p: _icmp_overrides(w, n, p),
            "throughput": lambda n, p: _throughput_overrides(w, n, p),
            "maintenance": lambda n, p: _maintenance(w, n, p),
            **_rollout_readers(w),
            "mode": lambda n, p: w.choice(n, p, SITE_MODES),
            "agent": lambda n, p: _agent_settings(w, n, p),
        }
    read = w.fields(values, path, w.endpoint_readers)
    status = read.get("status", group_status) if "status" in read or "status" not in values else None
    if "mode" in values and "mode" not in read:
        return None  # the mode was invalid (reported): do not also report a host it may not need
    mode = read.get("mode") or group_mode or "probe"
    if mode == "agent":  # measured from inside the site (issue 10): the centre needs its token, not its address
        if "agent" not in values:
            w.problem(node, path, "missing required key 'agent' (mode: agent needs agent.token_sha256)")
            return None
    elif "agent" in values:
        w.problem(values["agent"], f"{path}.agent", "only an endpoint with mode: agent has an agent block")
        return None
    host_optional = mode == "agent" or status == "planned"
    if "host" not in values and status is not None and not host_optional:
        # only a planned site may be written before its address is known (and an agent's site needs none);
        # an invalid status says nothing
        w.problem(node, path, "missing required key 'host' (only a site with status: planned or mode: agent "
                              "may leave it out)")
    if "name" not in read or ("host" not in read and ("host" in values or not host_optional)):
        return None
    read.setdefault("host", None)
    return EndpointConfig(location=w.where(node), path=path, **read)


def _host(w: _Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    text = text.strip()
    if "%" in text and normalize_ip(text) is not None:
        w.problem(node, path, f"'{text}': scoped (link-local) IPv6 addresses are not supported; "
                              "use a global or unique-local address")
        return None
    if normalize_ip(text) is None and not is_host_name(text):
        w.problem(node, path, f"'{text}' is not an IP address or host name")
        return None
    return text


def _group(w: _Walker, node: Node, path: str) -> GroupConfig | None:
    values = w.mapping(node, path, _GROUP_KEYS, required=("name", "endpoints"))
    if values is None:
        return None
    read = w.fields(values, path, {
        "name": w.string,
        "kind": w.string,
        "district": w.string,
        "link": w.string,
        "target_mbps": lambda n, p: _target_mbps(w, n, p),
        "target_upload_mbps": lambda n, p: _target_mbps(w, n, p),
        "icmp": lambda n, p: _icmp_overrides(w, n, p),
        "throughput": lambda n, p: _throughput_overrides(w, n, p),
        "maintenance": lambda n, p: _maintenance(w, n, p),
        **_rollout_readers(w),
        "mode": lambda n, p: w.choice(n, p, SITE_MODES),
    })
    group_status: SiteStatus | None = read.get("status", "connected") if "status" in read or "status" not in values \
        else None
    endpoints: list[EndpointConfig] = []
    if "endpoints" in values:
        items = w.sequence(values["endpoints"], f"{path}.endpoints")
        for index, item in enumerate(items or ()):
            endpoint = _endpoint(w, item, f"{path}.endpoints[{index}]", group_status, read.get("mode"))
            if endpoint is not None:
                endpoints.append(endpoint)
    if "name" not in read:
        return None
    read.setdefault("kind", "")
    return GroupConfig(location=w.where(node), endpoints=tuple(endpoints), **read)


def _check_whole(w: _Walker, config: Config, name_nodes: dict[str, list[tuple[Node, str]]]) -> None:
    """Rules that span entries: unique names, and ICMP settings that fit their interval."""
    for what, entries in name_nodes.items():
        seen: dict[str, Node] = {}
        for node, path in entries:
            name = str(node.value)
            if name in seen:
                first = w.where(seen[name])
                w.problem(node, path, f"duplicate {what} name '{name}' (first at line {first.line})")
            else:
                seen[name] = node
    tokens: dict[str, EndpointConfig] = {}
    for group in config.groups:
        for endpoint in group.endpoints:
            token = endpoint.agent.token_sha256 if endpoint.agent is not None else None
            if token is None:
                continue
            if token in tokens:  # the token is what tells the centre which site is posting
                loc = endpoint.location
                w.problems.append(ConfigProblem(loc.file, loc.line, loc.column, f"{endpoint.path}.agent.token_sha256",
                                                f"the same token as endpoint '{tokens[token].name}'; "
                                                "every agent needs its own token"))
            else:
                tokens[token] = endpoint
    reported: set[Location] = set()
    for group in config.groups:
        for endpoint in group.endpoints:
            _check_throughput(w, config, group, endpoint, reported)
            if (endpoint.mode or group.mode) == "agent":
                continue  # its agent pings with its own settings; the centre uses only the interval (stale_after)
            settings = merge_icmp(config.defaults.icmp, group.icmp, endpoint.icmp)
            where, where_path = next(
                ((lvl.location, lvl.path) for lvl in (endpoint.icmp, group.icmp, config.defaults.icmp)
                 if lvl is not None), (endpoint.location, "icmp"))
            if settings.cycle_bound_seconds > settings.interval_seconds and where not in reported:
                reported.add(where)
                w.problems.append(ConfigProblem(
                    where.file, where.line, where.column, where_path,
                    f"count × spacing + timeout = {settings.cycle_bound_seconds:g}s does not fit in "
                    f"interval {format_duration(settings.interval_seconds)} (endpoint '{endpoint.name}'); "
                    "lower count, spacing or timeout, or raise interval"))
            # icmp.family picks the address of a DNS name, so one inherited from defaults or the group
            # does not bind a literal; but an endpoint that sets it against its own address is a typo.
            literal = normalize_ip(endpoint.host) if endpoint.host is not None else None
            own_family = endpoint.icmp.values.get("family") if endpoint.icmp is not None else None
            if literal is not None and own_family not in (None, "any"):
                is_v6 = ":" in literal
                if own_family != ("ipv6" if is_v6 else "ipv4"):
                    loc = endpoint.location
                    w.problems.append(ConfigProblem(
                        loc.file, loc.line, loc.column, f"{endpoint.path}.host",
                        f"'{endpoint.host}' is an {'IPv6' if is_v6 else 'IPv4'} address but icmp.family is "
                        f"{own_family}"))


def _check_throughput(w: _Walker, config: Config, group: GroupConfig, endpoint: EndpointConfig,
                      reported: set[Location]) -> None:
    """An endpoint's final throughput settings must be runnable: URLs for http, tests that fit ``every``."""
    levels = (config.defaults.throughput, group.throughput, endpoint.throughput)
    settings = merge_throughput(*levels)
    if not settings.enabled:
        return
    where, where_path = next(((lvl.location, lvl.path) for lvl in reversed(levels) if lvl is not None),
                             (endpoint.location, "throughput"))
    if where in reported:
        return
    problems = []
    agent = (endpoint.mode or group.mode) == "agent"  # the centre serves the agent's HTTP test itself: no URLs
    if settings.method == "http" and not agent:
        needs = {"download": "upload_url", "upload": "url"}
        missing = [f"{d} needs {needs[d]}" for d in settings.directions
                   if getattr(settings, needs[d]) is None]
        if missing:
            problems.append(f"method http: {'; '.join(missing)} (endpoint '{endpoint.name}')")
        elif not settings.effective_directions:
            problems.append(f"method http needs url (measures the site's upload) or upload_url (its download) "
                            f"(endpoint '{endpoint.name}')")
    total = settings.test_bound_seconds * max(1, len(settings.effective_directions))
    if total > settings.every_seconds:
        problems.append(f"a test may take up to {total:g}s (omit + duration + timeout per direction), more than "
                        f"every {format_duration(settings.every_seconds)} (endpoint '{endpoint.name}')")
    longest = max((w.length_minutes * 60 for w in settings.windows), default=None)
    if longest is not None and total > longest:
        problems.append(f"a test may take up to {total:g}s, longer than its longest window "
                        f"({format_duration(longest)}) (endpoint '{endpoint.name}')")
    if problems:
        reported.add(where)
        w.problems.extend(ConfigProblem(where.file, where.line, where.column, where_path, text) for text in problems)


_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as a line break


def _bad_character(text: str, source: str) -> ConfigProblem:
    """The problem for the first character that YAML does not allow, at its line and column.

    The reader's own error says only "position N", which libyaml counts in UTF-8 bytes.
    """
    found = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if found is None:  # pragma: no cover - the reader refused something we do not recognise
        return ConfigProblem(source, 1, 1, "", "YAML: the file contains a character YAML does not allow")
    breaks = list(_LINE_BREAK.finditer(text, 0, found.start()))
    line = len(breaks) + 1
    column = found.start() - (breaks[-1].end() if breaks else 0) + 1
    return ConfigProblem(source, line, column, "", f"YAML: character U+{ord(found.group()):04X} is not "
                         "allowed (control characters and lone surrogates cannot appear in YAML)")


def parse_config(text: str, source: str) -> Config:
    """Validate YAML ``text`` (named ``source`` in messages) and return the config.

    Raises:
        ConfigError: listing every problem, each with file, line, column and key path.
    """
    w = _Walker(source, min(_MAX_NODE_VISITS, _MIN_NODE_VISITS + _VISITS_PER_CHARACTER * len(text)))
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(str(part) for part in (err.context, err.problem) if part)
        raise ConfigError([ConfigProblem(source, line, column, "", f"YAML syntax: {message}")]) from None
    except (yaml.reader.ReaderError, UnicodeEncodeError):  # a control character; a lone surrogate
        raise ConfigError([_bad_character(text, source)]) from None
    except yaml.YAMLError as err:  # e.g. a document stream with more than one document
        raise ConfigError([ConfigProblem(source, 1, 1, "", f"YAML: {err}")]) from None
    if root is None:
        raise ConfigError([ConfigProblem(source, 1, 1, "", "the file is empty; it needs at least 'groups:'")])
    try:
        config, names = _walk_top(w, root, source)
        if config is not None:
            _check_whole(w, config, names)
    except _TooManyNodes:
        w.problems.append(ConfigProblem(
            source, 1, 1, "", f"the document expands to more than {w.max_visits:,} nodes "
            "(too large, or aliases that multiply); refusing to read it"))
    if w.problems or config is None:
        raise ConfigError(w.problems)
    return config


def _walk_top(w: _Walker, root: Node, source: str) -> tuple[Config | None, dict[str, list[tuple[Node, str]]]]:
    names: dict[str, list[tuple[Node, str]]] = {"endpoint": [], "group": []}
    top = w.mapping(root, "", _TOP_KEYS, required=("groups",))
    if top is None:
        return None, names
    defaults = Defaults()
    if "defaults" in top:
        values = w.mapping(top["defaults"], "defaults", _DEFAULT_KEYS) or {}
        read = w.fields(values, "defaults", {
            "target_mbps": lambda n, p: _target_mbps(w, n, p),
            "target_upload_mbps": lambda n, p: _target_mbps(w, n, p),
            "icmp": lambda n, p: _icmp_overrides(w, n, p),
            "throughput": lambda n, p: _throughput_overrides(w, n, p),
        })
        defaults = Defaults(**read)
    max_concurrent = 2
    if "throughput" in top:
        values = w.mapping(top["throughput"], "throughput", ("max_concurrent",)) or {}
        if "max_concurrent" in values:
            got = w.number(values["max_concurrent"], "throughput.max_concurrent", 1, 1000, integer=True)
            max_concurrent = int(got) if got is not None else max_concurrent
    retention = Retention()
    if "history" in top:
        history = w.mapping(top["history"], "history", ("retention",)) or {}
        if "retention" in history:
            kept = w.mapping(history["retention"], "history.retention", ("icmp", "throughput")) or {}
            read = w.fields(kept, "history.retention", {
                "icmp": lambda n, p: w.duration(n, p, 3600.0, 3650 * 86400.0),
                # at least a month: the monthly budget and the restart restore read this month's tests
                "throughput": lambda n, p: w.duration(n, p, 32 * 86400.0, 3650 * 86400.0),
            })
            retention = Retention(icmp_seconds=read.get("icmp", retention.icmp_seconds),
                                  throughput_seconds=read.get("throughput", retention.throughput_seconds))
    report = _report_settings(w, top["report"]) if "report" in top else ReportSettings()
    groups: list[GroupConfig] = []
    for gi, gnode in enumerate(w.sequence(top["groups"], "groups") or () if "groups" in top else ()):
        group = _group(w, gnode, f"groups[{gi}]")
        if group is None:
            continue
        groups.append(group)
        _collect_names(gnode, f"groups[{gi}]", names)
    config = Config(source=source, defaults=defaults, groups=tuple(groups), throughput_max_concurrent=max_concurrent,
                    retention=retention, report=report)
    return config, names


def _first_value(node: MappingNode, key: str) -> Node | None:
    """The value of the first ``key`` in a mapping, the one :meth:`_Walker.mapping` keeps."""
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str" and key_node.value == key:
            found: Node = value_node
            return found
    return None


def _collect_names(gnode: Node, gpath: str, names: dict[str, list[tuple[Node, str]]]) -> None:
    """Remember the name nodes of a valid group and its endpoints, for the uniqueness check.

    Only the first of duplicated keys counts, so a key given twice is one problem, not two.
    """
    if not isinstance(gnode, MappingNode):  # pragma: no cover - a group that was read is a mapping
        return
    name = _first_value(gnode, "name")
    if name is not None:
        names["group"].append((name, f"{gpath}.name"))
    endpoints = _first_value(gnode, "endpoints")
    if isinstance(endpoints, SequenceNode):
        for ei, enode in enumerate(endpoints.value):
            if isinstance(enode, MappingNode):
                v = _first_value(enode, "name")
                if isinstance(v, ScalarNode) and v.tag == _TAG + "str":
                    names["endpoint"].append((v, f"{gpath}.endpoints[{ei}].name"))


def load_config(path: str | Path) -> Config:
    """Read and validate the config file at ``path``.

    Raises:
        ConfigError: the file cannot be read or is invalid (every problem listed).
    """
    return parse_config(read_config_text(path), str(path))


def read_config_text(path: str | Path) -> str:
    """A config file's text (the daemon's or an agent's); an unreadable file is a located config error.

    Raises:
        ConfigError: the file cannot be read or is not UTF-8.
    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError([ConfigProblem(str(path), 1, 1, "", f"cannot read the file: {reason}")]) from None
