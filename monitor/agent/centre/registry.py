"""The centre's side of site agents (issue 10): who may post, what arrived already, and why a site went silent.

Sites behind carrier-grade NAT cannot be reached from the centre, so an agent at the site
measures and posts its results. This module keeps, per agent site, what the centre needs to
trust and interpret those posts; :mod:`monitor.agent.centre.api` is its HTTP edge, and accepted results
enter the one :class:`~monitor.pipeline.ResultPipeline`, exactly like the centre's own probes.

* **Tokens.** The config holds only the SHA-256 of each site's token; a post's bearer token is
  hashed and looked up, so the centre never stores a secret and one token speaks for one site.
  Tokens issued by enrolment (issue 18) are kept, hashed too, in the history store
  (:mod:`monitor.history.agent_tokens`): the daemon hands them in at start-up and every few seconds
  (:meth:`AgentRegistry.set_stored_tokens`: a revoke by the CLI ends the token within that time), and
  the enrolment route hands a new one in at once (:meth:`AgentRegistry.set_stored_token`). A site may
  have both, the YAML's and the store's: either is accepted.
* **Idempotence.** Results carry the agent's sequence number (per agent installation,
  ``instance``); what is not above the last one accepted is acknowledged and ignored, so an
  agent may repeat an upload whose answer it did not get. With a PostgreSQL history the positions
  are the region's too (issue 19, :meth:`AgentRegistry.advance`): several instances behind one URL
  answer a batch that any of them stored as duplicates.
* **Liveness.** A site with nothing received for ``stale_after`` (default three ICMP intervals)
  gets a result with reason ``agent_silent``: ``connmon_up`` goes to 0 and alerts fire as for any
  down site. Silence is not a measurement, so the history does not keep it
  (:class:`~monitor.history.writer.HistorySink`): the truth of the gap arrives later, from the agent.
* **Why it was silent.** When the agent reports again, the gap is classified: ``power`` when
  the machine booted since (a new boot id, with an uptime shorter than the gap), ``link`` when
  the agent kept measuring while the centre heard nothing (its spool holds results from between
  its last post and the moment the centre declared it silent), else
  ``unknown``; while it is silent the cause is ``unknown``. The classified gap goes down the
  pipeline with the batch that ended it (:class:`~monitor.results.Gap`) and the history keeps it:
  reports leave the hours without power out of availability, as ministries ask, and count the
  other gaps' missing cycles as down (:mod:`monitor.report.gaps`). A ``power`` gap runs from the last
  sign of life before the boot (the last post, or a later result measured before the boot) to
  the boot (now − uptime); a ``link`` or ``unknown`` gap from the last post to the one that ended it.
  While the site is silent, the gap so far is published as ``unknown`` (and again every
  :data:`OPEN_GAP_REFRESH_SECONDS`), so a report made meanwhile counts the silence as down; the
  classified gap replaces it.
* **Rate limit.** Each token may post in bursts of :data:`BURST` requests, refilled at
  :data:`REFILL_PER_SECOND`: enough to drain a day of spool in minutes, not enough to flood.
* **Clocks and the fleet (issue 18).** Each batch's measured clock offset
  (:func:`~monitor.agent.clock.measure_offset`, results already moved by it when it was off) is
  kept per site and said when it goes off or comes right; every contact and every new result is
  noted in the fleet's records (:mod:`monitor.agent.centre.fleet`), which outlive a restart.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from monitor.agent.centre.fleet import FILE_NAME as FLEET_FILE_NAME
from monitor.agent.centre.fleet import Fleet, FleetRecord
from monitor.agent.centre.journal import Position, SeqJournal
from monitor.agent.clock import MAX_CLOCK_OFFSET_SECONDS, ClockOffset
from monitor.agent.decode import bind
from monitor.agent.protocol import (
    AgentInfo,
    Batch,
    RefusedResult,
    result_answer,
)
from monitor.errors import ProbeErrorReason
from monitor.pipeline import ResultPipeline
from monitor.results import GAP_CAUSES, Cycle, Gap, GapCause, IcmpResult, ThroughputResult
from monitor.targets import Target
from monitor.text import text_fault

log = logging.getLogger(__name__)

REJECTION_CODES = (400, 401, 403, 408, 413, 415, 429, 503)  # what the agent API refuses with (monitor.agent.centre.api)
SITE_REJECTION_CODES = tuple(c for c in REJECTION_CODES if c != 401)  # 401: no token named a site
REFUSAL_LOG_SECONDS = 60.0  # a refusal is logged at most once this often per (site, code) (issue 25)
_MAX_REASON_LOGGED = 300
BURST = 60
REFILL_PER_SECOND = 2.0
FLEET_SAVE_AT_ONCE_SECONDS = 3600.0  # issue 18: a result after this long a silence is saved at once
OPEN_GAP_REFRESH_SECONDS = 60.0  # a silent site's provisional gap is written up to now this often
REFUSALS_REMEMBERED = 5000  # per agent site: refused sequence numbers answered "refused" again if posted again


def token_hash(token: str) -> str:
    """The hash the centre's config holds for a token: SHA-256 of its text, surrounding whitespace stripped."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


