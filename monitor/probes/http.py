"""The ``http`` throughput method, for sites that only have a web server.

``url`` is fetched by connmon, so the data flows from the site: it measures the site's *upload*.
``upload_url`` receives a generated body, so the data flows to the site: its *download*. The
transfers themselves (timing, warm-up, receiver-side counting) are in :mod:`monitor.probes.http_transfer`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from monitor.config import Direction
from monitor.errors import ProbeErrorReason
from monitor.probes.http_transfer import Limits, fetch, send
from monitor.probes.resolver import resolve
from monitor.probes.throughput import DNS_TIMEOUT_SECONDS, run_tests
from monitor.results import DirectionResult, ThroughputResult
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.probes import ProbeContext



async def measure(target: Target, _address: str | None, direction: Direction, ctx: ProbeContext) -> DirectionResult:
    settings = target.throughput
    started_at = ctx.clock()
    url = settings.upload_url if direction == "download" else settings.url
    if url is None:  # the config check makes this unreachable; a result says so rather than a crash
        return DirectionResult(direction, started_at, ctx.clock(), error=ProbeErrorReason.FAILED,
                               error_detail=f"no URL configured for the {direction} direction")
    host = urllib.parse.urlsplit(url).hostname or target.host
    found = await resolve(host, target.icmp.family, frozenset(ctx.address_families), DNS_TIMEOUT_SECONDS)
    if found.address is None:
        return DirectionResult(direction, started_at, ctx.clock(), error=found.error or ProbeErrorReason.DNS,
                               error_detail=found.detail)
    limits = Limits(settings.omit_seconds, settings.duration_seconds, settings.max_bytes, settings.timeout_seconds)
    if direction == "download":
        transfer = await send(url, found.address, limits, settings.upload_method)
    else:
        transfer = await fetch(url, found.address, limits)
    return DirectionResult(direction, started_at, ctx.clock(), transfer.bits_per_second, transfer.moved_bytes,
                           transfer.measured_seconds, transfer.retransmits, transfer.error, transfer.error_detail)


async def run(targets: Sequence[Target], ctx: ProbeContext) -> list[ThroughputResult]:
    """Test each target over HTTP, every configured direction (URL hosts are resolved per direction)."""
    return await run_tests(targets, ctx, "http", measure, resolve_host=False)
