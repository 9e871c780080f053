"""One row per agent site, for ``/metrics`` and ``GET /api/v1/agents`` (issue 18): the fleet at a glance.

It joins what the registry knows now (the agent's last batch: version, spool, clock) with the fleet's
records that outlive restarts (:mod:`monitor.agent.centre.fleet`), and judges each site live, at
risk or dropped by its own thresholds (``agent.at_risk_after``, ``agent.dropped_after``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.agent.centre.fleet import FleetRecord, FleetState, fleet_state
from monitor.agent.centre.registry import AgentSite, AgentSites
from monitor.config.model import AgentSettings

_DEFAULTS = AgentSettings()


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One agent site's line in the fleet list; times are Unix seconds on the centre's clock, None when unknown."""

    site: str
    state: FleetState
    version: str | None
    last_contact: float | None
    last_result: float | None
    silent: bool
    clock_offset_seconds: float | None
    clock_offset_bound_seconds: float | None
    spool_depth: int | None
    spool_dropped: int
    results_corrected: int
    at_risk_after_seconds: float
    dropped_after_seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "state": self.state.value, "version": self.version,
                "last_contact": self.last_contact, "last_result": self.last_result, "silent": self.silent,
                "clock_offset_seconds": self.clock_offset_seconds,
                "clock_offset_bound_seconds": self.clock_offset_bound_seconds, "spool_depth": self.spool_depth,
                "spool_dropped": self.spool_dropped, "results_corrected": self.results_corrected,
                "at_risk_after_seconds": self.at_risk_after_seconds,
                "dropped_after_seconds": self.dropped_after_seconds}


def agent_row(site: AgentSite, record: FleetRecord | None, now: float) -> AgentRow:
    """``site``'s row at ``now``; ``record`` None: the fleet has not met the site yet (counted from now)."""
    settings = site.target.agent or _DEFAULTS
    record = record if record is not None else FleetRecord(known_since=now)
    info = site.info
    return AgentRow(
        site=site.target.name,
        state=fleet_state(record, now, settings.at_risk_after_seconds, settings.dropped_after_seconds),
        version=info.version if info is not None else record.version,
        last_contact=record.last_contact, last_result=record.last_result, silent=site.silent,
        clock_offset_seconds=record.offset_seconds, clock_offset_bound_seconds=record.offset_bound_seconds,
        spool_depth=info.spool_depth if info is not None else record.spool_depth,
        spool_dropped=info.spool_dropped if info is not None else 0, results_corrected=site.corrected,
        at_risk_after_seconds=settings.at_risk_after_seconds, dropped_after_seconds=settings.dropped_after_seconds)


def agent_rows(sites: AgentSites, now: float) -> list[AgentRow]:
    """Every configured agent site's row, by name."""
    return [agent_row(site, sites.fleet.records.get(name), now) for name, site in sorted(sites.by_name.items())]
