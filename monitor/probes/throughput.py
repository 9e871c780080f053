"""What every throughput method shares: resolve the site, take a test slot, test each direction.

The methods (:mod:`monitor.probes.iperf3`, :mod:`monitor.probes.http`) only know how to measure
one direction against one address. This module turns a batch of targets into one
:class:`~monitor.results.ThroughputResult` each, running tests one after another per site and
never more than ``ctx.throughput_slots`` at a time across all sites, so that connmon's own uplink
never becomes the bottleneck it is measuring (issue 3). Directions are the site's: *download*
is data flowing to the site, *upload* is data from the site.

Each direction also gets its latency under load (issue 20, :mod:`monitor.probes.loaded_latency`):
an idle ICMP burst just before it and samples while it runs, to the address tested (iperf3) or
to the site's host (HTTP, whose URLs may name another host).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from monitor.config import Direction
from monitor.errors import ProbeErrorReason
from monitor.probes import handshake, loaded_latency
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
ServerFn = Callable[[Target, str, Direction], "tuple[str, int] | None"]
"""The test server's (address, TCP port) for one direction, given the site's ICMP address; None: not known."""


async def run_tests(targets: Sequence[Target], ctx: ProbeContext, method: str, measure: MeasureFn,
                    resolve_host: bool = True, server: ServerFn | None = None) -> list[ThroughputResult]:
    """Test every target's directions; one result per target, in order. Never raises for a site.

    ``server`` names the TCP server a direction connects to, for the handshake times that unmask a
    proxy (issue 20); None: none are taken.
    """
    return list(await asyncio.gather(*(measure_site(t, ctx, method, measure, resolve_host, server, True)
                                       for t in targets)))


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


async def _with_latency(measure: MeasureFn, target: Target, address: str | None, echo_address: str | None,
                        direction: Direction, ctx: ProbeContext, server: ServerFn | None = None) -> DirectionResult:
    """One direction with its TCP handshakes and idle burst before, and its loaded samples during (issue 20).

    Without an ICMP engine or an address to ping, the direction runs as it did before issue 20.
    """
    engine = ctx.icmp_engine
    if engine is None or echo_address is None:
        return await _bounded(measure, target, address, direction, ctx)
    found = server(target, echo_address, direction) if server is not None else None
    connects = await handshake.handshake_seconds(*found) if found is not None else ()
    idle = await loaded_latency.idle_rtts(engine, echo_address)  # also the server's moment to listen again
    async with loaded_latency.sampling(engine, echo_address, ctx.clock) as sampled:
        result = await _bounded(measure, target, address, direction, ctx)
    # every echo sent while the direction ran is "loaded" (the module doc of loaded_latency says why)
    return dataclasses.replace(result, idle_rtts_seconds=idle,
                               loaded_rtts_seconds=loaded_latency.loaded(sampled, result.measured_seconds),
                               connect_seconds=connects)


async def _echo_address(target: Target, address: str | None, ctx: ProbeContext) -> str | None:
    """Where the latency samples go: the address tested, else the site's host (HTTP resolves per URL)."""
    if address is not None:
        return address
    engine = ctx.icmp_engine
    if engine is None or not target.host:
        return None
    if target.address is not None:
        return target.address
    found = await resolve(target.host, target.icmp.family, frozenset(ctx.address_families) & engine.families,
                          DNS_TIMEOUT_SECONDS)
    return found.address


async def measure_site(target: Target, ctx: ProbeContext, method: str, measure: MeasureFn,
                       resolve_host: bool = True, server: ServerFn | None = None,
                       sample_latency: bool = False) -> ThroughputResult:
    """One site's test, every direction in turn under one test slot.

    ``sample_latency``: take the latency-under-load samples (issue 20). The centre's probes do; a site
    agent (which calls this directly) does not yet, until the agents' wire carries the samples.
    """
    address: str | None = None
    if resolve_host:
        found = await resolve(target.host, target.icmp.family, frozenset(ctx.address_families), DNS_TIMEOUT_SECONDS)
        if found.address is None:
            now = ctx.clock()
            return ThroughputResult(target, method, now, now, None, (), found.error or ProbeErrorReason.DNS,
                                    found.detail)
        address = found.address
    echo_address = await _echo_address(target, address, ctx) if sample_latency else None
    slots = ctx.throughput_slots if ctx.throughput_slots is not None else contextlib.nullcontext()
    async with slots:  # the test's time starts when it may really run
        started_at = ctx.clock()
        directions: list[DirectionResult] = []
        for direction in target.throughput.effective_directions:
            if directions:  # let the link's queues drain, and iperf3's server get ready for its next client
                await asyncio.sleep(PAUSE_BETWEEN_DIRECTIONS_SECONDS)
            directions.append(await _with_latency(measure, target, address, echo_address, direction, ctx, server))
        ended_at = ctx.clock()
    failed = next((d for d in directions if d.error is not None), None)
    return ThroughputResult(target, method, started_at, ended_at, address, tuple(directions),
                            failed.error if failed else None, failed.error_detail if failed else "")
