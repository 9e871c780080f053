"""What an agent site measures, as the centre's config says (issue 18): its settings and their version.

A hundred agents in the field are not visited to change an interval: the centre's config holds each
agent site's ICMP settings (interval, count, spacing, timeout, payload), its throughput test (method
and directions; *when* a test runs stays the centre's plan, granted slot by slot), and whether and
which gateway it pings (``agent.gateway``). ``GET /api/v1/agent/settings`` hands them to the site's
agent with a version: a hash of exactly what is handed out, so it changes when, and only when, a
setting the agent uses changes. Every answer to a batch carries the current version; an agent that
holds another one fetches them again (:mod:`monitor.agent.site.settings`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from monitor.targets import Target


def agent_settings(target: Target) -> dict[str, Any]:
    """The settings the agent of ``target``'s site measures with, without their version."""
    icmp, throughput = target.icmp, target.throughput
    gateway = target.agent.gateway if target.agent is not None else None
    return {
        "site": target.name,
        "interval_seconds": icmp.interval_seconds,
        "icmp": {"count": icmp.count, "spacing_seconds": icmp.spacing_seconds,
                 "timeout_seconds": icmp.timeout_seconds, "payload_bytes": icmp.payload_bytes},
        "gateway": gateway,  # auto, off, an address; null: as the agent's own file says
        "throughput": {"enabled": throughput.enabled, "method": throughput.method,
                       "directions": list(throughput.effective_directions) if throughput.enabled else []},
    }


def settings_version(settings: dict[str, Any]) -> str:
    """A short hash of ``settings`` as JSON with sorted keys: equal settings, equal version."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def versioned_settings(target: Target) -> dict[str, Any]:
    """The answer of ``GET /api/v1/agent/settings``: the settings and ``settings_version``."""
    settings = agent_settings(target)
    return {**settings, "settings_version": settings_version(settings)}
