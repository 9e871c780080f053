"""The config model: a whole, valid site config as frozen values, in base units.

These are what :func:`monitor.config.sites.load_config` returns; nothing here reads YAML or checks
anything (that is :mod:`monitor.config.walker`, :mod:`~monitor.config.sites` and
:mod:`~monitor.config.checks`). The model keeps what the operator wrote at each level (defaults,
group, endpoint); :mod:`monitor.targets` applies the defaults → group → endpoint cascade once, with
:func:`merge_icmp` and :func:`merge_throughput` for the settings blocks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from monitor.config.calendar import SchoolCalendar
from monitor.config.windows import MaintenanceWindows, TimeWindow

AddressFamilyChoice = Literal["any", "ipv4", "ipv6"]
ThroughputMethod = Literal["none", "iperf3", "http"]
TestMethod = Literal["iperf3", "http"]  # a method that runs a test: the probe registry has one probe for each
# The one list of them (the config, the agents' wire and the probe registry all take it from here).
THROUGHPUT_METHODS: tuple[TestMethod, ...] = ("iperf3", "http")
Direction = Literal["download", "upload"]
SiteMode = Literal["probe", "agent"]
DIRECTIONS: tuple[Direction, ...] = ("download", "upload")
SITE_MODES: tuple[SiteMode, ...] = ("probe", "agent")
RolloutStatus = Literal["planned", "connected", "retired"]
# Roll-out (issue 11): only connected sites are probed; planned ones are counted, retired ones kept for history.
# Not a site's liveness (live, at risk, dropped), which the KPIs derive from results.
ROLLOUT_STATUSES: tuple[RolloutStatus, ...] = ("planned", "connected", "retired")


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
    # when a DNS look-up fails, the name's last good address is probed for this many intervals (issue 22)
    dns_fallback_intervals: int = 5

    @property
    def cycle_bound_seconds(self) -> float:
        """Longest a cycle may take: the last echo leaves by count×spacing, then waits timeout."""
        return self.count * self.spacing_seconds + self.timeout_seconds


# Issue 20: added latency under load a video call tolerates (docs/latency-under-load.md); satellite groups set more.
DEFAULT_MAX_ADDED_LATENCY_SECONDS = 0.1


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
    parallel: int = 4  # streams at once (iperf3 -P, http): several fill a deep queue as one cannot (issue 20)
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


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """How the centre knows a site's agent (issue 10): the hash of its token, and when silence means down.

    Only a hash is in the file: the config is read by many (git, backups, ops), the token only by the
    agent. The agent sends the token; the centre hashes it and finds the site it was issued for.
    """

    token_sha256: str | None = None
    stale_after_seconds: float | None = None  # None: 3 × the site's ICMP interval
    # issue 18, a fleet at a glance: no result for this long is at risk, then dropped (UNICEF Giga's 21 and 28 days)
    at_risk_after_seconds: float = 21 * 86400.0
    dropped_after_seconds: float = 28 * 86400.0
    # issue 18, settings held by the centre: the agent pings the site's gateway: "auto" (the default route's),
    # an IP literal, "off"; None: as the agent's own file says
    gateway: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Cascade:
    """The keys a group and its endpoints may both set; a group's value is its endpoints' default.

    Written once for both (issue 23: they were twelve fields repeated); None means "not set here".
    """

    district: str | None = None
    link: str | None = None
    target_mbps: float | None = None
    target_upload_mbps: float | None = None
    icmp: Overrides | None = None
    throughput: Overrides | None = None
    maintenance: MaintenanceWindows | None = None  # declared maintenance, left out of the KPIs' availability
    status: RolloutStatus | None = None  # None: the group's, else connected
    planned_date: dt.date | None = None
    provider: str | None = None
    contracted_mbps: float | None = None  # what the contract says, when it differs from target_mbps
    mode: SiteMode | None = None  # None: the group's, else "probe"
    upstream: str | None = None  # the nearest upstream node (``upstreams:``) the sites hang from (issue 21)
    max_added_latency: float | None = None  # seconds of latency under load the site may add (issue 20)
    calendar: str | None = None  # the name of its school calendar (``calendars:``, issue 22)


@dataclass(frozen=True, slots=True)
class EndpointConfig(Cascade):
    """One site as written in the file; inherited values are resolved in :mod:`monitor.targets`."""

    name: str
    host: str | None  # None only for a planned site (its address may not be known yet)
    location: Location
    path: str = ""  # e.g. groups[1].endpoints[3], for problems found after the walk
    lat: float | None = None
    lon: float | None = None
    agent: AgentSettings | None = None


@dataclass(frozen=True, slots=True)
class GroupConfig(Cascade):
    """A group of sites sharing a kind and, optionally, settings and labels."""

    name: str
    kind: str
    location: Location
    endpoints: tuple[EndpointConfig, ...] = ()


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
    max_added_latency: float = DEFAULT_MAX_ADDED_LATENCY_SECONDS
    calendar: str | None = None  # the sites' school calendar unless a group or endpoint names another (issue 22)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the history keeps each kind of result.

    Raw ICMP rows are many (one per endpoint per cycle) and serve the monthly report, so they are
    kept a little over a month; throughput tests are few and a year-on-year comparison needs them.
    """

    icmp_seconds: float = 35 * 86400.0
    throughput_seconds: float = 400 * 86400.0


