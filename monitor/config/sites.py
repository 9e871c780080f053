"""The site config's loader: YAML text → validated, frozen :class:`~monitor.config.model.Config`.

This module knows the file's structure (the top level, defaults, groups, endpoints, an endpoint's
agent) and reads it with the one :class:`~monitor.config.walker.Walker`, so every problem is reported
as ``FILE:LINE:COL: path.to.key: message`` and all of them are collected before one
:class:`~monitor.errors.ConfigError` is raised. The settings blocks are read by
:mod:`monitor.config.settings`, the rules across entries checked by :mod:`monitor.config.checks`.
It does not apply the defaults → group → endpoint cascade for the rest of the program
(that is :mod:`monitor.targets`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from monitor.config import includes, settings
from monitor.config.calendar import SchoolCalendar
from monitor.config.calendar_reader import calendar_name, read_calendars
from monitor.config.checks import NameNodes, check_config
from monitor.config.hosts import normalize_ip
from monitor.config.model import (
    REPORT_LANGUAGES,
    ROLLOUT_STATUSES,
    SITE_MODES,
    UPSTREAM_KINDS,
    AgentSettings,
    Config,
    Defaults,
    EndpointConfig,
    GroupConfig,
    MonitorSettings,
    ReportSettings,
    Retention,
    RolloutStatus,
    SourceFile,
    UplinkCheck,
    UpstreamNode,
)
from monitor.config.walker import (
    TAG,
    TooManyNodes,
    Walker,
    compose,
    first_value,
    location,
    node_budget,
    parse_document,
    read_config_text,
)
from monitor.errors import ConfigError, ConfigProblem

_ROLLOUT_KEYS = ("status", "planned_date", "provider", "contracted_mbps")  # group and endpoint (issue 11)
_ENDPOINT_KEYS = ("name", "host", "district", "link", "lat", "lon", "target_mbps", "target_upload_mbps", "icmp",
                  "throughput", "maintenance", "max_added_latency", *_ROLLOUT_KEYS, "mode", "agent", "upstream",
                  "calendar")
_GROUP_KEYS = ("name", "kind", "district", "link", "target_mbps", "target_upload_mbps", "icmp", "throughput",
               "endpoints", "maintenance", "max_added_latency", *_ROLLOUT_KEYS, "mode", "upstream", "calendar")
_AGENT_KEYS = ("token_sha256", "stale_after", "at_risk_after", "dropped_after", "gateway")  # the last three: issue 18
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DEFAULT_KEYS = ("target_mbps", "target_upload_mbps", "icmp", "throughput", "max_added_latency", "calendar")
_TOP_KEYS = ("defaults", "groups", "throughput", "history", "report", "monitor", "upstreams", "include", "calendars")
_UPSTREAM_KEYS = ("name", "host", "kind", "upstream")

Readers = dict[str, Callable[[Node, str], Any]]


def load_config(path: str | Path, *, allow_empty: bool = False) -> Config:
    """Read and validate the config file at ``path``, and the files it includes.

    Args:
        allow_empty: accept a config with no endpoint at all (``--config.allow-empty``); without it, nothing
            to monitor is refused like an empty file, so a truncated file never stops monitoring (issue 22).

    Raises:
        ConfigError: a file cannot be read or is invalid (every problem listed).
    """
    return parse_config(read_config_text(path), str(path), allow_empty=allow_empty)


def parse_config(text: str, source: str, *, allow_empty: bool = False) -> Config:
    """Validate YAML ``text`` (named ``source`` in messages) and return the config.

    ``include:`` entries are relative to ``source``'s directory (:mod:`monitor.config.includes`).

    Raises:
        ConfigError: listing every problem, each with file, line, column and key path.
    """
    return parse_document(text, source, lambda w, root: _read(w, root, source, text, allow_empty),
                          empty="the file is empty; it needs at least 'groups:'")


def _read(w: Walker, root: Node, source: str, text: str, allow_empty: bool) -> Config | None:
    config, names, nothing_at = _walk_top(w, root, source)
    if config is None:
        return None
    config = dataclasses.replace(config, sources=(includes.source_of(source, text), *config.sources))
    check_config(w, config, names)
    if not allow_empty and not w.problems and nothing_at is not None \
            and not any(g.endpoints for g in config.groups):
        # a truncated file that kept its `groups:` line must not quietly stop all monitoring (issue 22)
        w.problem(nothing_at[0], nothing_at[1], "no endpoints: the config lists nothing to monitor "
                  "(start with --config.allow-empty to allow that on purpose)")
    return config


def _walk_top(w: Walker, root: Node, source: str) -> tuple[Config | None, NameNodes, tuple[Node, str] | None]:
    """The given file; returns the config, its name nodes, and where to say that it has no endpoints."""
    names: NameNodes = {"endpoint": [], "group": []}
    top = w.mapping(root, "", _TOP_KEYS, required=() if _has_key(root, "include") else ("groups",))
    if top is None:
        return None, names, None
    # issue 22: the region's zone and calendars first, as maintenance windows and `calendar:` keys below need them
    monitor = _monitor(w, top["monitor"]) if "monitor" in top else MonitorSettings()
    calendars = read_calendars(w, top["calendars"], monitor.zone) if "calendars" in top else {}
    region = _Region(monitor.zone, calendars)
    defaults = Defaults()
    if "defaults" in top:
        values = w.mapping(top["defaults"], "defaults", _DEFAULT_KEYS) or {}
        read = w.fields(values, "defaults", {
            "target_mbps": lambda n, p: settings.mbps(w, n, p),
            "target_upload_mbps": lambda n, p: settings.mbps(w, n, p),
            "icmp": lambda n, p: settings.icmp_overrides(w, n, p),
            "throughput": lambda n, p: settings.throughput_overrides(w, n, p),
            "max_added_latency": lambda n, p: w.duration(n, p, 0.001, 60.0),  # issue 20
            "calendar": lambda n, p: calendar_name(w, n, p, calendars),  # issue 22
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
    report = settings.report_settings(w, top["report"]) if "report" in top else ReportSettings()
    upstreams = _upstreams(w, top["upstreams"]) if "upstreams" in top else ()
    node_names = frozenset(n.name for n in upstreams)
    groups: list[GroupConfig] = []
    endpoint_readers = _endpoint_readers(w, node_names, region)  # built once per file, not once per endpoint
    for gi, gnode in enumerate(w.sequence(top["groups"], "groups") or () if "groups" in top else ()):
        group = _group(w, gnode, f"groups[{gi}]", endpoint_readers, node_names, region)
        if group is None:
            continue
        groups.append(group)
        _collect_names(gnode, f"groups[{gi}]", names, w.file)
    entries = includes.entries(w, top["include"], source) if "include" in top else []
    sources: list[SourceFile] = []
    for path in includes.files_of(w, entries, source):
        sources.extend(_read_included(w, path, node_names, groups, names, region))
    patterns = [pattern for _, _, pattern in entries]
    config = Config(source=source, defaults=defaults, groups=tuple(groups), throughput_max_concurrent=max_concurrent,
                    retention=retention, report=report, monitor=monitor, upstreams=upstreams,
                    sources=tuple(sources), include_patterns=tuple(patterns), calendars=tuple(calendars.values()))
    _check_node_names(w, upstreams, names)
    nothing_at = (top["groups"], "groups") if "groups" in top else (top["include"], "include") \
        if "include" in top else None
    return config, names, nothing_at


def _has_key(node: Node, key: str) -> bool:
    return isinstance(node, MappingNode) and first_value(node, key) is not None


def _read_included(w: Walker, path: str, node_names: frozenset[str], groups: list[GroupConfig],
                   names: NameNodes, region: _Region | None = None) -> list[SourceFile]:
    """Read one included file's groups onto ``groups`` and ``names``; its problems go on ``w``, located in it."""
    try:
        text, record = includes.read_included(path)
        root = compose(text, path)
    except ConfigError as err:
        w.problems.extend(err.problems)
        return []
    if root is None:
        w.problems.append(ConfigProblem(path, 1, 1, "", "the included file is empty; it needs 'groups:'"))
        return [record]
    fw = Walker(path, node_budget(text))
    try:
        top = fw.mapping(root, "", includes.INCLUDED_KEYS, required=("groups",), unsupported={
            key: f"'{key}' belongs in the file given with --config; an included file holds only 'groups:'"
            + (" (includes do not nest)" if key == "include" else "")
            for key in _TOP_KEYS if key != "groups"})
        readers = _endpoint_readers(fw, node_names, region)
        for gi, gnode in enumerate(fw.sequence(top["groups"], "groups") or () if top and "groups" in top else ()):
            group = _group(fw, gnode, f"groups[{gi}]", readers, node_names, region)
            if group is not None:
                groups.append(group)
                _collect_names(gnode, f"groups[{gi}]", names, path)
    except TooManyNodes:
        fw.problems.append(ConfigProblem(path, 1, 1, "", f"the document expands to more than {fw.max_visits:,} "
                                         "nodes (too large, or aliases that multiply); refusing to read it"))
    w.problems.extend(fw.problems)
    return [record]


