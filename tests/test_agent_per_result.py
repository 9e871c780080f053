"""Refuse results, not batches (issue 25, point 5), between a real ``connmon run`` and the agent's real uploader.

An agent whose clock was two hours fast, then fixed, had twelve results stamped in the future in
its spool. The centre refused the whole batch, and the agent dropped them with the good ones.
With protocol version 2 the centre answers each result: the good ones are stored, the future ones
refused with how long until they may be taken; the agent keeps those and sends them again then.
The daemon only serves agent sites, over loopback, so it probes nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.centre.registry import token_hash
from monitor.agent.protocol import MAX_FUTURE_SKEW_SECONDS, AgentInfo, encode_icmp
from monitor.agent.site.client import CentreClient
from monitor.agent.site.config import AgentConfig
from monitor.agent.site.spool import HOLD_MAX_SECONDS, Spool
from monitor.agent.site.upload import Uploader
from tests.factories import icmp, target
from tests.loopback_centre import LoopbackCentre, running_centre
from tests.running import samples, value

HOST = "127.0.0.1"
PORT = 19803
SITE = "fast-clock-1"
TOKEN = "token-of-fast-clock-1"


def _http(method: str, url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request with a body, no proxies; HTTP errors are answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=body, method=method, headers=headers or {}),
                         timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


CONFIG = ("defaults:\n  icmp: {interval: 60s}\ngroups:\n  - name: vsat\n    kind: school\n    mode: agent\n"
          "    endpoints:\n"
          f"      - {{name: {SITE}, agent: {{token_sha256: {token_hash(TOKEN)}}}}}\n"
          f"      - {{name: old-agent-1, agent: {{token_sha256: {token_hash('token-of-old-agent-1')}}}}}\n")


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackCentre]:
    with running_centre(tmp_path_factory.mktemp("per-result"), CONFIG, PORT) as running:
        yield running


def stored_times(centre: LoopbackCentre, site: str) -> list[float]:
    with sqlite3.connect(f"file:{centre.state / 'history.sqlite3'}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT c.started_at FROM icmp c JOIN endpoints e ON e.id = c.endpoint_id "
                                         "WHERE e.name = ? ORDER BY c.started_at", (site,))]


class AgentClock:
    """The agent's clock: the real one, plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def result_at(at: float) -> Any:
    return lambda seq: encode_icmp(seq, icmp(target(SITE), at, 0.6, 0.61, None))


