"""The history's store protocol and records: what a backend does, and the values reports read back.

Prometheus keeps series, but the monthly compliance report and a restart without gaps need the
results themselves. This module holds the backend-neutral parts:

* :class:`HistoryStore`, the small interface a backend implements (SQLite now, PostgreSQL when
  several instances share one history), with :class:`EmptyHistory` for reading before the writer
  has created the store and :class:`HistoryNotCreated` for saying so;
* the stored values reports and the restore read (:class:`EndpointRecord`, :class:`StoredCycle`,
  :class:`StoredTest`, :class:`StoredGap`, :class:`StoredWindow`), and :class:`StoreStats`, the writer's counters.

What it leaves to others: the writer sink (:mod:`monitor.history.writer`), the rows set aside
(:mod:`monitor.history.set_aside`), the restore (:mod:`monitor.history.restore`), the one row
codec (:mod:`monitor.history.codec`) and the backends (:mod:`monitor.history.sqlite`,
:mod:`monitor.history.postgres`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from monitor.errors import ProbeErrorReason
from monitor.results import DirectionResult, Gap, Result, ThroughputResult, Trace, latency_verdict
from monitor.targets import Target

StoreOperation = Literal["open", "write", "prune", "restore"]
STORE_OPERATIONS: tuple[StoreOperation, ...] = ("open", "write", "prune", "restore")


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """An endpoint's labels as the history knows them (the latest written), for reports to group by.

    The roll-out fields (issue 11) have defaults, so a record of an older history, which has none,
    reads as a connected site without a contract of its own.
    """

    name: str
    kind: str
    district: str
    link: str
    group: str
    target_bits_per_second: float
    status: str = "connected"  # planned | connected | retired
    planned_date: dt.date | None = None
    provider: str | None = None
    contracted_bits_per_second: float | None = None

    @classmethod
    def of(cls, target: Target) -> EndpointRecord:
        return cls(target.name, target.kind, target.district, target.link, target.group,
                   target.target_bits_per_second, target.status, target.planned_date, target.provider,
                   target.contracted_bits_per_second)


@dataclass(frozen=True, slots=True)
class StoredCycle:
    """One endpoint's ICMP cycle as read back: enough for availability, loss and RTT percentiles."""

    started_at: float
    sent: int
    rtts_seconds: tuple[float | None, ...]
    error: str | None
    # what the probe or a classifier said with the error (issue 21: the upstream node an upstream_down cycle
    # was charged to, read by monitor.upstreams.upstream_of); "" when none
    error_detail: str = ""

    @property
    def attempted(self) -> int:
        return len(self.rtts_seconds)

    @property
    def received(self) -> int:
        return sum(1 for r in self.rtts_seconds if r is not None)


@dataclass(frozen=True, slots=True)
class StoredTest:
    """One throughput test as read back, with the target and verdict it had when it ran."""

    endpoint: str
    method: str
    started_at: float
    ended_at: float
    address: str | None
    directions: tuple[DirectionResult, ...]
    target_bits_per_second: float
    target_upload_bits_per_second: float | None
    target_met: bool | None
    error: str | None
    error_detail: str
    budget_remaining_bytes: int | None
    max_added_latency_seconds: float | None = None  # the site's limit when tested (issue 20); None before it

    def direction_rate(self, name: str) -> float | None:
        found = next((d for d in self.directions if d.direction == name), None)
        return None if found is None else found.bits_per_second

    @property
    def max_added_latency_measured_seconds(self) -> float | None:
        """The largest added latency under load of its directions (issue 20), None when none was sampled."""
        added = [a for a in (d.added_latency_seconds for d in self.directions) if a is not None]
        return max(added) if added else None

    @property
    def latency_under_load_ok(self) -> bool | None:
        """The latency verdict against the limit the site had when tested; None without samples or a limit."""
        limit = self.max_added_latency_seconds
        return None if limit is None else latency_verdict(self.directions, limit)  # the live result's rule

    @property
    def pep_detected(self) -> bool | None:
        """True when a direction's TCP handshakes were answered before the site (issue 20); None: not judged."""
        verdicts = [v for v in (d.pep_suspected for d in self.directions) if v is not None]
        return any(verdicts) if verdicts else None

    def as_result(self, target: Target) -> ThroughputResult:
        """The test as a result of ``target`` (today's labels and settings), to restore its figures."""
        return ThroughputResult(target, self.method, self.started_at, self.ended_at, self.address,
                                self.directions, ProbeErrorReason.stored(self.error), self.error_detail,
                                self.budget_remaining_bytes)


