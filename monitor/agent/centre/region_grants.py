"""The region's say on an agent's throughput grant (issue 19), for an instance behind one centre URL with others.

Why its own module: the agents' API decides a grant from this instance's plan; with a shared PostgreSQL
history the region has the last word, and that takes three steps the API should not spell out. Before a
grant that the plan would make, the plan is brought up to the region's history (the site's newest
stored test sets its next due time, the month's bytes and the last measured test's size its budget),
so that any instance grants a site once a period whichever instance booked its last test; the grant
then takes the region's slot, re-checking under the slots' lock that no test was stored since. An
instance that books a result it did not grant reads the same first, so the budget left it reports is
the region's. psycopg is imported by :mod:`monitor.agent.centre.shared` only, never here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.months import month_start
from monitor.throughput_plan import ThroughputPlan

if TYPE_CHECKING:
    from monitor.agent.centre.shared import SharedAgents, SiteTests


class RegionGrants:
    """One instance's plan and the region's shared state, asked together."""

    def __init__(self, plan: ThroughputPlan, shared: SharedAgents) -> None:
        self.plan = plan
        self.shared = shared

    def would_grant(self, name: str, now: float) -> bool:
        """Whether the plan alone would grant ``name`` now: only then is the region asked (a site not due, or in
        maintenance, is answered so without a round trip; the region can only make a due time later)."""
        state = self.plan.sites[name]
        return not state.running and state.next_due <= now and self.plan.paused(name, now) is None

    async def caught_up(self, name: str, now: float) -> SiteTests | None:
        """The plan of ``name`` brought up to the region's history: its next test due a period after the newest
        stored test, whichever instance booked it, and the month's bytes and the last measured test's size as
        the history has them. None when the store cannot say (said in the log)."""
        settings = self.plan.sites[name].target.throughput
        since = month_start(now, settings.timezone) if settings.monthly_budget_bytes is not None else None
        try:
            tests = await self.shared.site_tests(name, since)
        except Exception as err:
            self.shared.say("read a site's last throughput test", err)
            return None
        if tests.last_started_at is not None:
            self.plan.region_tested(name, tests.last_started_at, now)
        if since is not None:
            self.plan.follow({name: (since, tests.month_bytes)},
                             {name: tests.last_measured_bytes} if tests.last_measured_bytes is not None else {})
        return tests

    async def take(self, slot_id: str, name: str, now: float, expires_at: float, download: int, upload: int,
                   tested_at: float | None = None) -> bool:
        """The region's slot for a grant: False when all are out, a test newer than ``tested_at`` was stored since
        it was read, or the store cannot say."""
        try:
            return await self.shared.take(slot_id, name, now, expires_at, self.plan.max_concurrent, download, upload,
                                          tested_at)
        except Exception as err:
            self.shared.say("take a throughput slot", err)
            return False