@dataclass(slots=True)
class TokenBucket:
    """Requests allowed per token: ``capacity`` at once, refilled continuously."""

    capacity: float = BURST
    rate: float = REFILL_PER_SECOND
    tokens: float = BURST
    at: float = 0.0

    def take(self, now: float) -> float:
        """0 when a request may go now (and counts it), else the seconds until it may."""
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(slots=True)
class GatewayState:
    """The last ICMP result to the site's own gateway (LAN side): tells a LAN fault from an uplink fault."""

    up: bool
    rtt_avg_seconds: float | None
    loss_ratio: float
    at: float


@dataclass(slots=True)
class AgentSite:
    """What the centre knows about one agent site."""

    target: Target
    last_seen: float  # when the last batch arrived (start-up time until the first one)
    instance: str | None = None
    last_seq: int = 0
    info: AgentInfo | None = None
    silent: bool = False
    silent_since: float = 0.0  # when the centre marked it silent
    gap_written_at: float = 0.0  # when its provisional (unknown) gap was last published, while silent
    gap_cause: GapCause | None = None  # of the current gap while silent, else of the last one
    gaps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GAP_CAUSES, 0))
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0  # results refused on their own (protocol version 2, issue 25)
    # the last refused sequence numbers (at most REFUSALS_REMEMBERED): a batch posted again (its answer lost, or
    # a 503 after it was taken) is answered "refused" again for them, not "duplicate", which the agent would forget
    refused_seqs: dict[int, RefusedResult] = field(default_factory=dict)
    gateway: GatewayState | None = None
    bucket: TokenBucket = field(default_factory=TokenBucket)
    rejected: dict[int, int] = field(default_factory=dict)  # HTTP status → this site's requests refused (issue 25)
    clock: ClockOffset | None = None  # issue 18: the agent's clock offset, measured on its last batch
    corrected: int = 0  # issue 18: results whose times were corrected by the measured offset


@dataclass(frozen=True, slots=True)
class Accepted:
    """The answer to a batch: how many results were new, how many were already there, the last seq kept."""

    accepted: int
    duplicates: int
    last_seq: int
    gap_cause: GapCause | None  # set when this batch ended a silence
    refused: int = 0  # version 2: results refused on their own
    lines: tuple[dict[str, object], ...] = ()  # version 2: every result's outcome, in the batch's order
    clock: ClockOffset | None = None  # issue 18: the agent's clock offset measured on this batch


@dataclass(slots=True)
class AgentSites:
    """What the centre knows of its agent sites now, and the requests it refused.

    The registry writes it; the exposition reads it at each scrape
    (:class:`~monitor.agent.centre.exposition.AgentExposition`). It is built first and handed to
    both, because the registry publishes into the pipeline that holds the metrics sink: neither
    could be handed the other.
    """

    by_name: dict[str, AgentSite] = field(default_factory=dict)
    rejected: dict[int, int] = field(default_factory=dict)  # HTTP status → requests refused (bad token, …)
    fleet: Fleet = field(default_factory=Fleet)  # issue 18: last contact, last result and state, across restarts


