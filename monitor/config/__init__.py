"""The site config: the validated, frozen model and its YAML loader, and the durations, sizes and time windows it
is written in.

The package's face: ``from monitor.config import Config, load_config``. Inside, one module a job:

- :mod:`~monitor.config.model`: the frozen values (:class:`Config` down to :class:`IcmpSettings`);
- :mod:`~monitor.config.sites`: the site config's loader (:func:`load_config`, :func:`parse_config`);
- :mod:`~monitor.config.settings`: readers of its settings blocks; :mod:`~monitor.config.checks`: rules across entries;
- :mod:`~monitor.config.walker`: the one YAML walker, also used by the agent's and the web config;
- :mod:`~monitor.config.includes`: ``include:`` of district files, and the digest a reload compares;
- :mod:`~monitor.config.hosts`: host syntax (:func:`~monitor.config.hosts.normalize_ip`);
- ``connmon import``: :mod:`~monitor.config.spreadsheet` reads XLSX and CSV, :mod:`~monitor.config.site_rows`
  checks the rows, :mod:`~monitor.config.importer` merges them into YAML, :mod:`~monitor.config.import_command`
  runs the steps;
- :mod:`~monitor.config.durations`, :mod:`~monitor.config.sizes`, :mod:`~monitor.config.windows`: the notations.
"""

from monitor.config.model import (
    DIRECTIONS,
    ROLLOUT_STATUSES,
    SITE_MODES,
    THROUGHPUT_METHODS,
    UPSTREAM_KINDS,
    AddressFamilyChoice,
    AgentSettings,
    Cascade,
    Config,
    Defaults,
    Direction,
    EndpointConfig,
    GroupConfig,
    IcmpSettings,
    Location,
    MonitorSettings,
    Overrides,
    ReportSettings,
    Retention,
    RolloutStatus,
    SiteMode,
    TestMethod,
    ThroughputMethod,
    ThroughputSettings,
    UplinkCheck,
    UpstreamNode,
    merge_icmp,
    merge_throughput,
)
from monitor.config.sites import load_config, parse_config

__all__ = [
    "DIRECTIONS",
    "ROLLOUT_STATUSES",
    "SITE_MODES",
    "AddressFamilyChoice",
    "AgentSettings",
    "Cascade",
    "Config",
    "Defaults",
    "Direction",
    "EndpointConfig",
    "GroupConfig",
    "IcmpSettings",
    "Location",
    "MonitorSettings",
    "Overrides",
    "ReportSettings",
    "Retention",
    "RolloutStatus",
    "SiteMode",
    "TestMethod",
    "THROUGHPUT_METHODS",
    "ThroughputMethod",
    "ThroughputSettings",
    "UplinkCheck",
    "UpstreamNode",
    "UPSTREAM_KINDS",
    "load_config",
    "merge_icmp",
    "merge_throughput",
    "parse_config",
]