@dataclass(frozen=True, slots=True)
class UplinkCheck:
    """One check of the centre's own way out (its gateway, an address beyond its ISP): pinged every fastest cycle."""

    name: str
    host: str


REPORT_LANGUAGES: tuple[str, ...] = ("en", "ru", "kk")
"""The languages reports are written in (``monitor.language``; the catalogues of :mod:`monitor.report.i18n`)."""


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """The centre itself (issue 21): the checks that tell its own uplink is down, so sites are not blamed."""

    uplink: tuple[UplinkCheck, ...] = ()
    # traces taken at most per minute when sites or upstream nodes go down (issue 21); 0: no traces
    traces_per_minute: int = 10
    # issue 22, one region, one clock: the zone of throughput windows, maintenance, reports, KPIs and the
    # API's summary unless they say otherwise; None: not set (windows in UTC, reports in the machine's zone)
    timezone: str | None = None
    # issue 22: the language of ``connmon report --config`` when no --lang is given (one of REPORT_LANGUAGES)
    language: str = "en"

    @property
    def zone(self) -> str:
        """The zone of windows and calendars that do not name one: the region's, else UTC."""
        return self.timezone or "UTC"


UPSTREAM_KINDS: tuple[str, ...] = ("router", "pop", "teleport", "switch", "hub", "radio", "other")
"""What an upstream node may be (``kind:`` of an entry of ``upstreams:``): a label value, so a closed set."""


@dataclass(frozen=True, slots=True)
class UpstreamNode:
    """One node of the ``upstreams:`` forest (issue 21): a router, an ISP's point of presence, a teleport.

    ``upstream`` names its parent node (None: a root, reached from the centre directly).
    """

    name: str
    host: str
    kind: str = "router"
    upstream: str | None = None
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file a config was read from, and the SHA-256 of the bytes read: what a reload compares."""

    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid config: the file given and the files it includes (issue 22)."""

    source: str
    defaults: Defaults = field(default_factory=Defaults)
    groups: tuple[GroupConfig, ...] = ()
    throughput_max_concurrent: int = 2  # tests at once across all sites, so our own uplink is not the bottleneck
    retention: Retention = field(default_factory=Retention)
    report: ReportSettings = field(default_factory=ReportSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    upstreams: tuple[UpstreamNode, ...] = ()  # the forest of upstream nodes, in file order (issue 21)
    # the files read, the given one first, then the included ones in include order (issue 22)
    sources: tuple[SourceFile, ...] = ()
    include_patterns: tuple[str, ...] = ()  # `include:` entries joined to the given file's directory
    calendars: tuple[SchoolCalendar, ...] = ()  # `calendars:`, in file order (issue 22)


_S = TypeVar("_S", IcmpSettings, ThroughputSettings)


def _merge(settings: _S, levels: Sequence[Overrides | None]) -> _S:
    for level in levels:
        if level is not None and level.values:
            settings = dataclasses.replace(settings, **level.values)
    return settings


def merge_icmp(*levels: Overrides | None) -> IcmpSettings:
    """Apply ICMP overrides from the least to the most specific level onto the built-in defaults."""
    return _merge(IcmpSettings(), levels)


def merge_throughput(*levels: Overrides | None, timezone: str = "UTC") -> ThroughputSettings:
    """Apply throughput overrides from the least to the most specific level onto the defaults.

    ``timezone``: the windows' zone when no level sets ``throughput.timezone``: the region's (``monitor.timezone``,
    issue 22; :attr:`MonitorSettings.zone`).
    """
    return _merge(ThroughputSettings(timezone=timezone), levels)
