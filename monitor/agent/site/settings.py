"""What the agent measures, as the centre says (issue 18): fetched, checked, applied and kept.

The centre's config holds each agent site's interval, ICMP settings, gateway ping and throughput
test (:mod:`monitor.agent.centre.settings`), so a change reaches every agent without a visit. The
agent fetches them (``GET /api/v1/agent/settings``) at start-up and again whenever an answer to its
results names another ``settings_version``; a running agent follows at its next cycle.

Which settings count, decided (and documented in docs/agents.md):

1. the centre's, once fetched: they win over ``agent.yaml``;
2. else the last ones fetched, kept in the state directory (``centre-settings.json``): a restart
   while the centre is unreachable measures as the centre last said, not as the file said;
3. else ``agent.yaml``'s own ``interval``, ``icmp``, ``gateway`` and ``throughput`` keys: a centre
   from before issue 18 (its answer is 404) or one never reached yet. They stay valid keys, now fallbacks.

The local file keeps what only the site can know: the centre's URL, the site, the token file, the
CA, the state directory (and the spool and upload limits, which are the machine's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.agent.site.config import AgentConfig, AgentIcmp
from monitor.config.hosts import normalize_ip

log = logging.getLogger(__name__)

FILE_NAME = "centre-settings.json"


@dataclass(frozen=True, slots=True)
class CentreSettings:
    """The settings the centre holds for this site, checked; ``version`` is the centre's hash of them."""

    version: str
    interval_seconds: float
    icmp: AgentIcmp
    gateway: str | None  # "auto", an address, "off"; None: as the agent's file says
    throughput_enabled: bool

    def apply(self, config: AgentConfig) -> AgentConfig:
        """``config`` measuring as the centre says; the ICMP host stays the file's (the centre's own address)."""
        gateway = config.gateway if self.gateway is None else (None if self.gateway == "off" else self.gateway)
        return dataclasses.replace(config, interval_seconds=self.interval_seconds,
                                   icmp=dataclasses.replace(self.icmp, host=config.icmp.host), gateway=gateway,
                                   throughput_enabled=self.throughput_enabled)


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{key} must be a number from {low:g} to {high:g}, not {value!r:.50}")
    return float(value)


def parse_settings(body: Any) -> CentreSettings:
    """The centre's settings answer, checked as the agent's own file would be.

    Raises:
        ValueError: something is missing or out of range (the agent keeps what it measures with).
    """
    if not isinstance(body, dict):
        raise ValueError("the settings are not a JSON object")
    version = body.get("settings_version")
    if not isinstance(version, str) or not 0 < len(version) <= 64:
        raise ValueError("settings_version is missing")
    icmp_raw = body.get("icmp")
    throughput = body.get("throughput")
    if not isinstance(icmp_raw, dict) or not isinstance(throughput, dict):
        raise ValueError("icmp or throughput is missing")
    icmp = AgentIcmp(count=int(_number(icmp_raw, "count", 1, 10_000)),
                     spacing_seconds=_number(icmp_raw, "spacing_seconds", 0.001, 60.0),
                     timeout_seconds=_number(icmp_raw, "timeout_seconds", 0.001, 60.0),
                     payload_bytes=int(_number(icmp_raw, "payload_bytes", 16, 1400)))
    interval = _number(body, "interval_seconds", 1.0, 86400.0)
    if icmp.cycle_bound_seconds > interval:
        raise ValueError(f"count × spacing + timeout = {icmp.cycle_bound_seconds:g}s does not fit in the interval")
    gateway = body.get("gateway")
    if gateway is not None and (not isinstance(gateway, str)
                                or (gateway not in ("auto", "off") and normalize_ip(gateway) is None)):
        raise ValueError(f"gateway must be auto, off, an IP address or null, not {gateway!r:.50}")
    enabled = throughput.get("enabled")
    if not isinstance(enabled, bool):
        raise ValueError("throughput.enabled must be true or false")
    return CentreSettings(version, interval, icmp, gateway, enabled)


def load_kept(state_dir: Path) -> tuple[CentreSettings, dict[str, Any]] | None:
    """The settings last fetched (kept in ``state_dir``), or None when none were, or they cannot be read."""
    path = state_dir / FILE_NAME
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        return parse_settings(body), body
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s: the centre's settings kept here cannot be read (%s); using agent.yaml's until the centre "
                    "answers", path, err)
        return None


def keep(state_dir: Path, body: dict[str, Any]) -> None:
    """Keep the fetched settings for a restart while the centre is unreachable (temporary file, then rename)."""
    path = state_dir / FILE_NAME
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_text(json.dumps(body), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as err:  # measuring goes on with them; only a restart without the centre would miss them
        with contextlib.suppress(OSError):
            temporary.unlink()
        log.warning("%s: cannot keep the centre's settings (%s)", path, err.strerror or err)


def describe(config: AgentConfig) -> str:
    """What the agent measures, on one line, for the log."""
    icmp = config.icmp
    return (f"every {config.interval_seconds:g}s: {icmp.count} echoes {icmp.spacing_seconds:g}s apart "
            f"(timeout {icmp.timeout_seconds:g}s, {icmp.payload_bytes} bytes), gateway "
            f"{config.gateway or 'off'}, throughput {'on' if config.throughput_enabled else 'off'}")
