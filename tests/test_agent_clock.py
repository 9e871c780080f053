"""True clocks (issue 18, point 6): the centre measures each agent's clock offset and never stores a false time.

A Raspberry Pi has no real-time clock: after a power cut it boots with the clock it last saved,
days behind. A real agent (its clock injected three days behind) measures 127.0.0.1 and posts to a
real ``connmon run`` on loopback; its results are stored at the true times, flagged in the
history, its offset is in ``/metrics``, and it logs a warning. The wire's rules (a batch whose
offset cannot be bounded is held, with a reason) are checked on :func:`decode_batch` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from monitor.agent.centre.registry import token_hash
from monitor.agent.clock import CLOCK_HOLD_SECONDS, MAX_CLOCK_OFFSET_SECONDS, measure_offset
from monitor.agent.decode import decode_batch
from monitor.agent.site.client import CentreClient
from monitor.agent.site.config import AgentConfig, AgentIcmp
from monitor.agent.site.main import Agent
from monitor.agent.site.spool import Spool
from monitor.icmp.engine import IcmpEngine
from tests.loopback_centre import HOST, LoopbackCentre, run_agent, running_centre
from tests.running import one

PORT = 19600
BEHIND = 3 * 86400.0
SITES = {"rtc-less-1": "token-of-rtc-less-1", "on-time-1": "token-of-on-time-1"}
CONFIG = ("defaults:\n  icmp: {interval: 2s, count: 2, spacing: 100ms, timeout: 500ms}\ngroups:\n"
          "  - name: schools\n    kind: school\n    mode: agent\n    endpoints:\n"
          + "".join(f"      - {{name: {name}, agent: {{token_sha256: {token_hash(token)}}}}}\n"
                    for name, token in SITES.items()))


def stored(centre: LoopbackCentre, site: str) -> list[tuple[float, str | None]]:
    with sqlite3.connect(f"file:{centre.state / 'history.sqlite3'}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT c.started_at, c.error_detail FROM icmp c JOIN endpoints e "
                               "ON e.id = c.endpoint_id WHERE e.name = ? ORDER BY c.started_at", (site,)))


def agent_posting(tmp: Path, site: str, clock_offset: float, cycles: int) -> Agent:
    """A real agent for ``site``, its clock ``clock_offset`` off, run until ``cycles`` cycles are posted."""
    return run_agent(tmp, PORT, site, SITES[site], lambda a: a.cycles >= cycles and a.uploader.clock_offset is not None,
                     clock_offset)


def test_an_agent_three_days_behind_has_its_results_stored_at_true_times(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Results of an agent whose clock is 3 days behind are stored at the centre's times, flagged as corrected;
    the offset is in /metrics and the agent says its clock is off; an agent on time is left as it is."""
    with running_centre(tmp_path, CONFIG, PORT) as centre:
        started = time.time()
        with caplog.at_level(logging.WARNING, logger="monitor.agent.site.upload"):
            behind = agent_posting(tmp_path, "rtc-less-1", -BEHIND, cycles=3)
        on_time = agent_posting(tmp_path, "on-time-1", 0.0, cycles=2)
        ended = time.time()
        rows = stored(centre, "rtc-less-1")
        assert len(rows) >= 3
        for at, detail in rows:  # every one at a true time (within the offset's bound), none three days ago
            assert started - 5 <= at <= ended + 5, (at, started, ended)
            assert detail is not None and detail.startswith("clock corrected: the agent's clock was -2592")
        good = stored(centre, "on-time-1")
        assert len(good) >= 2 and all(started - 5 <= at <= ended + 5 and detail is None for at, detail in good)
        parsed = centre.scrape()
    offset = one(parsed, "connmon_agent_clock_offset_seconds", endpoint="rtc-less-1")
    bound = one(parsed, "connmon_agent_clock_offset_bound_seconds", endpoint="rtc-less-1")
    assert offset is not None and bound is not None and abs(offset + BEHIND) <= bound + 1.0
    assert one(parsed, "connmon_agent_clock_corrected_results_total", endpoint="rtc-less-1") == len(rows)
    assert abs(one(parsed, "connmon_agent_clock_offset_seconds", endpoint="on-time-1") or 99) < 1.0
    assert one(parsed, "connmon_agent_clock_corrected_results_total", endpoint="on-time-1") == 0
    # the agent learns its offset from the centre's answer, and says so once
    assert behind.uploader.clock_offset is not None and behind.uploader.clock_offset.off
    assert on_time.uploader.clock_offset is not None and not on_time.uploader.clock_offset.off
    said = [r.getMessage() for r in caplog.records if "clock is" in r.getMessage()]
    assert len(said) == 1 and "-2592" in said[0] and "off the centre's" in said[0]