class AgentRegistry:
    """Agent sites of the running config, their tokens, sequence numbers and liveness.

    Lives on the event loop (the web handlers and the silence check run there); ``publish`` is the
    pipeline's, and ``book`` books an agent's test in the throughput plan against the site's budget
    and slot, as the centre's own (:meth:`monitor.throughput_plan.ThroughputPlan.book`).
    """

    def __init__(self, pipeline: ResultPipeline, clock: Callable[[], float] = time.time,
                 book: Callable[[ThroughputResult, float], ThroughputResult] | None = None,
                 journal: SeqJournal | None = None, state: AgentSites | None = None) -> None:
        self.pipeline = pipeline
        self.clock = clock
        self.book = book
        # where the last sequence numbers outlive a restart (None: in memory only, as with --no-history)
        self.journal = journal
        self._restored: dict[str, Position] = journal.load() if journal is not None else {}
        self.state = state if state is not None else AgentSites()
        if journal is not None:  # the fleet's records outlive a restart beside the journal (issue 18)
            self.state.fleet = Fleet(journal.path.parent / FLEET_FILE_NAME)
        self._fleet_names: frozenset[str] = frozenset()
        self.watched: frozenset[str] = frozenset()  # the sites whose silence this instance watches (its share's)
        self._by_hash: dict[str, str] = {}
        self._yaml_hashes: dict[str, str] = {}
        self._stored: dict[str, str] = {}  # site → hash of its enrolled token, from the history store (issue 18)
        self.stored_edits = 0  # tokens issued here so far: a read of the store begun before one is stale
        # (site or None, status) → (when last logged, refusals since not logged): one line a minute per key
        self._refusals_said: dict[tuple[str | None, int], tuple[float, int]] = {}

    @property
    def sites(self) -> dict[str, AgentSite]:
        return self.state.by_name

    @property
    def rejected(self) -> dict[int, int]:
        return self.state.rejected

    def set_targets(self, targets: Sequence[Target], others: Sequence[Target] = ()) -> None:
        """The agent sites of the config now running; a site that stays keeps its sequence and liveness.

        ``others``: sites of other instances' shares that this one serves too (issue 19: agents
        served by any instance behind one centre URL, their positions shared in PostgreSQL). Their
        batches are taken here, but their silence is watched by the instances whose share they are.
        """
        now = self.clock()
        sites: dict[str, AgentSite] = {}
        by_hash: dict[str, str] = {}
        own = {t.name for t in targets}
        self.watched = frozenset(t.name for t in targets if t.mode == "agent" and t.probed)
        for target in (*targets, *(t for t in others if t.name not in own)):
            if target.mode != "agent" or not target.probed:
                continue  # a planned or retired agent site has no agent to hear from (yet, or any more)
            old = self.sites.get(target.name)
            if old is not None:
                old.target = target
                sites[target.name] = old
            else:
                instance, last_seq = self._restored.get(target.name, (None, 0))
                sites[target.name] = AgentSite(target, last_seen=now, instance=instance, last_seq=last_seq)
            if target.agent is not None and target.agent.token_sha256 is not None:
                by_hash[target.agent.token_sha256] = target.name  # else the site's token comes by enrolment alone
        self.state.by_name, self._yaml_hashes = sites, by_hash
        self._hash_index()
        self._refusals_said = {key: said for key, said in self._refusals_said.items()
                               if key[0] is None or key[0] in sites}  # a removed site's keys go with it

    def set_stored_tokens(self, tokens: dict[str, str]) -> None:
        """The enrolled tokens' hashes by site, as the history store holds them now (issue 18)."""
        if tokens != self._stored:
            self._stored = dict(tokens)
            self._hash_index()

    def set_stored_token(self, site: str, digest: str) -> None:
        """A token just issued by enrolment: taken at once, before the next read of the store."""
        self._stored = {**self._stored, site: digest}
        self.stored_edits += 1
        self._hash_index()

    def _hash_index(self) -> None:
        """Token hash → site, for the configured agent sites: the YAML's tokens and the store's alike."""
        by_hash = {digest: name for name, digest in self._stored.items() if name in self.sites}
        by_hash.update(self._yaml_hashes)
        self._by_hash = by_hash

    # ------------------------------------------------------------------ requests
    def authenticate(self, authorization: str | None) -> AgentSite | None:
        """The site whose token this ``Authorization: Bearer …`` header carries, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or text_fault(token.strip()) is not None:
            return None  # odd bytes in a header (decoded as surrogates) are no site's token, and no 500 either
        name = self._by_hash.get(token_hash(token))  # a lookup of a hash: timing tells nothing about the token
        return self.sites.get(name) if name is not None else None

    def refuse(self, status: int, site: AgentSite | None = None, reason: str = "", peer: str | None = None) -> None:
        """Count a refused request, with its site's name when its token named one, and log it (issue 25).

        The log says each (site, status) at most once every :data:`REFUSAL_LOG_SECONDS`, with how many
        more there were since its last line: an agent retrying a bad batch, or a flood of bad tokens,
        is one line a minute, not one per request. The keys are bounded by the configured sites.
        """
        self.rejected[status] = self.rejected.get(status, 0) + 1
        name = site.target.name if site is not None else None
        if site is not None:
            site.rejected[status] = site.rejected.get(status, 0) + 1
        now = self.clock()
        key = (name, status)
        said = self._refusals_said.get(key)
        if said is not None and now - said[0] < REFUSAL_LOG_SECONDS:
            self._refusals_said[key] = (said[0], said[1] + 1)
            return
        self._refusals_said[key] = (now, 0)
        more = f" ({said[1]} more like it in the last {now - said[0]:.0f}s)" if said is not None and said[1] else ""
        reason = " ".join(reason.split())[:_MAX_REASON_LOGGED]
        if name is not None:
            log.warning("agent site %s: request refused with HTTP %d: %s%s", name, status, reason, more,
                        extra={"endpoint": name})
        else:
            log.warning("agent API: request from %s refused with HTTP %d (no site's token): %s%s", peer or "?", status,
                        reason, more)

    def accept(self, site: AgentSite, batch: Batch) -> Accepted:
        """Take a checked batch for ``site``: new results go to the sinks, in order; the gap (if any) is classified.

        Journal, then publish (issue 24): the batch's last sequence number is journalled before
        anything changes, so when the journal cannot be written this raises
        :class:`~monitor.agent.centre.journal.JournalError` with the site's state, the metrics and the
        history exactly as they were: the agent's retry is then taken once, as if it were the first.
        """
        now = self.clock()
        info = batch.agent
        new_install = info.instance != site.instance  # a new installation numbers from 1 again
        last_seq = 0 if new_install else site.last_seq
        remembered = {} if new_install else site.refused_seqs
        # a result refused before and posted again was never stored: taken now if it passes, refused again if not
        fresh = [r for r in batch.results if r.seq > last_seq or r.seq in remembered]
        refused = [r for r in batch.refused if r.seq > last_seq or r.seq in remembered]  # the agent keeps or drops
        top = max([r.seq for r in batch.results if r.seq > last_seq] + [r.seq for r in batch.refused
                                                                         if r.seq > last_seq], default=0)
        if top and self.journal is not None:  # before anything changes: raises, and nothing has
            self.journal.record(site.target.name, info.instance, top, self._positions)
        if new_install:
            site.refused_seqs = {}
            site.instance, site.last_seq = info.instance, 0
        duplicates = len(batch.results) + len(batch.refused) - len(fresh) - len(refused)
        cause: GapCause | None = None
        gap: Gap | None = None
        if site.silent:
            measured_at = [r.result.started_at for r in fresh]
            cause = self._classify(site, info, measured_at, now)
            gap = self._gap(site, info, cause, measured_at, now)
            site.silent, site.gap_cause = False, cause
            site.gaps[cause] += 1
            log.warning("agent site %s reports again after %.0fs of silence: cause %s", site.target.name,
                        now - site.last_seen, cause, extra={"endpoint": site.target.name})
        measured: list[IcmpResult | ThroughputResult] = []
        for item in fresh:
            result = bind(item, site.target)
            if isinstance(result, IcmpResult) and item.path == "gateway":
                site.gateway = GatewayState(result.up, result.rtt_avg_seconds, result.loss_ratio, result.started_at)
                continue
            if isinstance(result, ThroughputResult) and self.book is not None:
                result = self.book(result, now)
            measured.append(result)
        if top:
            site.last_seq = top
        for item in fresh:
            site.refused_seqs.pop(item.seq, None)
        if refused:
            self._refused_results(site, refused)
            for refusal in refused:
                site.refused_seqs[refusal.seq] = refusal
            while len(site.refused_seqs) > REFUSALS_REMEMBERED:  # the oldest first (insertion order)
                del site.refused_seqs[next(iter(site.refused_seqs))]
        if measured or gap is not None:  # one cycle per batch, in the order measured: sinks re-render a site once
            # per post, not per result; the gap this batch ended rides along, so the history writes it in order
            self.pipeline.publish(Cycle("agent", site.target.group, measured[0].started_at if measured else now, 0.0,
                                        tuple(measured), () if gap is None else (gap,)))
        site.accepted += len(fresh)
        site.duplicates += duplicates
        site.info = info
        site.last_seen = now
        self._clock(site, batch, sum(1 for r in fresh if r.corrected))
        record = self.contact(site)
        record.version, record.spool_depth = info.version, info.spool_depth
        if fresh:
            # a site back after an hour or more changes the fleet's picture: kept at once, not within the minute
            back = record.last_result is None or now - record.last_result > FLEET_SAVE_AT_ONCE_SECONDS
            record.last_result = now
            if back:
                self.state.fleet.save(now, force=True)
        return Accepted(len(fresh), duplicates, site.last_seq, cause, len(refused),
                        _lines(batch, {r.seq for r in fresh}, {r.seq: r for r in refused}), batch.clock)

    def contact(self, site: AgentSite) -> FleetRecord:
        """Note a request the site's token made (a batch, a settings fetch): its fleet record, updated (issue 18)."""
        record = self.state.fleet.record(site.target.name, self.clock())
        record.last_contact = self.clock()
        return record

    def _clock(self, site: AgentSite, batch: Batch, corrected: int) -> None:
        """Keep the offset measured on ``batch``; say it when the agent's clock goes off or comes right (issue 18)."""
        clock = batch.clock
        if clock is None or clock.bound_seconds is None:
            return  # an agent from before issue 18 sends no round trip: nothing measured
        was_off = site.clock is not None and site.clock.off
        site.clock = clock
        record = self.state.fleet.record(site.target.name, self.clock())
        record.offset_seconds, record.offset_bound_seconds = clock.offset_seconds, clock.bound_seconds
        site.corrected += corrected
        if clock.off and not was_off:
            log.warning("agent site %s: its clock is %+.1fs off the centre's (±%.1fs, over the %gs allowed): %s; "
                        "set the agent's clock (NTP)", site.target.name, clock.offset_seconds, clock.bound_seconds,
                        MAX_CLOCK_OFFSET_SECONDS, "its results' times are corrected" if clock.correctable
                        else "its results are held until a round trip is short enough to correct them",
                        extra={"endpoint": site.target.name})
        elif was_off and not clock.off:
            log.warning("agent site %s: its clock is right again (%+.1fs ±%.1fs)", site.target.name,
                        clock.offset_seconds, clock.bound_seconds, extra={"endpoint": site.target.name})

    def _refused_results(self, site: AgentSite, refused: Sequence[RefusedResult]) -> None:
        """Count results refused on their own, and say so at most once a minute per site (as for requests)."""
        site.refused += len(refused)
        now = self.clock()
        key = (site.target.name, 0)  # 0: not an HTTP status, the results of a batch taken with 200
        said = self._refusals_said.get(key)
        if said is not None and now - said[0] < REFUSAL_LOG_SECONDS:
            self._refusals_said[key] = (said[0], said[1] + len(refused))
            return
        self._refusals_said[key] = (now, 0)
        first = refused[0]
        more = f" ({said[1]} more in the last {now - said[0]:.0f}s)" if said is not None and said[1] else ""
        passing = sum(1 for r in refused if r.retry_after_seconds is not None)
        log.warning("agent site %s: %d results refused, %d of them for a cause that can pass (the agent keeps "
                    "those); the first, seq %d: %s: %s%s", site.target.name, len(refused), passing, first.seq,
                    first.field, " ".join(first.reason.split())[:_MAX_REASON_LOGGED], more,
                    extra={"endpoint": site.target.name})

    def advance(self, site: AgentSite, instance: str, seq: int, refused: Iterable[int]) -> None:
        """What another instance behind the same centre URL stored of ``site`` (issue 19), before a batch is taken.

        ``seq`` is the region's stored position of the agent installation ``instance`` and ``refused``
        its results refused on their own (:mod:`monitor.agent.centre.shared`): results at or below
        ``seq`` are answered as duplicates here too, and a refused one posted again is taken or refused
        again, never called a duplicate. A position never moves back: this instance may have taken more.
        """
        if site.instance != instance:
            if not seq:
                return  # nothing stored of this installation yet: :meth:`accept` starts it from 1 as before
            site.instance, site.last_seq, site.refused_seqs = instance, 0, {}  # another instance took it over
        site.last_seq = max(site.last_seq, seq)
        held = set(refused)
        for number in [n for n in site.refused_seqs if n <= seq and n not in held]:
            del site.refused_seqs[number]  # refused here before, stored by another instance since
        for number in refused:
            if number not in site.refused_seqs:
                site.refused_seqs[number] = RefusedResult(number, "", "held by another instance")
        while len(site.refused_seqs) > REFUSALS_REMEMBERED:
            del site.refused_seqs[next(iter(site.refused_seqs))]

    def heard(self, contacts: dict[str, float]) -> None:
        """Other instances' last batches from agent sites (issue 19): a site heard there is not silent here.

        A silent site heard elsewhere since is silent no more; the instance that took the batch wrote
        what ended the silence, so nothing is published here: the provisional gap keeps its last end.
        """
        for name in self.watched:
            site, at = self.sites.get(name), contacts.get(name)
            if site is None or at is None or at <= site.last_seen:
                continue
            site.last_seen = at
            if site.silent:
                site.silent = False
                log.warning("agent site %s is heard again by another instance", name, extra={"endpoint": name})

    def confirm(self, site: AgentSite) -> None:
        """The history has stored ``site``'s batches so far: journal that, so a restart does not take them again."""
        if self.journal is not None and site.last_seq:
            self.journal.confirm(site.target.name, site.instance, site.last_seq)

    def _positions(self) -> dict[str, Position]:
        return {name: (s.instance, s.last_seq) for name, s in self.sites.items()}

    @staticmethod
    def _classify(site: AgentSite, info: AgentInfo, measured_at: Iterable[float], now: float) -> GapCause:
        """Why ``site`` was silent from ``site.last_seen`` until ``now``."""
        gap = now - site.last_seen
        before = site.info
        if before is not None and info.boot_id != before.boot_id and info.uptime_seconds < gap:
            return "power"
        if any(site.last_seen < t <= site.silent_since for t in measured_at):
            return "link"  # the agent was up and measuring while the centre heard nothing: its posts did not arrive
        return "unknown"

    @staticmethod
    def _gap(site: AgentSite, info: AgentInfo, cause: GapCause, measured_at: Sequence[float], now: float) -> Gap:
        """The span of a classified silence, for the history (see the module doc for its ends)."""
        start, end = site.last_seen, now
        if cause == "power":
            end = max(start, now - info.uptime_seconds)  # the boot: the power came back then at the latest
            before_boot = [t for t in measured_at if start < t < end]  # spooled before the cut: it still had power
            start = max([start, *before_boot])
        return Gap(site.target, start, end, cause, site.target.icmp.interval_seconds,
                   None if start == site.last_seen else site.last_seen)  # the provisional gap starts at last_seen

    @staticmethod
    def _open_gap(site: AgentSite, now: float) -> Gap:
        """The silence so far, as the history keeps it until the agent tells what happened: unknown, down."""
        site.gap_written_at = now
        return Gap(site.target, site.last_seen, now, "unknown", site.target.icmp.interval_seconds)

    # ------------------------------------------------------------------ liveness
    def check_silence(self) -> list[str]:
        """Mark sites silent for longer than their ``stale_after`` as down; returns the names newly marked."""
        now = self.clock()
        if self._fleet_names != self.sites.keys():  # the config changed: the fleet follows (issue 18)
            self._fleet_names = frozenset(self.sites)
            self.state.fleet.configured(self._fleet_names, now)
        self.state.fleet.save(now)
        marked: list[str] = []
        for site in self.sites.values():
            if site.target.name not in self.watched:
                continue  # another instance's share, served here too (issue 19): its owners watch its silence
            stale_after = site.target.agent_stale_after_seconds
            if site.silent:  # the history's provisional gap grows with the silence, a row update a minute
                if now - site.gap_written_at >= OPEN_GAP_REFRESH_SECONDS:
                    self.pipeline.publish(Cycle("agent", site.target.group, now, 0.0, (),
                                                (self._open_gap(site, now),)))
                continue
            if now - site.last_seen <= stale_after:
                continue
            site.silent, site.silent_since, site.gap_cause = True, now, "unknown"
            marked.append(site.target.name)
            detail = f"nothing received from the site's agent for {now - site.last_seen:.0f}s (stale_after " \
                     f"{stale_after:g}s)"
            self.pipeline.publish(Cycle("agent", site.target.group, now, 0.0, (IcmpResult(
                site.target, now, None, 0, (), ProbeErrorReason.AGENT_SILENT, detail),), (self._open_gap(site, now),)))
        return marked


def _lines(batch: Batch, stored: set[int], refused: dict[int, RefusedResult]) -> tuple[dict[str, object], ...]:
    """Every result's outcome for a version 2 answer, in ``seq`` order: stored now, refused now, else a duplicate."""
    seqs = sorted([r.seq for r in batch.results] + [r.seq for r in batch.refused])
    return tuple(result_answer(seq, "refused", refused[seq]) if seq in refused
                 else result_answer(seq, "stored") if seq in stored
                 else result_answer(seq, "duplicate") for seq in seqs)
