"""When each site's throughput test runs: spread over ``every``, inside windows, within budget.

Throughput tests are expensive (a 10 s test at 20 Mbit/s moves 25 MB, and ~90 sites are on
metered satellite links), so unlike ICMP they are planned one site at a time:

* **Spread.** Each site has a stable phase in [0, 1) from a hash of its name; its first test
  after start-up is at ``now + phase × every``, so 500 sites do not fire together, and a restart
  does not fire all tests that were due at once.
* **Windows.** A test that would start outside the site's windows (or could not finish inside
  one) moves into the next window, at the site's phase of that window, so deferred tests are
  spread over the window rather than piled at its opening.
* **Busy.** An iperf3 server that is running another client's test is retried with backoff
  (30 s, 1 min, 2 min, …), at most five times, then the site waits for its next regular slot.
* **Budget.** Bytes moved are counted per site and calendar month (in the site's time zone);
  once ``monthly_budget`` is spent, tests are skipped with reason ``budget``; a test is capped
  so it cannot overspend what is left.

* **Maintenance** (issue 21). While a maintenance window holds a site (``paused``, the daemon's
  :class:`~monitor.maintenance.MaintenanceBook`), no test of it starts and an agent's request is
  refused with ``maintenance``; a test that fell due meanwhile runs once the window ends, within
  ``max_concurrent`` like any other.

* **Region** (issue 19). With a PostgreSQL history, instances behind one centre URL take every
  test's slot from one pool in the database (:class:`RegionSlots`, :mod:`monitor.agent.centre.shared`):
  an agent's grant and the centre's own test (:meth:`ThroughputPlan.take_region`) each hold a row
  until the test ends or the grant expires, so ``max_concurrent`` holds across the instances.

* **Restart.** With a history, :meth:`ThroughputPlan.restore` gives each site its last test time
  and this month's bytes back: a site tested an hour before the restart waits for its regular
  slot, and only sites whose test fell due while the daemon was down are spread over ``every``.

This module is pure bookkeeping over an injected clock; :mod:`monitor.scheduler` runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from monitor.config import ThroughputSettings
from monitor.config.windows import current_or_next
from monitor.errors import ProbeErrorReason
from monitor.months import month_of
from monitor.results import ThroughputResult
from monitor.targets import Target

BUSY_FIRST_RETRY_SECONDS = 30.0
BUSY_MAX_RETRIES = 5
MIN_TEST_BYTES = 256 * 1024  # below this per direction, a budget counts as spent (a test would say little)
_WINDOW_SPREAD_SHARE = 0.8  # deferred tests start within the first 80% of a window, leaving room to finish


def phase(name: str) -> float:
    """A stable number in [0, 1) for a site name (not Python's ``hash``, which changes per process)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def allowed_start(t: float, name: str, settings: ThroughputSettings) -> float:
    """The first time at or after ``t`` when a test of this site may start and finish inside a window."""
    if not settings.windows:
        return t
    needed = settings.test_bound_seconds * max(1, len(settings.effective_directions))
    probe = t
    for _ in range(60):  # windows recur weekly; 60 stretches is far more than a week of them
        start, end = current_or_next(probe, settings.windows, settings.timezone)
        if start <= t < end and t + needed <= end:
            return t
        if start > t:
            room = max(0.0, min(end - start, settings.every_seconds) * _WINDOW_SPREAD_SHARE - needed)
            candidate = start + phase(name) * room
            if candidate + needed <= end:
                return candidate
        probe = end
    # Windows too short for a test are refused by the config check; should one slip through, the
    # test still waits for a window rather than running when the operator said it must not.
    return current_or_next(t, settings.windows, settings.timezone)[0]


REGION_BUSY_RETRY_SECONDS = 5.0  # the region's slots were all out for a due test of the centre's: asked again then
SLOT_GRACE_SECONDS = 60.0  # a grant lasts the test's own bound and this (for an agent to start and report it)


class RegionSlots(Protocol):
    """The throughput slots of every instance behind one centre URL (issue 19; in PostgreSQL)."""

    async def take(self, slot_id: str, site: str, now: float, expires_at: float, limit: int,
                   download_bytes: int = 0, upload_bytes: int = 0) -> bool: ...

    def release(self, slot_id: str) -> None: ...

    def say(self, what: str, err: BaseException) -> None: ...


def slot_seconds(settings: ThroughputSettings) -> float:
    """How long a grant for a test with ``settings`` lasts: its bound per direction, and the grace."""
    return settings.test_bound_seconds * max(1, len(settings.effective_directions)) + SLOT_GRACE_SECONDS


AGENT_BUSY_RETRY_SECONDS = 30.0  # an agent refused for want of a slot asks again after 30–60 s
AGENT_DISABLED_RETRY_SECONDS = 3600.0  # no throughput method for the site: ask rarely (a reload may add one)
AGENT_MAINTENANCE_RETRY_SECONDS = 300.0  # in a maintenance window: ask again in 5 min (it may be closed early)


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to an agent's request for a test slot: the (budget-capped) target when granted."""

    target: Target | None
    reason: str  # granted, not_due, busy, budget, disabled, maintenance
    retry_after_seconds: float


@dataclass(slots=True)
class SiteState:
    """What the plan remembers about one site between tests."""

    target: Target
    next_due: float
    busy_retries: int = 0
    running: bool = False
    month: str = ""
    used_bytes: int = 0
    last_test_bytes: int | None = None  # bytes a complete test moved last time (to cap an iperf3 test)

    def remaining(self, now: float) -> int | None:
        budget = self.target.throughput.monthly_budget_bytes
        if budget is None:
            return None
        if self.month != month_of(now, self.target.throughput.timezone):
            return budget
        return max(0, budget - self.used_bytes)


class ThroughputPlan:
    """Due times, busy retries and budgets of every site with a throughput method.

    One plan serves the centre's own tests (:mod:`monitor.scheduler`) and the agents' grants
    (:mod:`monitor.agent.centre.api`): it is built first and handed to both, so a test is booked
    by :meth:`book` whoever ran it, and ``max_concurrent`` (``throughput.max_concurrent``, set
    again at each reload) bounds both together.
    """

    def __init__(self, max_concurrent: int = 2,
                 paused: Callable[[str, float], str | None] = lambda _name, _now: None,
                 region: RegionSlots | None = None) -> None:
        self.sites: dict[str, SiteState] = {}
        self.max_concurrent = max_concurrent
        self.paused = paused  # the maintenance window holding a site at a time, else None
        self.region = region  # issue 19: the slots of every instance sharing the history; None: this one's only
        self._region_slots: dict[str, str] = {}  # site → the region's slot its running centre test holds

    def set_targets(self, targets: Sequence[Target], now: float) -> None:
        """Start (or, at a reload, change) the plan; sites that stay keep their due time and budget."""
        sites: dict[str, SiteState] = {}
        for target in targets:
            if not target.throughput.enabled:
                continue
            old = self.sites.get(target.name)
            if old is not None and old.target.throughput == target.throughput:
                old.target = target
                sites[target.name] = old
                continue
            first = now + phase(target.name) * target.throughput.every_seconds
            state = SiteState(target, allowed_start(first, target.name, target.throughput))
            if old is not None:  # settings changed: keep what was spent this month
                state.month, state.used_bytes, state.running = old.month, old.used_bytes, old.running
            sites[target.name] = state
        self.sites = sites

    def restore(self, last_tried: Mapping[str, float], used_bytes: Mapping[str, tuple[float, int]],
                now: float, last_test_bytes: Mapping[str, int] | None = None) -> None:
        """Continue from the history: each site's last test time and this month's bytes (at start-up).

        A site whose next regular test is still ahead keeps that time; one that fell due while the
        daemon was down keeps its spread slot (``now + phase × every``), so they do not all fire at once.

        The history may answer late (a PostgreSQL server that was away at start-up): a site already
        tested by this process keeps the due time its test gave, and the month's bytes read back
        (which the history had before this process wrote any) are added to the ones it counted.
        """
        for name, state in self.sites.items():
            settings = state.target.throughput
            if state.month:  # tested here already (``finished`` sets the month)
                if name in used_bytes:
                    since, spent = used_bytes[name]
                    if month_of(since, settings.timezone) == state.month:
                        state.used_bytes += spent
                if last_test_bytes is not None and name in last_test_bytes and state.last_test_bytes is None:
                    state.last_test_bytes = last_test_bytes[name]
                continue
            last = last_tried.get(name)
            if last is not None and now < last + settings.every_seconds:
                state.next_due = allowed_start(last + settings.every_seconds, name, settings)
            if name in used_bytes:
                since, spent = used_bytes[name]
                state.month, state.used_bytes = month_of(since, settings.timezone), spent
            if last_test_bytes is not None and name in last_test_bytes:  # so the first test is capped too
                state.last_test_bytes = last_test_bytes[name]

    def follow(self, used_bytes: Mapping[str, tuple[float, int]], last_test_bytes: Mapping[str, int]) -> None:
        """Sites another replica tests (issue 19): their month's bytes as the shared history has them.

        Set, not added: the history holds every replica's tests, and this one ran none of these (a
        running test of its own keeps its count until it is booked).
        """
        for name, (since, spent) in used_bytes.items():
            state = self.sites.get(name)
            if state is None or state.running:
                continue
            state.month, state.used_bytes = month_of(since, state.target.throughput.timezone), spent
            if name in last_test_bytes:
                state.last_test_bytes = last_test_bytes[name]

    def due(self, now: float, limit: int) -> list[SiteState]:
        """Up to ``limit`` sites whose test is due and not running, earliest first; marked running."""
        if limit <= 0:
            return []
        paused = self.paused
        ready = sorted((s for s in self.sites.values()
                        if not s.running and s.next_due <= now and s.target.probed_by_centre
                        and paused(s.target.name, now) is None),
                       key=lambda s: s.next_due)[:limit]
        for state in ready:
            state.running = True
        return ready

    @property
    def running(self) -> int:
        return sum(1 for s in self.sites.values() if s.running)

    def next_due(self) -> float | None:
        waiting = [s.next_due for s in self.sites.values() if not s.running and s.target.probed_by_centre]
        return min(waiting) if waiting else None

    def grant(self, name: str, now: float, limit: int | None = None) -> Grant:
        """An agent asks to test its site now (issue 10): the same due time, windows, budget and global
        limit as the centre's own tests, so a hundred agents never saturate the centre's uplink.

        A granted site counts as running until :meth:`finished` (its result arrived) or
        :meth:`release` (the grant expired unused).
        """
        state = self.sites.get(name)
        if state is None:
            return Grant(None, "disabled", AGENT_DISABLED_RETRY_SECONDS)
        if state.running:
            return Grant(None, "busy", AGENT_BUSY_RETRY_SECONDS)
        if state.next_due > now:
            return Grant(None, "not_due", state.next_due - now)
        if self.paused(name, now) is not None:
            return Grant(None, "maintenance", AGENT_MAINTENANCE_RETRY_SECONDS * (1.0 + phase(name)))
        if self.running >= (self.max_concurrent if limit is None else limit):
            # spread the retries so agents refused together do not return together
            return Grant(None, "busy", AGENT_BUSY_RETRY_SECONDS * (1.0 + phase(name)))
        target = self.test_target(state, now)
        if target is None:
            return Grant(None, "budget", max(60.0, state.target.throughput.every_seconds))
        state.running = True
        return Grant(target, "granted", 0.0)

    async def take_region(self, state: SiteState, now: float) -> bool:
        """The region's slot for a due test of the centre's own (issue 19); True at once without a region.

        Refused (every slot of the region is out, or the database cannot be asked), the site is not
        running and is due again after :data:`REGION_BUSY_RETRY_SECONDS`.
        """
        region = self.region
        if region is None:
            return True
        name, slot_id = state.target.name, secrets.token_hex(12)
        try:
            taken = await region.take(slot_id, name, now, now + slot_seconds(state.target.throughput),
                                      self.max_concurrent)
        except Exception as err:
            region.say("take a throughput slot", err)
            taken = False
        if not taken:
            state.running = False
            state.next_due = max(state.next_due, now + REGION_BUSY_RETRY_SECONDS * (1.0 + phase(name)))
            return False
        self._region_slots[name] = slot_id
        return True

    def cancel(self, name: str) -> None:
        """Undo a :meth:`grant` the region refused (issue 19): the site is not running, its due time stays."""
        state = self.sites.get(name)
        if state is not None:
            state.running = False

    def region_tested(self, name: str, started_at: float, now: float) -> float | None:
        """The region's newest test of ``name`` began at ``started_at``, whichever instance booked it (issue 19): the
        site's next is due a period on, as if booked here. Returns that due time while it is still ahead of
        ``now``, else None; a due time never moves back."""
        state = self.sites.get(name)
        if state is None:
            return None
        settings = state.target.throughput
        due = allowed_start(started_at + settings.every_seconds, name, settings)
        if due <= now:
            return None
        state.next_due = max(state.next_due, due)
        return state.next_due

    def ended_elsewhere(self, name: str, now: float) -> None:
        """A grant of this instance whose test another instance booked (issue 19): not running; next due a period on."""
        state = self.sites.get(name)
        if state is not None and state.running:
            state.running = False
            state.next_due = allowed_start(now + state.target.throughput.every_seconds, name, state.target.throughput)

    def release(self, name: str, now: float) -> None:
        """A grant that expired without a result: free the slot; the site tries again after a busy pause."""
        state = self.sites.get(name)
        if state is not None and state.running:
            state.running = False
            state.next_due = now + AGENT_BUSY_RETRY_SECONDS

    def test_target(self, state: SiteState, now: float) -> Target | None:
        """The target to test, capped to what the budget still allows; None when the budget is spent."""
        remaining = state.remaining(now)
        if remaining is None:
            return state.target
        settings = state.target.throughput
        per_direction = remaining // max(1, len(settings.effective_directions))
        if per_direction < MIN_TEST_BYTES:  # what is left would not make a test worth its figure
            return None
        cap = settings.max_bytes
        # http honours bytes and duration together, so its cap is always safe. iperf3 takes one end
        # condition: switching it to --bytes only when a full test would overspend keeps its duration.
        if settings.method == "http" or (state.last_test_bytes is not None and state.last_test_bytes > remaining):
            cap = per_direction if cap is None else min(cap, per_direction)
        if cap == settings.max_bytes:
            return state.target
        # iperf3 restarts its byte count when the omitted warm-up ends, so --bytes with --omit would move
        # the warm-up on top of the cap: a capped iperf3 test measures from the first byte instead.
        omit = 0.0 if settings.method == "iperf3" else settings.omit_seconds
        return dataclasses.replace(state.target, throughput=dataclasses.replace(settings, max_bytes=cap,
                                                                                 omit_seconds=omit))

    def finished(self, name: str, result: ThroughputResult, now: float) -> None:
        """Book a finished (or skipped) test and plan the site's next one."""
        slot_id = self._region_slots.pop(name, None)
        if slot_id is not None and self.region is not None:  # the centre's own test ended: its region slot is free
            self.region.release(slot_id)
        state = self.sites.get(name)
        if state is None:  # removed by a reload while it ran
            return
        state.running = False
        settings = state.target.throughput
        month = month_of(result.started_at, settings.timezone)
        if state.month != month:
            state.month, state.used_bytes = month, 0
        state.used_bytes += result.bytes
        if result.error is None:
            state.last_test_bytes = result.bytes
        if result.error is ProbeErrorReason.BUSY and state.busy_retries < BUSY_MAX_RETRIES:
            delay = min(BUSY_FIRST_RETRY_SECONDS * 2**state.busy_retries, settings.every_seconds / 2)
            state.busy_retries += 1
            state.next_due = allowed_start(now + delay, name, settings)
            return
        state.busy_retries = 0
        state.next_due = allowed_start(max(result.started_at + settings.every_seconds, now), name, settings)

    def book(self, result: ThroughputResult, now: float) -> ThroughputResult:
        """Book a finished test of the centre's or of an agent (frees its slot, counts the budget, plans the next).

        Returns the result with the budget left after it, for the sinks. An agent's slot id is not
        checked: a result is worth keeping even when its grant expired while it was being uploaded.
        """
        name = result.target.name
        self.finished(name, result, now)
        return dataclasses.replace(result, budget_remaining_bytes=self.remaining_after(name, now))

    def remaining_after(self, name: str, now: float) -> int | None:
        state = self.sites.get(name)
        return None if state is None else state.remaining(now)
