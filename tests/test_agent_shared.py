"""The agents' shared state on a real PostgreSQL (issue 19): slot grants under the advisory lock, positions that never
move back, refusals kept and bounded. The daemons that use it are tested in ``tests/test_agent_instances.py``."""

from __future__ import annotations

import asyncio
import math
import threading
from types import SimpleNamespace

import psycopg

from monitor.agent.centre.shared import REFUSALS_KEPT, SharedAgents, SharedPosition, SiteTests, keep_contacts
from monitor.agent.protocol import MAX_AGE_SECONDS
from monitor.history.postgres import PostgresStore
from tests.postgres import pg_server, pg_url  # noqa: F401 (fixtures)


def _migrated(url: str) -> None:
    PostgresStore(url).close()  # the history's migrations make the tables, as the daemon's writer does


def test_grants_from_many_instances_at_once_never_exceed_the_limit(pg_url: str) -> None:  # noqa: F811
    """Twelve instances (each its own connection, in its own thread) ask for slots of 24 sites at the same moment,
    with a limit of 3: exactly 3 are granted; a site holds one at most; a freed or expired slot can be taken again."""
    _migrated(pg_url)
    instances = [SharedAgents(pg_url, f"{i}/12") for i in range(12)]
    barrier = threading.Barrier(12)
    rounds: list[list[str]] = [[] for _ in range(6)]

    def ask(index: int) -> None:
        async def go() -> None:
            for number, granted in enumerate(rounds):  # six races; each round's grants expire before the next
                now = 1000.0 * (number + 1)
                barrier.wait()
                for site in (f"site-{index}", f"site-{index + 12}"):
                    if await instances[index].take(f"slot-{number}-{site}", site, now, now + 100.0, 3):
                        granted.append(site)
            await instances[index].close()

        asyncio.run(go())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(granted) for granted in rounds] == [3] * 6, rounds
    granted = rounds[-1]

    async def after() -> None:
        shared = SharedAgents(pg_url, "0/12")
        try:
            assert await shared.held(6000.0) == 3
            site = granted[0]
            assert not await shared.take("again", site, 6001.0, 6100.0, 10)  # the site has one already
            assert not await shared.take("more", "site-other", 6001.0, 6100.0, 3)  # the region's 3 are out
            assert await shared.live([f"slot-5-{site}", "never-granted"]) == {f"slot-5-{site}"}
            shared.release(f"slot-5-{site}")
            await asyncio.sleep(0)  # the release runs on the worker: wait for it
            for _ in range(50):
                if await shared.held(6001.0) == 2:
                    break
                await asyncio.sleep(0.05)
            assert await shared.take("more", "site-other", 6001.0, 6100.0, 3)
            assert await shared.held(6001.0) == 3
            assert await shared.take("late", "site-late", 6100.0, 6200.0, 3)  # the others expired at 6100
            assert await shared.held(6100.0) == 1
            slot = await shared.slot("late")
            assert slot is not None and slot.site == "site-late" and slot.expires_at == 6200.0
        finally:
            await shared.close()

    asyncio.run(after())


def test_a_position_never_moves_back_and_refusals_are_bounded(pg_url: str) -> None:  # noqa: F811
    """A late confirmation keeps the later position another instance wrote; a result stored since is no longer
    held; an installation's refusals keep the newest ones only; each site's last contact is its latest."""
    _migrated(pg_url)

    async def go() -> None:
        shared = SharedAgents(pg_url, "0/2")
        try:
            assert (await shared.position("s", "i1")).seq == 0
            await shared.confirm("s", "i1", 20, range(1, 18), [18, 19, 20], 50.0)
            await shared.confirm("s", "i1", 10, range(1, 10), [], 40.0)  # an instance that confirms late
            position = await shared.position("s", "i1")
            assert position.seq == 20 and position.refused == {18, 19, 20}
            await shared.confirm("s", "i1", 21, [19, 21], [], 60.0)  # 19 stored since: no longer held
            assert (await shared.position("s", "i1")).refused == {18, 20}
            many = range(100, 100 + REFUSALS_KEPT + 10)
            await shared.confirm("s", "i1", many[-1], [], many, 70.0)
            position = await shared.position("s", "i1")
            assert len(position.refused) == REFUSALS_KEPT and min(position.refused) == many[10]
            assert (await shared.position("s", "i2")).seq == 0  # another installation numbers on its own
            await shared.confirm("t", "i9", 1, [1], [], 30.0)
            assert await shared.contacts() == {"s": 70.0, "t": 30.0}
        finally:
            await shared.close()

    asyncio.run(go())


