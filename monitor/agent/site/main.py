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
import contextlib
import functools
import logging
import math
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from monitor import __version__, sqlite_files
from monitor.agent import protocol
from monitor.agent.protocol import SLOT_PATH, AgentInfo, IcmpPath, encode_icmp, encode_throughput
from monitor.agent.site import settings as centre_settings
from monitor.agent.site.client import CentreClient, CentreTlsFailure, CentreUnreachable
from monitor.agent.site.config import AgentConfig, default_gateway, load_agent_config
from monitor.agent.site.keeper import ResultKeeper
from monitor.agent.site.spool import FILE_NAME as SPOOL_FILE_NAME
from monitor.agent.site.spool import Spool
from monitor.agent.site.throughput import Grant, Refusal, parse_slot_answer, run_granted_test
from monitor.agent.site.upload import Uploader
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


def _anchored(seq: int, encode: Callable[[int], dict[str, Any]], boot: str, uptime: float) -> dict[str, Any]:
    """The encoded result with its start on the boot's clock (issue 18: the centre corrects a stepped clock)."""
    return {**encode(seq), "boot_id": boot, "uptime_seconds": round(max(0.0, uptime), 3)}


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
        self.file_config = config  # agent.yaml as read: its measuring keys are fallbacks (issue 18)
        kept = centre_settings.load_kept(config.state_dir)  # the centre's last word, until it answers again
        self.settings_version: str | None = kept[0].version if kept is not None else None
        self.config = kept[0].apply(config) if kept is not None else config
        self.settings_wanted = True  # fetch the centre's settings before the first upload (issue 18)
        self._settings_changed = asyncio.Event()
        self._centre_has_no_settings = False
        self._refused_version: str | None = None  # settings this agent cannot hold: said once, not fetched again
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

    def _anchor(self, encode: Callable[[int], dict[str, Any]], started_at: float) -> Callable[[int], dict[str, Any]]:
        """``encode`` with the result's start on this boot's clock: uptime now, less the time since it started.

        The wall clock may be days off and be stepped at any moment (a Raspberry Pi without a real-time
        clock); the time since boot is not, so the centre can place the result truly (issue 18).
        """
        now = self.clock()
        return functools.partial(_anchored, encode=encode, boot=self.boot_id,
                                 uptime=uptime_seconds(now) - (now - started_at))

    # ------------------------------------------------------------------ settings held by the centre (issue 18)
    async def refresh_settings(self) -> bool:
        """Fetch the centre's settings for this site and measure with them from the next cycle; True when fetched.

        Any HTTP answer also times a round trip, so the first batch already carries one (issue 18).
        """
        try:
            answer = await self.client.get(protocol.SETTINGS_PATH)
        except CentreUnreachable as err:  # a TLS failure is no outage: an ERROR naming its cause (issue 25)
            log.log(logging.ERROR if isinstance(err, CentreTlsFailure) else logging.INFO,
                    "cannot fetch the centre's settings (%s); measuring as %s until it answers", err,
                    "it last said" if self.settings_version else "agent.yaml says")
            return False
        self.settings_wanted = False
        if answer.status == 404:  # a centre from before issue 18: agent.yaml's keys are the settings
            if not self._centre_has_no_settings:
                log.info("the centre holds no settings for agents (it is older); measuring as agent.yaml says")
            self._centre_has_no_settings = True
            return False
        if answer.status != 200:
            self.settings_wanted = True
            log.warning("the centre refused the settings request (%s)", answer.describe())
            return False
        try:
            fetched = centre_settings.parse_settings(answer.body)
        except ValueError as err:
            named = answer.body.get("settings_version") if isinstance(answer.body, dict) else None
            self._refused_version = named if isinstance(named, str) else None
            self.uploader.settings_version = self._refused_version
            log.error("the centre's settings %s cannot be used here (%s); measuring as before (%s) until they change",
                      self._refused_version or "", err, centre_settings.describe(self.config))
            return False
        self.uploader.centre_measures_clock = True  # a centre that holds settings measures clocks too
        self.uploader.settings_version = fetched.version
        if fetched.version == self.settings_version:
            return True
        centre_settings.keep(self.config.state_dir, answer.body)
        self.config, self.settings_version = fetched.apply(self.file_config), fetched.version
        self._settings_changed.set()
        log.info("settings %s from the centre: %s", fetched.version, centre_settings.describe(self.config))
        return True

    async def _follow_settings(self) -> None:
        """Fetch the settings when wanted: at start-up, or when an answer named a version other than ours."""
        if self.clock() < self.uploader.not_before:
            return  # the uploads' backoff (or the centre's Retry-After) holds for this request too
        named = self.uploader.settings_version
        if self.settings_wanted or (named is not None and named not in (self.settings_version, self._refused_version)):
            await self.refresh_settings()

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
        self.keeper.keep([self._anchor(functools.partial(_encode_icmp, result=result, path=path), result.started_at)
                          for path, result in results])
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
        self.keeper.keep([self._anchor(functools.partial(encode_throughput, result=result, slot=grant.slot),
                                       result.started_at)])
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
        next_cycle = time.monotonic()
        while True:
            started = next_cycle
            async with self._link:  # not while a throughput test fills the link
                await _logged("ICMP cycle", self.icmp_cycle())
            self._upload_wanted.set()
            self._settings_changed.clear()
            interval = self.config.interval_seconds  # the centre's, as it says now (issue 18)
            next_cycle += interval
            now = time.monotonic()
            if next_cycle < now:  # a throughput test overran a cycle: keep the phase, skip what was missed
                next_cycle += math.ceil((now - next_cycle) / interval) * interval
            with contextlib.suppress(TimeoutError):  # new settings: the next cycle is due by the new interval
                await asyncio.wait_for(self._settings_changed.wait(), next_cycle - now)
                next_cycle = max(time.monotonic(), started + self.config.interval_seconds)
                await asyncio.sleep(next_cycle - time.monotonic())

    async def _upload_loop(self, stop: asyncio.Event) -> None:
        """Drain the spool whenever something new is in it; ends after the batch in flight once ``stop`` is set."""
        while not stop.is_set():
            await self._upload_wanted.wait()
            self._upload_wanted.clear()
            await self._no_test.wait()  # the test's figures are the link's alone
            if not stop.is_set():
                await _logged("settings fetch", self._follow_settings())
                await self.upload(stop)
                await _logged("settings fetch", self._follow_settings())  # the answers may have named new ones

    async def _throughput_loop(self) -> None:
        """Ask for a slot whenever the centre said to (never more often than every interval), test when granted."""
        while True:
            if not self.config.throughput_enabled:  # the centre may turn it on (issue 18)
                await asyncio.sleep(self.config.interval_seconds)
                continue
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
        # issue 18: the centre's settings first, so the first cycle measures as it says; a centre that does not
        # answer costs one request's timeout (upload.timeout), then the kept or the file's settings are used
        first = [asyncio.create_task(_logged("settings fetch", self._follow_settings())),
                 asyncio.create_task(stop.wait())]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        for task in first:
            task.cancel()
        await asyncio.gather(*first, return_exceptions=True)
        measuring = [asyncio.create_task(self._measure_loop(), name="icmp"),
                     asyncio.create_task(self._throughput_loop(), name="throughput")]  # idle while disabled
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
        agent = Agent(config, spool, engine, client, iperf3_path=find_iperf3())  # the centre may turn tests on
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
