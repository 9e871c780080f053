"""Throughput measured from the site, against the centre, in a slot the centre granted.

The agent never decides when to test or how: it asks the centre for a slot
(``POST /api/v1/agent/slot``) and the centre answers under the same ``max_concurrent``, windows
and monthly budget as its own tests, with the method and its settings. This module reads that
answer and runs the test with the centre's own probe code (:mod:`monitor.probes.iperf3`,
:mod:`monitor.probes.http_transfer`, and :func:`monitor.probes.throughput.measure_site` for the
sequence of directions and the deadlines).

Directions are the *site's*, as everywhere in connmon, but the probe code assumes the prober is
at the centre. Here the prober is the site, so the two are swapped when a direction is measured
and the result is labelled with the site's name again:

=============  ==================================  ==========================================
site's         iperf3 (agent is the client)        http (the centre serves both ends)
=============  ==================================  ==========================================
download       ``-R``: the centre sends             GET ``{centre}{download_path}?slot=&bytes=``
upload         normal mode: the agent sends         POST ``{centre}{upload_path}?slot=``
=============  ==================================  ==========================================
"""

from __future__ import annotations

import dataclasses
import math
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monitor.agent.protocol import granted_bytes
from monitor.config import DIRECTIONS, THROUGHPUT_METHODS, Direction, IcmpSettings, TestMethod, ThroughputSettings
from monitor.config.hosts import normalize_ip
from monitor.errors import ProbeErrorReason
from monitor.probes import iperf3
from monitor.probes.http_transfer import Limits, fetch, send
from monitor.probes.throughput import MeasureFn, measure_site
from monitor.results import DirectionResult, ThroughputResult
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.agent.site.config import AgentConfig
    from monitor.probes import ProbeContext

REFUSAL_REASONS = ("not_due", "busy", "budget", "disabled", "maintenance")  # any other is taken too (logged)
# With no byte cap the download asks for what 1 Gbit/s could move in the test's bound: far more
# than any site link carries, yet a finite number for the centre to check.


@dataclass(frozen=True, slots=True)
class Refusal:
    """No slot now: ask again after ``retry_after_seconds``."""

    retry_after_seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class Grant:
    """A slot granted by the centre, with everything the test needs; directions are the site's."""

    slot: str
    expires_at: float
    method: TestMethod
    directions: tuple[Direction, ...]
    duration_seconds: float
    omit_seconds: float
    max_bytes: int | None
    parallel: int
    port: int
    timeout_seconds: float
    download_path: str
    upload_path: str