def _upstreams(w: Walker, node: Node) -> tuple[UpstreamNode, ...]:
    """``upstreams: [{name, host, upstream, kind}, ...]``: the forest of upstream nodes (issue 21).

    Every problem is located: a duplicate name, a parent that is not a node of the list, and a cycle
    (reported once, at the ``upstream`` key of the first node of the list that is on it).
    """
    nodes: list[UpstreamNode] = []
    seen: dict[str, int] = {}
    parent_nodes: dict[str, tuple[Node, str]] = {}
    for i, item in enumerate(w.sequence(node, "upstreams") or ()):
        path = f"upstreams[{i}]"
        fields = w.mapping(item, path, _UPSTREAM_KEYS, required=("name", "host"))
        if fields is None:
            continue
        read = w.fields(fields, path, {"name": w.string, "host": w.host, "upstream": w.string,
                                       "kind": lambda n, p: w.choice(n, p, UPSTREAM_KINDS)})
        if "name" not in read or "host" not in read:
            continue
        name = read["name"]
        if name in seen:
            w.problem(fields["name"], f"{path}.name",
                      f"duplicate upstream node name '{name}' (first at upstreams[{seen[name]}])")
            continue
        seen[name] = i
        if "upstream" in read:
            parent_nodes[name] = (fields["upstream"], f"{path}.upstream")
        nodes.append(UpstreamNode(name, read["host"], read.get("kind", "router"), read.get("upstream"),
                                  w.where(item)))
    parents = {n.name: n.upstream for n in nodes}
    for n in nodes:
        if n.upstream is not None and n.upstream not in parents:
            key, path = parent_nodes[n.name]
            w.problem(key, path, f"unknown upstream node '{n.upstream}' (the nodes are: {', '.join(parents)})")
    on_cycle: set[str] = set()
    for n in nodes:
        chain: list[str] = []
        at: str | None = n.name
        while at is not None and at in parents and at not in chain:
            chain.append(at)
            at = parents[at]
        if at is not None and at in chain and n.name == at and n.name not in on_cycle:
            cycle = chain[chain.index(at):]
            on_cycle.update(cycle)
            key, path = parent_nodes[n.name]
            w.problem(key, path, "the upstream nodes form a cycle: " + " → ".join([*cycle, at]))
    return tuple(nodes)  # with a problem the file is refused anyway; the names still check the sites' upstream keys


