"""``connmon run``: assembles the daemon, runs it until a signal, and shuts it down.

Assembly is in dependency order, each part handed what it needs when it is built, and nothing set
afterwards (issue 23): the config; the ICMP engine; the history writer; the centre's own path
(issue 21: its uplink checks, read by /metrics and fed by the scheduler); the tracer (issue 21: a sink,
told by the upstream tree of nodes going down, read by /metrics and the API); the maintenance book (issue
21: the config's windows and the API's, asked by the upstream tree, the sinks, the pipeline's stage and
the plan); the sinks and the result pipeline; the throughput plan (shared by the scheduler and the
agents' grants); the agents' registry; the probe context and the scheduler; the APIs; the reloader; the web app.

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
import functools
import logging
import signal
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from monitor.agent.centre.api import AgentApi
from monitor.agent.centre.enrolment import Enrolment, EnrolmentCounts, EnrolmentExposition, keep_tokens
from monitor.agent.centre.exposition import AgentExposition
from monitor.agent.centre.journal import SeqJournal
from monitor.agent.centre.registry import AgentRegistry, AgentSites
from monitor.agent.protocol import BODY_IDLE_SECONDS
from monitor.agent.protocol import ROUTES_PREFIX as AGENT_ROUTES_PREFIX
from monitor.centre_path import CentrePath
from monitor.centre_path_exposition import CentrePathExposition
from monitor.config import Config
from monitor.daemon_loops import keep_contacts, refresh_maintenance, watch_agents, watch_certificate
from monitor.exposition.scrape import EngineExposition, ScrapeRenderer
from monitor.exposition.sink import MetricsSink
from monitor.gc_tuning import settle_long_lived
from monitor.history.agent_tokens import open_book
from monitor.history.exposition import StoreExposition
from monitor.history.restore import RestoredState
from monitor.history.set_aside import set_aside_file
from monitor.history.store_url import is_postgres
from monitor.history.store_url import opener as store_opener
from monitor.history.writer import HistorySink
from monitor.icmp.engine import IcmpEngine
from monitor.logs import EventLogSink
from monitor.maintenance import MaintenanceBook
from monitor.maintenance_exposition import MaintenanceExposition
from monitor.ownership import keep_identity, take_ownership
from monitor.pipeline import ResultPipeline
from monitor.probes import ProbeContext
from monitor.probes.iperf3 import find_iperf3
from monitor.probes.last_good import LastGoodAddresses
from monitor.probes.last_good_exposition import ResolverExposition
from monitor.reload import ConfigWatcher, Loaded, Reloader, ReloadOutcome, load
from monitor.replica_turns import ReplicaTurns
from monitor.results import Cycle
from monitor.scheduler import CycleScheduler
from monitor.shard import Shard, own_share
from monitor.state_lock import StateLock
from monitor.targets import Target, probed, uplink_targets
from monitor.throughput_plan import ThroughputPlan
from monitor.tracer import Tracer
from monitor.tracer_exposition import TraceExposition
from monitor.upstreams import UpstreamTree, node_targets
from monitor.upstreams_exposition import UpstreamExposition
from monitor.web.certificate import CertificateExposition, ServedCertificate
from monitor.web.config import BasicAuth, load_web_config
from monitor.web.handshakes import HandshakeExposition, HandshakeWatch
from monitor.web.maintenance_api import MaintenanceApi
from monitor.web.server import build_app, start_server
from monitor.web.site_api import SiteApi
from monitor.web.site_state import SiteStateSink

if TYPE_CHECKING:
    from monitor.agent.centre.shared import SharedAgents

log = logging.getLogger(__name__)

STORED_WAIT_SECONDS = 10.0  # an agent's batch is answered 503 if the history has not stored it by then (issue 25)
DRAIN_SECONDS = 5.0  # running cycles may finish and be published within this
CANCEL_SECONDS = 1.5  # cancelled cycles unwind within this


@dataclass(frozen=True, slots=True)
class Options:
    """``connmon run``'s settings beyond the config file (see :func:`serve` for each)."""

    config_path: str
    listen: str
    icmp_mode: str = "auto"
    web_config_path: str | None = None
    enable_lifecycle: bool = False
    watch_interval_seconds: float | None = None
    shard: Shard | None = None
    state_dir: str | None = "state"
    store_url: str | None = None
    timezone: str = "UTC"
    agent_body_timeout_seconds: float = BODY_IDLE_SECONDS
    enable_admin_api: bool = False
    allow_empty: bool = False  # --config.allow-empty (issue 22)
    replica_lease_seconds: float = 30.0  # --replicas.lease (issue 19): how soon a dead replica's tests move