@dataclass(frozen=True, slots=True)
class StoredGap:
    """A classified silence of an agent site as read back (see :class:`~monitor.results.Gap`)."""

    endpoint: str
    started_at: float
    ended_at: float
    cause: str  # link | power | unknown
    interval_seconds: float


@dataclass(frozen=True, slots=True)
class StoredWindow:
    """A maintenance window opened at run time (issue 21, ``POST /api/v1/maintenance``), as stored.

    ``target`` is a site's name (``kind`` ``site``) or an upstream node's (``upstream``: every site
    behind it is in maintenance too). The span is half-open, [starts_at, ends_at); a window closed
    early ends at ``closed_at`` instead (:attr:`until`).
    """

    id: int
    target: str
    kind: str  # site | upstream
    starts_at: float
    ends_at: float
    reason: str
    opened_at: float
    closed_at: float | None = None

    @property
    def until(self) -> float:
        """Where the window really ends: at ``ends_at``, or earlier where it was closed."""
        return self.ends_at if self.closed_at is None else min(self.ends_at, self.closed_at)

    def covers(self, t: float) -> bool:
        """Whether Unix time ``t`` is inside the window (start inclusive, end exclusive)."""
        return self.starts_at <= t < self.until


class HistoryStore(Protocol):
    """What a history backend does. Every method may raise the backend's errors; callers count them.

    Writes are idempotent per (endpoint, start time), so a batch retried after an unclear failure,
    or sent twice by an agent, is stored once. On a shared PostgreSQL history an ICMP cycle is keyed
    by its writer's instance too (issue 19), so replicas of a site keep their own views; an agent
    site's cycles are stored under no instance, once, whichever instance took them.
    """

    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap] = ()) -> None:
        """Store ``results`` and ``gaps`` (and update ``endpoints``' labels) in one transaction.

        A gap is keyed by (endpoint, start): written again, it replaces the one stored; one with
        ``replaces_start`` also deletes the endpoint's gap that starts there (its provisional one).
        """

    def prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
        """Delete up to ``limit`` rows older than the bounds; return how many went (0: nothing left).

        Gaps are kept as long as throughput tests (both are few rows, and reports look far back):
        a gap goes when it *ended* before ``throughput_before``. So are traces (issue 21).
        """

    def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint the history knows (with results, or written as configured), with its latest labels."""

    def first_results(self) -> dict[str, float]:
        """Per endpoint with results, when its first result ever written started (kept when old rows are pruned)."""

    def icmp_cycles(self, endpoint: str, start: float, end: float) -> Iterator[StoredCycle]:
        """The endpoint's ICMP cycles started in [start, end), oldest first: one stream per site.

        Where replicas wrote their own cycles (issue 19), one per site-interval, the best replica's
        (:func:`monitor.history.replicas.merge`): reports, KPIs and the API count each interval once.
        """

    def throughput_tests(self, endpoint: str, start: float, end: float) -> list[StoredTest]:
        """The endpoint's throughput tests started in [start, end), oldest first."""

    def gaps(self, endpoint: str, start: float, end: float) -> list[StoredGap]:
        """The endpoint's gaps that overlap [start, end) (ended after start, began before end), oldest first."""

    def last_measured_tests(self) -> dict[str, StoredTest]:
        """Per endpoint, its latest test that measured a rate."""

    def last_tests(self) -> dict[str, StoredTest]:
        """Per endpoint, its latest test of any outcome (when the plan last tried it)."""

    def bytes_since(self, endpoint: str, since: float) -> int:
        """Bytes the endpoint's tests moved since ``since`` (for the monthly budget)."""

    def recent_verdicts(self, endpoint: str, limit: int) -> list[bool]:
        """The verdicts of the endpoint's last ``limit`` tests that gave one, newest first."""

    def open_maintenance(self, target: str, kind: str, starts_at: float, ends_at: float, reason: str,
                         opened_at: float) -> StoredWindow:
        """Store a run-time maintenance window (in its own transaction); the window with its new id."""

    def close_maintenance(self, window_id: int, closed_at: float) -> StoredWindow | None:
        """Close window ``window_id`` at ``closed_at`` (a closed one keeps its first close); None: no such id."""

    def maintenance_windows(self, start: float, end: float) -> list[StoredWindow]:
        """The run-time windows that overlap [start, end) (closed ones by where they really ended), by start."""

    def write_traces(self, traces: Sequence[tuple[Target, Trace]]) -> None:
        """Store traces (issue 21) of sites or upstream nodes in one transaction; keyed by (endpoint, at)."""

    def traces(self, endpoint: str, start: float, end: float) -> list[Trace]:
        """The endpoint's traces taken in [start, end), oldest first (their ``target`` is "": not kept)."""

    def last_traces(self) -> dict[str, Trace]:
        """Per endpoint (site or upstream node), its latest trace."""

    def close(self) -> None: ...


