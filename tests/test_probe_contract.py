"""The probe contract, held against every entry of the registry, without root (issue 23).

Every probe takes a batch of targets and a :class:`ProbeContext` and returns one result per
target, in the order handed in, each carrying the very target it was given; a site's failure
(unreachable, no reply, the tool missing, a timeout, output that makes no sense) is a result with
a reason from the closed set, never an exception. Each probe runs here in a small world of its
own where only what needs root or a network is faked: the ICMP engine (raw sockets) answers from
a table, the command runner answers as ``iperf3`` would, and the ``http`` method talks to a real
web server on 127.0.0.1 (:mod:`tests.http_site`). A probe added to the registry without a world
here fails :func:`test_every_registered_probe_has_a_contract_world`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import pytest
from aiohttp import web

from monitor.config import THROUGHPUT_METHODS, Direction, ThroughputMethod, ThroughputSettings
from monitor.errors import ProbeErrorReason
from monitor.icmp.engine import EchoJob, EchoOutcome
from monitor.probes import PROBES, ProbeContext
from monitor.probes.commands import CommandOutcome
from monitor.targets import Target
from tests.factories import target
from tests.http_site import make_app

Expected = dict[str, ProbeErrorReason | None]  # site name → the reason its result must carry (None: measured)


@dataclass
class World:
    """A context to probe with, a batch of sites, and what each site's result must say."""

    ctx: ProbeContext
    targets: list[Target]
    expected: Expected


WorldMaker = Callable[[], contextlib.AbstractAsyncContextManager[World]]

# ----------------------------------------------------------------------------- icmp


class TableEngine:
    """An ICMP engine without sockets: each address's outcome comes from a table, as the real engine reports it.

    An address not in the table gets no reply to any echo (a site that is down, or a timeout).
    """

    families = frozenset({socket.AF_INET, socket.AF_INET6})

    def __init__(self, answers: dict[str, Callable[[EchoJob], EchoOutcome]]) -> None:
        self.answers = answers
        self.batches: list[list[EchoJob]] = []

    async def ping(self, jobs: Sequence[EchoJob]) -> list[EchoOutcome]:
        self.batches.append(list(jobs))
        await asyncio.sleep(0)  # the real engine waits for replies: let the loop run
        return [self.answers.get(job.address, silent)(job) for job in jobs]


def answered(job: EchoJob) -> EchoOutcome:
    return EchoOutcome(sent=job.count, rtts_seconds=[0.010] * job.count)


def silent(job: EchoJob) -> EchoOutcome:
    return EchoOutcome(sent=job.count, rtts_seconds=[None] * job.count)


def unreachable(job: EchoJob) -> EchoOutcome:
    detail = "host unreachable from 192.0.2.254"
    return EchoOutcome(sent=job.count, rtts_seconds=[None] * job.count, error=ProbeErrorReason.UNREACHABLE,
                       error_detail=detail, unreachable=job.count, unreachable_detail=detail)


def no_route(job: EchoJob) -> EchoOutcome:
    return EchoOutcome(rtts_seconds=[None] * job.count, error=ProbeErrorReason.NO_ROUTE,
                       error_detail="Network is unreachable")


def partly(job: EchoJob) -> EchoOutcome:
    return EchoOutcome(sent=job.count, rtts_seconds=[0.020, None] + [0.021] * (job.count - 2))


@contextlib.asynccontextmanager
async def icmp_sites() -> AsyncIterator[World]:
    """Sites that answer, answer partly, stay silent, are unreachable, have no route; two share an address."""
    engine = TableEngine({"192.0.2.1": answered, "192.0.2.2": partly, "192.0.2.4": unreachable,
                          "2001:db8::5": no_route})
    sites = [target("answers", host="192.0.2.1", address="192.0.2.1"),
             target("partly", host="192.0.2.2", address="192.0.2.2"),
             target("silent", host="192.0.2.3", address="192.0.2.3"),
             target("unreachable", host="192.0.2.4", address="192.0.2.4"),
             target("no route", host="2001:db8::5", address="2001:db8::5"),
             target("answers too", host="192.0.2.1", address="192.0.2.1")]
    expected: Expected = {"answers": None, "partly": None, "silent": None,
                          "unreachable": ProbeErrorReason.UNREACHABLE, "no route": ProbeErrorReason.NO_ROUTE,
                          "answers too": None}
    yield World(ProbeContext(engine), sites, expected)  # a Pinger, as the real engine is