def _check_node_names(w: Walker, upstreams: Sequence[UpstreamNode], names: NameNodes) -> None:
    """An upstream node's name must not be a site's too: both are kept in the history under their name."""
    nodes = {n.name: n for n in upstreams}
    for node, path, file in names["endpoint"]:
        if isinstance(node, ScalarNode) and node.value in nodes:
            where = nodes[node.value].location
            w.problem_at(location(file, node), path, f"'{node.value}' is also the name of an upstream node"
                                  f"{f' (at {where})' if where is not None else ''}; names must differ")


def _monitor(w: Walker, node: Node) -> MonitorSettings:
    """``monitor: {uplink: [{name, host}, ...], traces_per_minute: N}``: the centre's own way out, and
    how many traces it may take a minute (issue 21)."""
    values = w.mapping(node, "monitor", ("uplink", "traces_per_minute", "timezone", "language")) or {}
    # issue 22: the reports' language (connmon report --lang overrides it)
    language = (w.choice(values["language"], "monitor.language", REPORT_LANGUAGES) if "language" in values else None
                ) or "en"
    budget = (w.number(values["traces_per_minute"], "monitor.traces_per_minute", 0, 10_000, integer=True)
              if "traces_per_minute" in values else None)
    # issue 22: one region, one clock (an unknown zone is a located error)
    zone = settings.timezone(w, values["timezone"], "monitor.timezone") if "timezone" in values else None
    checks: list[UplinkCheck] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(w.sequence(values["uplink"], "monitor.uplink") or () if "uplink" in values else ()):
        path = f"monitor.uplink[{i}]"
        fields = w.mapping(item, path, ("name", "host"), required=("name", "host"))
        if fields is None:
            continue
        read = w.fields(fields, path, {"name": w.string, "host": w.host})
        if "name" not in read or "host" not in read:
            continue
        if read["name"] in seen:
            w.problem(fields["name"], f"{path}.name",
                      f"duplicate uplink check name '{read['name']}' (first at monitor.uplink[{seen[read['name']]}])")
            continue
        seen[read["name"]] = i
        checks.append(UplinkCheck(read["name"], read["host"]))
    if budget is None:
        return MonitorSettings(tuple(checks), timezone=zone, language=language)
    return MonitorSettings(tuple(checks), traces_per_minute=int(budget), timezone=zone, language=language)


