"""Probes: one module per kind, one signature, one registry.

Every probe module exports ``async def run(targets, ctx) -> list[Result]``: it takes a batch of
targets (so ICMP can share one socket per family across all of them) and returns one result per
target, in order. A probe never raises for a target's failure, and never touches metrics, logs
or storage: those are derived from its results in :mod:`monitor.results`.
Stateful machinery (the ICMP engine, the subprocess runner, the test-slot semaphore) arrives
through :class:`ProbeContext` so tests and the one-shot CLI can hand in their own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from monitor.icmp.engine import EchoJob, EchoOutcome
from monitor.probes import http, icmp, iperf3
from monitor.probes.commands import CommandRunner, run_command
from monitor.probes.last_good import LastGoodAddresses
from monitor.results import Result
from monitor.targets import Target


class Pinger(Protocol):
    """What the ICMP probe needs of an engine (:class:`monitor.icmp.engine.IcmpEngine` is the real one)."""

    @property
    def families(self) -> frozenset[int]: ...

    async def ping(self, jobs: Sequence[EchoJob]) -> list[EchoOutcome]: ...


@dataclass(slots=True)
class ProbeContext:
    """What probes need from outside: the engines, a clock (injected so tests can pin time), limits."""

    icmp_engine: Pinger | None
    clock: Callable[[], float] = time.time
    run_command: CommandRunner = run_command
    iperf3_path: str | None = None  # None: not installed, iperf3 tests report tool_missing
    throughput_slots: asyncio.Semaphore | None = None  # tests at once across all sites; None: no limit
    address_families: frozenset[int] = field(
        default_factory=lambda: frozenset({socket.AF_INET, socket.AF_INET6}))
    addresses: LastGoodAddresses = field(default_factory=LastGoodAddresses)  # names' last good addresses (issue 22)


ProbeFn = Callable[[Sequence[Target], ProbeContext], Awaitable[Sequence[Result]]]

PROBES: dict[str, ProbeFn] = {
    "icmp": icmp.run,
    "iperf3": iperf3.run,
    "http": http.run,
}
# one probe per throughput method the config knows (monitor.config.THROUGHPUT_METHODS; tests hold them equal)
