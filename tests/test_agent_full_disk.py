"""The agent on a full disk (issue 25, point 4): no result vanishes uncounted, and nothing is sent twice.

Before, with the spool's volume full, every cycle logged a traceback and dropped its results with
every counter at 0, and the failed acknowledgements had the same results sent again at each
interval. Real 1 MB tmpfs volumes, filled by a file and freed again (root only).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.protocol import AgentInfo, encode_icmp
from monitor.agent.site import keeper as keeper_module
from monitor.agent.site.client import Answer
from monitor.agent.site.config import AgentConfig
from monitor.agent.site.keeper import ResultKeeper
from monitor.agent.site.spool import Spool
from monitor.agent.site.upload import Uploader
from tests.conftest import need_root
from tests.factories import icmp, target
from tests.volumes import fill, small_volume

T0 = 1_700_000_000.0


def measured(at: float) -> Any:
    return lambda seq: encode_icmp(seq, icmp(target("school-001"), at, 0.011, 0.012, None))


def full(spool: Spool, volume: Path) -> Path:
    """Fill ``volume`` once the spool's log is empty, so that its next write must grow a file and cannot."""
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return fill(volume)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_results_wait_in_memory_and_what_memory_cannot_hold_is_a_counted_gap(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """While the spool cannot be written, the newest results wait in memory; the older ones that memory
    could not hold use up their numbers once it can, and are counted as dropped: one traceback in all."""
    need_root()
    caplog.set_level(logging.INFO, logger=keeper_module.__name__)
    with small_volume(tmp_path / "state", "1m") as state:
        spool = Spool.open(state)
        clock = Clock()
        keeper = ResultKeeper(spool, capacity=20, clock=clock)
        try:
            keeper.keep([measured(T0 + i) for i in range(5)])
            assert [seq for seq, _ in spool.oldest(100)] == [1, 2, 3, 4, 5]
            spool.acknowledge(5)
            filler = full(spool, state)
            for cycle in range(50):  # two results a cycle, for 50 cycles: 100 measured, none can be written
                keeper.keep([measured(T0 + 100 + 2 * cycle), measured(T0 + 101 + 2 * cycle)])
                clock.now += 10.0
            assert len(spool) == 0 and len(keeper.waiting) == 20 and keeper.lost == 80
            assert keeper.dropped == 80  # what the agent tells the centre meanwhile
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert sum(1 for r in errors if r.exc_info) == 1  # one traceback, not one a cycle
            assert len(errors) == 1  # 500 s: no reminder yet (every 600 s)
            clock.now += keeper_module.SAY_EVERY_SECONDS
            keeper.retry()
            assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2
            filler.unlink()
            keeper.keep([measured(T0 + 500)])
            kept = spool.oldest(100)
            assert [seq for seq, _ in kept] == list(range(86, 107))  # 6..85: the 80 lost, numbered and counted
            assert spool.dropped == 80 and keeper.dropped == 80 and keeper.lost == 0 and not keeper.waiting
            assert [body["started_at"] for _, body in kept] == [T0 + 100 + i for i in range(80, 100)] + [T0 + 500]
            assert any("can be written again" in r.getMessage() and "6-85" in r.getMessage()
                       for r in caplog.records)
        finally:
            spool.close()


class Centre:
    """The centre's answers: every result stored (protocol 2); counts the posts and their first seqs."""

    def __init__(self) -> None:
        self.posts: list[list[int]] = []

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        seqs = [r["seq"] for r in body["results"]]
        self.posts.append(seqs)
        return Answer(200, {"accepted": len(seqs), "duplicates": 0, "last_seq": seqs[-1], "gap_cause": None,
                            "protocol": 2, "refused": 0,
                            "results": [{"seq": s, "outcome": "stored"} for s in seqs]})


def test_an_acknowledgement_that_cannot_be_written_is_retried_before_anything_is_sent_again(tmp_path: Path) -> None:
    """The centre has the batch but the spool cannot forget it: nothing is posted again until it can."""
    need_root()
    with small_volume(tmp_path / "state", "1m") as state:
        spool = Spool.open(state)
        clock = Clock()
        config = AgentConfig(source="agent.yaml", centre="http://127.0.0.1:9", site="school-001",
                             token_file=Path("t"))
        centre = Centre()
        info = AgentInfo("0.test", "i", "b", 1.0, 0.0)
        uploader = Uploader(config, spool, centre, lambda: info, clock)  # type: ignore[arg-type]
        try:
            for i in range(10):
                spool.append(measured(T0 + i))
            filler = full(spool, state)
            first = asyncio.run(uploader.drain())
            assert centre.posts == [list(range(1, 11))] and first.stopped_by == "the spool cannot be written"
            assert len(spool) == 10
            for _ in range(5):  # interval after interval while the disk stays full: not posted again
                clock.now += 3600.0
                asyncio.run(uploader.drain())
            assert len(centre.posts) == 1
            filler.unlink()
            clock.now += 3600.0
            report = asyncio.run(uploader.drain())
            assert report.stopped_by == "" and len(spool) == 0 and len(centre.posts) == 1 and spool.dropped == 0
            spool.append(measured(T0 + 20))
            asyncio.run(uploader.drain())
            assert centre.posts[1:] == [[11]]  # the next post starts after what the centre has
        finally:
            spool.close()
