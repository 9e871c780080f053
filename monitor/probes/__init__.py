"""Probes: one module per kind, one signature, one registry.

Every probe module exports ``async def run(targets, ctx) -> list[Result]``: it takes a batch of
targets (so ICMP can share one socket per family across all of them) and returns one result per
target, in order. A probe never raises for a target's failure, and never touches metrics, logs
or storage: those are derived from its results in :mod:`monitor.results`.
Stateful machinery (the ICMP engine, later an HTTP client or subprocess runner) arrives through
:class:`ProbeContext` so tests and the one-shot CLI can hand in their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from monitor.icmp_engine import IcmpEngine
from monitor.probes import icmp
from monitor.results import IcmpResult
from monitor.targets import Target


@dataclass(slots=True)
class ProbeContext:
    """What probes need from outside: the engines and a clock (injected so tests can pin time)."""

    icmp_engine: IcmpEngine
    clock: Callable[[], float]


ProbeFn = Callable[[Sequence[Target], ProbeContext], Awaitable[list[IcmpResult]]]

PROBES: dict[str, ProbeFn] = {
    "icmp": icmp.run,
}
