"""``connmon agent``: measures a site from inside and reports to the centre (issue 10).

Sites behind carrier-grade NAT (VSAT, LTE) cannot be pinged or tested from the centre, so the
same package runs at the site. Every ``interval`` the agent

1. pings the centre (and the site's own gateway when configured) with the centre's ICMP engine
   and probe, and puts each result into the on-disk spool with the next sequence number;
2. uploads the spool, oldest first (:mod:`monitor.agent.site.upload`): measured while the link was
   down, the results reach the centre late but with their own timestamps;
3. when throughput is enabled, asks the centre for a test slot and, when granted, runs the test
   (:mod:`monitor.agent.site.throughput`), spools its result and uploads again.

Measuring, uploading and testing are separate tasks (:meth:`Agent.run`), so a centre that does
not answer never costs a measurement. Each step is guarded: a probe or an upload that fails is
logged and the loop goes on; the results already spooled are never lost to it. SIGTERM or SIGINT
stop the agent: a measurement in progress is abandoned (nothing of it was spooled), an upload in
progress finishes its batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from monitor import __version__, sqlite_files
from monitor.agent.protocol import SLOT_PATH, AgentInfo, IcmpPath, encode_icmp, encode_throughput
from monitor.agent.site.config import AgentConfig, default_gateway, load_agent_config
from monitor.agent.site.keeper import ResultKeeper
from monitor.agent.site.spool import FILE_NAME as SPOOL_FILE_NAME
from monitor.agent.site.spool import Spool
from monitor.agent.site.throughput import Grant, Refusal, parse_slot_answer, run_granted_test
from monitor.agent.site.upload import CentreClient, CentreTlsFailure, CentreUnreachable, Uploader
from monitor.config import IcmpSettings
from monitor.config.hosts import normalize_ip
from monitor.errors import ProbeErrorReason, StartupError
from monitor.icmp.engine import IcmpEngine
from monitor.probes import ProbeContext, icmp
from monitor.probes.iperf3 import find_iperf3
from monitor.results import IcmpResult
from monitor.state_lock import StateLock
from monitor.targets import Target

log = logging.getLogger(__name__)

BOOT_ID_ENV = "CONNMON_AGENT_BOOT_ID"
BOOTED_AT_ENV = "CONNMON_AGENT_BOOTED_AT"
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_UPTIME_FILE = "/proc/uptime"
_T = TypeVar("_T")


def _encode_icmp(seq: int, result: IcmpResult, path: IcmpPath) -> dict[str, object]:
    return encode_icmp(seq, result, path)


def boot_id() -> str:
    """This boot of the machine: the kernel's random boot id (``CONNMON_AGENT_BOOT_ID`` for tests)."""
    injected = os.environ.get(BOOT_ID_ENV)
    if injected:
        return injected.strip()[:64]
    try:
        return Path(_BOOT_ID_FILE).read_text(encoding="ascii").strip()[:64] or "unknown"
    except OSError:
        return "unknown"


