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

from monitor.config import load_config
from monitor.errors import ConfigError
from monitor.icmp_engine import IcmpEngine
from monitor.logs import EventLogSink
from monitor.metrics import MetricsSink
from monitor.probes import ProbeContext
from monitor.results import ResultPipeline
from monitor.scheduler import CycleScheduler
from monitor.shard import Shard, own_share
from monitor.targets import build_targets
from monitor.web import build_app, start_server

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


async def serve(config_path: str, listen: str, icmp_mode: str = "auto", shard: Shard | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    With ``shard``, only that share of the endpoints is probed (at start and at every reload) and
    every series carries the ``shard`` label.

    Raises:
        ConfigError: the config is invalid at start-up (exit 2).
        StartupError: no ICMP socket, or the listen address cannot be bound (exit 3).
    """
    config = load_config(config_path)
    targets = own_share(build_targets(config), shard)
    engine = IcmpEngine.open(icmp_mode)
    log.info("ICMP engine: %s", engine.describe())
    metrics = MetricsSink(engine_stats=lambda: dataclasses.asdict(engine.stats),
                          shard=shard.label if shard is not None else None)
    pipeline = ResultPipeline([metrics, EventLogSink()])
    for sink in pipeline.sinks:
        sink.set_targets(targets)
    metrics.config_loaded(True)
    scheduler = CycleScheduler(ProbeContext(engine, time.time), pipeline)
    ready = False
    try:
        runner = await start_server(build_app(metrics, lambda: ready), listen)
    except BaseException:
        engine.close()
        raise
    scheduler.start(targets)
    ready = True
    log.info("connmon started: %d endpoints from %s%s, listening on %s", len(targets), config_path,
             f" (shard {shard})" if shard is not None else "", listen)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        """Validate and build the new config completely; only then swap it in."""
        try:
            new_targets = own_share(build_targets(load_config(config_path)), shard)
        except ConfigError as err:
            metrics.config_loaded(False)
            log.error("reload failed, keeping the running config:\n%s", err)
            return
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
