"""Which replica runs a site's throughput test (issue 19): one test per site, not one per replica.

With ``--replicas R`` a site is pinged by R instances, but a throughput test spends the site's
metered budget and loads its link: R tests would spend it R times and measure each other. So before
a due test starts, the scheduler asks a :class:`TestLeader` whose turn it is:

* :class:`FirstReplica` (no shared history): the site's first replica in rendezvous order tests,
  the others never do. Nothing fails over, but nothing is spent twice.
* :class:`monitor.history.leases.ReplicaLeases` (a shared PostgreSQL history): the first replica
  *that is alive* tests, holding a lease in the database; when it dies, the next one takes over once
  the lease has expired, and starts from the last test any replica stored, not from its own plan.

A replica whose turn it is not defers the site (:func:`defer`) and asks again later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from monitor.shard import Shard
from monitor.throughput_plan import SiteState, allowed_start

FOLLOW_RECHECK_SECONDS = 30.0  # a replica that is not the tester asks again after this


@dataclass(frozen=True, slots=True)
class Turn:
    """The answer for one due test: run it here (``mine``), or not before ``recheck_at``.

    ``last_tested_at``: when any replica last started a test of the site, as the shared history
    knows it (None: unknown); a test that is mine but was run elsewhere less than a period ago waits.
    """

    mine: bool
    recheck_at: float
    last_tested_at: float | None = None


class TestLeader(Protocol):
    """Says whose turn a site's throughput test is; never raises (a failure falls back to the static rule)."""

    async def turn(self, name: str, now: float) -> Turn: ...


@dataclass(frozen=True, slots=True)
class FirstReplica:
    """The static rule: the site's first replica in rendezvous order tests it, always."""

    shard: Shard

    async def turn(self, name: str, now: float) -> Turn:
        return Turn(self.shard.rank(name) == 0, now + FOLLOW_RECHECK_SECONDS)


def defer(state: SiteState, turn: Turn, now: float) -> bool:
    """Hold ``state``'s due test when ``turn`` says it is not to run now; True when it was held.

    Not mine: asked again at ``recheck_at``. Mine: not before a period after the last test any
    replica stored (a take-over), and only inside the site's windows (a recheck time is not placed in
    them, so a take-over at noon waits for a night window).
    """
    settings = state.target.throughput
    if not turn.mine:
        state.running, state.next_due = False, turn.recheck_at
        return True
    last = turn.last_tested_at
    earliest = now if last is None else max(now, last + settings.every_seconds)
    start = allowed_start(earliest, state.target.name, settings)
    if start > now:
        state.running, state.next_due = False, start
        return True
    return False