async def serve(config_path: str, listen: str, icmp_mode: str = "auto", *,
                web_config_path: str | None = None, enable_lifecycle: bool = False,
                watch_interval_seconds: float | None = None, shard: Shard | None = None,
                state_dir: str | None = "state", store_url: str | None = None, timezone: str = "UTC",
                agent_body_timeout_seconds: float = BODY_IDLE_SECONDS, enable_admin_api: bool = False,
                allow_empty: bool = False, replica_lease_seconds: float = 30.0) -> int:
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
        state_dir: where the history lives (``history.sqlite3``); None keeps no history.
        store_url: ``--store``: ``postgresql://...`` or ``sqlite:///PATH``; None: SQLite under ``state_dir``.
        timezone: the days of the API's summary (``/api/v1/summary``) are in this zone by default.
        agent_body_timeout_seconds: an agent's body that stops arriving this long gets 408.
        enable_admin_api: allow the API's writes (maintenance windows, issue 21).
        allow_empty: accept a config with no endpoint, at start-up and at a reload (issue 22).
        replica_lease_seconds: with replicas on a shared history (issue 19), how long a replica's test lease
            lasts unrenewed: a killed replica's sites are tested by the next one within about this.

    Raises:
        ConfigError: the config or the web config is invalid at start-up (exit 2).
        StartupError: no ICMP socket, or the listen address cannot be bound (exit 3).
    """
    options = Options(config_path, listen, icmp_mode, web_config_path, enable_lifecycle, watch_interval_seconds,
                      shard, state_dir, store_url, timezone, agent_body_timeout_seconds,
                      enable_admin_api=enable_admin_api, allow_empty=allow_empty,
                      replica_lease_seconds=replica_lease_seconds)
    loaded = load(config_path, allow_empty=allow_empty)
    web_config = load_web_config(web_config_path) if web_config_path is not None else None
    tls = web_config.ssl_context if web_config is not None else None
    handshakes = HandshakeWatch() if tls is not None else None  # failed handshakes, counted and said (issue 25)
    owned = take_ownership(state_dir, store_url, shard)  # one owner per state dir and identity (issue 25), first
    engine = IcmpEngine.open(icmp_mode)
    log.info("ICMP engine: %s", engine.describe())
    try:
        daemon = Daemon(options, loaded, engine, BasicAuth(web_config.users)
                        if web_config is not None and web_config.users else None,
                        certificate=web_config.certificate if web_config is not None else None,
                        handshakes=handshakes)
        runner = await start_server(daemon.app, listen,
                                    handshakes.watch(tls) if handshakes is not None and tls is not None else None)
    except BaseException:
        engine.close()
        raise
    if web_config is not None:
        log.info("web: %s", web_config.describe())
    daemon.start()
    keeping = [asyncio.ensure_future(keep_identity(lock)) for lock in owned if not isinstance(lock, StateLock)]
    await daemon.run_until_stopped()
    for task in keeping:
        task.cancel()
    await daemon.shut_down(runner)
    for lock in owned:
        lock.release()
    return 0


class Daemon:
    """The running daemon's parts, built in dependency order; :meth:`apply` is what a reload runs."""

    def __init__(self, options: Options, loaded: Loaded, engine: IcmpEngine, auth: BasicAuth | None,
                 certificate: ServedCertificate | None = None, handshakes: HandshakeWatch | None = None) -> None:
        config, state_dir, store_url = loaded.config, options.state_dir, options.store_url
        self.options, self.engine, self.auth = options, engine, auth
        self.certificate = certificate  # the served TLS certificate: its expiry is warned of and exported (issue 25)
        self.iperf3_path = find_iperf3()
        self.ready = False
        # rows no store can take are kept under the state dir, which the daemon has with PostgreSQL too
        # on a shared PostgreSQL history this instance's cycles go under its shard index (issue 19: replicas)
        instance = options.shard.label if options.shard is not None else ""
        self.history = (HistorySink(store_opener(store_url, state_dir, recover=True, instance=instance),
                                    config.retention,
                                    set_aside_path=set_aside_file(state_dir))
                        if state_dir is not None else None)
        agent_sites = AgentSites()  # written by the registry, read by /metrics: built before both
        # the centre's own way out (issue 21): fed by the scheduler, read by /metrics; built before both
        self.centre_path = CentrePath(uplink_targets(config, loaded.targets))
        # traces when sites and upstream nodes go down (issue 21): a sink, told by the tree too; read by
        # /metrics and the API, written to the history
        self.tracer = Tracer(engine, time.time, traces_per_minute=config.monitor.traces_per_minute,
                             record=self.history.trace_taken if self.history is not None else None)
        # the upstream nodes (issue 21): fed by the scheduler, read by /metrics; every shard checks all of them
        # maintenance windows (issue 21), the config's and the API's: asked by the tree, the sinks, the plan
        self.maintenance = MaintenanceBook()
        self.upstreams = UpstreamTree(cut_off=lambda: self.centre_path.cut_off,
                                      in_maintenance=self.maintenance.node_window,
                                      went_down=self.tracer.node_went_down)  # a node that goes down is traced
        self.upstreams.set_nodes(node_targets(config, loaded.targets), loaded.targets)
        # issue 19: on a shared PostgreSQL history, agents' positions and every test's slot are the region's, and
        # every instance serves every agent site (its sinks, the plan and the book know them all)
        self.shared_agents = _shared_agents(options) if state_dir is not None and is_postgres(store_url) else None
        self.maintenance.set_targets(self._published(own_share(loaded.targets, options.shard), loaded.targets),
                                     self.upstreams.nodes)
        # what /metrics renders per scrape, beside the cached body
        scrape: list[ScrapeRenderer] = [EngineExposition(lambda: dataclasses.asdict(engine.stats))]
        history = self.history
        if history is not None:
            scrape.append(StoreExposition(lambda: history.stats))
        scrape.append(AgentExposition(agent_sites))
        enrolments = EnrolmentCounts()  # codes traded for tokens (issue 18): counted by the route, read by /metrics
        scrape.append(EnrolmentExposition(enrolments))
        scrape.append(CentrePathExposition(self.centre_path))
        scrape.append(UpstreamExposition(self.upstreams))
        scrape.append(TraceExposition(self.tracer))
        scrape.append(MaintenanceExposition(self.maintenance))
        addresses = LastGoodAddresses()  # names' last good addresses, filled by the probes (issue 22)
        scrape.append(ResolverExposition(addresses))
        if certificate is not None:
            scrape.append(CertificateExposition(certificate))
        if handshakes is not None:
            scrape.append(HandshakeExposition(handshakes))
        self.metrics = MetricsSink(scrape=scrape, tools={"iperf3": bool(self.iperf3_path)},
                                   shard=options.shard.label if options.shard is not None else None,
                                   maintenance=self.maintenance)
        # the JSON API's current state (issue 11)
        self.site_state = SiteStateSink(maintenance=self.maintenance, last_trace=self.tracer.last_trace)
        # every cycle, the centre's and the agents', is judged for maintenance before the sinks see it
        self.pipeline = ResultPipeline([self.metrics, self.site_state, EventLogSink(maintenance=self.maintenance),
                                        *([self.history] if self.history is not None else []), self.tracer],
                                       stages=(self.maintenance.classify,))
        # one throughput plan for the centre's own tests and the agents' grants; none starts in maintenance
        self.plan = ThroughputPlan(config.throughput_max_concurrent, paused=self.maintenance.window,
                                   region=self.shared_agents)
        # sites behind NAT: their agents post results into the same pipeline (issue 10)
        self.agents = AgentRegistry(self.pipeline, time.time, book=self.plan.book,
                                    journal=SeqJournal.in_dir(state_dir) if state_dir is not None else None,
                                    state=agent_sites)
        self.targets = own_share(loaded.targets, options.shard)
        self.published = self._published(self.targets, loaded.targets)  # and the plan's: any instance grants
        _warn_missing_tools(probed(self.targets), self.iperf3_path)
        for sink in self.pipeline.sinks:
            sink.set_targets(self.published)
        self.agents.set_targets(self.targets, loaded.targets if self.shared_agents is not None else ())
        self.metrics.config_loaded(True)
        self.ctx = ProbeContext(engine, time.time, iperf3_path=self.iperf3_path,
                                throughput_slots=asyncio.Semaphore(config.throughput_max_concurrent),
                                addresses=addresses)
        self.scheduler = CycleScheduler(self.ctx, self.pipeline, self.plan, centre_path=self.centre_path,
                                        upstreams=self.upstreams)
        self.turns = ReplicaTurns.of(options.shard, store_url, options.replica_lease_seconds)
        self._restored = False  # the history's start-up restore has been delivered
        if self.history is not None:  # a node's own runs are kept for the report's upstream section
            self.scheduler.node_history = self._keep_node_run
        self.api = SiteApi(self.site_state, store_opener(store_url, state_dir, read_only=True)
                           if state_dir is not None else None, default_timezone=options.timezone)
        self.api.set_report_settings(config)
        # enrolment (issue 18): tokens issued for one-time codes live in the history store, beside the YAML's
        self.open_tokens = functools.partial(open_book, store_url, state_dir) if state_dir is not None else None
        self.agent_api = AgentApi(self.agents, self.plan, body_idle_seconds=options.agent_body_timeout_seconds,
                                  stored=self._history_stored if self.history is not None else None,
                                  enrolment=Enrolment(self.open_tokens, self.agents, time.time, enrolments)
                                  if self.open_tokens is not None else None, shared=self.shared_agents)
        self.maintenance_api = MaintenanceApi(self.maintenance, store_opener(store_url, state_dir)
                                              if state_dir is not None else None,
                                              writes_enabled=options.enable_admin_api)
        if options.enable_admin_api and auth is None:
            log.warning("--web.enable-admin-api without basic auth (--web.config.file): anyone who reaches %s "
                        "can open and close maintenance windows", options.listen)
        self.reloader = Reloader(options.config_path, self.apply, self.metrics.config_loaded, loaded.digest,
                                 loader=functools.partial(load, allow_empty=options.allow_empty),
                                 include_patterns=loaded.config.include_patterns)
        reloader = self.reloader
        self.app = build_app(self.metrics, lambda: self.ready,
                             reload=(lambda: reloader.reload("POST /-/reload")) if options.enable_lifecycle else None,
                             auth=auth, routes=(self.api, self.maintenance_api, self.agent_api),
                             self_authenticated=(AGENT_ROUTES_PREFIX,))
        self._stop, self._hurry = asyncio.Event(), asyncio.Event()
        self._background: set[asyncio.Task[ReloadOutcome]] = set()
        self._watchers: list[asyncio.Future[None]] = []

    def apply(self, new_config: Config, every_target: tuple[Target, ...]) -> None:
        """Make the running daemon use a reloaded config (run by the reloader on the event loop)."""
        new_targets = own_share(every_target, self.options.shard)
        _warn_missing_tools(probed(new_targets), self.iperf3_path)
        if new_config.throughput_max_concurrent != self.plan.max_concurrent:
            self.plan.max_concurrent = new_config.throughput_max_concurrent
            self.ctx.throughput_slots = asyncio.Semaphore(new_config.throughput_max_concurrent)
        if self.history is not None:
            self.history.retention = new_config.retention
        self.tracer.traces_per_minute = new_config.monitor.traces_per_minute
        self.api.set_report_settings(new_config)
        self.centre_path.set_checks(uplink_targets(new_config, every_target))  # the scheduler's uplink job follows
        self.upstreams.set_nodes(node_targets(new_config, every_target), every_target)  # so does its node job
        published = self._published(new_targets, every_target)
        self.maintenance.set_targets(published, self.upstreams.nodes)
        self.scheduler.set_targets(probed(published))  # first: if it fails, the sinks still match the jobs
        for sink in self.pipeline.sinks:
            sink.set_targets(published)
        self.published = published
        self.agents.set_targets(new_targets, every_target if self.shared_agents is not None else ())
        self.targets = new_targets
        settle_long_lived()  # the new targets and their state live until the next reload

    async def _history_stored(self) -> bool:
        """Whether the history holds every result taken so far, waiting up to :data:`STORED_WAIT_SECONDS`."""
        history = self.history
        if history is None:
            return True
        try:
            return await asyncio.wait_for(asyncio.wrap_future(history.stored()), STORED_WAIT_SECONDS)
        except TimeoutError:
            return False

    def _keep_node_run(self, cycle: Cycle) -> None:
        """Write a run of the upstream nodes to the history: only the nodes of this instance's share.

        Every instance pings every node (each needs the verdict for its own sites), but a shared
        history must hold each node's runs once per replica, so the shards that the node's name falls to
        keep them (with ``--replicas R``, R of them: the history merges them as it merges a site's).
        """
        history, shard = self.history, self.options.shard
        if history is None:
            return
        if shard is not None:
            own = {t.name for t in own_share(self.upstreams.nodes, shard)}
            results = tuple(r for r in cycle.results if r.target.name in own)
            if not results:
                return
            cycle = dataclasses.replace(cycle, results=results)
        history.consume(self.maintenance.classify(cycle))  # a node's silent run in its window: maintenance

    def restore(self, restored: RestoredState | None) -> None:
        """Show what the history kept; None: the store is away for now (go on, restore when it answers)."""
        self.scheduler.throughput_held = False
        if restored is None:
            log.warning("history: the store does not answer; throughput tests start without the last results, "
                        "which are restored when it answers")
            return
        self._restored = True
        self.maintenance.load(restored.maintenance)  # windows opened through the API survive a restart
        self.metrics.restore(restored.results.values(), restored.missed_in_a_row, restored.verdicts)
        self.site_state.restore(restored.results.values())
        self.tracer.restore(restored.traces)  # each site's last trace, for the API
        self.plan.restore(restored.last_tried, restored.used_bytes, time.time(), restored.last_test_bytes)
        if restored.results:
            log.info("history: restored the last throughput test of %d endpoints", len(restored.results))

    def start(self) -> None:
        """Schedule the cycles, restore the history's figures, and take signals: the daemon is ready."""
        options, targets = self.options, self.targets
        loop = asyncio.get_running_loop()
        self.scheduler.start(probed(self.published))  # other shares' agent sites: in the plan only, never pinged
        if self.turns is not None:  # replicas (issue 19): whose turn a site's throughput test is
            self.scheduler.test_leader = self.turns.leader
            self.turns.start(self.history, lambda: self.targets, lambda: self._restored, self._followed)
        if self.history is not None:  # a restart shows the last test at once, and does not fire every due test
            if is_postgres(options.store_url):  # a server may be away: never hold start-up or the loop for it
                self.scheduler.throughput_held = True
                # every site it publishes and plans: another share's agent site is granted here too (issue 19)
                self.history.restore_later(probed(self.published),
                                           lambda r: loop.call_soon_threadsafe(self.restore, r))
            else:  # a local file answers at once: restored before the first cycle
                self.restore(self.history.restore(probed(self.published)))
        settle_long_lived()  # config, targets and per-endpoint state: out of every later collection
        self.ready = True
        log.info("connmon started: %d endpoints (%d probed) from %s%s, listening on %s", len(targets),
                 len(probed(targets)), options.config_path,
                 f" (shard {options.shard})" if options.shard is not None else "", options.listen)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reloader.reload("SIGHUP")))
        if options.watch_interval_seconds is not None:
            self._watchers.append(asyncio.ensure_future(
                ConfigWatcher(self.reloader, options.watch_interval_seconds).run()))
        self._watchers.append(asyncio.ensure_future(watch_agents(self.agents, self.agent_api)))
        if self.open_tokens is not None:  # enrolled tokens (issue 18): read now, then every few seconds
            self._watchers.append(asyncio.ensure_future(keep_tokens(self.agents, self.open_tokens)))
        if self.shared_agents is not None:  # issue 19: agents heard by the other instances are not silent here
            self._watchers.append(asyncio.ensure_future(keep_contacts(self.agents, self.shared_agents)))
        if self.certificate is not None:  # said at start-up, then daily while it holds (issue 25)
            self.certificate.check(time.time())
            self._watchers.append(asyncio.ensure_future(watch_certificate(self.certificate)))
        if options.state_dir is not None:  # windows another instance opened in a shared store (issue 21)
            self._watchers.append(asyncio.ensure_future(refresh_maintenance(
                self.maintenance, store_opener(options.store_url, options.state_dir, read_only=True))))

    def _spawn(self, coro: Coroutine[None, None, ReloadOutcome]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _published(self, own: tuple[Target, ...], every: Sequence[Target]) -> tuple[Target, ...]:
        """The sites the sinks show: this instance's share, and with agents served by any instance (issue 19)
        every agent site too, whose batches a load balancer may send here (their silence is still judged
        by their own instances; a replica whose last result of a site is old has no say in the merge)."""
        if self.shared_agents is None:
            return own
        names = {t.name for t in own}
        return own + tuple(t for t in every if t.mode == "agent" and t.name not in names)

    def _followed(self, restored: RestoredState | None) -> None:
        """What the other replicas tested (issue 19, :mod:`monitor.replica_turns`), shown and counted; None: the
        store is away."""
        if restored is None:
            return
        self.metrics.restore(restored.results.values(), restored.missed_in_a_row, restored.verdicts)
        self.site_state.restore(restored.results.values())
        self.plan.follow(restored.used_bytes, restored.last_test_bytes)

    async def run_until_stopped(self) -> None:
        await self._stop.wait()

    async def shut_down(self, runner: web.AppRunner) -> None:
        """Graceful shutdown, in reverse order of assembly (see the module doc)."""
        loop = asyncio.get_running_loop()
        self.ready = False
        loop.remove_signal_handler(signal.SIGHUP)
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal: do not wait for running cycles
            loop.add_signal_handler(sig, self._hurry.set)
        self.reloader.close()
        for watcher in self._watchers:
            watcher.cancel()
        self.scheduler.pause()
        running = set(self.scheduler.running_cycles)
        log.info("stopping: scheduling stopped; %d running cycle(s) get up to %gs to finish", len(running),
                 DRAIN_SECONDS)
        left = await _drain(running, self._hurry, DRAIN_SECONDS)
        if left:
            log.warning("cancelling %d cycle(s) still running", len(left))
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=CANCEL_SECONDS)
        self.scheduler.shutdown()
        if self.turns is not None:  # after the drain: a clean stop hands this replica's sites over (issue 19)
            await self.turns.close()
        await self.tracer.stop()  # traces still running are cancelled: nothing is left on the loop
        for reload_task in self._background:
            reload_task.cancel()
        await runner.cleanup()
        self.pipeline.close()
        if self.agents.journal is not None:
            self.agents.journal.close()
        self.agents.state.fleet.save(time.time(), force=True)  # the fleet's last contacts (issue 18)
        if self.agent_api.enrolment is not None:
            self.agent_api.enrolment.close()
        if self.shared_agents is not None:
            await self.shared_agents.close()
        self.engine.close()
        if self.auth is not None:
            self.auth.close()
        log.info("stopped")


def _shared_agents(options: Options) -> SharedAgents:
    """Agents served by any instance (issue 19): their positions and the slots, in the shared PostgreSQL."""
    from monitor.agent.centre.shared import SharedAgents  # psycopg only with PostgreSQL

    assert options.store_url is not None
    shard = options.shard
    return SharedAgents(options.store_url, f"shard {shard.index}/{shard.count}" if shard is not None else "0/1")


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
