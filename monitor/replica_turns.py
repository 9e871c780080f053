"""The daemon's part in replicas' throughput turns (issue 19): who tests a site, and catching up with the others.

:mod:`monitor.test_leader` says whose turn a due test is; this module assembles it for the daemon
(a lease on a shared PostgreSQL history, else the first replica by rank) and runs the two loops a
replica keeps beside its scheduler: the leases' heartbeat, and every minute (two leases, when
shorter) a read-back of the tests other replicas ran of the sites this one does not test. Their
last test, verdicts and month's bytes come back as at a restart, so this replica's series show the
site's real last test (a take-over when the tester dies does not bring back a days-old figure) and
its budget counts what was spent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from monitor.history.restore import RestoredState
from monitor.history.store_url import is_postgres
from monitor.shard import Shard
from monitor.targets import Target, probed
from monitor.test_leader import FirstReplica, TestLeader

if TYPE_CHECKING:
    from monitor.history.leases import ReplicaLeases
    from monitor.history.writer import HistorySink

FOLLOW_SECONDS = 60.0  # how often a replica catches up with the tests the others ran


class ReplicaTurns:
    """A replica's turns: the leader the scheduler asks, and the loops that keep it (None without replicas)."""

    def __init__(self, leader: TestLeader, leases: ReplicaLeases | None = None) -> None:
        self.leader = leader
        self.leases = leases
        self._tasks: list[asyncio.Future[None]] = []

    @classmethod
    def of(cls, shard: Shard | None, store_url: str | None, lease_seconds: float) -> ReplicaTurns | None:
        """By lease on a shared PostgreSQL history, else by rank; None for a single copy of each site."""
        if shard is None or shard.replicas == 1:
            return None
        if not is_postgres(store_url):
            return cls(FirstReplica(shard))
        from monitor.history.leases import ReplicaLeases  # psycopg only with PostgreSQL

        assert store_url is not None
        leases = ReplicaLeases(store_url, shard, lease_seconds=lease_seconds)
        return cls(leases, leases)

    def start(self, history: HistorySink | None, targets: Callable[[], Sequence[Target]],
              restored: Callable[[], bool], deliver: Callable[[RestoredState | None], None]) -> None:
        """Beat, and follow the others: ``restored`` says the start-up restore is in (the writer holds one
        restore at a time), ``deliver`` takes what was read back, on the event loop."""
        leases = self.leases
        if leases is None:
            return
        self._tasks.append(asyncio.ensure_future(leases.run()))
        if history is not None:
            self._tasks.append(asyncio.ensure_future(_follow(leases, history, targets, restored, deliver)))

    async def close(self) -> None:
        """Stop the loops and give this replica's leases up (a clean stop hands its sites over at once)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.leases is not None:
            await self.leases.close()


async def _follow(leases: ReplicaLeases, history: HistorySink, targets: Callable[[], Sequence[Target]],
                  restored: Callable[[], bool], deliver: Callable[[RestoredState | None], None]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(FOLLOW_SECONDS, 2 * leases.lease_seconds))
        if not restored():
            continue
        tested = [t for t in probed(targets()) if t.throughput.enabled]
        leases.forget({t.name for t in tested})
        # sites another replica tests, and agent sites, whose tests any instance behind the URL may book
        followed = [t for t in tested if leases.tester(t.name) != leases.me or t.mode == "agent"]
        if followed:
            history.restore_later(followed, lambda r: loop.call_soon_threadsafe(deliver, r))
