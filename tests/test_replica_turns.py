"""One throughput test per site among its replicas (issue 19): turns by rank, leases on a real PostgreSQL.

Three replicas' :class:`~monitor.history.leases.ReplicaLeases` share one database, each on its own
clock (a plain number the test moves), so "dead" is an instance that stops beating and "later" is
a number: no sleeping, no wall-clock assertion.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

from monitor.config import ThroughputSettings
from monitor.config.windows import parse_window
from monitor.history.leases import ReplicaLeases
from monitor.history.postgres import PostgresStore
from monitor.history.store import EndpointRecord
from monitor.shard import Shard, ranking
from monitor.test_leader import FOLLOW_RECHECK_SECONDS, FirstReplica, Turn, defer
from monitor.throughput_plan import SiteState
from tests.factories import iperf3_test, throughput_target
from tests.postgres import pg_server, pg_url  # noqa: F401 (fixtures)

NAMES = [f"site{i:02d}" for i in range(24)]
LEASE = 30.0


class Clock:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


@pytest.fixture()
def replicas(pg_url: str) -> Iterator[tuple[list[ReplicaLeases], Clock, str]]:  # noqa: F811
    PostgresStore(pg_url).close()  # the schema, as the writer makes it
    clock = Clock(1_000.0)
    leases = [ReplicaLeases(pg_url, Shard(i, 3, 2), clock, lease_seconds=LEASE) for i in range(3)]
    yield leases, clock, pg_url


def in_one_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in one event loop (the leases' connections belong to it), closing the leases after."""
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def scenario() -> None:
            try:
                await test(*args, **kwargs)
            finally:
                for value in (*args, *kwargs.values()):
                    if isinstance(value, tuple):
                        for lease in value[0]:
                            await lease.close()
        asyncio.run(scenario())
    return wrapper


async def turns(leases: list[ReplicaLeases], name: str, now: float,
                among: list[int] | None = None) -> dict[int, Turn]:
    """Each (living) replica of ``name`` asked in turn."""
    out = {}
    for i in among if among is not None else range(3):
        if leases[i].shard.owns(name):
            out[i] = await leases[i].turn(name, now)
    return out


async def beat(leases: list[ReplicaLeases], *alive: int) -> None:
    """Two rounds of heartbeats of ``alive``, so each has read the others'."""
    for _ in range(2):
        for i in alive:
            await leases[i].beat()


@in_one_loop
async def test_all_alive_the_first_replica_tests_and_no_other(replicas: tuple[list[ReplicaLeases], Clock, str]) -> None:
    leases, clock, _url = replicas
    await beat(leases, 0, 1, 2)
    assert all(lease.live == {"0", "1", "2"} for lease in leases)
    for name in NAMES:
        answers = await turns(leases, name, clock.at)
        assert len(answers) == 2  # two replicas
        mine = [i for i, t in answers.items() if t.mine]
        assert mine == [ranking(name, 3)[0]], (name, answers)
        # asked again (the next due test): still the same one, its own lease
        assert (await turns(leases, name, clock.at + 1))[mine[0]].mine


@in_one_loop
async def test_a_dead_replicas_sites_move_after_its_lease_and_start_from_the_last_stored_test(
        replicas: tuple[list[ReplicaLeases], Clock, str]) -> None:
    leases, clock, url = replicas
    await beat(leases, 0, 1, 2)
    led = {name: ranking(name, 3)[0] for name in NAMES}
    for name in NAMES:
        await turns(leases, name, clock.at)  # each first replica takes its lease
    dead = 0
    moved = [n for n in NAMES if led[n] == dead]
    assert moved
    # the dead one tested moved[0] at 1010 and stored it (the shared history)
    store = PostgresStore(url)
    site = throughput_target(moved[0], every_seconds=3600.0)
    store.write([EndpointRecord.of(site)], [iperf3_test(site, 1_010.0, 8e6)])
    store.close()

    clock.at = 1_000.0 + LEASE * 2 / 3 + 1  # dead for 2/3 of a lease: taken for dead, its leases still run
    await beat(leases, 1, 2)
    assert all("0" not in lease.live for lease in leases[1:])
    for name in moved:
        answers = await turns(leases, name, clock.at, among=[1, 2])
        assert not any(t.mine for t in answers.values()), (name, answers)  # the lease still holds: nobody
    clock.at = 1_000.0 + LEASE + 1  # its leases (renewed last at 1000) have expired
    await beat(leases, 1, 2)
    for name in moved:
        answers = await turns(leases, name, clock.at, among=[1, 2])
        mine = [i for i, t in answers.items() if t.mine]
        assert mine == [ranking(name, 3)[1]], (name, answers)  # the second replica, alone
        turn = answers[mine[0]]
        assert turn.last_tested_at == (1_010.0 if name == moved[0] else None)
    # the stored test less than a period ago holds the take-over's first test until a period after it
    state = SiteState(site, clock.at)
    state.running = True
    assert defer(state, Turn(True, clock.at, 1_010.0), clock.at)
    assert not state.running and state.next_due == 1_010.0 + 3600.0
    # sites the dead one did not lead are untouched
    for name in NAMES:
        if name not in moved:
            assert (await turns(leases, name, clock.at, among=[1, 2]))[led[name]].mine


