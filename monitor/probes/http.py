"""The ``http`` throughput method, for sites that only have a web server.

``url`` is fetched by connmon, so the data flows from the site: it measures the site's *upload*.
``upload_url`` receives a generated body, so the data flows to the site: its *download*. The
transfers themselves (timing, warm-up, receiver-side counting) are in :mod:`monitor.probes.http_transfer`.

``parallel`` transfers run at once, as iperf3's streams do (issue 20: one TCP flow leaves a deep
queue mostly empty, so latency under load needs several); they are measured as one
(:class:`~monitor.probes.http_transfer.StreamPool`: one warm-up, one span, the total bytes), and a
``bytes`` cap holds for all of them together (each stream also stops at its share).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from monitor.config import Direction
from monitor.errors import ProbeErrorReason
from monitor.probes.http_transfer import Limits, StreamPool, fetch, send
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
    streams = max(1, settings.parallel)
    cap = None if settings.max_bytes is None else max(1, settings.max_bytes // streams)
    limits = Limits(settings.omit_seconds, settings.duration_seconds, cap, settings.timeout_seconds)
    pool = StreamPool(Limits(settings.omit_seconds, settings.duration_seconds, settings.max_bytes,
                             settings.timeout_seconds))
    if direction == "download":
        transfers = await asyncio.gather(*(send(url, found.address, limits, settings.upload_method, pool=pool)
                                           for _ in range(streams)))
    else:
        transfers = await asyncio.gather(*(fetch(url, found.address, limits, pool=pool) for _ in range(streams)))
    moved = sum(t.moved_bytes for t in transfers)
    failed = next((t for t in transfers if t.error is not None), None)
    if failed is not None:
        return DirectionResult(direction, started_at, ctx.clock(), None, moved, error=failed.error,
                               error_detail=failed.error_detail)
    figures = pool.figures()
    if figures is None or figures[1] <= 0:
        return DirectionResult(direction, started_at, ctx.clock(), None, moved, error=ProbeErrorReason.FAILED,
                               error_detail=f"{url}: the transfers ended after {moved} bytes, too soon for a rate")
    retransmits = [t.retransmits for t in transfers]
    return DirectionResult(direction, started_at, ctx.clock(), figures[0] * 8 / figures[1], moved, figures[1],
                           None if None in retransmits else sum(r or 0 for r in retransmits))


async def run(targets: Sequence[Target], ctx: ProbeContext) -> list[ThroughputResult]:
    """Test each target over HTTP, every configured direction (URL hosts are resolved per direction)."""
    return await run_tests(targets, ctx, "http", measure, resolve_host=False, server=server)


def server(target: Target, address: str, direction: Direction) -> tuple[str, int] | None:
    """The direction's web server when its URL names the site's own host (issue 20: a PEP's handshake)."""
    url = target.throughput.upload_url if direction == "download" else target.throughput.url
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.hostname.strip("[]") not in (target.host, address):
        return None  # another host: its handshake says nothing about the site's path
    try:
        port = parts.port
    except ValueError:
        return None
    return address, port if port is not None else (443 if parts.scheme == "https" else 80)
