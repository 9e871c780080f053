"""Settings held by the centre (issue 18, point 4): a running agent follows a change at the centre, no restart.

A real ``connmon run`` on loopback holds the site's ICMP settings; a real agent whose own file says
something else measures as the centre says. The site's interval and echo count are changed in the
centre's config and the centre reloads: the next answer to the agent names a new settings version,
the agent fetches it and its next cycles measure with it (the history's rows show the new count).
The settings are kept in the agent's state directory for a restart while the centre is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from monitor.agent.centre.registry import token_hash
from monitor.agent.site import settings as centre_settings
from monitor.agent.site.client import CentreClient
from monitor.agent.site.config import AgentConfig, AgentIcmp
from monitor.agent.site.main import Agent
from monitor.agent.site.spool import Spool
from monitor.icmp.engine import IcmpEngine
from tests.loopback_centre import HOST, LoopbackCentre, running_centre
from tests.running import request

PORT = 19602
SITE = "steered-1"
TOKEN = "token-of-steered-1"


def config_text(interval: str, count: int, gateway: str) -> str:
    return (f"defaults:\n  icmp: {{interval: {interval}, count: {count}, spacing: 100ms, timeout: 300ms}}\n"
            "groups:\n  - name: schools\n    kind: school\n    mode: agent\n    endpoints:\n"
            f"      - {{name: {SITE}, agent: {{token_sha256: {token_hash(TOKEN)}, gateway: {gateway}}}}}\n")


def sent_counts(centre: LoopbackCentre) -> list[int]:
    with sqlite3.connect(f"file:{centre.state / 'history.sqlite3'}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT c.sent FROM icmp c JOIN endpoints e ON e.id = c.endpoint_id "
                                         "WHERE e.name = ? ORDER BY c.started_at", (SITE,))]


def rows(centre: LoopbackCentre) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{centre.state / 'history.sqlite3'}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT * FROM icmp"))


async def _until(check: object, agent_task: asyncio.Task[None], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline and not agent_task.done()
        await asyncio.sleep(0.05)


def test_a_running_agent_follows_the_centres_settings_without_a_restart(tmp_path: Path) -> None:
    """The agent measures with the centre's settings, not its file's; after a change at the centre and a
    reload it measures with the new ones (the history's rows show the new echo count), the same process."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    state = tmp_path / "agent"
    state.mkdir()
    file_config = AgentConfig(source="agent.yaml", centre=f"http://{HOST}:{PORT}", site=SITE, token_file=token,
                              token=TOKEN, state_dir=state, interval_seconds=60.0, gateway="auto")
    with running_centre(tmp_path, config_text("2s", 2, "off"), PORT) as centre:
        status, _, body = request(centre.url("/api/v1/agent/settings"))
        assert status == 401  # the site's token is needed

        async def go() -> tuple[str | None, str | None]:
            engine = IcmpEngine.open("auto")
            spool = Spool.open(state)
            client = CentreClient(file_config)
            agent = Agent(file_config, spool, engine, client)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await _until(lambda: agent.settings_version is not None and len(sent_counts(centre)) >= 2, task)
                first = agent.settings_version
                assert agent.config.interval_seconds == 2.0 and agent.config.icmp.count == 2
                assert agent.config.gateway is None  # the centre says off; the file said auto
                await asyncio.to_thread(centre.reload, config_text("1s", 3, "auto"))
                await _until(lambda: agent.settings_version != first, task)  # the next answer named it
                assert agent.config.interval_seconds == 1.0 and agent.config.icmp.count == 3
                assert agent.config.gateway == "auto"
                await _until(lambda: sent_counts(centre)[-2:] == [3, 3], task)  # measured with the new count
                return first, agent.settings_version
            finally:
                stop.set()
                await task
                await client.close()
                spool.close()
                engine.close()

        first, second = asyncio.run(go())
    counts = sent_counts(centre)
    assert counts[0] == 2 and counts[-1] == 3 and first != second
    # kept for a restart while the centre cannot be reached: a new agent starts with the centre's last word
    kept = centre_settings.load_kept(state)
    assert kept is not None and kept[0].version == second
    restarted = Agent(file_config, Spool.open(state), IcmpEngine.open("auto"), CentreClient(file_config))
    assert restarted.config.interval_seconds == 1.0 and restarted.settings_version == second


def test_settings_the_agent_cannot_hold_are_said_once_and_it_measures_as_before(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A centre whose ICMP cycle for the site does not fit its interval (the centre never checked an agent
    site's cycle before issue 18): the agent keeps its own settings, says so once, and does not fetch them
    again at every upload."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    state = tmp_path / "agent"
    state.mkdir()
    file_config = AgentConfig(source="agent.yaml", centre=f"http://{HOST}:{PORT}", site=SITE, token_file=token,
                              token=TOKEN, state_dir=state, interval_seconds=1.0,
                              icmp=AgentIcmp(count=2, spacing_seconds=0.1, timeout_seconds=0.3))
    centre_text = ("defaults:\n  icmp: {interval: 1s, count: 5, spacing: 200ms, timeout: 2s}\ngroups:\n"
                   "  - name: schools\n    kind: school\n    mode: agent\n    endpoints:\n"
                   f"      - {{name: {SITE}, agent: {{token_sha256: {token_hash(TOKEN)}}}}}\n")
    with running_centre(tmp_path, centre_text, PORT) as centre, \
            caplog.at_level(logging.ERROR, logger="monitor.agent.site.main"):
        async def go() -> Agent:
            engine = IcmpEngine.open("auto")
            spool = Spool.open(state)
            client = CentreClient(file_config)
            agent = Agent(file_config, spool, engine, client)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await _until(lambda: len(sent_counts(centre)) >= 4, task)
            finally:
                stop.set()
                await task
                await client.close()
                spool.close()
                engine.close()
            return agent

        agent = asyncio.run(go())
        counts = sent_counts(centre)
    assert set(counts) == {2} and agent.config == file_config and agent.settings_version is None, rows(centre)
    said = [r.getMessage() for r in caplog.records if "cannot be used here" in r.getMessage()]
    assert len(said) == 1 and "does not fit" in said[0]


def test_settings_out_of_range_are_refused_and_the_agent_keeps_what_it_has() -> None:
    """A settings answer the agent's own file could not hold (a cycle longer than its interval) is not applied."""
    body = {"settings_version": "abc", "interval_seconds": 1.0, "gateway": None,
            "icmp": {"count": 50, "spacing_seconds": 0.2, "timeout_seconds": 2.0, "payload_bytes": 56},
            "throughput": {"enabled": False, "method": "none", "directions": []}}
    try:
        centre_settings.parse_settings(body)
    except ValueError as err:
        assert "does not fit" in str(err)
    else:
        raise AssertionError("accepted")
