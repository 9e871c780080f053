"""Site agents' liveness, versions and gaps in ``/metrics`` (issue 10), current at every scrape.

A scrape-time renderer (:class:`~monitor.exposition.scrape.ScrapeRenderer`) the daemon hands to the
metrics sink: a few lines per agent site, labelled as the sink labels the site's own series, and the
requests the agents' API refused, by status. Sample lines::

    connmon_agent_silent{endpoint="vsat-1",kind="school",district="Shalkar",link="satellite"} 0
    connmon_agent_requests_rejected_total{code="401"} 3
    connmon_agent_site_requests_rejected_total{endpoint="vsat-1",kind="school",district="Shalkar",...,code="400"} 2
    connmon_agent_state{endpoint="vsat-1",...,state="at_risk"} 1
    connmon_agent_clock_offset_seconds{endpoint="vsat-1",...} -259200.4

The fleet at a glance (issue 18) comes from :mod:`monitor.agent.centre.fleet_view`: state (live, at
risk, dropped), last result, clock offset and spool depth, and last contact from the records that
outlive a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from monitor.agent.centre.fleet import FLEET_STATES
from monitor.agent.centre.fleet_view import agent_row
from monitor.agent.centre.registry import REJECTION_CODES, SITE_REJECTION_CODES, AgentSites
from monitor.exposition.families import ShardLabels, floatToGoString, label_pairs
from monitor.exposition.scrape import Labelled

_FAMILIES = (
    ("connmon_agent_silent", "gauge", "1 when nothing arrived from the site's agent within stale_after."),
    ("connmon_agent_last_seen_timestamp_seconds", "gauge", "Unix time the centre last received a post from the agent."),
    ("connmon_agent_info", "gauge", "The agent's software version (value 1)."),
    ("connmon_agent_uptime_seconds", "gauge", "Uptime of the agent's machine, as it last reported."),
    ("connmon_agent_gap_cause", "gauge",
     "1 on the cause of the agent's current (while silent: unknown) or last silence: link, power or unknown."),
    ("connmon_agent_gaps_total", "counter", "Silences of the agent that ended, by the cause found."),
    ("connmon_agent_results_total", "counter",
     "Results posted by the agent: accepted, duplicate (already had), or refused on their own (protocol 2)."),
    ("connmon_agent_spool_dropped_total", "counter",
     "Results the agent dropped from its full spool while the centre was unreachable (as it reports)."),
    ("connmon_agent_gateway_up", "gauge", "1 if the agent's last ping of the site's own gateway was answered."),
    ("connmon_agent_gateway_rtt_seconds", "gauge", "Average RTT of the agent's last ping of the site's gateway."),
    ("connmon_agent_requests_rejected_total", "counter",
     "Agent API requests refused, by HTTP status (401 token, 403 other site, 400 bad body, 408, 413, 415, 429, "
     "503)."),
    # issue 25: which school is losing data; the one above stays as shipped (renaming a metric breaks dashboards)
    ("connmon_agent_site_requests_rejected_total", "counter",
     "Agent API requests refused whose token named the site, by HTTP status (all but 401)."),
    # issue 18: a fleet at a glance, and true clocks
    ("connmon_agent_state", "gauge",
     "1 on the agent's state: live, at_risk or dropped (no result for agent.at_risk_after / dropped_after)."),
    ("connmon_agent_last_result_timestamp_seconds", "gauge",
     "Unix time the centre last received a new result from the agent (kept across restarts)."),
    ("connmon_agent_clock_offset_seconds", "gauge",
     "The agent's clock minus the centre's, measured on its last batch (positive: ahead)."),
    ("connmon_agent_clock_offset_bound_seconds", "gauge",
     "How exactly the clock offset is known: half the round trip of the exchange it was measured on."),
    ("connmon_agent_clock_corrected_results_total", "counter",
     "Results whose times the centre corrected by the agent's measured clock offset."),
    ("connmon_agent_spool_depth", "gauge", "Results waiting in the agent's spool, as it last reported."),
)


class AgentExposition:
    """Renders the ``connmon_agent_*`` families from the agent sites' state and refusals.

    It reads the :class:`~monitor.agent.centre.registry.AgentSites` the registry writes, handed to
    both by the daemon: the registry publishes into the pipeline the metrics sink is part of.
    """

    def __init__(self, registry: AgentSites, clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._clock = clock

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        registry = self._registry
        families: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
        now = self._clock()
        for name, site in registry.by_name.items():
            endpoint = endpoints.get(name)
            if endpoint is None:
                continue
            lb = endpoint.labels
            row = agent_row(site, registry.fleet.records.get(name), now)
            families["connmon_agent_state"].extend(
                f'connmon_agent_state{{{lb},state="{state}"}} {int(state == row.state)}\n' for state in FLEET_STATES)
            families["connmon_agent_clock_corrected_results_total"].append(
                f"connmon_agent_clock_corrected_results_total{{{lb}}} {row.results_corrected}\n")
            for family, value in (("connmon_agent_last_result_timestamp_seconds", row.last_result),
                                  ("connmon_agent_clock_offset_seconds", row.clock_offset_seconds),
                                  ("connmon_agent_clock_offset_bound_seconds", row.clock_offset_bound_seconds),
                                  ("connmon_agent_spool_depth", row.spool_depth)):
                if value is not None:
                    families[family].append(f"{family}{{{lb}}} {floatToGoString(value)}\n")
            if site.info is None and row.last_contact is not None:  # after a restart: the kept last contact
                families["connmon_agent_last_seen_timestamp_seconds"].append(
                    f"connmon_agent_last_seen_timestamp_seconds{{{lb}}} {floatToGoString(row.last_contact)}\n")
            families["connmon_agent_silent"].append(f"connmon_agent_silent{{{lb}}} {int(site.silent)}\n")
            families["connmon_agent_gaps_total"].extend(
                f'connmon_agent_gaps_total{{{lb},cause="{cause}"}} {count}\n' for cause, count in site.gaps.items())
            if site.gap_cause is not None:
                families["connmon_agent_gap_cause"].extend(
                    f'connmon_agent_gap_cause{{{lb},cause="{cause}"}} {int(cause == site.gap_cause)}\n'
                    for cause in site.gaps)
            families["connmon_agent_site_requests_rejected_total"].extend(  # every code at 0 from start-up
                f'connmon_agent_site_requests_rejected_total{{{lb},code="{code}"}} {site.rejected.get(code, 0)}\n'
                for code in SITE_REJECTION_CODES)
            families["connmon_agent_results_total"].append(
                f'connmon_agent_results_total{{{lb},outcome="accepted"}} {site.accepted}\n'
                f'connmon_agent_results_total{{{lb},outcome="duplicate"}} {site.duplicates}\n'
                f'connmon_agent_results_total{{{lb},outcome="refused"}} {site.refused}\n')
            info = site.info
            families["connmon_agent_spool_dropped_total"].append(  # 0 until the agent says otherwise
                f"connmon_agent_spool_dropped_total{{{lb}}} {info.spool_dropped if info is not None else 0}\n")
            if info is not None:
                families["connmon_agent_last_seen_timestamp_seconds"].append(
                    f"connmon_agent_last_seen_timestamp_seconds{{{lb}}} {floatToGoString(site.last_seen)}\n")
                families["connmon_agent_info"].append(
                    f"connmon_agent_info{{{lb},{label_pairs((('version', info.version),))}}} 1\n")
                families["connmon_agent_uptime_seconds"].append(
                    f"connmon_agent_uptime_seconds{{{lb}}} {floatToGoString(info.uptime_seconds)}\n")
            gateway = site.gateway
            if gateway is not None:
                families["connmon_agent_gateway_up"].append(f"connmon_agent_gateway_up{{{lb}}} {int(gateway.up)}\n")
                if gateway.rtt_avg_seconds is not None:
                    families["connmon_agent_gateway_rtt_seconds"].append(
                        f"connmon_agent_gateway_rtt_seconds{{{lb}}} {floatToGoString(gateway.rtt_avg_seconds)}\n")
        rejected = {**dict.fromkeys(REJECTION_CODES, 0), **registry.rejected} if registry.by_name else registry.rejected
        families["connmon_agent_requests_rejected_total"] = [  # every code from start-up, so increase() sees the first
            f"connmon_agent_requests_rejected_total{shard.braces(label_pairs((('code', str(code)),)))} {count}\n"
            for code, count in sorted(rejected.items())]
        out = []
        for name, kind, help_text in _FAMILIES:
            if families[name]:
                out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
                out.extend(families[name])
        return "".join(out).encode("utf-8")
