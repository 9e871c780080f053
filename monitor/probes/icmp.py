"""The ICMP probe: resolve each target, ping them all in one batch, return one result each.

The engine (sockets, pacing, reply matching) is in :mod:`monitor.icmp.engine`; this module only
turns targets into echo jobs and outcomes into :class:`~monitor.results.IcmpResult` values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from monitor.icmp.engine import EchoJob
from monitor.probes.resolver import Fallback, Resolution, resolve_all
from monitor.results import IcmpResult
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.probes import ProbeContext

YIELD_EVERY_RESULTS = 1000


async def run(targets: Sequence[Target], ctx: ProbeContext) -> list[IcmpResult]:
    """Probe ``targets`` once; endpoints whose name does not resolve get an error result."""
    started_at = ctx.clock()
    engine = ctx.icmp_engine
    if engine is None:
        raise RuntimeError("the ICMP probe needs an ICMP engine in its context")
    names = [t for t in targets if t.address is None]  # literals were canonicalised once, at config load
    looked_up = iter(await resolve_all(  # a failed name may use its last good address (issue 22)
        [(t.host, t.icmp.family, t.icmp.timeout_seconds) for t in names], engine.families, ctx.addresses,
        started_at, [Fallback(t.icmp.interval_seconds, t.icmp.dns_fallback_intervals) for t in names]))
    resolutions = [Resolution(t.address) if t.address is not None else next(looked_up) for t in targets]
    jobs: list[EchoJob] = []
    job_of: dict[int, int] = {}
    for index, (target, resolution) in enumerate(zip(targets, resolutions, strict=True)):
        if resolution.address is not None:
            job_of[index] = len(jobs)
            settings = target.icmp
            jobs.append(EchoJob(resolution.address, settings.count, settings.spacing_seconds,
                                settings.timeout_seconds, settings.payload_bytes))
    if len(jobs) > YIELD_EVERY_RESULTS:
        await asyncio.sleep(0)  # the engine prepares its schedule next: another ~30 ms at 10,000 sites
    outcomes = await engine.ping(jobs)
    results: list[IcmpResult] = []
    for index, (target, resolution) in enumerate(zip(targets, resolutions, strict=True)):
        if index % YIELD_EVERY_RESULTS == YIELD_EVERY_RESULTS - 1:
            await asyncio.sleep(0)  # 10,000 results are ~50 ms of CPU: let scrapes in between (issue 9)
        if index not in job_of:
            results.append(IcmpResult(target, started_at, None, 0, (), resolution.error, resolution.detail))
            continue
        outcome = outcomes[job_of[index]]
        results.append(IcmpResult(
            target=target,
            started_at=started_at,
            address=resolution.address,
            sent=outcome.sent,
            rtts_seconds=tuple(outcome.rtts_seconds) if outcome.sent else (),
            error=outcome.error,
            error_detail=outcome.error_detail,
            address_from_cache=resolution.from_cache,
        ))
    return results
