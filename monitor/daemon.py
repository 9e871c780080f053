"""``connmon run``: wires config, engine, sinks, scheduler and web server, and handles signals.

Reload (issue 7): SIGHUP, ``POST /-/reload`` (with ``--web.enable-lifecycle``) and the file
watcher (``--config.watch``) all go through one :class:`~monitor.reload.Reloader`: the new file is
validated in full first; a bad file keeps the running config and sets
``connmon_config_last_reload_successful`` to 0.

Shutdown (issue 7): SIGTERM/SIGINT stop scheduling at once; cycles already running get
:data:`DRAIN_SECONDS` to finish and be published, the rest are cancelled and get
:data:`CANCEL_SECONDS` to unwind; then the web server closes (:data:`~monitor.web.server.SHUTDOWN_TIMEOUT_SECONDS`),
sinks flush and the process exits 0, well within 10 s. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Coroutine, Sequence

from monitor.agent.centre.api import AgentApi
from monitor.agent.centre.journal import SeqJournal
from monitor.agent.centre.registry import AgentRegistry
from monitor.agent.protocol import BODY_IDLE_SECONDS
from monitor.config.model import Config
from monitor.exposition.sink import MetricsSink
from monitor.gc_tuning import settle_long_lived
from monitor.history.store import HistorySink, RestoredState, set_aside_file
from monitor.history.store_url import is_postgres
from monitor.history.store_url import opener as store_opener
from monitor.icmp.engine import IcmpEngine
from monitor.logs import EventLogSink
from monitor.probes import ProbeContext
from monitor.probes.iperf3 import find_iperf3
from monitor.reload import ConfigWatcher, Reloader, ReloadOutcome
from monitor.results import ResultPipeline
from monitor.scheduler import CycleScheduler
from monitor.shard import Shard, own_share
from monitor.targets import Target, probed
from monitor.web.config import BasicAuth, load_web_config
from monitor.web.server import build_app, start_server
from monitor.web.site_api import SiteApi
from monitor.web.site_state import SiteStateSink

log = logging.getLogger(__name__)
DRAIN_SECONDS = 5.0  # running cycles may finish and be published within this
CANCEL_SECONDS = 1.5  # cancelled cycles unwind within this
AGENT_CHECK_SECONDS = 1.0  # how often agent sites are checked for silence (stale_after is at least 1 s)


async def serve(config_path: str, listen: str, icmp_mode: str = "auto", *,
                web_config_path: str | None = None, enable_lifecycle: bool = False,
                watch_interval_seconds: float | None = None, shard: Shard | None = None,
                state_dir: str | None = "state", store_url: str | None = None, timezone: str = "UTC",
                agent_body_timeout_seconds: float = BODY_IDLE_SECONDS) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code.

    With ``shard``, only that share of the endpoints is probed (at start and at every reload) and
    every series carries the ``shard`` label. Only connected sites are scheduled; every sink still
    gets all of the share's sites, so /metrics counts planned ones and the history knows them.

    Args:
        config_path: the site list.
        listen: ``ADDR:PORT`` for the web server.
        icmp_mode: ``auto``, ``raw`` or ``unprivileged``.
        web_config_path: exporter-toolkit web config (TLS, basic auth), or None.
        enable_lifecycle: allow ``POST /-/reload``.
        watch_interval_seconds: poll the config file this often and reload on change; None: don't.
        shard: this instance's share (``--shard I/N``), or None for every endpoint.
        agent_body_timeout_seconds: an agent's body that stops arriving this long gets 408.
        state_dir: where the history lives (``history.sqlite3``); None keeps no history.
        store_url: ``--store``: ``postgresql://...`` or ``sqlite:///PATH``; None: SQLite under ``state_dir``.
        timezone: the days of the API's summary (``/api/v1/summary``) are in this zone by default.

    Raises:
        ConfigError: the config or the web config is invalid at start-up (exit 2).
        StartupError: no ICMP socket, or the listen address cannot be bound (exit 3).
    """
    web_config = load_web_config(web_config_path) if web_config_path is not None else None
    iperf3_path = find_iperf3()
    reloader = Reloader(config_path, lambda c, t: apply(c, t), lambda ok: metrics.config_loaded(ok))
    config, every_target = reloader.load_initial()
    # rows no store can take are kept under the state dir, which the daemon has with PostgreSQL too
    history = (HistorySink(store_opener(store_url, state_dir), config.retention,
                           set_aside_path=set_aside_file(state_dir))
               if state_dir is not None else None)
    metrics = MetricsSink(engine_stats=lambda: dataclasses.asdict(engine.stats), tools={"iperf3": bool(iperf3_path)},
                          shard=shard.label if shard is not None else None,
                          store_stats=(lambda: history.stats) if history is not None else None)
    site_state = SiteStateSink()  # the JSON API's current state (issue 11)
    pipeline = ResultPipeline([metrics, site_state, EventLogSink(), *([history] if history is not None else [])])
    # sites behind NAT: their agents post results into the same pipeline (issue 10)
    agents = AgentRegistry(pipeline, time.time, on_throughput=lambda r, slot: scheduler.agent_test_finished(r, slot),
                           journal=SeqJournal.in_dir(state_dir) if state_dir is not None else None)
    metrics.agents = agents

    def apply(new_config: Config, every_target: tuple[Target, ...]) -> None:
        new_targets = own_share(every_target, shard)
        _warn_missing_tools(probed(new_targets), iperf3_path)
        if new_config.throughput_max_concurrent != scheduler.throughput_max_concurrent:
            scheduler.throughput_max_concurrent = new_config.throughput_max_concurrent
            ctx.throughput_slots = asyncio.Semaphore(new_config.throughput_max_concurrent)
        if history is not None:
            history.retention = new_config.retention
        api.set_report_settings(new_config)
        scheduler.set_targets(probed(new_targets))  # first: if it fails, the sinks still match the jobs
        for sink in pipeline.sinks:
            sink.set_targets(new_targets)
        agents.set_targets(new_targets)
        settle_long_lived()  # the new targets and their state live until the next reload

    targets = own_share(every_target, shard)
    _warn_missing_tools(probed(targets), iperf3_path)
    engine = IcmpEngine.open(icmp_mode)
    log.info("ICMP engine: %s", engine.describe())
    for sink in pipeline.sinks:
        sink.set_targets(targets)
    agents.set_targets(targets)
    metrics.config_loaded(True)
    ctx = ProbeContext(engine, time.time, iperf3_path=iperf3_path,
                       throughput_slots=asyncio.Semaphore(config.throughput_max_concurrent))
    scheduler = CycleScheduler(ctx, pipeline, throughput_max_concurrent=config.throughput_max_concurrent)
    auth = BasicAuth(web_config.users) if web_config is not None and web_config.users else None
    ready = False

    api = SiteApi(site_state, store_opener(store_url, state_dir, read_only=True) if state_dir is not None else None,
                  default_timezone=timezone)
    api.set_report_settings(config)
    agent_api = AgentApi(agents, lambda: scheduler.plan, lambda: scheduler.throughput_max_concurrent,
                         body_idle_seconds=agent_body_timeout_seconds)
    app = build_app(metrics, lambda: ready, reload=(lambda: reloader.reload("POST /-/reload"))
                    if enable_lifecycle else None, auth=auth, api=api, agent_api=agent_api)
    try:
        runner = await start_server(app, listen, web_config.ssl_context if web_config is not None else None)
    except BaseException:
        engine.close()
        raise
    if web_config is not None:
        log.info("web: %s", web_config.describe())
    loop = asyncio.get_running_loop()

    def restore(restored: RestoredState | None) -> None:
        """Show what the history kept; None: the store is away for now (go on, restore when it answers)."""
        scheduler.throughput_held = False
        if restored is None:
            log.warning("history: the store does not answer; throughput tests start without the last results, "
                        "which are restored when it answers")
            return
        metrics.restore(restored.results.values(), restored.missed_in_a_row, restored.verdicts)
        site_state.restore(restored.results.values())
        scheduler.plan.restore(restored.last_tried, restored.used_bytes, time.time(), restored.last_test_bytes)
        if restored.results:
            log.info("history: restored the last throughput test of %d endpoints", len(restored.results))

    scheduler.start(probed(targets))
    if history is not None:  # a restart shows the last test at once, and does not fire every due test
        if is_postgres(store_url):  # a server may be away: never hold start-up or the loop for it
            scheduler.throughput_held = True
            history.restore_later(probed(targets), lambda r: loop.call_soon_threadsafe(restore, r))
        else:  # a local file answers at once: restored before the first cycle
            restore(history.restore(probed(targets)))
    settle_long_lived()  # config, targets and per-endpoint state: out of every later collection
    ready = True
    log.info("connmon started: %d endpoints (%d probed) from %s%s, listening on %s", len(targets),
             len(probed(targets)), config_path,
             f" (shard {shard})" if shard is not None else "", listen)

    stop, hurry = asyncio.Event(), asyncio.Event()
    background: set[asyncio.Task[ReloadOutcome]] = set()

    def spawn(coro: Coroutine[None, None, ReloadOutcome]) -> None:
        task = asyncio.ensure_future(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reloader.reload("SIGHUP")))
    watcher = (asyncio.ensure_future(ConfigWatcher(reloader, watch_interval_seconds).run())
               if watch_interval_seconds is not None else None)
    agent_watch = asyncio.ensure_future(_watch_agents(agents, agent_api))
    await stop.wait()

    # ---------------------------------------------------------------- graceful shutdown
    ready = False
    loop.remove_signal_handler(signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal: do not wait for running cycles
        loop.add_signal_handler(sig, hurry.set)
    reloader.close()
    if watcher is not None:
        watcher.cancel()
    agent_watch.cancel()
    scheduler.pause()
    running = set(scheduler.running_cycles)
    log.info("stopping: scheduling stopped; %d running cycle(s) get up to %gs to finish", len(running),
             DRAIN_SECONDS)
    left = await _drain(running, hurry, DRAIN_SECONDS)
    if left:
        log.warning("cancelling %d cycle(s) still running", len(left))
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=CANCEL_SECONDS)
    scheduler.shutdown()
    for reload_task in background:
        reload_task.cancel()
    await runner.cleanup()
    pipeline.close()
    if agents.journal is not None:
        agents.journal.close()
    engine.close()
    if auth is not None:
        auth.close()
    log.info("stopped")
    return 0


