"""What every throughput method shares: resolve the site, take a test slot, test each direction.

The methods (:mod:`monitor.probes.iperf3`, :mod:`monitor.probes.http`) only know how to measure
one direction against one address. This module turns a batch of targets into one
:class:`~monitor.results.ThroughputResult` each, running tests one after another per site and
never more than ``ctx.throughput_slots`` at a time across all sites, so that connmon's own uplink
never becomes the bottleneck it is measuring (issue 3). Directions are the site's: *download*
is data flowing to the site, *upload* is data from the site.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from monitor.config import Direction
from monitor.errors import ProbeErrorReason
from monitor.probes.resolver import resolve
from monitor.results import DirectionResult, ThroughputResult
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.probes import ProbeContext

DNS_TIMEOUT_SECONDS = 5.0
PAUSE_BETWEEN_DIRECTIONS_SECONDS = 1.0
DEADLINE_SLACK_SECONDS = 2.0  # beyond omit + duration + timeout: the method's own bound should fire first

MeasureFn = Callable[[Target, str | None, Direction, "ProbeContext"], Awaitable[DirectionResult]]
"""Measures one direction: (target, resolved address or None for methods that resolve per URL, direction, ctx)."""


async def run_tests(targets: Sequence[Target], ctx: ProbeContext, method: str, measure: MeasureFn,
                    resolve_host: bool = True) -> list[ThroughputResult]:
    """Test every target's directions; one result per target, in order. Never raises for a site."""
    return list(await asyncio.gather(*(measure_site(t, ctx, method, measure, resolve_host) for t in targets)))


async def _bounded(measure: MeasureFn, target: Target, address: str | None, direction: Direction,
                   ctx: ProbeContext) -> DirectionResult:
    """One direction under a hard deadline: a peer that stops reading must not hold a test slot for ever."""
    started_at = ctx.clock()
    bound = target.throughput.test_bound_seconds + DEADLINE_SLACK_SECONDS
    try:
        async with asyncio.timeout(bound):
            return await measure(target, address, direction, ctx)
    except TimeoutError:
        return DirectionResult(direction, started_at, ctx.clock(), error=ProbeErrorReason.TIMEOUT,
                               error_detail=f"the {direction} test did not finish within {bound:g}s")


async def measure_site(target: Target, ctx: ProbeContext, method: str, measure: MeasureFn,
                   resolve_host: bool = True) -> ThroughputResult:
    address: str | None = None
    if resolve_host:
        found = await resolve(target.host, target.icmp.family, frozenset(ctx.address_families), DNS_TIMEOUT_SECONDS)
        if found.address is None:
            now = ctx.clock()
            return ThroughputResult(target, method, now, now, None, (), found.error or ProbeErrorReason.DNS,
                                    found.detail)
        address = found.address
    slots = ctx.throughput_slots if ctx.throughput_slots is not None else contextlib.nullcontext()
    async with slots:  # the test's time starts when it may really run
        started_at = ctx.clock()
        directions: list[DirectionResult] = []
        for direction in target.throughput.effective_directions:
            if directions:  # let the link's queues drain, and iperf3's server get ready for its next client
                await asyncio.sleep(PAUSE_BETWEEN_DIRECTIONS_SECONDS)
            directions.append(await _bounded(measure, target, address, direction, ctx))
        ended_at = ctx.clock()
    failed = next((d for d in directions if d.error is not None), None)
    return ThroughputResult(target, method, started_at, ended_at, address, tuple(directions),
                            failed.error if failed else None, failed.error_detail if failed else "")
