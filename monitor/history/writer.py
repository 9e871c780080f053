"""The history sink: every result into a durable store, written off the event loop, faults counted.

Prometheus keeps series, but the monthly compliance report and a restart without gaps need the
results themselves. :class:`HistorySink` is the result-pipeline sink that keeps them in a
:class:`~monitor.history.store.HistoryStore` (the protocol and records live in
:mod:`monitor.history.store`, the backends in :mod:`~monitor.history.sqlite` and
:mod:`~monitor.history.postgres`):

* ``consume`` only queues the cycle; one writer thread writes each cycle in one transaction, so
  the event loop never waits on a disk. A store that fails (read-only, full, gone) costs history,
  never probing or /metrics: the batch stays in a bounded backlog that is retried,
  ``connmon_store_errors_total`` counts the failure and the log says it at most once a minute.
  (A full disk is a failure only once the SQLite store has freed its own write-ahead log and tried
  again: :mod:`monitor.write_ahead_log`, issue 25.) Pruning runs in the same thread in small
  slices between writes, so it never holds the database for long. An agent site's classified
  silence (:class:`~monitor.results.Gap`, issue 10) rides in the cycle that ended it and takes the
  same road: queued, batched with the results, written in their transaction, pruned like tests.
* A row that no store can take (:func:`~monitor.history.set_aside.is_row_fault`) is set aside into
  a JSON-lines file beside the history and counted, and the other rows of its chunk are written
  (issue 24): retried, it would fail again and again and stop the history of every site. The file
  and the errors are :mod:`monitor.history.set_aside`'s.
* A corrupt SQLite file is not a passing fault (issue 25): the writer's store opens with ``recover``,
  which moves it aside and starts a fresh one (:mod:`monitor.sqlite_files` says it); the writer
  counts it (``connmon_store_corrupt_files_total``), and an error that says corruption later makes
  the next open check the file again.
* the start-up restore (:mod:`monitor.history.restore`): :meth:`HistorySink.restore` on the event
  loop for a store that answers at once (SQLite), :meth:`HistorySink.restore_later` in the writer
  thread for one that may be away (PostgreSQL), so start-up never waits on a server.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor import sqlite_files
from monitor.config import Retention
from monitor.errors import ProbeErrorReason
from monitor.history import set_aside
from monitor.history.restore import RestoredState, read_restored
from monitor.history.store import EndpointRecord, HistoryStore, StoreOperation, StoreStats
from monitor.results import Cycle, Gap, Result, Trace
from monitor.targets import Target
from monitor.text import printable

log = logging.getLogger("monitor.history")  # the history's one logger name (as before issue 23's split)

MAX_BACKLOG_RESULTS = 200_000  # ~ an hour of 10,000 sites at 3-minute cycles; older ones are dropped first
RETRY_SECONDS = 10.0  # a failing store is retried this often even when no new cycle arrives
PRUNE_EVERY_SECONDS = 600.0
PRUNE_SLICE_ROWS = 5_000  # rows deleted per transaction: short enough that writes never wait long
LOG_EVERY_SECONDS = 60.0
WRITE_CHUNK_RESULTS = 10_000
RESTORE_ATTEMPTS = 3  # a store that opens but fails the restore queries this often is given up on
_SET_ASIDE_CAUSES = 50  # distinct causes logged apart; any further ones share one key (the log stays bounded)


class _Stop:
    """Queue sentinel: flush and end the writer thread."""


MAX_PENDING_TRACES = 1_000  # traces kept for a failing store; older ones are dropped first


@dataclass(frozen=True, slots=True)
class _Stored:
    """Queue item: set ``done`` True once everything queued before it is in the store (or set aside on disk)."""

    done: concurrent.futures.Future[bool]


@dataclass(frozen=True, slots=True)
class _Traced:
    """Queue item: a trace taken (issue 21), for the ``traces`` table."""

    target: Target
    trace: Trace


@dataclass(slots=True)
class _Restore:
    """Queue item: read the restored state in the writer thread once the store answers (see ``restore_later``)."""

    targets: tuple[Target, ...]
    deliver: Callable[[RestoredState | None], object]
    told_unavailable: bool = False
    failures: int = 0  # failures after the store opened (a query that fails, not a server that is away)


class HistorySink:
    """Result-pipeline sink that keeps every result in a :class:`HistoryStore`.

    ``open_store`` is called in the writer thread (SQLite connections belong to their thread) and
    again after a failure, so a state dir that comes back (remounted, space freed) is used again.
    ``set_aside_path`` is the JSON-lines file where rows the store cannot take are kept (see
    :meth:`_put_aside`); None keeps them nowhere (they are still counted and said).
    """

    def __init__(self, open_store: Callable[[], HistoryStore], retention: Retention,
                 clock: Callable[[], float] = time.time, *, set_aside_path: Path | None = None) -> None:
        self._open_store = open_store
        self.retention = retention
        self._clock = clock
        self._set_aside_file = set_aside.SetAsideFile(set_aside_path, self._say)
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[Sequence[Result | Gap] | Sequence[EndpointRecord] | _Stop | _Restore
                                       | _Traced | _Stored] = queue.SimpleQueue()
        self._traces: deque[_Traced] = deque(maxlen=MAX_PENDING_TRACES)  # traces not written yet
        self._waiting: list[_Stored] = []  # asked whether what came before them is stored (issue 25)
        # a test hook (issue 25): exit at once before writing an agent's results, as a kill -9 would
        self._crash_before_agent_rows = os.environ.get("CONNMON_TEST_CRASH_BEFORE_AGENT_ROWS") == "1"
        self._restore: _Restore | None = None  # a restore that waits for the store to answer
        self._backlog: deque[Result | Gap] = deque()  # gaps travel with results: in order, batched, retried
        self._endpoints: dict[str, EndpointRecord] = {}  # labels to write with the next batch
        self._unwritten: dict[str, EndpointRecord] = {}  # configured sites whose record the store lacks
        self._written: dict[str, EndpointRecord] = {}  # what the store was last given, per site
        self._refused: dict[str, EndpointRecord] = {}  # records the store refused alone (set aside), per site
        self._store: HistoryStore | None = None
        self._last_logged: dict[str, float] = {}
        self._next_prune = 0.0  # prune soon after start: a long-stopped daemon may have much to drop
        self._lock = threading.Lock()  # ``stats.pending`` is counted up on the loop and down in the writer
        self._stop_by = 0.0  # set by close(): until when a failing store is retried at shutdown
        # After a failed open, the next try waits RETRY_SECONDS, however many cycles arrive: several
        # instances must not storm a database server that is restarting with a connection per cycle.
        self._reopen_at = 0.0
        self.stats.last_write_at = clock()  # "stale since start-up" until the first write, for alerts
        self._thread = threading.Thread(target=self._run, name="connmon-history", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ pipeline side (event loop)
    def set_targets(self, targets: Sequence[Target]) -> None:
        """Every configured site gets its record written, planned ones too (they have no results): the
        report counts roll-out from the history (issue 11)."""
        self._queue.put([EndpointRecord.of(t) for t in targets])

    def consume(self, cycle: Cycle) -> None:
        results = cycle.results
        if cycle.probe == "agent":  # silence is not a measurement: the agent's spool tells what happened
            results = tuple(r for r in results if r.error is not ProbeErrorReason.AGENT_SILENT)  # (agent.centre)
        items: tuple[Result | Gap, ...] = (*cycle.gaps, *results)
        if not items:
            return
        with self._lock:
            full = self.stats.pending >= MAX_BACKLOG_RESULTS
            if not full:
                self.stats.pending += len(items)
        if full:  # the writer is stuck (a hung disk): do not let the queue grow without bound
            self.stats.dropped += len(items)
            self._say("dropped", f"history: {self.stats.pending} results wait to be written; dropping new "
                                 "ones (connmon_store_results_dropped_total)")
            return
        self._queue.put(items)

    def cycle_skipped(self, probe: str, group: str) -> None:
        """Nothing ran, so there is nothing to keep (the metrics sink counts skips)."""

    def stored(self) -> concurrent.futures.Future[bool]:
        """A future that becomes True once every result given to :meth:`consume` before this call is written.

        Written to the store, or set aside on disk when the store refuses a row: either way it survives
        a kill. It becomes False at shutdown if the store never took them. The agents' API waits on it
        before answering 200 (issue 25).
        """
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._queue.put(_Stored(done))
        return done

    def trace_taken(self, target: Target, trace: Trace) -> None:
        """Keep a trace (issue 21, :class:`monitor.tracer.Tracer`'s ``record``): written by the writer thread."""
        self._queue.put(_Traced(target, trace))

    def restore_later(self, targets: Sequence[Target], deliver: Callable[[RestoredState | None], object]) -> None:
        """Restore in the writer thread, when the store answers; for a store that may be away (PostgreSQL).

        ``deliver`` is called in the writer thread: with None once, when the store could not be
        opened on the first try (the daemon goes on without the history's figures), then with the
        restored state when the store answers, before any of this process's results are written
        (so the month's bytes read back do not include tests the daemon already counts). A store
        that opens but fails the restore queries is retried :data:`RESTORE_ATTEMPTS` times, then
        given up (counted in ``connmon_store_errors_total{operation="restore"}``) as at start-up.
        """
        self._queue.put(_Restore(tuple(targets), deliver))

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Write what is queued, retrying a failing store until ``timeout_seconds``, and close the store.

        Whatever could not be written by then is counted as dropped and said in the log, always.
        """
        self._stop_by = time.monotonic() + max(0.0, timeout_seconds - 0.5)
        self._queue.put(_Stop())
        self._thread.join(timeout_seconds)
        if self._thread.is_alive():
            log.error("history: %d results not written at shutdown (the store is slow or failing)",
                      self.stats.pending)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception as err:  # a bug must not end the writer: history would stop without a trace
                self.stats.errors["write"] += 1
                self._say("internal", f"history: unexpected error in the writer: {err!r}")
                log.debug("history: writer error", exc_info=True)
                time.sleep(0.1)

    def _step(self) -> bool:
        """One round of the writer: take what is queued, write it, prune a slice if one is due; True when stopping."""
        try:
            item = self._queue.get(timeout=RETRY_SECONDS if self._backlog or self._unwritten or self._restore
                                   or self._traces else self._until_prune())
        except queue.Empty:
            item = None
        stop = isinstance(item, _Stop)
        if item is not None and not isinstance(item, _Stop):
            self._take(item)
        while not stop:  # take everything already queued into the same transaction
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(more, _Stop):
                stop = True
            else:
                self._take(more)
        if self._restore is not None and not stop and not self._restore_step():
            return False  # the store is away: nothing can be written either; retry in RETRY_SECONDS
        if self._crash_before_agent_rows and any(getattr(r, "target", None) is not None and r.target.mode == "agent"
                                                 for r in self._backlog):
            os._exit(137)  # the test hook: as if killed between the journal and the history
        written = self._write() if self._backlog or self._unwritten else True
        if written and not self._backlog and self._waiting:
            for waiting in self._waiting:
                waiting.done.set_result(True)
            self._waiting.clear()
        if written and self._traces:
            written = self._write_traces()
        # a slice after a write too: cycles that arrive steadily (the queue never runs dry) must not starve
        # pruning; a failing store is left alone (the write's retry comes first)
        if written and not stop and self._clock() >= self._next_prune:
            self._prune_slice()
        if not stop:
            return False
        while (self._backlog or self._unwritten) and time.monotonic() < self._stop_by:  # a store may come back
            self._reopen_at = 0.0  # the last seconds: try as often as the loop goes
            if not self._write():
                time.sleep(0.2)
        for waiting in self._waiting:  # the API's waits end: stored, or not (the agent keeps the batch)
            waiting.done.set_result(not self._backlog)
        self._waiting.clear()
        if self._backlog:
            lost = len(self._backlog)
            self._backlog.clear()
            self.stats.dropped += lost
            with self._lock:
                self.stats.pending = max(0, self.stats.pending - lost)
            log.error("history: %d results lost at shutdown: the store failed (see the errors above)", lost)
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # closing a broken store must not stop the shutdown
                log.debug("history: close failed", exc_info=True)
        return True

    def _until_prune(self) -> float:
        return max(0.05, min(RETRY_SECONDS, self._next_prune - self._clock()))

    def _take(self, item: Sequence[Result | Gap] | Sequence[EndpointRecord] | _Restore | _Traced | _Stored) -> None:
        if isinstance(item, _Restore):
            self._restore = item
            return
        if isinstance(item, _Traced):
            self._traces.append(item)
            return
        if isinstance(item, _Stored):
            self._waiting.append(item)
            return
        for entry in item:
            if isinstance(entry, EndpointRecord):
                self._endpoints[entry.name] = entry
                if self._written.get(entry.name) != entry and self._refused.get(entry.name) != entry:
                    self._unwritten[entry.name] = entry
            else:
                self._backlog.append(entry)
        overflow = len(self._backlog) - MAX_BACKLOG_RESULTS
        for _ in range(max(0, overflow)):
            self._backlog.popleft()
        if overflow > 0:
            self.stats.dropped += overflow
            with self._lock:
                self.stats.pending -= overflow
            self._say("dropped", f"history: the store has failed for long; dropped the {overflow} oldest "
                                 "unwritten results (connmon_store_results_dropped_total)")

    def _connected(self) -> HistoryStore | None:
        if self._store is None:
            if time.monotonic() < self._reopen_at:
                return None  # tried less than RETRY_SECONDS ago: not one connection attempt per cycle
            try:
                self._store = self._open_store()
            except Exception as err:
                self._reopen_at = time.monotonic() + RETRY_SECONDS
                self._failed("open", err)
                return None
            self._count_moved_aside(self._store)
            # a reopened store may be a new file (remounted, replaced): give it every configured site's record
            self._written.clear()
            self._unwritten.update((n, r) for n, r in self._endpoints.items() if self._refused.get(n) != r)
        return self._store

    def _write(self) -> bool:
        """Write the backlog, :data:`WRITE_CHUNK_RESULTS` per transaction; False when the store failed.

        Chunks keep a long backlog (after an outage) from becoming one transaction that shutdown
        or a crash would roll back whole. A chunk that fails for a reason in one of its rows
        (:func:`is_row_fault`) is split in halves, each written in its own transaction, down to
        single items; an item that fails alone is set aside (:meth:`_put_aside`) and the others
        are written. Halving, not one transaction per item: a site whose every result is refused
        (a name no store takes) costs some 30 extra transactions a cycle at 10,000 sites, not 10,000.
        A store fault anywhere stops the round as before: what is written is out of the backlog,
        the rest waits for the retry.
        """
        while self._backlog or self._unwritten:
            store = self._connected()
            if store is None:
                return False
            chunk = [self._backlog[i] for i in range(min(WRITE_CHUNK_RESULTS, len(self._backlog)))]
            # configured sites' records go in even without results (planned ones), ahead of the items
            parts: list[list[EndpointRecord | Result | Gap]] = [[*self._unwritten.values(), *chunk]]
            while parts:
                part = parts.pop()
                try:
                    self._write_part(store, part)
                except Exception as err:
                    if not set_aside.is_row_fault(err):
                        self._failed("write", err)
                        return False
                    if len(part) == 1:
                        self._put_aside(part[0], err)
                    else:  # the first half is popped first: items leave the backlog in their order
                        half = len(part) // 2
                        parts += (part[half:], part[:half])
        return True

    def _write_part(self, store: HistoryStore, part: Sequence[EndpointRecord | Result | Gap]) -> None:
        """Write ``part`` (records, then the backlog's first items, in order) in one transaction, with the
        records its items need; once written, its items leave the backlog. Raises what the store raised."""
        items = [u for u in part if not isinstance(u, EndpointRecord)]
        endpoints = self._records_to_write(items)
        endpoints.update((u.name, u) for u in part if isinstance(u, EndpointRecord))
        store.write(list(endpoints.values()), [r for r in items if not isinstance(r, Gap)],
                    [g for g in items if isinstance(g, Gap)])
        self._written.update(endpoints)
        for name in endpoints:
            self._unwritten.pop(name, None)
        for _ in items:
            self._backlog.popleft()
        self.stats.written += len(items)
        with self._lock:
            self.stats.pending = max(0, self.stats.pending - len(items))
        self.stats.last_write_at = self._clock()
        if self._last_logged.pop("write", None) is not None:
            log.warning("history: writing works again")

    def _write_traces(self) -> bool:
        """Write the traces taken since the last write, in one transaction; False when the store failed."""
        store = self._connected()
        if store is None:
            return False
        batch = list(self._traces)
        try:
            store.write_traces([(t.target, t.trace) for t in batch])
        except Exception as err:
            if set_aside.is_row_fault(err):  # a trace no store takes is not worth the history's stop
                self._traces.clear()
                self._say("trace", f"history: traces not written: {type(err).__name__}: {printable(str(err)[:300])}")
                return True
            self._failed("write", err)
            return False
        for _ in batch:
            self._traces.popleft()
        return True

    def _put_aside(self, item: EndpointRecord | Result | Gap, err: Exception) -> None:
        """Take ``item``, which the store refused alone for a reason in its own row, out of the writer's way.

        A result (or gap) leaves the backlog and ``pending`` and is counted in ``set_aside``; a
        record leaves the records to write and is not offered again until it changes (its site's
        results go in under the record the store has, or are set aside in turn). Either is kept as
        one JSON line in the set-aside file for whoever wants to mend and load it, and said at most
        once a minute per cause, naming the site and the file.
        """
        name = item.name if isinstance(item, EndpointRecord) else item.target.name
        if isinstance(item, EndpointRecord):
            self._unwritten.pop(name, None)
            self._refused[name] = item
        else:
            self._backlog.popleft()  # the backlog's first item: parts are written in order
            self.stats.set_aside += 1
            with self._lock:
                self.stats.pending = max(0, self.stats.pending - 1)
        kept = self._set_aside_file.keep(set_aside.entry(item, err, self._clock()))
        where = self._set_aside_file.where(kept)
        if kept is None and not isinstance(item, EndpointRecord):
            self.stats.set_aside_lost += 1
        key = f"set-aside {set_aside.cause(err)}"
        if key not in self._last_logged and sum(k.startswith("set-aside ") for k in self._last_logged) \
                >= _SET_ASIDE_CAUSES:
            key = "set-aside (other causes)"
        self._say(key, f"history: set aside {set_aside.what(item)} of {printable(name)} that the store cannot "
                       f"write ({type(err).__name__}: {printable(str(err)[:300])}); {where} "
                       "(connmon_store_results_set_aside_total); the other rows are written, and rows set "
                       "aside for the same reason are said at most once a minute")

    def _records_to_write(self, batch: Sequence[Result | Gap]) -> dict[str, EndpointRecord]:
        """The endpoint records this batch must upsert: the sites whose labels the store lacks.

        A record the store was last given unchanged is left out: upserting all 10,000 of them with
        every cycle cost about a third of the writer's time (issue 9). A configured record wins over
        the one a result carries. A record the store refused (set aside) is left out too: its site's
        results then go in under the record the store has, if it has one.
        """
        endpoints: dict[str, EndpointRecord] = {}
        written, configured, refused = self._written, self._endpoints, self._refused
        for item in batch:
            name = item.target.name
            record = configured.get(name)
            if record is None:
                if name in endpoints:
                    continue
                record = EndpointRecord.of(item.target)
            last = written.get(name)
            if last is not record and last != record and (not refused or refused.get(name) != record):
                endpoints[name] = record
        return endpoints

    def _prune_slice(self) -> None:
        store = self._connected()
        if store is None:
            self._next_prune = self._clock() + RETRY_SECONDS
            return
        now = self._clock()
        try:
            gone = store.prune(now - self.retention.icmp_seconds, now - self.retention.throughput_seconds,
                               PRUNE_SLICE_ROWS)
        except Exception as err:
            self._failed("prune", err)
            self._next_prune = now + PRUNE_EVERY_SECONDS
            return
        self.stats.pruned += gone
        # more left: the next slice after a short pause (writes go first); done: wait for the next round
        self._next_prune = now + (0.2 if gone >= PRUNE_SLICE_ROWS else PRUNE_EVERY_SECONDS)

    def _count_moved_aside(self, store: HistoryStore) -> None:
        """Count a corrupt file the open moved aside (issue 25; said by :mod:`monitor.sqlite_files`)."""
        if getattr(store, "moved_aside", None) is not None:
            self.stats.corrupt_files += 1

    def _failed(self, operation: StoreOperation, err: Exception) -> None:
        self.stats.errors[operation] += 1
        sqlite_files.check_again_after(err)  # a file found corrupt now is checked, and moved aside, at the reopen
        if self._store is not None:  # reopen next time: the file may have been replaced or remounted
            try:
                self._store.close()
            except Exception:
                log.debug("history: close after failure failed", exc_info=True)
            self._store = None
        self._say(operation, f"history: {operation} failed: {err}; probing and /metrics go on, "
                             f"{len(self._backlog)} results wait to be written (connmon_store_errors_total)")

    def _say(self, key: str, message: str) -> None:
        """Log at most once a minute per kind of failure: a full disk must not fill the journal too.

        The message is made one printable line: an error's text may quote a value from outside (a
        lone surrogate would fail the log handler, a newline would forge a line).
        """
        now = time.monotonic()
        if now - self._last_logged.get(key, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            self._last_logged[key] = now
            log.error(printable(message))

    def _restore_step(self) -> bool:
        """Try the waiting restore; False while the store cannot be opened or the restore must be retried."""
        request = self._restore
        assert request is not None
        store = self._connected()  # a failure is counted as "open" and said once a minute
        if store is None:
            if not request.told_unavailable:
                request.told_unavailable = True
                self._deliver(request, None)
            return False
        try:
            restored = read_restored(store, request.targets, self._clock())
        except Exception as err:
            request.failures += 1
            self._failed("restore", err)
            if request.failures < RESTORE_ATTEMPTS:
                return False
            log.error("history: could not restore the last throughput results: %s; going on without them", err)
            self._restore = None
            if not request.told_unavailable:
                self._deliver(request, None)
            return True
        self._restore = None
        if self._last_logged.pop("open", None) is not None:
            log.warning("history: the store answers again")
        self._deliver(request, restored)
        return True

    @staticmethod
    def _deliver(request: _Restore, restored: RestoredState | None) -> None:
        try:
            request.deliver(restored)
        except Exception:  # the daemon's loop may be closing: not a store failure
            log.debug("history: delivering the restored state failed", exc_info=True)

    # ------------------------------------------------------------------ start-up (event loop, before probing)
    def restore(self, targets: Sequence[Target]) -> RestoredState:
        """Read what a restart must not forget: each site's last measured test, last try and month's bytes.

        Runs once at start-up, before the first cycle, for a store that answers at once (SQLite); a
        failure is counted and the daemon starts as if the history were empty. A store that may be
        away uses :meth:`restore_later` instead.
        """
        store: HistoryStore | None = None
        try:
            store = self._open_store()
            self._count_moved_aside(store)
            return read_restored(store, targets, self._clock())
        except Exception as err:
            self.stats.errors["restore"] += 1
            log.error("history: could not restore the last throughput results: %s; starting without them", err)
            return RestoredState()
        finally:
            if store is not None:
                try:
                    store.close()
                except Exception:
                    log.debug("history: close after restore failed", exc_info=True)