def uptime_seconds(now: float) -> float:
    """Seconds since the machine booted (``now - CONNMON_AGENT_BOOTED_AT`` for tests)."""
    injected = os.environ.get(BOOTED_AT_ENV)
    if injected:
        return max(0.0, now - float(injected))
    try:
        return float(Path(_UPTIME_FILE).read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


class Agent:
    """The agent's loop; everything it touches (engine, spool, client, clock) is handed in."""

    def __init__(self, config: AgentConfig, spool: Spool, engine: IcmpEngine, client: CentreClient,
                 clock: Callable[[], float] = time.time, iperf3_path: str | None = None) -> None:
        self.config = config
        self.spool = spool
        self.keeper = ResultKeeper(spool)  # a spool that cannot be written loses nothing silently (issue 25)
        self.client = client
        self.clock = clock
        self.boot_id = boot_id()
        self.ctx = ProbeContext(engine, clock, iperf3_path=iperf3_path, address_families=engine.families)
        self.uploader = Uploader(config, spool, client, self.agent_info, clock)
        self.next_slot_request = 0.0  # Unix time before which the centre asked not to be asked
        self.cycles = 0
        self._upload_wanted = asyncio.Event()  # results wait in the spool
        self._no_test = asyncio.Event()  # set while no throughput test runs
        self._no_test.set()
        self._link = asyncio.Lock()  # an ICMP cycle or a throughput test, never both

    # ------------------------------------------------------------------ what the centre learns about us
    def agent_info(self) -> AgentInfo:
        now = self.clock()
        return AgentInfo(version=__version__, instance=self.spool.instance, boot_id=self.boot_id,
                         uptime_seconds=round(uptime_seconds(now), 3), sent_at=now,
                         spool_dropped=self.keeper.dropped)

    # ------------------------------------------------------------------ ICMP
    def _target(self, host: str) -> Target:
        c = self.config.icmp
        settings = IcmpSettings(interval_seconds=self.config.interval_seconds, count=c.count,
                                spacing_seconds=c.spacing_seconds, timeout_seconds=c.timeout_seconds,
                                payload_bytes=c.payload_bytes)
        return Target(name=self.config.site, host=host, address=normalize_ip(host), group="", kind="", district="",
                      link="", lat=None, lon=None, target_bits_per_second=1.0, icmp=settings)

    async def icmp_cycle(self) -> list[tuple[IcmpPath, IcmpResult]]:
        """Ping the centre (and the gateway); spool every result. Returns what was measured."""
        paths: list[IcmpPath] = ["centre"]
        targets = [self._target(self.config.icmp_host)]
        gateway = self.config.gateway
        missing_gateway = False
        if gateway == "auto":
            gateway = default_gateway()
            missing_gateway = gateway is None
        if gateway is not None:
            paths.append("gateway")
            targets.append(self._target(gateway))
        results = list(zip(paths, await icmp.run(targets, self.ctx), strict=True))
        if missing_gateway:  # said as a result: "no default route" is news about the site's link
            results.append(("gateway", IcmpResult(targets[0], results[0][1].started_at, None, 0, (),
                                                  ProbeErrorReason.NO_ROUTE, "no default route in /proc/net/route")))
        self.keeper.keep([functools.partial(_encode_icmp, result=result, path=path) for path, result in results])
        self.cycles += 1
        centre = results[0][1]
        log.debug("cycle %d: centre %s, %d/%d replies; %d results spooled", self.cycles, centre.address,
                  centre.received, centre.sent, len(self.spool))
        return results

    # ------------------------------------------------------------------ throughput
    async def throughput_turn(self) -> bool:
        """Ask for a slot when due, and run the granted test; True when a result was spooled."""
        now = self.clock()
        if now < self.next_slot_request:
            return False
        self.next_slot_request = now + self.config.interval_seconds  # unless the centre says otherwise
        try:
            answer = await self.client.post(SLOT_PATH, {"site": self.config.site})
        except CentreUnreachable as err:  # a TLS failure is said as an ERROR by the upload of the same interval
            log.info("no throughput slot: %s", err if isinstance(err, CentreTlsFailure)
                     else f"cannot reach the centre ({err})")
            return False
        if answer.status != 200:
            if answer.retry_after_seconds is not None:
                self.next_slot_request = self.clock() + answer.retry_after_seconds
            log.warning("the centre refused the slot request (%s)", answer.describe())
            return False
        try:
            decided = parse_slot_answer(answer.body)
        except ValueError as err:
            log.error("the centre's slot answer is not understood (%s): %s", err, answer.describe())
            return False
        if isinstance(decided, Refusal):
            self.next_slot_request = self.clock() + decided.retry_after_seconds
            log.debug("no throughput slot (%s); asking again in %.0fs", decided.reason, decided.retry_after_seconds)
            return False
        return await self._test(decided)

    async def _test(self, grant: Grant) -> bool:
        log.info("throughput slot %s granted: %s %s for %gs", grant.slot, grant.method, "+".join(grant.directions),
                 grant.duration_seconds)
        async with self._link:  # after the ICMP cycle in progress; uploads wait for the test
            self._no_test.clear()
            try:
                result = await run_granted_test(self.config, grant, self.ctx, self.client.headers, self.client.tls)
            finally:
                self._no_test.set()
        self.keeper.keep([functools.partial(encode_throughput, result=result, slot=grant.slot)])
        rates = ", ".join(f"{d.direction} {'-' if d.bits_per_second is None else f'{d.bits_per_second / 1e6:.2f}'}"
                          f" Mbit/s" + (f" ({d.error.value})" if d.error else "") for d in result.directions)
        log.info("throughput test %s done: %s", grant.slot, rates or (result.error_detail or "nothing measured"))
        return True

    # ------------------------------------------------------------------ the loops
    async def upload(self, stop: asyncio.Event | None = None) -> None:
        try:
            report = await self.uploader.drain(stop)
        except Exception:  # a bug or a broken spool: the loop goes on, the results stay where they are
            log.exception("upload failed")
            return
        if report.sent or report.dropped:
            log.info("uploaded %d results (%d new, %d the centre had); %d dropped; %d left in the spool%s",
                     report.sent, report.accepted, report.duplicates, report.dropped, len(self.spool),
                     f" ({report.stopped_by})" if report.stopped_by else "")

    async def _measure_loop(self) -> None:
        """One ICMP cycle every interval, whatever the uploads do: a hung upload must not cost measurements."""
        interval = self.config.interval_seconds
        next_cycle = time.monotonic()
        while True:
            async with self._link:  # not while a throughput test fills the link
                await _logged("ICMP cycle", self.icmp_cycle())
            self._upload_wanted.set()
            next_cycle += interval
            now = time.monotonic()
            if next_cycle < now:  # a throughput test overran a cycle: keep the phase, skip what was missed
                next_cycle += math.ceil((now - next_cycle) / interval) * interval
            await asyncio.sleep(next_cycle - now)

    async def _upload_loop(self, stop: asyncio.Event) -> None:
        """Drain the spool whenever something new is in it; ends after the batch in flight once ``stop`` is set."""
        while not stop.is_set():
            await self._upload_wanted.wait()
            self._upload_wanted.clear()
            await self._no_test.wait()  # the test's figures are the link's alone
            if not stop.is_set():
                await self.upload(stop)

    async def _throughput_loop(self) -> None:
        """Ask for a slot whenever the centre said to (never more often than every interval), test when granted."""
        while True:
            wait = self.next_slot_request - self.clock()
            if wait > 0:
                await asyncio.sleep(min(wait, self.config.interval_seconds))
                continue
            if await _logged("throughput test", self.throughput_turn()):
                self._upload_wanted.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Measure, upload and test until ``stop`` is set.

        Three tasks, so that none waits for another: the ICMP cycle every interval; the upload
        whenever results wait (a centre that does not answer holds it for ``upload.timeout``); the
        throughput test when the centre grants one. At ``stop`` the measuring tasks are cancelled (a
        half-done cycle or test spooled nothing) and the upload ends after its batch in flight.
        """
        measuring = [asyncio.create_task(self._measure_loop(), name="icmp")]
        if self.config.throughput_enabled:
            measuring.append(asyncio.create_task(self._throughput_loop(), name="throughput"))
        uploading = asyncio.create_task(self._upload_loop(stop), name="upload")
        try:
            await stop.wait()
        finally:
            for task in measuring:
                task.cancel()
            await asyncio.gather(*measuring, return_exceptions=True)
            self._no_test.set()
            self._upload_wanted.set()  # wake the uploader to see the stop
            await asyncio.gather(uploading, return_exceptions=True)
            self.keeper.close()


async def _logged(what: str, step: Awaitable[_T]) -> _T | None:
    """Await ``step``; an exception is logged, never raised (cancellation still is): the agent goes on."""
    try:
        return await step
    except Exception:
        log.exception("%s failed", what)
        return None


async def run_agent(config_path: str, icmp_mode: str = "auto") -> int:
    """Load the config, open the ICMP engine and the spool, and run until SIGTERM/SIGINT; 0 on a clean stop.

    Raises:
        ConfigError: the config is invalid (exit 2).
        StateInUseError: another agent holds the spool directory's lock (exit 2), named with its PID.
        StartupError: no ICMP socket, or the state directory cannot be used (exit 3).
    """
    config = load_agent_config(config_path)
    # one agent per spool directory (issue 25): a second one would number and send the same results twice
    lock = StateLock.take(config.state_dir, what="connmon agent", mode=0o700)
    engine = IcmpEngine.open(icmp_mode)
    try:
        try:
            spool = Spool.open(config.state_dir, config.spool_max_results)
        except (OSError, sqlite3.Error) as err:
            raise StartupError(f"cannot use the state directory {config.state_dir} for the spool: "
                               f"{sqlite_files.named(Path(config.state_dir) / SPOOL_FILE_NAME, err)}") from err
        client = CentreClient(config)
        agent = Agent(config, spool, engine, client, iperf3_path=find_iperf3() if config.throughput_enabled else None)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("connmon agent %s for site '%s' reporting to %s: %s; instance %s, %d results spooled, "
                 "boot %s", __version__, config.site, config.centre, engine.describe(), spool.instance, len(spool),
                 agent.boot_id)
        try:
            await agent.run(stop)
        finally:
            await client.close()
            spool.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("connmon agent stopped")
        return 0
    finally:
        engine.close()
        lock.release()
