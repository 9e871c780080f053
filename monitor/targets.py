"""Targets: one flat, final description per endpoint, with the cascade applied once.

The config keeps what the operator wrote at each level (defaults, group, endpoint); probes,
the scheduler and the sinks want one value per setting and label. :func:`build_targets`
resolves defaults → group → endpoint here, so nobody downstream repeats the cascade.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from monitor.config import (
    DIRECTIONS,
    AgentSettings,
    Config,
    IcmpSettings,
    RolloutStatus,
    SiteMode,
    ThroughputSettings,
    merge_icmp,
    merge_throughput,
)
from monitor.config.hosts import expand_url, normalize_ip
from monitor.config.model import DEFAULT_MAX_ADDED_LATENCY_SECONDS
from monitor.config.windows import MaintenanceWindows


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint with its final settings and labels.

    ``address`` is the canonical IP when ``host`` is a literal, else None: names are resolved
    at every cycle so that a site whose DNS record changes is followed. ``host`` is "" for a
    planned site written without one (it is never probed).

    Roll-out (issue 11): ``status`` says whether the site is probed at all (:attr:`probed`); every
    configured site, probed or not, reaches the sinks, so /metrics and the history count planned ones.
    """

    name: str
    host: str
    address: str | None
    group: str
    kind: str
    district: str
    link: str
    lat: float | None
    lon: float | None
    target_bits_per_second: float  # the site's download must reach this
    icmp: IcmpSettings
    throughput: ThroughputSettings = ThroughputSettings()
    target_upload_bits_per_second: float | None = None  # checked only when configured
    status: RolloutStatus = "connected"
    planned_date: dt.date | None = None
    provider: str | None = None
    contracted_bits_per_second: float | None = None  # the contract, when it differs from the target
    max_added_latency_seconds: float = DEFAULT_MAX_ADDED_LATENCY_SECONDS  # latency under load allowed (issue 20)

    @property
    def probed(self) -> bool:
        """Only connected sites are probed: a planned one has no line yet, a retired one none any more."""
        return self.status == "connected"
    mode: SiteMode = "probe"  # "agent": measured by an agent at the site (issue 10), never by the centre
    agent: AgentSettings | None = None
    maintenance: MaintenanceWindows | None = None  # declared maintenance: its own block, else its group's (issue 21)
    upstream: str | None = None  # nearest upstream node (its own, else its group's); a node: its parent

    @property
    def probed_by_centre(self) -> bool:
        """Whether the centre's own scheduler pings and tests this site: connected, and no agent reports for it."""
        return self.probed and self.mode == "probe"

    @property
    def agent_stale_after_seconds(self) -> float:
        """Silence after which an agent site counts as down: as configured, else three ICMP intervals."""
        configured = self.agent.stale_after_seconds if self.agent is not None else None
        return configured if configured is not None else 3 * self.icmp.interval_seconds


def build_targets(config: Config) -> tuple[Target, ...]:
    """Flatten the config into targets, in file order."""
    out: list[Target] = []
    for group in config.groups:
        for ep in group.endpoints:
            mbps = next(v for v in (ep.target_mbps, group.target_mbps, config.defaults.target_mbps)
                        if v is not None)
            up_mbps = next((v for v in (ep.target_upload_mbps, group.target_upload_mbps,
                                        config.defaults.target_upload_mbps) if v is not None), None)
            host = ep.host or ""
            throughput = merge_throughput(config.defaults.throughput, group.throughput, ep.throughput,
                                          timezone=config.monitor.zone)
            if (ep.mode or group.mode) == "agent" and throughput.method == "http" and not throughput.directions:
                throughput = dataclasses.replace(throughput, directions=DIRECTIONS)  # the centre serves both
            if throughput.url or throughput.upload_url:  # `{host}` in a group-wide URL becomes this site's host
                throughput = dataclasses.replace(
                    throughput, url=throughput.url and expand_url(throughput.url, host),
                    upload_url=throughput.upload_url and expand_url(throughput.upload_url, host))
            contracted = ep.contracted_mbps if ep.contracted_mbps is not None else group.contracted_mbps
            out.append(Target(
                name=ep.name,
                host=host,
                address=normalize_ip(host) if host else None,
                group=group.name,
                kind=group.kind,
                district=ep.district or group.district or "",
                link=ep.link or group.link or "",
                lat=ep.lat,
                lon=ep.lon,
                target_bits_per_second=mbps * 1_000_000,
                icmp=merge_icmp(config.defaults.icmp, group.icmp, ep.icmp),
                throughput=throughput,
                target_upload_bits_per_second=None if up_mbps is None else up_mbps * 1_000_000,
                mode=ep.mode or group.mode or "probe",
                agent=ep.agent,
                status=ep.status or group.status or "connected",
                planned_date=ep.planned_date or group.planned_date,
                provider=ep.provider or group.provider,
                contracted_bits_per_second=None if contracted is None else contracted * 1_000_000,
                maintenance=ep.maintenance or group.maintenance,
                upstream=ep.upstream or group.upstream,
                max_added_latency_seconds=next(v for v in (ep.max_added_latency, group.max_added_latency,
                                                           config.defaults.max_added_latency) if v is not None),
            ))
    return tuple(out)


UPLINK_GROUP = "monitor.uplink"  # the group of the uplink checks' targets: never a sink's, so it cannot clash


def uplink_targets(config: Config, sites: Sequence[Target] | None = None) -> tuple[Target, ...]:
    """The centre's uplink checks (``monitor: {uplink: [...]}``, issue 21) as targets, for the scheduler only.

    They are never handed to a sink: their results only tell :class:`monitor.centre_path.CentrePath`
    whether the centre itself is cut off. They are pinged at the fastest ICMP interval of the sites
    the centre probes, with that site's count, spacing and timeout (which the config check made fit
    that interval), in the address family of the defaults; without such a site, with the defaults.

    Args:
        config: the whole config.
        sites: its targets (:func:`build_targets`), when already built; every shard's, so that all
            instances check their uplink alike.
    """
    checks = config.monitor.uplink
    if not checks:
        return ()
    defaults = merge_icmp(config.defaults.icmp)
    probed_sites = [t for t in (build_targets(config) if sites is None else sites) if t.probed_by_centre]
    fastest = min((t.icmp for t in probed_sites), key=lambda s: s.interval_seconds, default=defaults)
    settings = dataclasses.replace(fastest, family=defaults.family, payload_bytes=defaults.payload_bytes)
    return tuple(Target(name=c.name, host=c.host, address=normalize_ip(c.host), group=UPLINK_GROUP, kind="uplink",
                        district="", link="", lat=None, lon=None, target_bits_per_second=0.0, icmp=settings)
                 for c in checks)


def probed(targets: Iterable[Target]) -> tuple[Target, ...]:
    """The targets to schedule: connected ones (planned and retired sites are only counted)."""
    return tuple(t for t in targets if t.probed)


def select(targets: Iterable[Target], names: Sequence[str]) -> tuple[Target, ...]:
    """Keep the named targets (all when ``names`` is empty).

    Raises:
        KeyError: naming the endpoints that are not in the config.
    """
    chosen = tuple(targets)
    if not names:
        return chosen
    by_name = {t.name: t for t in chosen}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(", ".join(missing))
    return tuple(by_name[n] for n in dict.fromkeys(names))
