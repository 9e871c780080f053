"""The site config's rules across entries, checked once the whole file has been read.

Some mistakes are visible only with everything in hand: two sites with one name, two agents with
one token, ICMP or throughput settings that no longer fit once the defaults → group → endpoint
cascade has been applied. They are reported at the place where the operator can fix them (the most
specific level that set the block), each place once, on the same :class:`~monitor.config.walker.Walker`
as the problems found while reading, so ``connmon check`` lists them all together.
"""

from __future__ import annotations

from yaml.nodes import Node

from monitor.config.durations import format_duration
from monitor.config.hosts import normalize_ip
from monitor.config.model import Config, EndpointConfig, GroupConfig, Location, merge_icmp, merge_throughput
from monitor.config.walker import Walker, location

# "group" / "endpoint" → (name node, its key path, its file), in file order, the included files after (issue 22)
NameNodes = dict[str, list[tuple[Node, str, str]]]


def check_config(w: Walker, config: Config, name_nodes: NameNodes) -> None:
    """Rules that span entries: unique names and tokens, and settings that fit their interval."""
    for what, entries in name_nodes.items():
        seen: dict[str, Location] = {}
        for node, path, file in entries:
            name = str(node.value)
            here = location(file, node)
            if name in seen:
                first = seen[name]
                at = f"line {first.line}" if first.file == file else str(first)  # across files: both places
                w.problem_at(here, path, f"duplicate {what} name '{name}' (first at {at})")
            else:
                seen[name] = here
    tokens: dict[str, EndpointConfig] = {}
    for group in config.groups:
        for endpoint in group.endpoints:
            token = endpoint.agent.token_sha256 if endpoint.agent is not None else None
            if token is None:
                continue
            if token in tokens:  # the token is what tells the centre which site is posting
                w.problem_at(endpoint.location, f"{endpoint.path}.agent.token_sha256",
                             f"the same token as endpoint '{tokens[token].name}'; every agent needs its own token")
            else:
                tokens[token] = endpoint
    reported: set[Location] = set()
    for group in config.groups:
        for endpoint in group.endpoints:
            _check_throughput(w, config, group, endpoint, reported)
            if (endpoint.mode or group.mode) == "agent":
                continue  # its agent pings with its own settings; the centre uses only the interval (stale_after)
            _check_icmp(w, config, group, endpoint, reported)


def _check_icmp(w: Walker, config: Config, group: GroupConfig, endpoint: EndpointConfig,
                reported: set[Location]) -> None:
    """An endpoint's final ICMP settings must fit their interval, and its own family fit its own address."""
    settings = merge_icmp(config.defaults.icmp, group.icmp, endpoint.icmp)
    where, where_path = next(
        ((lvl.location, lvl.path) for lvl in (endpoint.icmp, group.icmp, config.defaults.icmp)
         if lvl is not None), (endpoint.location, "icmp"))
    if settings.cycle_bound_seconds > settings.interval_seconds and where not in reported:
        reported.add(where)
        w.problem_at(where, where_path,
                     f"count × spacing + timeout = {settings.cycle_bound_seconds:g}s does not fit in "
                     f"interval {format_duration(settings.interval_seconds)} (endpoint '{endpoint.name}'); "
                     "lower count, spacing or timeout, or raise interval")
    # icmp.family picks the address of a DNS name, so one inherited from defaults or the group
    # does not bind a literal; but an endpoint that sets it against its own address is a typo.
    literal = normalize_ip(endpoint.host) if endpoint.host is not None else None
    own_family = endpoint.icmp.values.get("family") if endpoint.icmp is not None else None
    if literal is not None and own_family not in (None, "any"):
        is_v6 = ":" in literal
        if own_family != ("ipv6" if is_v6 else "ipv4"):
            w.problem_at(endpoint.location, f"{endpoint.path}.host",
                         f"'{endpoint.host}' is an {'IPv6' if is_v6 else 'IPv4'} address but icmp.family is "
                         f"{own_family}")


def _check_throughput(w: Walker, config: Config, group: GroupConfig, endpoint: EndpointConfig,
                      reported: set[Location]) -> None:
    """An endpoint's final throughput settings must be runnable: URLs for http, tests that fit ``every``."""
    levels = (config.defaults.throughput, group.throughput, endpoint.throughput)
    settings = merge_throughput(*levels, timezone=config.monitor.zone)
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
    longest = max((window.length_minutes * 60 for window in settings.windows), default=None)
    if longest is not None and total > longest:
        problems.append(f"a test may take up to {total:g}s, longer than its longest window "
                        f"({format_duration(longest)}) (endpoint '{endpoint.name}')")
    if problems:
        reported.add(where)
        for text in problems:
            w.problem_at(where, where_path, text)