class SteppedClock:
    """The agent machine's wall clock: ``offset`` off the true time until NTP sets it (the test sets it to 0)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def test_results_spooled_before_ntp_set_the_clock_are_stored_at_true_times(tmp_path: Path) -> None:
    """A Raspberry Pi boots 3 days behind while its link is still down: it measures and spools. Then the link
    comes up and NTP sets its clock before the first upload: the upload's offset is 0, yet every result measured
    before is stored at its true time (placed by the boot's clock) and flagged; none three days ago."""
    token = tmp_path / "token"
    token.write_text(SITES["rtc-less-1"])
    state = tmp_path / "agent"
    state.mkdir()
    config = AgentConfig(source="agent.yaml", centre=f"http://{HOST}:{PORT}", site="rtc-less-1", token_file=token,
                         token=SITES["rtc-less-1"], state_dir=state, interval_seconds=1.0,
                         icmp=AgentIcmp(count=2, spacing_seconds=0.1, timeout_seconds=0.3),
                         upload_timeout_seconds=2.0)
    clock = SteppedClock(-BEHIND)
    started = time.time()
    with contextlib.ExitStack() as stack:
        async def go() -> tuple[int, LoopbackCentre]:
            engine = IcmpEngine.open("auto")
            spool = Spool.open(state)
            client = CentreClient(config, clock)
            agent = Agent(config, spool, engine, client, clock)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                while agent.cycles < 3:  # no centre yet: everything stays in the spool
                    assert not task.done()
                    await asyncio.sleep(0.05)
                clock.offset = 0.0  # NTP reached a server
                behind = agent.cycles
                centre = await asyncio.to_thread(stack.enter_context, running_centre(tmp_path, CONFIG, PORT))
                deadline = time.monotonic() + 60
                while len(spool) or len(stored(centre, "rtc-less-1")) < behind:
                    assert time.monotonic() < deadline and not task.done()
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await task
                await client.close()
                spool.close()
                engine.close()
            return behind, centre

        behind, centre = asyncio.run(go())
        rows = stored(centre, "rtc-less-1")
        ended = time.time()
        parsed = centre.scrape()
    assert len(rows) >= behind
    assert all(started - 5 <= at <= ended + 5 for at, _ in rows), (rows, started, ended)  # none three days ago
    flagged = [detail for _, detail in rows if detail is not None and detail.startswith("clock corrected")]
    assert len(flagged) >= behind and all("-2592" in detail for detail in flagged)
    assert one(parsed, "connmon_agent_clock_corrected_results_total", endpoint="rtc-less-1") == len(flagged)
    assert abs(one(parsed, "connmon_agent_clock_offset_seconds", endpoint="rtc-less-1") or 99) < 1.0  # right now


def _batch(sent_at: float, at: float, round_trip: float | None,
           anchor: tuple[str, float] | None = None) -> dict[str, object]:
    agent: dict[str, object] = {"version": "0.test", "instance": "i-1", "boot_id": "b-1", "uptime_seconds": 5000.0,
                                "sent_at": sent_at}
    if round_trip is not None:
        agent["round_trip_seconds"] = round_trip
    result: dict[str, object] = {"seq": 1, "type": "icmp", "path": "centre", "started_at": at, "address": "10.0.0.1",
                                 "sent": 1, "rtts_seconds": [0.5], "error": None, "error_detail": ""}
    if anchor is not None:
        result.update(boot_id=anchor[0], uptime_seconds=anchor[1])
    return {"site": "s", "agent": agent, "results": [result]}


def test_a_result_measured_before_the_clock_was_stepped_is_placed_by_the_boots_clock() -> None:
    """A Pi booted 3 days behind measured while its link was down; NTP then set its clock, and the upload's
    offset is 0. The result's uptime (the boot's clock) still places it at its true time; a result of an
    earlier boot cannot be placed so and keeps the batch's offset."""
    now = 1_800_000_000.0
    # measured 600 s before the upload (uptime 4400 of 5000), stamped 3 days early
    stepped = decode_batch(_batch(now - 0.1, now - 600 - BEHIND, 0.2, ("b-1", 4400.0)), now, per_result=True)
    moved = stepped.results[0]
    assert moved.corrected and moved.result.started_at == pytest.approx(now - 600, abs=0.2)
    assert stepped.clock is not None and abs(stepped.clock.offset_seconds) < 1
    other_boot = decode_batch(_batch(now - 0.1, now - 600 - BEHIND, 0.2, ("b-0", 4400.0)), now, per_result=True)
    assert not other_boot.results[0].corrected
    malformed = decode_batch(_batch(now, now - 30, 0.2, ("b-1", -1.0)), now, per_result=True)
    assert not malformed.results and malformed.refused[0].field == "$.results[0].uptime_seconds"


@pytest.mark.parametrize("offset", [-BEHIND, +7200.0])
def test_an_offset_bounded_by_a_short_round_trip_moves_every_time_to_the_centres_clock(offset: float) -> None:
    """Behind or ahead, a batch with a round trip short enough has its times moved by the measured offset."""
    now = 1_800_000_000.0
    batch = decode_batch(_batch(now + offset - 0.2, now + offset - 30.0, 0.4), now, per_result=True)
    assert batch.results[0].corrected and batch.clock is not None and batch.clock.bound_seconds == pytest.approx(0.2)
    assert batch.clock.offset_seconds == pytest.approx(offset)
    assert batch.results[0].result.started_at == pytest.approx(now - 30.0)
    assert batch.results[0].result.error_detail.startswith("clock corrected")


def test_an_offset_too_uncertain_to_correct_is_held_with_a_reason_never_stored_false() -> None:
    """A clock off by days, but a round trip too long to bound it well: each result is refused with
    retry_after_seconds (the agent keeps it); version 1 cannot hold a result and is judged as before."""
    now = 1_800_000_000.0
    batch = decode_batch(_batch(now - BEHIND, now - BEHIND - 10, 120.0), now, per_result=True)
    assert not batch.results and len(batch.refused) == 1
    refused = batch.refused[0]
    assert refused.retry_after_seconds == CLOCK_HOLD_SECONDS and "clock" in refused.reason
    old = decode_batch(_batch(now - BEHIND, now - BEHIND - 10, 120.0), now, per_result=False)
    assert not old.results[0].corrected and old.clock is not None and old.clock.bound_seconds is None


def test_a_result_of_an_earlier_boot_is_held_while_this_boots_clock_is_off() -> None:
    """A Pi spooled right-stamped results, lost power and booted hours behind; it uploads before NTP has set
    its clock. This boot's offset says nothing of the earlier boot's results: they are held, never moved to
    false times, while this boot's own results are corrected; once the clock is right they are taken as stamped."""
    now = 1_800_000_000.0
    behind = 6 * 3600.0
    batch = _batch(now - behind - 0.1, now - 900, 0.2, ("b-0", 70_000.0))  # stamped right, in the earlier boot
    this_boot = dict(batch["results"][0], seq=2, started_at=now - behind - 60,  # type: ignore[call-overload]
                     boot_id="b-1", uptime_seconds=4940.0)
    batch["results"] = [batch["results"][0], this_boot]  # type: ignore[index]
    decoded = decode_batch(batch, now, per_result=True)
    assert [r.seq for r in decoded.refused] == [1] and decoded.refused[0].retry_after_seconds == CLOCK_HOLD_SECONDS
    assert "earlier boot" in decoded.refused[0].reason
    assert [r.seq for r in decoded.results] == [2] and decoded.results[0].corrected
    assert decoded.results[0].result.started_at == pytest.approx(now - 60, abs=0.2)
    right = decode_batch(_batch(now - 0.1, now - 900, 0.2, ("b-0", 70_000.0)), now, per_result=True)
    assert not right.refused and right.results[0].result.started_at == now - 900  # the clock is right: as stamped


def test_a_clock_within_the_bound_or_without_a_round_trip_is_left_alone() -> None:
    """Within the allowed offset nothing moves; an older agent (no round trip) is judged as before issue 18."""
    now = 1_800_000_000.0
    near = decode_batch(_batch(now + MAX_CLOCK_OFFSET_SECONDS - 5, now - 30, 0.2), now, per_result=True)
    assert not near.results[0].corrected and near.results[0].result.started_at == now - 30
    old = decode_batch(_batch(now - BEHIND, now - BEHIND, None), now, per_result=True)
    assert not old.results[0].corrected and old.results[0].result.started_at == now - BEHIND
    assert measure_offset(100.0, 90.0, None).bound_seconds is None
