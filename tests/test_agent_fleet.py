"""A fleet at a glance (issue 18, point 5): each agent's state, last contact, version, clock and spool.

A real ``connmon run`` on loopback serves three agent sites. Their fleet records are what a centre
that has run for weeks would have kept (a site dropped 29 days ago, one at risk by its own shorter
thresholds, one new); a real agent then reports for the dropped one. The states are in ``/metrics``
and ``GET /api/v1/agents``, and a restart of the centre keeps them: a dropped site does not come back
"live" because the centre restarted, and one that reported stays live with its last contact.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from monitor.agent.centre.fleet import FILE_NAME, Fleet, FleetRecord, FleetState, fleet_state
from monitor.agent.centre.registry import token_hash
from tests.loopback_centre import LoopbackCentre, run_agent, running_centre
from tests.running import one, request

PORT = 19601
DAY = 86400.0
TOKENS = {"dropped-1": "token-of-dropped-1", "at-risk-1": "token-of-at-risk-1", "new-1": "token-of-new-1"}
CONFIG = ("defaults:\n  icmp: {interval: 2s, count: 2, spacing: 100ms, timeout: 500ms}\ngroups:\n"
          "  - name: schools\n    kind: school\n    mode: agent\n    endpoints:\n"
          f"      - {{name: dropped-1, agent: {{token_sha256: {token_hash(TOKENS['dropped-1'])}}}}}\n"
          f"      - {{name: at-risk-1, agent: {{token_sha256: {token_hash(TOKENS['at-risk-1'])}, "
          "at_risk_after: 1d, dropped_after: 2d}}\n"
          f"      - {{name: new-1, agent: {{token_sha256: {token_hash(TOKENS['new-1'])}}}}}\n")


def states(centre: LoopbackCentre) -> dict[str, str]:
    """Each site's state as /metrics says it (the one series at 1)."""
    parsed = centre.scrape()["connmon_agent_state"]
    return {dict(k)["endpoint"]: dict(k)["state"] for k, v in parsed.items() if v == 1}


def listed(centre: LoopbackCentre) -> dict[str, dict[str, object]]:
    status, _, body = request(centre.url("/api/v1/agents"))
    assert status == 200, body
    return {row["site"]: row for row in json.loads(body)["agents"]}


def test_the_fleet_is_live_at_risk_or_dropped_in_metrics_and_the_api_and_survives_a_restart(tmp_path: Path) -> None:
    """A site silent 29 days is dropped, one past its own at_risk_after is at risk, a new one live; an agent that
    reports makes its site live with version, clock and spool depth; after a restart all of that is still so."""
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    (state / FILE_NAME).write_text(json.dumps({
        "dropped-1": {"known_since": now - 90 * DAY, "last_contact": now - 29 * DAY, "last_result": now - 29 * DAY,
                      "version": "0.9.0"},
        "at-risk-1": {"known_since": now - 90 * DAY, "last_contact": now - 0.5 * DAY,
                      "last_result": now - 1.5 * DAY}}), encoding="utf-8")
    with running_centre(tmp_path, CONFIG, PORT, state) as centre:
        assert states(centre) == {"dropped-1": "dropped", "at-risk-1": "at_risk", "new-1": "live"}
        rows = listed(centre)
        assert rows["dropped-1"]["version"] == "0.9.0" and rows["dropped-1"]["last_contact"] == \
            pytest.approx(now - 29 * DAY, abs=1e-3)
        assert rows["at-risk-1"]["at_risk_after_seconds"] == DAY and rows["new-1"]["last_result"] is None
        # the kept last contact is /metrics' last-seen too, before the agent has posted since the start
        assert one(centre.scrape(), "connmon_agent_last_seen_timestamp_seconds", endpoint="dropped-1") == \
            pytest.approx(now - 29 * DAY, abs=1e-3)

        agent = run_agent(tmp_path, PORT, "dropped-1", TOKENS["dropped-1"],
                          lambda a: a.cycles >= 2 and a.uploader.centre_measures_clock)
        assert states(centre)["dropped-1"] == "live"
        row = listed(centre)["dropped-1"]
        assert row["state"] == "live" and row["version"] != "0.9.0" and row["last_result"] is not None
        assert row["spool_depth"] is not None and row["spool_depth"] >= 1  # it reports what waited, this batch too
        assert row["clock_offset_seconds"] is not None and abs(row["clock_offset_seconds"]) < 1.0  # type: ignore
        parsed = centre.scrape()
        assert one(parsed, "connmon_agent_spool_depth", endpoint="dropped-1") == row["spool_depth"]
        assert one(parsed, "connmon_agent_last_result_timestamp_seconds", endpoint="dropped-1") == \
            pytest.approx(row["last_result"], abs=1e-3)
        assert agent.cycles >= 2
    # a restart: the records are read back (a site back after a long silence is saved at once)
    with running_centre(tmp_path, CONFIG, PORT, state) as centre:
        assert states(centre) == {"dropped-1": "live", "at-risk-1": "at_risk", "new-1": "live"}
        again = listed(centre)["dropped-1"]
        assert again["last_contact"] == pytest.approx(row["last_contact"], abs=1e-3)
        assert again["version"] == row["version"]
        assert again["last_result"] == pytest.approx(row["last_result"], abs=1e-3)


@pytest.mark.parametrize(("silent_days", "expected"), [(20.9, FleetState.LIVE), (21.0, FleetState.AT_RISK),
                                                        (27.9, FleetState.AT_RISK), (28.0, FleetState.DROPPED)])
def test_giga_thresholds_are_21_and_28_days_without_a_result(silent_days: float, expected: FleetState) -> None:
    """At risk from 21 days without a result, dropped from 28 (the defaults); a site never heard from counts
    from when it was configured."""
    now = 1_800_000_000.0
    record = FleetRecord(known_since=now - 100 * DAY, last_result=now - silent_days * DAY)
    assert fleet_state(record, now, 21 * DAY, 28 * DAY) == expected
    assert fleet_state(FleetRecord(known_since=now - silent_days * DAY), now, 21 * DAY, 28 * DAY) == expected


def test_the_fleet_file_is_written_whole_and_a_torn_one_starts_again(tmp_path: Path) -> None:
    """Records are saved and read back; a torn file is not a crash, the fleet starts again from now."""
    fleet = Fleet.in_dir(tmp_path)
    fleet.configured(["a", "b"], 100.0)
    fleet.record("a", 150.0).last_result = 150.0
    fleet.save(200.0)
    assert Fleet.in_dir(tmp_path).records["a"].last_result == 150.0
    fleet.configured(["a"], 300.0)  # b left the config: forgotten
    fleet.save(400.0, force=True)
    assert set(Fleet.in_dir(tmp_path).records) == {"a"}
    (tmp_path / FILE_NAME).write_text('{"a": {"known_si', encoding="utf-8")
    assert Fleet.in_dir(tmp_path).records == {}