@dataclass(frozen=True, slots=True)
class _Region:
    """What the group and endpoint readers take from the top of the file (issue 22): the region's zone
    (for maintenance windows that name none) and the declared calendars (which ``calendar:`` must name)."""

    zone: str = "UTC"
    calendars: Mapping[str, SchoolCalendar] = field(default_factory=dict)


def _cascade_readers(w: Walker, node_names: frozenset[str] = frozenset(), region: _Region | None = None) -> Readers:
    """Readers of the keys a group and its endpoints share (:class:`~monitor.config.model.Cascade`).

    ``node_names``: the upstream nodes of the file, which ``upstream:`` must name one of; ``region``:
    the region's zone and calendars (issue 22).
    """
    scope = region or _Region()
    calendars, zone = scope.calendars, scope.zone
    return {
        "district": w.string,
        "link": w.string,
        "target_mbps": lambda n, p: settings.mbps(w, n, p),
        "target_upload_mbps": lambda n, p: settings.mbps(w, n, p),
        "icmp": lambda n, p: settings.icmp_overrides(w, n, p),
        "throughput": lambda n, p: settings.throughput_overrides(w, n, p),
        "maintenance": lambda n, p: settings.maintenance(w, n, p, zone),
        "max_added_latency": lambda n, p: w.duration(n, p, 0.001, 60.0),  # latency under load (issue 20)
        # roll-out (issue 11)
        "status": lambda n, p: w.choice(n, p, ROLLOUT_STATUSES),
        "planned_date": lambda n, p: settings.date(w, n, p),
        "provider": w.string,
        "contracted_mbps": lambda n, p: settings.mbps(w, n, p),
        "mode": lambda n, p: w.choice(n, p, SITE_MODES),
        "upstream": lambda n, p: _upstream_name(w, n, p, node_names),
        "calendar": lambda n, p: calendar_name(w, n, p, calendars),  # issue 22
    }


def _upstream_name(w: Walker, node: Node, path: str, node_names: frozenset[str]) -> str | None:
    name = w.string(node, path)
    if name is None:
        return None
    if name not in node_names:
        known = ", ".join(sorted(node_names)) if node_names else "none: the file has no 'upstreams:' list"
        w.problem(node, path, f"unknown upstream node '{name}' (the nodes are: {known})")
        return None
    return name


def _endpoint_readers(w: Walker, node_names: frozenset[str] = frozenset(), region: _Region | None = None) -> Readers:
    return {
        "name": w.string,
        "host": w.host,
        "lat": lambda n, p: w.number(n, p, -90.0, 90.0),
        "lon": lambda n, p: w.number(n, p, -180.0, 180.0),
        **_cascade_readers(w, node_names, region),
        "agent": lambda n, p: _agent_settings(w, n, p),
    }


def _group(w: Walker, node: Node, path: str, endpoint_readers: Readers,
           node_names: frozenset[str] = frozenset(), region: _Region | None = None) -> GroupConfig | None:
    values = w.mapping(node, path, _GROUP_KEYS, required=("name", "endpoints"))
    if values is None:
        return None
    read = w.fields(values, path, {"name": w.string, "kind": w.string, **_cascade_readers(w, node_names, region)})
    group_status: RolloutStatus | None = read.get("status", "connected") if "status" in read \
        or "status" not in values else None
    endpoints: list[EndpointConfig] = []
    if "endpoints" in values:
        items = w.sequence(values["endpoints"], f"{path}.endpoints")
        for index, item in enumerate(items or ()):
            endpoint = _endpoint(w, item, f"{path}.endpoints[{index}]", endpoint_readers, group_status,
                                 read.get("mode"))
            if endpoint is not None:
                endpoints.append(endpoint)
    if "name" not in read:
        return None
    read.setdefault("kind", "")
    return GroupConfig(location=w.where(node), endpoints=tuple(endpoints), **read)


