"""Every result the agent measures is kept, or counted as lost: never thrown away silently (issue 25).

On a full disk the spool cannot be written. Before, each cycle's results were dropped with a
traceback in the log every cycle, and nothing showed it: no gap in the sequence numbers, 0 in
``spool_dropped``. Now:

* a result that cannot be written waits in a bounded memory buffer (:data:`MEMORY_RESULTS`, about
  eight hours of a one-minute interval), and every cycle writes the buffer first, in order;
* when the buffer is full the oldest result goes, and is counted; once the spool can be written
  again, those lost results use up their sequence numbers and are added to ``dropped`` in the same
  transaction that writes the buffer (:meth:`~monitor.agent.site.spool.Spool.append_kept`), so the
  centre sees the gap in the numbers and ``connmon_agent_spool_dropped_total`` says why;
* the first failure is logged with its traceback, then one line every
  :data:`SAY_EVERY_SECONDS` while it lasts, and one when it is over.

What it leaves to others: the spool's own log is freed before a write fails
(:mod:`monitor.write_ahead_log`); an acknowledgement that cannot be written is the uploader's to
retry (:mod:`monitor.agent.site.upload`).
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from monitor.agent.site.spool import Spool

log = logging.getLogger(__name__)

MEMORY_RESULTS = 1000  # results held in memory while the spool cannot be written (~1 KB each)
SAY_EVERY_SECONDS = 600.0

Encoder = Callable[[int], dict[str, Any]]  # builds a result's wire object once it has its sequence number


class ResultKeeper:
    """Writes results to the spool; holds them in memory while it cannot, and counts what memory cannot hold."""

    def __init__(self, spool: Spool, capacity: int = MEMORY_RESULTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spool = spool
        self.capacity = capacity
        self.clock = clock
        self.waiting: collections.deque[Encoder] = collections.deque()
        self.lost = 0  # results memory could not hold since the spool last took a write
        self._failing_since: float | None = None
        self._said_at = 0.0

    @property
    def dropped(self) -> int:
        """Results dropped over the spool's life, those not yet written into its count included."""
        return self.spool.dropped + self.lost

    def keep(self, encoders: Sequence[Encoder]) -> None:
        """Keep ``encoders``' results after those waiting; write them all to the spool if it can be written."""
        self.waiting.extend(encoders)
        if not self.waiting and not self.lost:
            return
        try:
            numbered = self.spool.append_kept(list(self.waiting), self.lost)
        except (sqlite3.Error, OSError) as err:
            while len(self.waiting) > self.capacity:  # the oldest go: the newest say most about the site now
                self.waiting.popleft()
                self.lost += 1
            self._failed(err)
            return
        if self._failing_since is not None:
            first_kept = numbered[0] if numbered else self.spool.next_seq
            log.warning("the spool %s can be written again after %.0fs: %d results kept in memory are in it; %d "
                        "could not be kept (numbers %d-%d, counted as dropped)", self.spool.path,
                        self.clock() - self._failing_since, len(numbered), self.lost, first_kept - self.lost,
                        first_kept - 1)
            self._failing_since = None
        self.waiting.clear()
        self.lost = 0

    def retry(self) -> None:
        """Try again to write what waits in memory (each cycle does; so does the stop)."""
        self.keep(())

    def close(self) -> None:
        """At stop: a last write; what still cannot be written is lost, and said."""
        self.retry()
        if self.waiting or self.lost:
            log.error("stopping with %d results the spool %s could not take: they are lost (%d more were already "
                      "lost while it could not be written)", len(self.waiting), self.spool.path, self.lost)

    def _failed(self, err: BaseException) -> None:
        now = self.clock()
        if self._failing_since is None:  # the traceback once, not every cycle
            self._failing_since = self._said_at = now
            log.error("cannot write the spool %s (%s); results are kept in memory (up to %d) and written when it can "
                      "be: free space on its volume", self.spool.path, err, self.capacity, exc_info=err)
            return
        if now - self._said_at >= SAY_EVERY_SECONDS:
            self._said_at = now
            log.error("the spool %s still cannot be written (%s) after %.0fs: %d results in memory, %d lost so far",
                      self.spool.path, err, now - self._failing_since, len(self.waiting), self.lost)