# ----------------------------------------------------------------------------- iperf3

REPORT = {"intervals": [{"sum": {"bytes": 6_000_000}}],
          "end": {"sum_received": {"bits_per_second": 5e6, "seconds": 10.0, "bytes": 6_250_000},
                  "sum_sent": {"bytes": 6_300_000, "retransmits": 2}}}


class ScriptedRunner:
    """A command runner that answers each ``iperf3 --client ADDRESS`` as scripted for that address."""

    def __init__(self, script: dict[str, CommandOutcome | None]) -> None:
        self.script = script  # None: the command never ends (only the probe's own deadline stops it)
        self.argvs: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], timeout_seconds: float) -> CommandOutcome:
        self.argvs.append(list(argv))
        outcome = self.script[argv[argv.index("--client") + 1]]
        if outcome is None:
            await asyncio.Event().wait()
        assert outcome is not None
        return outcome


def iperf3_site(name: str, address: str) -> Target:
    """One direction only, and short: the probe's pause between directions and its deadline stay small."""
    settings = ThroughputSettings(method="iperf3", directions=("download",), omit_seconds=0.0, duration_seconds=0.1,
                                  timeout_seconds=0.1)
    return target(name, host=address, address=address, throughput=settings)


@contextlib.asynccontextmanager
async def iperf3_sites() -> AsyncIterator[World]:
    """A site measured; busy; timed out; the binary gone; output that is not JSON, not a report, not complete;
    and one whose client never returns."""
    runner = ScriptedRunner({
        "192.0.2.1": CommandOutcome(0, json.dumps(REPORT), ""),
        "192.0.2.2": CommandOutcome(1, json.dumps({"error": "the server is busy running a test. try again later"}),
                                    ""),
        "192.0.2.3": CommandOutcome(None, "", "", timed_out=True),
        "192.0.2.4": CommandOutcome(None, "", "iperf3: not found", not_found=True),
        "192.0.2.5": CommandOutcome(1, "Segmentation fault {", "core dumped"),
        "192.0.2.6": CommandOutcome(0, "[1, 2, 3]", ""),
        "192.0.2.7": CommandOutcome(0, json.dumps({"end": {}}), ""),
        "2001:db8::8": None,
    })
    sites = [iperf3_site(name, address) for name, address in (
        ("measured", "192.0.2.1"), ("busy", "192.0.2.2"), ("timed out", "192.0.2.3"), ("no binary", "192.0.2.4"),
        ("not json", "192.0.2.5"), ("not a report", "192.0.2.6"), ("no figures", "192.0.2.7"),
        ("hangs", "2001:db8::8"))]
    expected: Expected = {"measured": None, "busy": ProbeErrorReason.BUSY, "timed out": ProbeErrorReason.TIMEOUT,
                          "no binary": ProbeErrorReason.TOOL_MISSING, "not json": ProbeErrorReason.FAILED,
                          "not a report": ProbeErrorReason.FAILED, "no figures": ProbeErrorReason.FAILED,
                          "hangs": ProbeErrorReason.TIMEOUT}
    yield World(ProbeContext(None, run_command=runner, iperf3_path="/usr/bin/iperf3"), sites, expected)


@contextlib.asynccontextmanager
async def iperf3_not_installed() -> AsyncIterator[World]:
    """Without the binary every site's result says tool_missing, and no command runs."""
    runner = ScriptedRunner({})
    sites = [iperf3_site("first", "192.0.2.1"), iperf3_site("second", "2001:db8::2")]
    yield World(ProbeContext(None, run_command=runner, iperf3_path=None), sites,
                {"first": ProbeErrorReason.TOOL_MISSING, "second": ProbeErrorReason.TOOL_MISSING})
    assert runner.argvs == []


# ----------------------------------------------------------------------------- http