def test_installations_silent_longer_than_anything_is_kept_are_forgotten(pg_url: str) -> None:  # noqa: F811
    """A reinstalled agent's old installation, silent for MAX_AGE_SECONDS, loses its position and refusals; the
    new one, and the old one a second sooner, keep theirs; the contacts then come from what is left."""
    _migrated(pg_url)

    async def go() -> None:
        shared = SharedAgents(pg_url, "0/2")
        try:
            await shared.confirm("r", "old", 40, range(1, 38), [38, 39, 40], 1000.0)
            await shared.confirm("r", "new", 3, [1, 2, 3], [], 1000.0 + 86400.0)
            await shared.confirm("q", "only", 7, range(1, 8), [], 1000.0 + 1.0)
            assert await shared.forget_silent(1000.0 + MAX_AGE_SECONDS) == 0  # a second short: nothing yet
            assert await shared.forget_silent(1000.0 + MAX_AGE_SECONDS + 0.5) == 1
            assert (await shared.position("r", "old")) == SharedPosition(0, frozenset())
            assert (await shared.position("r", "new")).seq == 3
            assert (await shared.position("q", "only")).seq == 7
            assert (await shared.contacts())["r"] == 1000.0 + 86400.0
            # the daemons' contacts loop forgets at its first turn, by the registry's clock
            await shared.confirm("p", "gone", 2, [1, 2], [], 5000.0)
            heard: list[dict[str, float]] = []
            registry = SimpleNamespace(clock=lambda: 5000.0 + MAX_AGE_SECONDS + 1.0, heard=heard.append)
            loop = asyncio.ensure_future(keep_contacts(registry, shared, every_seconds=0.01))  # type: ignore[arg-type]
            for _ in range(200):
                if heard:
                    break
                await asyncio.sleep(0.01)
            loop.cancel()
            assert heard and "p" not in heard[0] and "r" in heard[0], heard
        finally:
            await shared.close()

    asyncio.run(go())


def test_a_sites_tests_as_the_region_holds_them(pg_url: str) -> None:  # noqa: F811
    """``site_tests``: the newest test's start leaves out ``busy`` and ``budget`` rows (retried, not tests), the last
    measured size is the newest error-free test's, the month's bytes count every row since its start; and a grant
    whose caller read an older newest test than the one stored since is refused (the race with a test just ended)."""
    _migrated(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO endpoints (name, kind, district, link, grp, target_bps) "
                     "VALUES ('w', 'school', 'd', 'satellite', 'g', 4e6)")
        rows = [(100.0, 5000, None), (200.0, 7000, "timeout"), (300.0, 0, "busy"), (400.0, 0, "budget")]
        for started, moved, error in rows:
            conn.execute("INSERT INTO throughput (endpoint_id, started_at, ended_at, method, bytes, directions, "
                         "target_bps, error) SELECT id, %s, %s, 'http', %s, 'download', 4e6, %s FROM endpoints "
                         "WHERE name = 'w'", (started, started + 10.0, moved, error))

    async def go() -> None:
        shared = SharedAgents(pg_url, "0/2")
        try:
            assert await shared.site_tests("w", 150.0) == SiteTests(200.0, 5000, 7000)  # the timeout was a test
            assert await shared.site_tests("w", None) == SiteTests(200.0, 5000, 0)
            assert await shared.site_tests("nobody", 0.0) == SiteTests(None, None, 0)
            assert not await shared.take("s1", "w", 500.0, 600.0, 3, tested_at=100.0)  # 200 was stored since
            assert await shared.take("s2", "w", 500.0, 600.0, 3, tested_at=200.0)
            assert await shared.take("s3", "nobody", 500.0, 600.0, 3, tested_at=-math.inf)  # none, none since
        finally:
            await shared.close()

    asyncio.run(go())