async def _watch_agents(agents: AgentRegistry, agent_api: AgentApi) -> None:
    """Every second: mark agent sites that went silent as down, and free test slots granted but never used."""
    while True:
        await asyncio.sleep(AGENT_CHECK_SECONDS)
        try:
            agents.check_silence()
            agent_api.expire_slots()
        except Exception:  # a bug here must not stop the watch for every other agent site
            log.exception("agent liveness check failed")


async def _drain(cycles: set[asyncio.Task[None]], hurry: asyncio.Event,
                 timeout_seconds: float) -> set[asyncio.Task[None]]:
    """Wait until ``cycles`` are done, ``hurry`` is set or the time is up; return those still running."""
    if not cycles:
        return set()
    all_done = asyncio.ensure_future(asyncio.wait(cycles))
    hurried = asyncio.ensure_future(hurry.wait())
    await asyncio.wait({all_done, hurried}, timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
    if hurried.done():
        log.warning("second signal: not waiting for running cycles")
    all_done.cancel()  # cancels the waiting, not the cycles
    hurried.cancel()
    return {task for task in cycles if not task.done()}


def _warn_missing_tools(targets: Sequence[Target], iperf3_path: str | None) -> None:
    """Say once, at start-up or reload, that iperf3 tests cannot run; ICMP goes on regardless."""
    users = [t.name for t in targets if t.throughput.method == "iperf3" and t.probed_by_centre]
    if users and iperf3_path is None:
        log.warning("iperf3 is not installed, so the throughput tests of %d endpoints (e.g. %s) will fail with "
                    "reason tool_missing; install it (Debian: apt install iperf3). ICMP probing goes on.",
                    len(users), users[0])