def _endpoint(w: Walker, node: Node, path: str, readers: Readers, group_status: RolloutStatus | None = "connected",
              group_mode: str | None = None) -> EndpointConfig | None:
    """One endpoint; ``group_status``: the group's status (None when it was invalid); ``group_mode``: its mode."""
    values = w.mapping(node, path, _ENDPOINT_KEYS, required=("name",))
    if values is None:
        return None
    read = w.fields(values, path, readers)
    status = read.get("status", group_status) if "status" in read or "status" not in values else None
    if "mode" in values and "mode" not in read:
        return None  # the mode was invalid (reported): do not also report a host it may not need
    mode = read.get("mode") or group_mode or "probe"
    # mode: agent is measured from inside the site (issue 10): the centre needs its token, not its address; the
    # token comes from agent.token_sha256 or by enrolment (issue 18: `connmon agent-invite`, kept in the history)
    if mode != "agent" and "agent" in values:
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


def _agent_settings(w: Walker, node: Node, path: str) -> AgentSettings | None:
    values = w.mapping(node, path, _AGENT_KEYS)  # without token_sha256 the site's token comes by enrolment
    if values is None:
        return None
    read = w.fields(values, path, {
        "token_sha256": lambda n, p: _token_hash(w, n, p),
        "stale_after": lambda n, p: w.duration(n, p, 1.0, 30 * 86400.0),
        "at_risk_after": lambda n, p: w.duration(n, p, 60.0, 3650 * 86400.0),
        "dropped_after": lambda n, p: w.duration(n, p, 60.0, 3650 * 86400.0),
        "gateway": lambda n, p: _agent_gateway(w, n, p),
    })
    fleet = AgentSettings()
    at_risk = read.get("at_risk_after", fleet.at_risk_after_seconds)
    dropped = read.get("dropped_after", max(fleet.dropped_after_seconds, at_risk))
    if dropped < at_risk:
        w.problem(values.get("dropped_after", node), f"{path}.dropped_after",
                  "must not be shorter than at_risk_after (a site is at risk before it is dropped)")
    return AgentSettings(read.get("token_sha256"), read.get("stale_after"), at_risk, dropped, read.get("gateway"))


def _agent_gateway(w: Walker, node: Node, path: str) -> str | None:
    """The gateway an agent pings (issue 18): auto, off, or an IP literal (kept canonical)."""
    if isinstance(node, ScalarNode) and node.tag.endswith(":bool") and node.value.lower() in ("off", "false", "no"):
        return "off"  # YAML 1.1 reads a bare off as false: it means what it says
    text = w.string(node, path)
    if text is None:
        return None
    text = text.strip()
    if text in ("auto", "off"):
        return text
    address = normalize_ip(text)
    if address is None or "%" in text:
        w.problem(node, path, f"'{text}' must be auto (the default route's gateway), off, or an IP address")
        return None
    return address


def _token_hash(w: Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    if not _SHA256_HEX.fullmatch(text.strip().lower()):
        w.problem(node, path, "must be the SHA-256 of the agent's token as 64 hex digits "
                              "(`connmon agent-token` makes a token and prints its hash)")
        return None
    return text.strip().lower()


def _collect_names(gnode: Node, gpath: str, names: NameNodes, file: str) -> None:
    """Remember the name nodes of a valid group and its endpoints, for the uniqueness check.

    Only the first of duplicated keys counts, so a key given twice is one problem, not two.
    """
    if not isinstance(gnode, MappingNode):  # pragma: no cover - a group that was read is a mapping
        return
    name = first_value(gnode, "name")
    if name is not None:
        names["group"].append((name, f"{gpath}.name", file))
    endpoints = first_value(gnode, "endpoints")
    if isinstance(endpoints, SequenceNode):
        for ei, enode in enumerate(endpoints.value):
            if isinstance(enode, MappingNode):
                v = first_value(enode, "name")
                if isinstance(v, ScalarNode) and v.tag == TAG + "str":
                    names["endpoint"].append((v, f"{gpath}.endpoints[{ei}].name", file))