@in_one_loop
async def test_the_first_replica_back_gets_its_sites_back(replicas: tuple[list[ReplicaLeases], Clock, str]) -> None:
    leases, clock, _url = replicas
    await beat(leases, 1, 2)  # 0 was never up: its sites are the second replicas'
    moved = [n for n in NAMES if ranking(n, 3)[0] == 0]
    for name in moved:
        answers = await turns(leases, name, clock.at, among=[1, 2])
        assert [i for i, t in answers.items() if t.mine] == [ranking(name, 3)[1]]
    clock.at += 10
    await beat(leases, 0, 1, 2)  # 0 comes up
    for name in moved:
        assert not (await turns(leases, name, clock.at, among=[0]))[0].mine  # the second still holds the lease
        second = ranking(name, 3)[1]
        assert not (await turns(leases, name, clock.at, among=[second]))[second].mine  # ... and gives it back
        assert (await turns(leases, name, clock.at, among=[0]))[0].mine


def test_no_database_no_lease_no_test_and_the_static_rule_without_one() -> None:
    """A server that never answered: no replica holds a lease, so none tests (the budget first); without a
    shared history at all, the first replica by rank tests (FirstReplica)."""
    clock = Clock(1_000.0)
    leases = [ReplicaLeases("postgresql://connmon@127.0.0.1:1/none", Shard(i, 3, 2), clock) for i in range(3)]

    async def ask() -> None:
        for name in NAMES[:6]:
            answers = await turns(leases, name, clock.at)
            assert not any(t.mine for t in answers.values()), answers
    asyncio.run(ask())
    first = FirstReplica(Shard(1, 3, 2))
    name = next(n for n in NAMES if ranking(n, 3)[1] == 1)
    turn = asyncio.run(first.turn(name, 5.0))
    assert not turn.mine and turn.recheck_at == 5.0 + FOLLOW_RECHECK_SECONDS
    assert asyncio.run(FirstReplica(Shard(ranking(name, 3)[0], 3, 2)).turn(name, 5.0)).mine


@in_one_loop
async def test_a_tester_cut_off_from_the_database_stops_before_its_lease_can_move(
        replicas: tuple[list[ReplicaLeases], Clock, str]) -> None:
    """Review finding: a tester that loses the database tests only while its lease runs by its own clock, so a
    follower that takes the lease once it has expired never tests at the same time (nor twice a period)."""
    leases, clock, url = replicas
    await beat(leases, 0, 1, 2)
    name = NAMES[0]
    first, second = ranking(name, 3)[:2]
    assert (await turns(leases, name, clock.at, among=[first]))[first].mine
    leases[first].url = "postgresql://connmon@127.0.0.1:1/none"  # its way to the database is cut
    assert leases[first]._conn is not None
    await leases[first]._conn.close()  # the next statement connects again, and cannot
    clock.at += LEASE / 2
    assert (await turns(leases, name, clock.at, among=[first]))[first].mine  # its lease still runs
    clock.at = 1_000.0 + LEASE + 1
    assert not (await turns(leases, name, clock.at, among=[first]))[first].mine  # expired: it stops
    others = [i for i in range(3) if i != first]
    await beat(leases, *others)
    assert (await turns(leases, name, clock.at, among=[second]))[second].mine  # and the follower takes over


