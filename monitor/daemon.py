"""``connmon run``: wires config, engine, sinks, scheduler and web server, and handles signals.

SIGTERM/SIGINT stop scheduling, cancel cycles still running (bounded), close the server and
exit 0. SIGHUP reloads: the new file is validated in full first; a bad file keeps the running
config and sets ``connmon_config_last_reload_successful`` to 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Sequence

from monitor.config import load_config
from monitor.errors import ConfigError
from monitor.icmp_engine import IcmpEngine
from monitor.logs import EventLogSink
from monitor.metrics import MetricsSink
from monitor.probes import ProbeContext
from monitor.probes.iperf3 import find_iperf3
from monitor.results import ResultPipeline
from monitor.scheduler import CycleScheduler
from monitor.targets import Target, build_targets
from monitor.web import build_app, start_server

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


async def serve(config_path: str, listen: str, icmp_mode: str = "auto") -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    Raises:
        ConfigError: the config is invalid at start-up (exit 2).
        StartupError: no ICMP socket, or the listen address cannot be bound (exit 3).
    """
    config = load_config(config_path)
    targets = build_targets(config)
    engine = IcmpEngine.open(icmp_mode)
    log.info("ICMP engine: %s", engine.describe())
    iperf3_path = find_iperf3()
    _warn_missing_tools(targets, iperf3_path)
    metrics = MetricsSink(engine_stats=lambda: dataclasses.asdict(engine.stats), tools={"iperf3": bool(iperf3_path)})
    pipeline = ResultPipeline([metrics, EventLogSink()])
    for sink in pipeline.sinks:
        sink.set_targets(targets)
    metrics.config_loaded(True)
    ctx = ProbeContext(engine, time.time, iperf3_path=iperf3_path,
                       throughput_slots=asyncio.Semaphore(config.throughput_max_concurrent))
    scheduler = CycleScheduler(ctx, pipeline, throughput_max_concurrent=config.throughput_max_concurrent)
    ready = False
    try:
        runner = await start_server(build_app(metrics, lambda: ready), listen)
    except BaseException:
        engine.close()
        raise
    scheduler.start(targets)
    ready = True
    log.info("connmon started: %d endpoints from %s, listening on %s", len(targets), config_path, listen)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        """Validate and build the new config completely; only then swap it in."""
        try:
            new_config = load_config(config_path)
            new_targets = build_targets(new_config)
        except ConfigError as err:
            metrics.config_loaded(False)
            log.error("reload failed, keeping the running config:\n%s", err)
            return
        _warn_missing_tools(new_targets, iperf3_path)
        if new_config.throughput_max_concurrent != scheduler.throughput_max_concurrent:
            scheduler.throughput_max_concurrent = new_config.throughput_max_concurrent
            ctx.throughput_slots = asyncio.Semaphore(new_config.throughput_max_concurrent)
        try:
            scheduler.set_targets(new_targets)
        except Exception:  # never leave a half-applied reload looking successful
            metrics.config_loaded(False)
            log.exception("reload failed while rescheduling; the previous jobs stay")
            return
        for sink in pipeline.sinks:
            sink.set_targets(new_targets)
        metrics.config_loaded(True)
        log.info("reloaded %s: %d endpoints", config_path, len(new_targets))

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()

    log.info("stopping")
    ready = False
    scheduler.shutdown()
    cycles = list(scheduler.running_cycles)
    for task in cycles:
        task.cancel()
    if cycles:
        await asyncio.wait(cycles, timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.cleanup()
    engine.close()
    log.info("stopped")
    return 0


def _warn_missing_tools(targets: Sequence[Target], iperf3_path: str | None) -> None:
    """Say once, at start-up or reload, that iperf3 tests cannot run; ICMP goes on regardless."""
    users = [t.name for t in targets if t.throughput.method == "iperf3"]
    if users and iperf3_path is None:
        log.warning("iperf3 is not installed, so the throughput tests of %d endpoints (e.g. %s) will fail with "
                    "reason tool_missing; install it (Debian: apt install iperf3). ICMP probing goes on.",
                    len(users), users[0])