def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_site(name: str, *, url: str | None = None, upload_url: str | None = None,
              direction: Direction | None = None) -> Target:
    """A short test of one direction: the one its URL gives (``url``: upload, ``upload_url``: download)."""
    direction = direction or ("upload" if url is not None else "download")
    settings = ThroughputSettings(method="http", url=url, upload_url=upload_url, directions=(direction,),
                                  omit_seconds=0.0, duration_seconds=0.4, timeout_seconds=0.5)
    return target(name, host="127.0.0.1", address="127.0.0.1", throughput=settings)


@contextlib.asynccontextmanager
async def http_sites() -> AsyncIterator[World]:
    """A real web server on 127.0.0.1: fetched and sent to; an error status, an empty page, a hang,
    a refused connection, and a direction without its URL."""
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=0.5)  # /hang's handler never ends
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    sites = [http_site("fetched", url=f"{base}/blob"),
             http_site("sent to", upload_url=f"{base}/upload"),
             http_site("not found", url=f"{base}/status/404"),
             http_site("empty page", url=f"{base}/status/200"),
             http_site("hangs", url=f"{base}/hang"),
             http_site("refused", url=f"http://127.0.0.1:{closed_port()}/blob"),
             http_site("no url", url=f"{base}/blob", direction="download")]
    expected: Expected = {"fetched": None, "sent to": None, "not found": ProbeErrorReason.HTTP_STATUS,
                          "empty page": ProbeErrorReason.FAILED, "hangs": ProbeErrorReason.TIMEOUT,
                          "refused": ProbeErrorReason.REFUSED, "no url": ProbeErrorReason.FAILED}
    try:
        yield World(ProbeContext(None), sites, expected)
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------- the contract

WORLDS: dict[str, dict[str, WorldMaker]] = {
    "icmp": {"sites": icmp_sites},
    "iperf3": {"sites": iperf3_sites, "not installed": iperf3_not_installed},
    "http": {"sites": http_sites},
}
CASES = [pytest.param(kind, name, id=f"{kind}: {name}") for kind, worlds in WORLDS.items() for name in worlds]


def probe(kind: str, name: str, order: Callable[[list[Target]], list[Target]]) -> tuple[World, list[Target], list[Any]]:
    """Run probe ``kind`` once in world ``name`` over its sites in ``order``: (world, batch handed in, results)."""
    async def scenario() -> tuple[World, list[Target], list[Any]]:
        async with WORLDS[kind][name]() as world:
            batch = order(world.targets)
            results = list(await asyncio.wait_for(PROBES[kind](batch, world.ctx), 30))
        return world, batch, results

    return asyncio.run(scenario())


def test_every_registered_probe_has_a_contract_world() -> None:
    """The contract below covers the whole registry: a new probe needs a world here."""
    assert set(WORLDS) == set(PROBES)


def test_the_configs_throughput_methods_are_the_registrys_throughput_probes() -> None:
    """One source for each word: the methods a config may name are exactly the registry's probes besides ICMP."""
    assert set(THROUGHPUT_METHODS) == set(PROBES) - {"icmp"}
    assert set(get_args(ThroughputMethod)) == {"none", *PROBES} - {"icmp"}


@pytest.mark.parametrize(("kind", "world"), CASES)
def test_one_result_per_target_in_the_order_handed_in(kind: str, world: str) -> None:
    """Whatever fails, each site has one result, in the batch's order, carrying the very target handed in."""
    for order in (list, lambda ts: ts[::-1]):
        _, batch, results = probe(kind, world, order)
        assert len(results) == len(batch)
        assert all(r.target is t for r, t in zip(results, batch, strict=True)), [r.target.name for r in results]


@pytest.mark.parametrize(("kind", "world"), CASES)
def test_a_sites_failure_is_a_reason_never_an_exception(kind: str, world: str) -> None:
    """Unreachable, silent, busy, timed out, tool missing, bad output: each is its result's reason from the
    closed set, and the sites that work are measured beside them."""
    found, batch, results = probe(kind, world, list)
    assert all(r.error is None or isinstance(r.error, ProbeErrorReason) for r in results)
    assert {t.name: r.error for t, r in zip(batch, results, strict=True)} == found.expected


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_an_empty_batch_gives_no_results(kind: str) -> None:
    """A group with no site to probe this cycle (all planned, say) gives an empty list, not an error."""
    _, batch, results = probe(kind, next(iter(WORLDS[kind])), lambda _: [])
    assert batch == results == []