@in_one_loop
async def test_a_lease_not_taken_by_this_process_is_not_renewed_and_expires(
        replicas: tuple[list[ReplicaLeases], Clock, str]) -> None:
    """Review finding: a lease left by an earlier life of a replica (or a site no longer in its plan) is not
    renewed by its heartbeat, so the site's tester takes it once it expires."""
    leases, clock, url = replicas
    name = NAMES[0]
    first, second = ranking(name, 3)[:2]
    with psycopg.connect(url, autocommit=True) as conn:  # the second one's earlier life held it
        conn.execute("INSERT INTO leases VALUES (%s, %s, %s)", (f"throughput:{name}", str(second), clock.at + LEASE))
    await beat(leases, 0, 1, 2)
    assert not (await turns(leases, name, clock.at, among=[first]))[first].mine
    clock.at += LEASE + 1
    await beat(leases, 0, 1, 2)  # the second beats, but does not renew what it did not take
    assert (await turns(leases, name, clock.at, among=[first]))[first].mine
    # and one that leaves the plan is no longer renewed either
    leases[first].forget(set())
    clock.at += 1
    await beat(leases, 0, 1, 2)
    with psycopg.connect(url, autocommit=True) as conn:
        until = conn.execute("SELECT expires_at FROM leases WHERE name = %s", (f"throughput:{name}",)).fetchone()
    assert until is not None and until[0] == clock.at - 1 + LEASE  # as taken, never renewed


def test_a_take_over_waits_for_the_sites_window() -> None:
    """Review finding: mine at a recheck time outside the site's windows: the test waits for the next window,
    and for a period after the last stored test."""
    window = ThroughputSettings(method="iperf3", every_seconds=6 * 3600.0, windows=(parse_window("22:00-06:00"),),
                                timezone="UTC")
    site = throughput_target("w", every_seconds=6 * 3600.0)
    site = dataclasses.replace(site, throughput=window)
    noon = dt.datetime(2026, 12, 7, 11, 0, tzinfo=dt.UTC).timestamp()
    state = SiteState(site, noon)
    state.running = True
    assert defer(state, Turn(True, noon, noon - 7 * 3600.0), noon)  # last test at 04:00: due, but not at noon
    start = dt.datetime.fromtimestamp(state.next_due, dt.UTC)
    assert not state.running  # in the night's window (spread over it by the site's phase), not at noon
    assert dt.datetime(2026, 12, 7, 22, tzinfo=dt.UTC) <= start < dt.datetime(2026, 12, 8, 6, tzinfo=dt.UTC)
    inside = dt.datetime(2026, 12, 7, 23, 0, tzinfo=dt.UTC).timestamp()
    state.running = True
    assert not defer(state, Turn(True, inside, noon - 7 * 3600.0), inside)  # in the window: it runs


def test_followers_due_tests_do_not_hold_back_this_replicas_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: a thousand due sites that are other replicas' turn leave the dispatcher's places free:
    with max_concurrent 1, the one site that is this replica's starts in the same dispatch."""
    from monitor import probes
    from monitor.pipeline import ResultPipeline
    from monitor.probes import ProbeContext
    from monitor.scheduler import CycleScheduler
    from monitor.throughput_plan import ThroughputPlan

    started: list[str] = []

    async def probe(targets, ctx):  # type: ignore[no-untyped-def]
        started.extend(t.name for t in targets)
        return [iperf3_test(t, 0.0, 8e6) for t in targets]

    class Leader:
        asked = 0

        async def turn(self, name: str, now: float) -> Turn:
            Leader.asked += 1
            return Turn(name == "mine", now + FOLLOW_RECHECK_SECONDS)

    monkeypatch.setitem(probes.PROBES, "iperf3", probe)
    sites = [throughput_target(f"other{i:04d}", every_seconds=3600.0) for i in range(1000)]
    sites.append(throughput_target("mine", every_seconds=3600.0))

    async def main() -> None:
        scheduler = CycleScheduler(ProbeContext(None, lambda: 0.0), ResultPipeline([]),  # type: ignore[arg-type]
                                   ThroughputPlan(max_concurrent=1), clock=lambda: 1e6)
        scheduler.plan.set_targets(sites, 0.0)
        for state in scheduler.plan.sites.values():
            state.next_due = 0.0  # every one due now
        scheduler.test_leader = Leader()
        await scheduler.dispatch_throughput()
        await asyncio.gather(*scheduler.running_cycles)
        assert started == ["mine"]
        assert Leader.asked == 1001  # each due site asked once, none left due
        assert all(s.next_due > 1e6 for n, s in scheduler.plan.sites.items() if n != "mine")

    asyncio.run(main())