def _number(body: Mapping[str, Any], key: str, low: float, high: float) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high \
            or not math.isfinite(value):
        raise ValueError(f"{key}: must be a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _path(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.startswith("/") or "//" in value or len(value) > 200 \
            or any(c.isspace() or c in "?#" for c in value):
        raise ValueError(f"{key}: must be an absolute path on the centre, got {value!r}")
    return value


def parse_slot_answer(body: Any) -> Grant | Refusal:
    """The centre's 200 answer to a slot request, checked (it decides what the agent will do).

    Raises:
        ValueError: the answer is not one the agent understands (it then asks again next interval).
    """
    if not isinstance(body, dict) or not isinstance(body.get("granted"), bool):
        raise ValueError("not a JSON object with 'granted': true|false")
    if not body["granted"]:
        reason = body.get("reason")
        return Refusal(_number(body, "retry_after_seconds", 0.0, 400 * 86400.0),
                       reason if isinstance(reason, str) else "")
    slot = body.get("slot")
    if not isinstance(slot, str) or not 0 < len(slot) <= 64:
        raise ValueError(f"slot: must be a string of 1 to 64 characters, got {slot!r}")
    method = body.get("method")
    if method not in THROUGHPUT_METHODS:
        raise ValueError(f"method: must be iperf3 or http, got {method!r}")
    directions = body.get("directions")
    if not isinstance(directions, list) or not directions or any(d not in DIRECTIONS for d in directions) \
            or len(set(directions)) != len(directions):
        raise ValueError(f"directions: must list download and/or upload, got {directions!r}")
    max_bytes = body.get("max_bytes")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise ValueError(f"max_bytes: must be null or a positive whole number, got {max_bytes!r}")
    return Grant(
        slot=slot, expires_at=_number(body, "expires_at", 0.0, 1e11), method=method,
        directions=tuple(d for d in DIRECTIONS if d in directions),
        duration_seconds=_number(body, "duration_seconds", 0.1, 3600.0),
        omit_seconds=_number(body, "omit_seconds", 0.0, 600.0), max_bytes=max_bytes,
        parallel=int(_number(body, "parallel", 1, 128)), port=int(_number(body, "port", 1, 65535)),
        timeout_seconds=_number(body, "timeout_seconds", 0.1, 3600.0),
        download_path=_path(body, "download_path"), upload_path=_path(body, "upload_path"))


def download_bytes(grant: Grant) -> int:
    """The ``bytes`` the download asks the centre to send: exactly what the grant allows (the centre refuses more)."""
    return granted_bytes(grant.max_bytes, grant.omit_seconds, grant.duration_seconds, grant.timeout_seconds)


def grant_target(config: AgentConfig, grant: Grant) -> Target:
    """The centre as a probe target with the grant's settings; its URLs are the centre's test endpoints."""
    slot = urllib.parse.quote(grant.slot, safe="")
    settings = ThroughputSettings(
        method=grant.method, directions=grant.directions, duration_seconds=grant.duration_seconds,
        omit_seconds=grant.omit_seconds, max_bytes=grant.max_bytes, parallel=grant.parallel, port=grant.port,
        timeout_seconds=grant.timeout_seconds,
        url=config.url(f"{grant.download_path}?slot={slot}&bytes={download_bytes(grant)}"),
        upload_url=config.url(f"{grant.upload_path}?slot={slot}"), upload_method="POST")
    host = config.centre_host
    return Target(name=config.site, host=host, address=normalize_ip(host), group="", kind="", district="", link="",
                  lat=None, lon=None, target_bits_per_second=1.0, icmp=IcmpSettings(), throughput=settings)


_PROBE_DIRECTION: dict[Direction, Direction] = {"download": "upload", "upload": "download"}


def site_directions(measure: MeasureFn) -> MeasureFn:
    """``measure`` (written for a prober at the centre) run for the site's direction, relabelled."""

    async def swapped(target: Target, address: str | None, direction: Direction, ctx: ProbeContext) -> DirectionResult:
        result = await measure(target, address, _PROBE_DIRECTION[direction], ctx)
        return dataclasses.replace(result, direction=direction)

    return swapped


def http_measure(headers: dict[str, str], tls: ssl.SSLContext | bool) -> MeasureFn:
    """The http method against the centre: the probe's *download* sends to ``upload_url``, its *upload* fetches ``url``.

    Like :func:`monitor.probes.http.measure`, with the site's token and the centre's CA, and the
    centre's address resolved once for the test (both URLs are on the centre).
    """

    async def measure(target: Target, address: str | None, direction: Direction, ctx: ProbeContext,
                      ) -> DirectionResult:
        s = target.throughput
        started_at = ctx.clock()
        url = s.upload_url if direction == "download" else s.url
        if address is None or url is None:
            return DirectionResult(direction, started_at, ctx.clock(), error=ProbeErrorReason.FAILED,
                                   error_detail="no address or URL for the test")
        limits = Limits(s.omit_seconds, s.duration_seconds, s.max_bytes, s.timeout_seconds)
        if direction == "download":
            transfer = await send(url, address, limits, s.upload_method, headers=headers, ssl=tls)
        else:
            transfer = await fetch(url, address, limits, headers=headers, ssl=tls)
        return DirectionResult(direction, started_at, ctx.clock(), transfer.bits_per_second, transfer.moved_bytes,
                               transfer.measured_seconds, transfer.retransmits, transfer.error, transfer.error_detail)

    return measure


async def run_granted_test(config: AgentConfig, grant: Grant, ctx: ProbeContext, headers: dict[str, str],
                           tls: ssl.SSLContext | bool) -> ThroughputResult:
    """Run the granted test against the centre; one result with the site's directions. Never raises for the link."""
    target = grant_target(config, grant)
    inner = iperf3.measure if grant.method == "iperf3" else http_measure(headers, tls)
    # latency under load from the site's side too (issue 20): ICMP to the centre before and during each direction
    return await measure_site(target, ctx, grant.method, site_directions(inner), resolve_host=True,
                              sample_latency=True)