def test_a_fast_clock_costs_no_result_and_the_good_ones_are_stored(centre: LoopbackCentre, tmp_path: Path) -> None:
    """Good results are stored at once; results stamped ahead are held, not dropped within minutes, and
    stored once the centre's clock reaches them; only results held past a day are dropped, and counted."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = AgentConfig(source="agent.yaml", centre=f"http://{HOST}:{PORT}", site=SITE, token_file=token,
                         token=TOKEN, state_dir=tmp_path)
    spool = Spool.open(tmp_path)
    now = time.time()
    good = [now - 300, now - 240, now - 180]
    soon = [now + MAX_FUTURE_SKEW_SECONDS + 3, now + MAX_FUTURE_SKEW_SECONDS + 4]  # taken in a few seconds
    far = [now + 7200 + i for i in range(12)]  # the clock was two hours fast
    for at in [*good[:2], *far[:6], *soon, *far[6:], good[2]]:
        spool.append(result_at(at))
    clock = AgentClock()
    client = CentreClient(config, clock)
    info = lambda: AgentInfo("0.test", "instance-1", "boot-1", 5000.0, time.time(), spool.dropped)  # noqa: E731
    uploader = Uploader(config, spool, client, info, clock)

    async def drain() -> Any:
        return await uploader.drain()

    loop = asyncio.new_event_loop()
    try:
        first = loop.run_until_complete(drain())
        assert first.stopped_by == "" and first.sent == 17 and first.refused == 14 and first.held == 14
        assert stored_times(centre, SITE) == good  # every correctly timed result, at once
        assert len(spool) == 0 and spool.held == 14 and spool.dropped == 0
        time.sleep(max(0.0, now + 5 - time.time()))  # the centre's clock passes the near ones' time
        second = loop.run_until_complete(drain())  # the two near ones are due: sent again, under new numbers
        assert second.released == 2 and second.refused == 0, second
        assert stored_times(centre, SITE) == sorted(good + soon)
        assert spool.held == 12 and spool.dropped == 0
        clock.ahead = 30 * 60.0  # half an hour on: the far ones are still held, none dropped
        third = loop.run_until_complete(drain())
        assert third.released == 0 and third.dropped == 0 and spool.held == 12 and spool.dropped == 0
        clock.ahead = HOLD_MAX_SECONDS + 60  # a day on, never taken: dropped, and counted
        fourth = loop.run_until_complete(drain())
        assert fourth.dropped == 12 and spool.held == 0 and spool.dropped == 12
        loop.run_until_complete(client.close())
    finally:
        loop.close()
        spool.close()
    parsed = samples(_http("GET", centre.url("/metrics"))[1].decode())
    assert value(parsed, "connmon_agent_results_total", endpoint=SITE, outcome="refused") == 14
    assert value(parsed, "connmon_agent_results_total", endpoint=SITE, outcome="accepted") == 5
    assert value(parsed, "connmon_agent_spool_dropped_total", endpoint=SITE) == 0  # said at the next post


def _batch(site: str, first_seq: int, times: list[float]) -> dict[str, Any]:
    return {"site": site, "agent": {"version": "0.1.0", "instance": "v1", "boot_id": "b1", "uptime_seconds": 50.0,
                                    "sent_at": time.time(), "spool_dropped": 0},
            "results": [encode_icmp(first_seq + i, icmp(target(site), at, 0.5)) for i, at in enumerate(times)]}


def test_each_version_answers_as_the_agent_speaks(centre: LoopbackCentre) -> None:
    """Without the header (a version 1 agent) one bad result refuses the batch, as before; with it, the
    answer lists every result: a bad value refused for good (no retry time), a future one with one."""
    site, token = "old-agent-1", "token-of-old-agent-1"
    now = time.time()
    body = _batch(site, 1, [now - 60, now + 3600, now - 30])
    body["results"][2]["sent"] = 99  # more echoes sent than attempts listed: wrong in itself
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = json.dumps(body).encode()
    status, answer = _http("POST", centre.url("/api/v1/agent/results"), data, headers)
    assert status == 400 and b"results[1].started_at" in answer  # version 1: the whole batch, nothing taken
    assert stored_times(centre, site) == []
    status, answer = _http("POST", centre.url("/api/v1/agent/results"), data, {**headers, "Connmon-Protocol": "2"})
    assert status == 200, answer
    got = json.loads(answer)
    assert got["protocol"] == 2 and got["accepted"] == 1 and got["refused"] == 2 and got["last_seq"] == 3
    lines = got["results"]
    assert lines[0] == {"seq": 1, "outcome": "stored"}
    assert lines[1]["outcome"] == "refused" and lines[1]["field"] == "$.results[1].started_at"
    assert 3600 - MAX_FUTURE_SKEW_SECONDS - 60 < lines[1]["retry_after_seconds"] <= 3600 - MAX_FUTURE_SKEW_SECONDS
    assert lines[2]["outcome"] == "refused" and lines[2]["field"] == "$.results[2].sent"
    assert lines[2]["retry_after_seconds"] is None
    assert stored_times(centre, site) == [pytest.approx(now - 60)]
    status, answer = _http("POST", centre.url("/api/v1/agent/results"), data, {**headers, "Connmon-Protocol": "2"})
    # posted again: the stored one is a duplicate, the refused ones refused again (never "duplicate": the agent
    # would forget a result that was not stored)
    assert status == 200 and [line["outcome"] for line in json.loads(answer)["results"]] == [
        "duplicate", "refused", "refused"]
    status, answer = _http("POST", centre.url("/api/v1/agent/results"), data, {**headers, "Connmon-Protocol": "2.0"})
    assert status == 400 and b"Connmon-Protocol" in answer  # a version that is not one: said, not guessed
    envelope = {**body, "agent": {**body["agent"], "sent_at": now + 3600}}  # the envelope still fails the batch
    status, answer = _http("POST", centre.url("/api/v1/agent/results"), json.dumps(envelope).encode(),
                           {**headers, "Connmon-Protocol": "2"})
    assert status == 400 and b"$.agent.sent_at" in answer
