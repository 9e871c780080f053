"""Journal and history agree (issue 25, point 9): a kill at any point loses nothing that was answered 200.

The centre answers an agent's batch 200 only once its history holds it, and only then journals the
batch as stored; a restart reads stored positions only. A test hook (``CONNMON_TEST_CRASH_BEFORE_AGENT_ROWS``)
makes the history writer exit at once, as ``kill -9`` would, before it writes an agent's rows: the
batch is then journalled (pending) but not in the history, and the agent got no answer. Its retry
to the restarted centre must be taken as new and stored once. The journal's two lines are checked
in ``tests/test_agents.py``' journal tests too; this is the whole daemon, on loopback.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netlab import child_env
from tests.running import stop_process
from tests.test_agent_edge import HOST, TOKENS, _config, batch, encode, http

PORT = 19988
SITE = "seg-1"


def _start(tmp_path: Path, state: Path, crash: bool) -> subprocess.Popen[str]:
    env = child_env()
    if crash:
        env["CONNMON_TEST_CRASH_BEFORE_AGENT_ROWS"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(_config(tmp_path)), "--listen",
                             f"{HOST}:{PORT}", "--state-dir", str(state)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        try:
            if http("GET", f"http://{HOST}:{PORT}/-/ready")[0] == 200:
                return proc
        except OSError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _rows(state: Path) -> int:
    with sqlite3.connect(f"file:{state / 'history.sqlite3'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM icmp i JOIN endpoints e ON e.id = i.endpoint_id "
                              "WHERE e.name = ?", (SITE,)).fetchone()[0])


def test_a_centre_killed_before_its_history_took_the_batch_stores_the_retry_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    body = encode(batch(SITE, 1, 5))
    auth = {"Authorization": f"Bearer {TOKENS[SITE]}", "Content-Type": "application/json"}
    url = f"http://{HOST}:{PORT}/api/v1/agent/results"
    crashing = _start(tmp_path, state, crash=True)
    try:
        with pytest.raises(OSError):  # no answer: the centre died while the batch was on its way to the history
            http("POST", url, body, auth)
        assert crashing.wait(30) == 137
    finally:
        stop_process(crashing)
    journal = (state / "agent-sequences.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in journal] == [{"site": SITE, "instance": "i1", "seq": 5, "pending": True}]
    assert not (state / "history.sqlite3").exists() or _rows(state) == 0
    centre = _start(tmp_path, state, crash=False)
    try:
        status, _, answer = http("POST", url, body, auth)  # the agent's retry
        assert status == 200 and json.loads(answer)["accepted"] == 5, answer  # new, not duplicates
        assert _rows(state) == 5  # in the history before the 200
        status, _, answer = http("POST", url, body, auth)  # once more: now duplicates, still stored once
        assert status == 200 and json.loads(answer)["duplicates"] == 5
        assert _rows(state) == 5
    finally:
        stop_process(centre)
    lines = [json.loads(line) for line in (state / "agent-sequences.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[-1] == {"site": SITE, "instance": "i1", "seq": 5}  # confirmed: a restart now sees them stored
