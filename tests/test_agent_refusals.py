"""Refusals name the site (issue 25): counted per site where the token named one, logged once a minute per cause.

The registry's bookkeeping runs with a pinned clock; then a real ``connmon run`` on 127.0.0.1 with two agent
sites (nothing probed) is sent bad requests, and its ``/metrics`` and log are read.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from monitor.agent.centre.exposition import AgentExposition
from monitor.agent.centre.registry import REFUSAL_LOG_SECONDS, SITE_REJECTION_CODES, AgentRegistry, token_hash
from monitor.exposition.families import ShardLabels
from monitor.pipeline import ResultPipeline
from tests.factories import Clock, Recorder, agent_target, agent_token
from tests.running import samples, stop_process, value

T0 = 1_790_000_000.0
HOST, PORT = "127.0.0.1", 19998
LOGGER = "monitor.agent.centre.registry"


@pytest.fixture
def registry() -> AgentRegistry:
    the_registry = AgentRegistry(ResultPipeline([Recorder()]), Clock(T0))
    the_registry.set_targets([agent_target("vsat-1"), agent_target("vsat-2")])
    return the_registry


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_refusals_are_counted_per_site_and_logged_once_a_minute_per_site_and_status(
        registry: AgentRegistry, caplog: pytest.LogCaptureFixture) -> None:
    """Five 400s of one site within a minute are five counts and one line; another status or another site is a
    line of its own; after the minute the next line says how many were not logged."""
    clock = registry.clock
    assert isinstance(clock, Clock)
    one, two = registry.sites["vsat-1"], registry.sites["vsat-2"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(5):
            registry.refuse(400, one, "$.results[0].started_at: in the future")
            clock.now += 1
        registry.refuse(403, one, "this token is for site 'vsat-1', not 'vsat-2'")
        registry.refuse(400, two, "$.agent.version: too long")
        registry.refuse(401, None, "a valid agent token is needed", "192.0.2.7")
        registry.refuse(401, None, "a valid agent token is needed", "192.0.2.8")
        assert said(caplog) == [
            "agent site vsat-1: request refused with HTTP 400: $.results[0].started_at: in the future",
            "agent site vsat-1: request refused with HTTP 403: this token is for site 'vsat-1', not 'vsat-2'",
            "agent site vsat-2: request refused with HTTP 400: $.agent.version: too long",
            "agent API: request from 192.0.2.7 refused with HTTP 401 (no site's token): a valid agent token is needed"]
        clock.now = T0 + REFUSAL_LOG_SECONDS
        registry.refuse(400, one, "$.results[0].started_at: in the future")
    assert said(caplog)[-1] == ("agent site vsat-1: request refused with HTTP 400: $.results[0].started_at: in the "
                                "future (4 more like it in the last 60s)")
    assert [getattr(r, "endpoint", None) for r in caplog.records if r.name == LOGGER] == [
        "vsat-1", "vsat-1", "vsat-2", None, "vsat-1"]
    assert one.rejected == {400: 6, 403: 1} and two.rejected == {400: 1}
    assert registry.rejected == {400: 7, 403: 1, 401: 2}  # the shipped metric counts them all, as before


def test_the_per_site_series_exist_at_zero_and_follow_the_configured_sites(registry: AgentRegistry) -> None:
    """Every agent site has a series per status but 401 from start-up; a site removed by a reload loses its
    series and its log keys, so the cardinality is the config's."""
    registry.refuse(429, registry.sites["vsat-2"], "too many requests")
    exposition = AgentExposition(registry.state)
    endpoints = {name: SimpleNamespace(labels=f'endpoint="{name}"') for name in ("vsat-1", "vsat-2")}
    parsed = samples(exposition.render(ShardLabels.of(None), endpoints).decode())
    series = parsed["connmon_agent_site_requests_rejected_total"]
    assert len(series) == 2 * len(SITE_REJECTION_CODES) and "401" not in {dict(k)["code"] for k in series}
    assert value(parsed, "connmon_agent_site_requests_rejected_total", endpoint="vsat-2", code="429") == 1
    assert value(parsed, "connmon_agent_site_requests_rejected_total", endpoint="vsat-1", code="429") == 0
    assert value(parsed, "connmon_agent_requests_rejected_total", code="429") == 1  # unchanged, no site label
    registry.set_targets([agent_target("vsat-1")])
    parsed = samples(exposition.render(ShardLabels.of(None), endpoints).decode())
    assert {dict(k)["endpoint"] for k in parsed["connmon_agent_site_requests_rejected_total"]} == {"vsat-1"}
    assert all(site == "vsat-1" or site is None for site, _ in registry._refusals_said)


# ----------------------------------------------------------------------------- a real centre

def post(path: str, body: Any, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{HOST}:{PORT}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_a_running_centre_counts_and_logs_refusals_by_site(tmp_path: Path) -> None:
    """Three bad batches of vsat-1, a batch vsat-1's token posts as vsat-2, and a post without a token: counted
    per site in /metrics, and one log line per site and status."""
    config = tmp_path / "centre.yaml"
    rows = "\n".join(f"      - {{name: {name}, agent: {{token_sha256: {token_hash(agent_token(name))}}}}}"
                     for name in ("vsat-1", "vsat-2"))
    config.write_text("defaults:\n  icmp: {interval: 60s}\ngroups:\n  - name: vsat\n    kind: school\n"
                      f"    mode: agent\n    endpoints:\n{rows}\n", encoding="utf-8")
    log = tmp_path / "centre.log"
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(config), "--listen",
                                 f"{HOST}:{PORT}", "--no-history"], stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while "connmon started" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        for _ in range(3):
            assert post("/api/v1/agent/results", {"site": "vsat-1", "agent": {}, "results": []},
                        agent_token("vsat-1")) == 400
        assert post("/api/v1/agent/slot", {"site": "vsat-2"}, agent_token("vsat-1")) == 403
        assert post("/api/v1/agent/results", {}, None) == 401
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://{HOST}:{PORT}/metrics", timeout=30) as response:
            parsed = samples(response.read().decode())
    finally:
        stop_process(proc)
    rejected = "connmon_agent_site_requests_rejected_total"
    assert value(parsed, rejected, endpoint="vsat-1", code="400") == 3
    assert value(parsed, rejected, endpoint="vsat-1", code="403") == 1
    assert all(v == 0 for k, v in parsed[rejected].items() if dict(k)["endpoint"] == "vsat-2")
    assert value(parsed, "connmon_agent_requests_rejected_total", code="400") == 3
    assert value(parsed, "connmon_agent_requests_rejected_total", code="401") == 1
    lines = [line for line in log.read_text().splitlines() if "refused with HTTP" in line]
    assert len([line for line in lines if "agent site vsat-1: request refused with HTTP 400" in line]) == 1, lines
    assert len([line for line in lines if "agent site vsat-1: request refused with HTTP 403" in line]) == 1, lines
    assert len([line for line in lines if "from 127.0.0.1 refused with HTTP 401" in line]) == 1, lines
    assert all(" WARNING " in line for line in lines) and len(lines) == 3, lines
    assert " endpoint=vsat-1 " in lines[0]