class HistoryNotCreated(FileNotFoundError):
    """The store is configured but holds no history yet: no SQLite file, or a database without
    connmon's schema. The daemon's writer creates it at its first write (just after start-up), so
    the daemon's own readers take it for an empty history (:class:`EmptyHistory`) instead of an
    error; ``connmon report`` says it, like any store it cannot read."""


class EmptyHistory:
    """A :class:`HistoryStore` with nothing in it, for reading before the writer has created the store.

    Reading it gives what the real store gives before any write: no endpoints, no results.
    """

    def write(self, endpoints: Sequence[EndpointRecord], results: Sequence[Result], gaps: Sequence[Gap] = ()) -> None:
        raise RuntimeError("EmptyHistory is read-only")

    def prune(self, icmp_before: float, throughput_before: float, limit: int) -> int:
        return 0

    def endpoints(self) -> list[EndpointRecord]:
        return []

    def first_results(self) -> dict[str, float]:
        return {}

    def icmp_cycles(self, endpoint: str, start: float, end: float) -> Iterator[StoredCycle]:
        return iter(())

    def throughput_tests(self, endpoint: str, start: float, end: float) -> list[StoredTest]:
        return []

    def gaps(self, endpoint: str, start: float, end: float) -> list[StoredGap]:
        return []

    def last_measured_tests(self) -> dict[str, StoredTest]:
        return {}

    def last_tests(self) -> dict[str, StoredTest]:
        return {}

    def bytes_since(self, endpoint: str, since: float) -> int:
        return 0

    def recent_verdicts(self, endpoint: str, limit: int) -> list[bool]:
        return []

    def open_maintenance(self, target: str, kind: str, starts_at: float, ends_at: float, reason: str,
                         opened_at: float) -> StoredWindow:
        raise RuntimeError("EmptyHistory is read-only")

    def close_maintenance(self, window_id: int, closed_at: float) -> StoredWindow | None:
        raise RuntimeError("EmptyHistory is read-only")

    def maintenance_windows(self, start: float, end: float) -> list[StoredWindow]:
        return []

    def write_traces(self, traces: Sequence[tuple[Target, Trace]]) -> None:
        raise RuntimeError("EmptyHistory is read-only")

    def traces(self, endpoint: str, start: float, end: float) -> list[Trace]:
        return []

    def last_traces(self) -> dict[str, Trace]:
        return {}

    def close(self) -> None:
        pass


@dataclass(slots=True)
class StoreStats:
    """Counters the metrics sink renders per scrape (written by the writer thread, read by the loop)."""

    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STORE_OPERATIONS, 0))
    written: int = 0
    dropped: int = 0
    pending: int = 0
    pruned: int = 0
    last_write_at: float = 0.0
    set_aside: int = 0  # results (gaps too) the store could not write for a reason in the row itself
    set_aside_lost: int = 0  # of those, the ones not kept in the set-aside file (full, unwritable, none)
    corrupt_files: int = 0  # corrupt SQLite files moved aside at open, a fresh one started (issue 25)
