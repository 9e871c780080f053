"""The spool's uploader: the agent's results to the centre, oldest first, each kept until the centre has it.

The uploader sends the spool oldest first, in batches, and deletes a batch only when the centre
answered 200: a lost answer means the batch is sent again, and the centre ignores the sequence
numbers it already has, so nothing is counted twice and nothing is lost. How it treats each
answer, and why:

* connection error, timeout, 5xx, 429: the centre (or the link) cannot take it now. Keep
  everything, try again at the next interval, not before ``Retry-After`` when the centre said one.
* TLS failure (issue 25): not an outage, a certificate or setting to fix, so it is logged as an
  ERROR naming its cause (:class:`~monitor.agent.site.client.TlsCause`: expired, untrusted CA, name
  mismatch, ...) and the fix; everything is kept and tried again after the backoff, as for an outage.
* 401, 403: the token is wrong or belongs to another site. Nothing the agent can fix; it keeps
  the results (a corrected token uploads them) and logs the centre's explanation once per interval.
* 413: the batch is too large for the centre's limit: the batch size is halved and tried again.
* 200 (protocol 2, issue 25): the answer lists each result's outcome. Stored and duplicate ones
  are forgotten; one refused for a cause that can pass (its time is ahead of the centre's clock) is
  held in the spool and sent again, under a new number, once the centre said it may be; any other
  refused result is dropped and counted in ``spool_dropped``. A version 1 centre's answer has no
  such list: every result was taken. Forgetting is one transaction (:meth:`Spool.settle`); when it
  cannot be written (a full disk) it is tried again before anything more is sent, so the centre is
  not sent the same results again and again.
* 400: the centre refuses something in the batch. Retrying the same bytes gives the same answer,
  so after :data:`MAX_REFUSALS` refusals in a row of a batch starting at the same ``seq``, the first
  of them at least :data:`REFUSAL_PATIENCE_SECONDS` ago (its cause may pass: a clock that was fast
  and is being corrected), the batch is dropped (counted in ``spool_dropped``) rather than blocking
  the spool for ever. A refusal of the *envelope* (``$.agent``/``$.site``, e.g. the agent's clock is
  wrong) is not the results' fault and never drops them.

After any failure (the link, TLS, an HTTP status other than 200 and 413's halving) the next try waits
(issue 25): :data:`BACKOFF_FIRST_SECONDS`, doubling with each failure in a row up to
:data:`BACKOFF_MAX_SECONDS`, jittered, and never less than the centre's ``Retry-After``. A hundred
agents coming back after a centre's outage then spread their retries instead of arriving together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.agent.clock import MAX_CLOCK_OFFSET_SECONDS, ClockOffset, read_clock_answer
from monitor.agent.protocol import (
    ANCHOR_FIELDS,
    LATENCY_FIELDS,
    PROTOCOL_HEADER,
    RESULTS_PATH,
    VERSION,
    AgentInfo,
    RefusedResult,
    encode_agent,
    read_result_answers,
)
from monitor.agent.site.client import Answer, CentreClient, CentreTlsFailure, CentreUnreachable
from monitor.agent.site.config import AgentConfig
from monitor.agent.site.spool import HOLD_MAX_SECONDS, Spool

log = logging.getLogger(__name__)

MAX_REFUSALS = 3
REFUSAL_PATIENCE_SECONDS = 900.0  # a refused batch is dropped only after this long too: its cause may pass
BACKOFF_FIRST_SECONDS = 2.0  # after a failed upload, the next waits this long, doubling with each failure in a row,
BACKOFF_MAX_SECONDS = 300.0  # up to this; each wait is jittered (×0.5–1.5) so that agents do not retry in step
CLOCK_WARN_EVERY_SECONDS = 3600.0  # a clock that stays off is said again this often


@dataclass(slots=True)
class UploadReport:
    """What one :meth:`Uploader.drain` did, for the log and for tests."""

    sent: int = 0  # results the centre acknowledged
    accepted: int = 0
    duplicates: int = 0
    dropped: int = 0
    refused: int = 0  # protocol 2: results the centre refused on their own (dropped or held)
    held: int = 0  # of those, held to be sent again (their cause can pass)
    released: int = 0  # held results put back to be sent again
    stopped_by: str = ""  # why results remain: "" (spool empty), "unreachable", "HTTP 503", ...
    retry_after_seconds: float | None = None  # the centre's Retry-After with a 429 or 5xx
    errors: list[str] = field(default_factory=list)


class Uploader:
    """Drains the spool to the centre, batch by batch, as the module's docstring says."""

    def __init__(self, config: AgentConfig, spool: Spool, client: CentreClient, info: Callable[[], AgentInfo],
                 clock: Callable[[], float] = time.time, jitter: Callable[[], float] = random.random) -> None:
        self.jitter = jitter  # uniform in [0, 1): the spread of each backoff
        self.failures = 0  # failed uploads in a row
        self.config = config
        self.spool = spool
        self.client = client
        self.info = info
        self.clock = clock
        self.batch = config.upload_batch
        self.not_before = 0.0  # no upload before this: the backoff, or the centre's Retry-After
        # (first seq of the refused batch, refusals in a row, when the first of them came)
        self._refused: tuple[int, int, float] = (0, 0, 0.0)
        # an answered batch whose settling the spool could not write: (last seq, held, dropped, when)
        self._unsettled: tuple[int, list[tuple[int, float, str]], list[int], float] | None = None
        self._settle_failing = False
        # issue 18: the centre measures this agent's clock (it said so): the agent block may carry the round trip
        # and the spool's depth, which a centre from before would refuse as unknown fields
        self.centre_measures_clock = False
        self.clock_offset: ClockOffset | None = None  # as the centre last measured it
        self._clock_warned = (False, -math.inf)  # (said off, when)
        self.settings_version: str | None = None  # the centre's, as its last answer named it

    def back_off(self, retry_after_seconds: float | None = None) -> float:
        """After a failed upload: wait before the next, longer with each failure in a row; the wait in seconds."""
        self.failures += 1
        wait: float = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2.0 ** min(self.failures - 1, 30))
        wait *= 0.5 + self.jitter()
        if retry_after_seconds is not None:
            wait = max(wait, retry_after_seconds)
        self.not_before = self.clock() + wait
        return wait

    async def drain(self, stop: asyncio.Event | None = None) -> UploadReport:
        """Upload until the spool is empty, the centre says stop, or ``stop`` is set (between batches)."""
        report = UploadReport()
        if self.clock() < self.not_before:
            report.stopped_by = f"waiting ({self.not_before - self.clock():.0f}s left: backoff or Retry-After)"
            return report
        report = await self._drain(report, stop)
        if report.stopped_by and report.stopped_by != "stopping":
            wait = self.back_off(report.retry_after_seconds)
            log.info("next upload in %.0f s at the earliest (%d failures in a row: %s)", wait, self.failures,
                     report.stopped_by)
        elif not report.stopped_by:
            self.failures = 0
        return report

    def _settled(self, report: UploadReport) -> bool:
        """Write the last answered batch's settling if it is still due; False (said once) when it cannot be."""
        if self._unsettled is None:
            return True
        last, held, dropped, at = self._unsettled
        try:
            self.spool.settle(last, held, dropped, at)
        except (sqlite3.Error, OSError) as err:
            report.stopped_by = "the spool cannot be written"
            if not self._settle_failing:
                self._settle_failing = True
                log.error("cannot forget results up to %d that the centre has (%s: %s); nothing more is sent until "
                          "the spool can be written (free space under %s)", last, type(err).__name__, err,
                          self.spool.path.parent)
            return False
        if self._settle_failing:
            self._settle_failing = False
            log.warning("the spool can be written again: results up to %d forgotten", last)
        self._unsettled = None
        report.dropped += sum(1 for seq in dropped if seq <= last)
        return True

    def _release_held(self, report: UploadReport) -> None:
        """Put back the held results whose time has come (a failure leaves them held: tried at the next drain)."""
        try:
            released, stale = self.spool.release_held(self.clock())
        except (sqlite3.Error, OSError):
            return
        report.released += released
        report.dropped += stale
        if released:
            log.info("%d results the centre refused for a cause that could pass are sent again", released)
        if stale:
            log.error("dropped %d results the centre kept refusing for %.0f hours", stale, HOLD_MAX_SECONDS / 3600)

    def _answered(self, last: int, answer: Answer, report: UploadReport) -> bool:
        """A 200 for the batch up to ``last``: forget, hold or drop each result as the answer says."""
        try:
            lines = read_result_answers(answer.body)
        except ValueError as err:  # nothing dropped on a misreading: the batch is sent again
            report.stopped_by = "answer not understood"
            log.error("the centre's answer is not understood (%s): %s; results kept", err, answer.describe())
            return False
        refused = [line for line in lines or () if isinstance(line, RefusedResult)]
        now = self.clock()
        held = [(r.seq, now + r.retry_after_seconds, r.reason) for r in refused if r.retry_after_seconds is not None]
        dropped = [r.seq for r in refused if r.retry_after_seconds is None]
        report.refused += len(refused)
        report.held += len(held)
        for r in refused[:3]:  # a sample is enough: the centre logs and counts them too
            log.error("the centre refused result %d (%s: %s); %s", r.seq, r.field, r.reason,
                      "dropped" if r.retry_after_seconds is None
                      else f"kept, to be sent again in {r.retry_after_seconds:.0f}s")
        self._unsettled = (last, held, dropped, now)
        return self._settled(report)

    async def _drain(self, report: UploadReport, stop: asyncio.Event | None) -> UploadReport:
        if not self._settled(report):
            return report
        self._release_held(report)
        while stop is None or not stop.is_set():
            pending = self.spool.oldest(self.batch)
            if not pending:
                return report
            first, last = pending[0][0], pending[-1][0]
            info = self.info()
            if self.centre_measures_clock:
                info = dataclasses.replace(info, round_trip_seconds=self.client.round_trip_seconds,
                                           spool_depth=len(self.spool) + self.spool.held)
            results = [result for _, result in pending]
            if not self.centre_measures_clock:  # an older centre refuses fields it does not know (issues 18, 20)
                results = [_for_an_older_centre(result) for result in results]
            body = {"site": self.config.site, "agent": encode_agent(info), "results": results}
            try:
                answer = await self.client.post(RESULTS_PATH, body, {PROTOCOL_HEADER: str(VERSION)})
            except CentreTlsFailure as err:  # not an outage: waiting does not fix it, so an ERROR naming the cause
                report.stopped_by = f"TLS {err.cause}"
                report.errors.append(str(err))
                log.error("cannot upload to the centre: %s; %d results stay in the spool", err, len(self.spool))
                return report
            except CentreUnreachable as err:
                report.stopped_by = "unreachable"
                report.errors.append(str(err))
                log.warning("cannot reach the centre (%s); %d results stay in the spool", err, len(self.spool))
                return report
            if answer.status == 200:
                self._refused = (0, 0, 0.0)
                self.failures = 0
                self._clock_answer(answer.body)
                if not self._answered(last, answer, report):
                    return report
                report.sent += len(pending)
                if isinstance(answer.body, dict):
                    report.accepted += _count(answer.body.get("accepted"))
                    report.duplicates += _count(answer.body.get("duplicates"))
                continue
            report.stopped_by = f"HTTP {answer.status}"
            report.errors.append(answer.describe())
            if answer.status == 413 and self.batch > 1:
                self.batch = max(1, self.batch // 2)
                log.warning("the centre refused a batch as too large (%s); sending %d results a batch from now",
                            answer.describe(), self.batch)
                continue
            if answer.status in (400, 413):
                if self._refuse(first, last, answer, report):
                    continue
                return report
            if answer.status == 429 or answer.status >= 500:
                report.retry_after_seconds = answer.retry_after_seconds
                log.warning("the centre cannot take results now (%s); %d stay in the spool%s", answer.describe(),
                            len(self.spool), "" if answer.retry_after_seconds is None
                            else f", next try in {answer.retry_after_seconds:.0f}s")
                return report
            if answer.status in (401, 403):
                log.error("the centre refuses this agent's token for site '%s' (%s): check token_file and the "
                          "site's agent.token_sha256 in the centre's config; %d results kept", self.config.site,
                          answer.describe(), len(self.spool))
                return report
            log.error("unexpected answer from the centre to %s (%s); results kept", RESULTS_PATH, answer.describe())
            return report
        report.stopped_by = "stopping"
        return report

    def _clock_answer(self, body: Any) -> None:
        """What a 200 says of this agent's clock and of the settings (issue 18); a clock that is off is said."""
        clock = read_clock_answer(body)
        if clock is None:
            return  # a centre from before issue 18
        self.centre_measures_clock = True
        self.clock_offset = clock
        version = body.get("settings_version")
        if isinstance(version, str):
            self.settings_version = version
        if clock.bound_seconds is None:
            return  # the centre had no round trip: nothing known yet
        said_off, at = self._clock_warned
        now = time.monotonic()
        if clock.off and (not said_off or now - at >= CLOCK_WARN_EVERY_SECONDS):
            log.warning("this machine's clock is %+.1fs off the centre's (±%.1fs; more than %gs): the centre %s; "
                        "set the clock right (timedatectl set-ntp true, or an RTC)", clock.offset_seconds,
                        clock.bound_seconds, MAX_CLOCK_OFFSET_SECONDS,
                        "corrects the results' times" if clock.correctable
                        else "holds the results until an exchange is quick enough to correct their times")
            self._clock_warned = (True, now)
        elif not clock.off and said_off:
            log.warning("this machine's clock is right again (%+.1fs off the centre's, ±%.1fs)", clock.offset_seconds,
                        clock.bound_seconds)
            self._clock_warned = (False, now)

    def _refuse(self, first: int, last: int, answer: Answer, report: UploadReport) -> bool:
        """Count a refusal of the batch from ``first``; True when it was dropped (go on with the next one)."""
        envelope = "$.agent" in answer.describe() or "$.site" in answer.describe()
        seen, count, since = self._refused
        now = self.clock()
        count, since = (count + 1, since) if seen == first and count else (1, now)
        self._refused = (first, count, since)
        patient = now - since < REFUSAL_PATIENCE_SECONDS
        if envelope or count < MAX_REFUSALS or patient:
            log.error("the centre refused the batch of results %d-%d (%s)%s", first, last, answer.describe(),
                      "; it is this agent's envelope, not the results: results kept" if envelope
                      else f"; refusal {count}: the batch is dropped after {MAX_REFUSALS} refusals over at least "
                           f"{REFUSAL_PATIENCE_SECONDS / 60:.0f} minutes")
            return False
        gone = self.spool.drop_through(last)
        report.dropped += gone
        self._refused = (0, 0, 0.0)
        log.error("dropped %d results (%d-%d) the centre refused %d times in a row (%s)", gone, first, last,
                  MAX_REFUSALS, answer.describe())
        return True


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _for_an_older_centre(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without the fields a centre from before issues 18 and 20 does not know (it would refuse them)."""
    kept = {k: v for k, v in result.items() if k not in ANCHOR_FIELDS}
    if isinstance(kept.get("directions"), list):
        kept["directions"] = [{k: v for k, v in d.items() if k not in LATENCY_FIELDS} if isinstance(d, dict) else d
                              for d in kept["directions"]]
    return kept
