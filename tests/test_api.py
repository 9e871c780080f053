"""The JSON API (issue 11): a real daemon probing namespace sites, every answer validated against the OpenAPI
document with openapi-core; the current-state sink on its own; the time to build 10,000 sites' JSON."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from aiohttp import test_utils, web  # test_utils, not its Test* names: pytest would try to collect them
from openapi_core.testing import MockRequest, MockResponse

from monitor.centre_path import RESOLVER_DETAIL, UPLINK_DETAIL
from monitor.config.windows import MaintenanceWindows, parse_window
from monitor.errors import ProbeErrorReason
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import EmptyHistory, EndpointRecord
from monitor.history.store_url import opener as store_opener
from monitor.results import Cycle, Gap, IcmpResult
from monitor.upstreams import UPSTREAM_GROUP, upstream_detail
from monitor.web.site_api import NO_HISTORY, OPENAPI_PATH, SITES_PER_SLICE, QueryError, SiteApi, parse_summary_query
from monitor.web.site_state import SiteStateSink
from tests.api_spec import SPEC
from tests.basic_auth import HASH, PASSWORD, basic
from tests.conftest import need
from tests.factories import Clock, agent_target, icmp, located_target, rate_test, write_config
from tests.netlab import Lab, can_measure_throughput, child_env
from tests.running import request, running_daemon

PORT = 9171


def validated(base: str, path: str, headers: dict[str, str], method: str = "GET") -> tuple[int, object]:
    """Request ``path`` and check the answer (status, content type, body) against the OpenAPI document."""
    status, got_headers, body = request(base + path, method, headers=headers)
    parsed = urllib.parse.urlsplit(path)
    content_type = got_headers.get("Content-Type", "").split(";")[0]
    SPEC.validate_response(
        MockRequest("http://connmon", method.lower(), parsed.path, args=dict(urllib.parse.parse_qsl(parsed.query))),
        MockResponse(body.encode(), status_code=status, content_type=content_type))
    return status, json.loads(body) if content_type == "application/json" else body


def test_the_api_of_a_running_daemon_matches_its_openapi_document(lab: Lab, tmp_path: Path) -> None:
    """Every endpoint answers as the OpenAPI document says, with the lab's known values: a site that drops
    all echoes is down with loss 1, a healthy one is up with loss 0 and its shaped rate; 404, 400, 405, 401."""
    ok, reason = can_measure_throughput()
    need(ok, reason)
    good = lab.add_site("api-good")
    good.shape(10, 10)
    good.start_iperf3()
    dark = lab.add_site("api-dark")
    dark.drop_icmp()
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 3, spacing: 100ms, timeout: 500ms}}
report: {{at_risk_days: 2, dropped_days: 3}}
groups:
  - name: schools
    kind: school
    district: Aktobe
    target_mbps: 4
    throughput: {{method: iperf3, every: 30s, duration: 1s, omit: 0s, timeout: 3s, directions: [download]}}
    endpoints:
      - {{name: good, host: {good.v4}, link: fibre, lat: 50.28, lon: 57.17}}
  - name: clinics
    kind: clinic
    district: Shalkar
    endpoints:
      - {{name: dark, host: {dark.v4}, link: satellite}}
      - {{name: soon, link: satellite, status: planned, planned_date: 2027-03-01}}
""")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  api: {HASH}\n", encoding="utf-8")
    auth = {"Authorization": basic("api", PASSWORD)}
    base = f"http://{lab.prober_v4}:{PORT}"
    try:
        with running_daemon(lab, cfg, PORT, "--web.config.file", str(web), "--state-dir",
                            str(tmp_path / "state")) as proc:
            first: tuple[int, object] | None = None
            for _ in range(200):  # the summary answers from the start, before the history has anything
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                with contextlib.suppress(OSError):
                    first = validated(base, "/api/v1/summary", auth)
                    break
                time.sleep(0.05)
            assert first is not None and first[0] == 200, first
            sites: dict[str, dict] = {}
            for _ in range(400):  # the first test starts within `every` (its phase)
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                try:
                    status, body = validated(base, "/api/v1/sites", auth)
                except OSError:
                    time.sleep(0.25)
                    continue
                assert status == 200
                assert isinstance(body, dict)
                sites = {s["name"]: s for s in body["sites"]}
                tested = sites["good"]["throughput"]
                if tested is not None and sites["dark"]["icmp"] is not None \
                        and sites["good"]["icmp"]["cycle_started_at"] > tested["tested_at"] + 4:
                    break  # a cycle after the test (whose traffic may delay echoes on the shaped link)
                time.sleep(0.25)
            assert list(sites) == ["good", "dark", "soon"]  # config order, the planned site included
            g, d = sites["good"], sites["dark"]
            assert (sites["soon"]["status"], sites["soon"]["host"], sites["soon"]["up"], sites["soon"]["icmp"]) == (
                "planned", "", None, None)
            assert g["labels"] == {"kind": "school", "district": "Aktobe", "link": "fibre", "group": "schools"}
            assert (g["host"], g["lat"], g["lon"], g["status"]) == (good.v4, 50.28, 57.17, "connected")
            assert g["up"] is True and g["icmp"]["loss_ratio"] == 0 and g["icmp"]["received"] == 3
            assert 0 < g["icmp"]["rtt_avg_seconds"] < 0.5 and g["icmp"]["jitter_seconds"] is not None
            assert 8e6 < g["throughput"]["download_bits_per_second"] < 11e6
            assert g["throughput"]["target_met"] is True and g["target_bits_per_second"] == 4e6
            assert g["last_seen_at"] >= g["icmp"]["cycle_started_at"]
            assert d["up"] is False and d["icmp"]["loss_ratio"] == 1 and d["icmp"]["rtt_avg_seconds"] is None
            assert d["throughput"] is None and d["last_seen_at"] is None

            status, one = validated(base, "/api/v1/sites/good", auth)
            assert status == 200 and isinstance(one, dict)
            for _ in range(100):  # the history writer has the test by now or very soon
                if one["history"]["throughput_tests"] and one["history"]["icmp_cycles"]:
                    break
                time.sleep(0.2)
                status, one = validated(base, "/api/v1/sites/good", auth)
            assert one["name"] == "good" and one["up"] is True
            assert one["history"]["icmp_cycles"][-1]["received"] > 0
            assert 8e6 < one["history"]["throughput_tests"][-1]["download_bits_per_second"] < 11e6
            one_test = one["throughput"]
            status, one = validated(base, "/api/v1/sites/dark", auth)
            assert status == 200 and isinstance(one, dict)
            assert all(c["received"] == 0 for c in one["history"]["icmp_cycles"])

            status, summary = validated(base, "/api/v1/summary", auth)
            assert status == 200 and isinstance(summary, dict)
            today = dt.date.fromtimestamp(time.time())
            assert summary["site_count"] == 2 == len(summary["sites"])
            assert summary["period"]["from"] == today.replace(day=1).isoformat()
            rows = {r["name"]: r for r in summary["sites"]}
            assert rows["good"]["verdict"] == "met" and rows["good"]["tests"] >= 1
            assert rows["good"]["availability_ratio"] > 0.9 and rows["good"]["loss_ratio"] < 0.1
            assert rows["dark"]["availability_ratio"] == 0 and rows["dark"]["loss_ratio"] == 1
            assert [s["kind"] for s in summary["by_kind"]] == ["clinic", "school"]
            kpis = summary["kpis"]  # the ministry KPIs, with the running config's thresholds
            assert kpis["thresholds"] == {"at_risk_days": 2, "dropped_days": 3} and kpis["maintenance_considered"]
            whole = next(g for g in kpis["groups"] if g["kind"] is None and g["district"] is None)
            assert (whole["current"]["sites"], whole["current"]["sites_measured"]) == (2, 1)
            assert whole["current"]["median_met_target"] == 1 and whole["current"]["shares"]["median_met_target"] == 1
            assert whole["current"]["dropped"] == 1 and whole["current"]["live"] == 1  # dark never answered
            kpi_sites = {s["name"]: s for s in kpis["sites"]}
            assert kpi_sites["dark"]["status"] == "dropped" and kpi_sites["good"]["status"] == "live"
            # roll-out, as the report computes it: the planned site is counted; good and dark were connected
            # today (no planned_date: their first result), soon is due in 2027
            day = dt.datetime.now(ZoneInfo(summary["period"]["timezone"])).date().isoformat()
            rollout = summary["rollout"]
            assert rollout["total"] == {"district": None, "planned": 1, "connected": 2, "connected_in_period": 2,
                                        "retired": 0}
            assert [(c["district"], c["planned"], c["connected"]) for c in rollout["districts"]] == [
                ("Aktobe", 0, 1), ("Shalkar", 1, 1)]
            new = {"connected_on": day, "date_from": "first_result"}
            assert rollout["connected_in_period"] == [{"name": "good", "kind": "school", "district": "Aktobe", **new},
                                                      {"name": "dark", "kind": "clinic", "district": "Shalkar", **new}]
            period = summary["period"]
            report = subprocess.run(  # connmon report over the same history and config: the same section
                [sys.executable, "-m", "monitor", "report", "--state-dir", str(tmp_path / "state"),
                 "--config", str(cfg), "--from", period["from"], "--to", period["to"],
                 "--timezone", period["timezone"], "--format", "json"],
                capture_output=True, text=True, timeout=60, check=False, env=child_env())
            assert report.returncode == 0, report.stderr
            assert json.loads(report.stdout)["rollout"] == rollout
            status, before = validated(base, "/api/v1/summary?from=2020-01-01&to=2020-01-31&timezone=UTC", auth)
            assert status == 200 and isinstance(before, dict) and before["site_count"] == 2  # configured, no data
            assert before["rollout"]["total"]["connected_in_period"] == 0
            assert before["rollout"]["connected_in_period"] == []
            assert {r["verdict"] for r in before["sites"]} == {"no_data"}
            status, schools = validated(base, "/api/v1/summary?kind=school&from=2020-01-01&timezone=UTC", auth)
            assert status == 200 and isinstance(schools, dict)
            assert [r["name"] for r in schools["sites"]] == ["good"] and schools["kind"] == "school"
            status, nothing = validated(base, "/api/v1/summary?kind=spaceport", auth)
            assert status == 200 and isinstance(nothing, dict) and nothing["site_count"] == 0

            status, error = validated(base, "/api/v1/sites/nowhere", auth)
            assert status == 404 and error == {"error": "no site named 'nowhere' in this instance's config",
                                               "parameter": "name"}
            for query, parameter in (("from=2026-13-01", "from"), ("to=yesterday", "to"),
                                     ("from=2026-03-02&to=2026-03-01", "from"), ("kind=", "kind"),
                                     ("timezone=Mars/Olympus", "timezone"), ("colour=red", "colour")):
                status, error = validated(base, f"/api/v1/summary?{query}", auth)
                assert status == 400 and isinstance(error, dict) and error["parameter"] == parameter, query
            for path in ("/api/v1/sites", "/api/v1/sites/good", "/api/v1/summary"):
                assert request(base + path, "POST", headers=auth)[0] == 405  # no such operation in the document
                assert validated(base, path, {})[0] == 401
                assert validated(base, path, {"Authorization": basic("api", "wrong")})[0] == 401
            status, document = validated(base, "/api/v1/openapi.yaml", auth)
            assert status == 200 and document == OPENAPI_PATH.read_text(encoding="utf-8")
        with running_daemon(lab, cfg, PORT, "--web.config.file", str(web), "--state-dir",
                            str(tmp_path / "state")) as proc:  # a restart shows the last test at once
            restored = None
            for _ in range(200):
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                with contextlib.suppress(OSError):
                    body = validated(base, "/api/v1/sites", auth)[1]
                    restored = {s["name"]: s for s in body["sites"]}  # type: ignore[index]
                if restored is not None and restored["good"]["throughput"] is not None:
                    break
                time.sleep(0.1)
            assert restored is not None and restored["good"]["throughput"] == one_test
    finally:
        good.stop_servers()


def test_the_state_sink_keeps_the_last_results_and_forgets_removed_sites() -> None:
    """A site that stops answering keeps its last reply as last seen; a failed test keeps the last measured
    rate; a restored test shows at start-up; a site removed at reload is gone."""
    a, b = located_target("a"), located_target("b", target_upload_bits_per_second=1e6)
    sink = SiteStateSink()
    sink.set_targets([a, b])
    assert sink.site("a") == {**(sink.site("a") or {}), "up": None, "icmp": None, "throughput": None,
                              "last_seen_at": None}
    sink.restore([rate_test(b, 50.0, 3e6)])
    sink.consume(Cycle("icmp", "g", 100.0, 1.0, (icmp(a, 100.0, 0.01, 0.03), icmp(b, 100.0, None))))
    sink.consume(Cycle("icmp", "g", 160.0, 1.0, (icmp(a, 160.0, None, None),)))
    sink.consume(Cycle("throughput", "g", 200.0, 5.0, (rate_test(a, 200.0, 5e6),)))
    sink.consume(Cycle("throughput", "g", 300.0, 5.0, (rate_test(a, 300.0, None),)))
    site_a, site_b = sink.site("a"), sink.site("b")
    assert site_a is not None and site_b is not None
    assert site_a["up"] is False and site_a["icmp"]["loss_ratio"] == 1 and site_a["icmp"]["cycle_started_at"] == 160
    assert site_a["throughput"]["download_bits_per_second"] == 5e6 and site_a["throughput"]["target_met"] is True
    assert site_a["last_seen_at"] == 205.0  # the measured test ended after the last reply (100)
    assert site_b["throughput"]["tested_at"] == 50.0 and site_b["target_upload_bits_per_second"] == 1e6
    assert site_b["last_seen_at"] == 55.0
    sink.set_targets([a])
    assert sink.site("b") is None and [s["name"] for s in sink.sites()] == ["a"]
    assert "b" not in sink.icmp and "b" not in sink.throughput


def test_each_sites_state_and_cause_are_in_its_json() -> None:
    """Issue 21: every site has a state and a cause, valid under the document: a site in its declared window is in
    maintenance naming the window, one probed while the centre was cut off names the rule, a silent agent site that
    had no power names it; up, down and unknown have no cause. The window closes with the clock alone."""
    almaty = ZoneInfo("Asia/Almaty")
    night = MaintenanceWindows("Asia/Almaty", weekly=(parse_window("Sun 02:00-04:00"),))
    now = dt.datetime(2026, 12, 6, 3, tzinfo=almaty).timestamp()  # a Sunday, 03:00 there
    sites = [located_target("in-window", maintenance=night), located_target("cut"), located_target("resolver"),
             located_target("dark"), located_target("fine"), located_target("new"), agent_target("vsat")]
    clock = Clock(now)
    sink = SiteStateSink(clock)
    sink.set_targets(sites)
    window, cut, resolver, dark, fine, _, vsat = sites
    sink.consume(Cycle("icmp", "g", now, 1.0, (
        icmp(window, now, 0.01),
        IcmpResult(cut, now, cut.address, 1, (None,), ProbeErrorReason.MONITOR_CUT_OFF,
                   f"{UPLINK_DETAIL} (gateway, isp-1)"),
        IcmpResult(resolver, now, None, 0, (), ProbeErrorReason.MONITOR_CUT_OFF,
                   f"{RESOLVER_DETAIL} (4 names in a cycle of group g)"),
        icmp(dark, now, None), icmp(fine, now, 0.02))))
    sink.consume(Cycle("agent", "vsat", now, 0.0, (
        IcmpResult(vsat, now, None, 0, (), ProbeErrorReason.AGENT_SILENT, "nothing received"),)))
    sink.consume(Cycle("agent", "vsat", now + 60, 0.0, (), (Gap(vsat, now - 600, now + 30, "power", 60.0),)))
    api = SiteApi(sink, None, clock=clock)
    (status, body), (one_status, one_site) = api_answers(api, ["/api/v1/sites", "/api/v1/sites/cut"])
    assert status == one_status == 200 and isinstance(body, dict) and isinstance(one_site, dict)
    shown = {s["name"]: (s["state"], s["cause"]) for s in body["sites"]}
    assert shown == {"in-window": ("maintenance", {"maintenance": "Sun 02:00-04:00 Asia/Almaty"}),
                     "cut": ("monitor_cut_off", {"monitor": "uplink"}),
                     "resolver": ("monitor_cut_off", {"monitor": "resolver"}),
                     "dark": ("down", None), "fine": ("up", None), "new": ("unknown", None),
                     "vsat": ("power", {"power": "site"})}
    assert (one_site["state"], one_site["up"], one_site["icmp"]["error"]) == ("monitor_cut_off", False,
                                                                              "monitor_cut_off")
    clock.now = dt.datetime(2026, 12, 6, 4, tzinfo=almaty).timestamp()  # the window has closed
    assert (sink.site("in-window") or {})["state"] == "up"


def api_answers(api: SiteApi, paths: list[str]) -> list[tuple[int, object]]:
    """GET each path from ``api``'s routes on a real aiohttp server on loopback, each answer checked against the
    OpenAPI document."""
    async def run() -> list[tuple[int, object]]:
        app = web.Application()
        api.add_routes(app)
        async with test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1")) as client:
            out: list[tuple[int, object]] = []
            for path in paths:
                response = await client.get(path)
                body = await response.text()
                parsed = urllib.parse.urlsplit(path)
                SPEC.validate_response(
                    MockRequest("http://connmon", "get", parsed.path, args=dict(urllib.parse.parse_qsl(parsed.query))),
                    MockResponse(body.encode(), status_code=response.status, content_type=response.content_type))
                out.append((response.status, json.loads(body)))
            return out
    return asyncio.run(run())


def test_the_summary_answers_before_the_history_exists(tmp_path: Path) -> None:
    """Right after start-up the writer may not have created the store yet (no file, then a file without schema):
    the summary and a site's history answer 200 from an empty history, then the recorded figures once written.
    503 (a JSON error) only without a history (--no-history) or with one that cannot be read."""
    a = located_target("a", district="Temir")
    soon = located_target("soon", host="", address=None, status="planned", planned_date=dt.date(2027, 3, 1))
    sink = SiteStateSink()
    sink.set_targets([a, soon])
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()
    state = tmp_path / "state"
    api = SiteApi(sink, store_opener(None, str(state), read_only=True), clock=lambda: now)
    paths = ["/api/v1/summary?timezone=UTC", "/api/v1/sites/a"]

    def empty(answers: list[tuple[int, object]]) -> None:
        (status, summary), (site_status, site) = answers
        assert status == 200 and isinstance(summary, dict), summary
        assert summary["site_count"] == 1 and summary["sites"][0]["verdict"] == "no_data"
        assert summary["sites"][0]["availability_ratio"] is None and summary["by_kind"][0]["no_data"] == 1
        assert summary["rollout"]["total"] == {"district": None, "planned": 1, "connected": 1,
                                               "connected_in_period": 0, "retired": 0}
        assert summary["rollout"]["connected_in_period"] == []
        assert site_status == 200 and isinstance(site, dict)
        assert (site["history"]["icmp_cycles"], site["history"]["throughput_tests"]) == ([], [])

    assert not state.exists()
    empty(api_answers(api, paths))  # no file yet
    state.mkdir()
    sqlite3.connect(database_path(state)).close()  # the writer's file, a moment before its schema
    empty(api_answers(api, paths))
    writer = SqliteStore(database_path(state))
    writer.write([EndpointRecord.of(a), EndpointRecord.of(soon)], [icmp(a, now - 60, 0.01, None)])
    writer.close()
    (status, summary), (_, site) = api_answers(api, paths)
    assert status == 200 and isinstance(summary, dict) and isinstance(site, dict)
    assert (summary["sites"][0]["cycles"], summary["sites"][0]["loss_ratio"]) == (1, 0.5)
    assert summary["rollout"]["connected_in_period"] == [{"name": "a", "kind": "school", "district": "Temir",
                                                          "connected_on": "2026-12-02", "date_from": "first_result"}]
    assert site["history"]["icmp_cycles"][0]["received"] == 1

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not an SQLite database, whatever its name" * 100)
    broken = SiteApi(sink, store_opener(f"sqlite://{garbage}", str(state), read_only=True), clock=lambda: now)
    [(status, error)] = api_answers(broken, ["/api/v1/summary"])
    assert status == 503 and isinstance(error, dict) and error["parameter"] is None
    assert error["error"].startswith("cannot read the history: ") and "not a database" in error["error"]
    none = SiteApi(sink, None, clock=lambda: now)  # --no-history
    (status, error), (site_status, site) = api_answers(none, paths)
    assert (status, error) == (503, {"error": NO_HISTORY, "parameter": None})
    assert site_status == 200 and isinstance(site, dict) and site["history"] is None


def test_the_summary_has_no_rollout_without_rollout_keys() -> None:
    """As the report leaves its roll-out section out when every site is connected without planned_date,
    the summary's rollout is null."""
    sink = SiteStateSink()
    sink.set_targets([located_target("a"), located_target("b", provider="KazTelecom")])
    api = SiteApi(sink, lambda: EmptyHistory())
    [(status, summary)] = api_answers(api, ["/api/v1/summary"])
    assert status == 200 and isinstance(summary, dict)
    assert summary["site_count"] == 2 and summary["rollout"] is None


@pytest.mark.parametrize(("query", "parameter"), [
    ({"from": "2026-02-30"}, "from"), ({"to": "2026-1-1x"}, "to"), ({"district": "a\nb"}, "district"),
    ({"from": "2026-03-05", "to": "2026-03-04"}, "from"), ({"kind": "x" * 201}, "kind"),
])
def test_malformed_summary_queries_name_their_parameter(query: dict[str, str], parameter: str) -> None:
    """Each malformed summary parameter is refused with its name (answered 400 by the API)."""
    with pytest.raises(QueryError) as err:
        parse_summary_query(query, "UTC", 1_780_000_000.0)
    assert err.value.parameter == parameter


def test_the_default_summary_period_is_this_month_to_today_in_the_zone() -> None:
    """Without from/to the period is the current calendar month up to today, in the requested zone."""
    now = dt.datetime(2026, 3, 31, 22, 30, tzinfo=dt.UTC).timestamp()
    utc = parse_summary_query({}, "UTC", now).period
    almaty = parse_summary_query({"timezone": "Asia/Almaty"}, "UTC", now).period
    assert (utc.first, utc.last) == (dt.date(2026, 3, 1), dt.date(2026, 3, 31))
    assert (almaty.first, almaty.last) == (dt.date(2026, 4, 1), dt.date(2026, 4, 1))  # already April there


def test_building_the_sites_json_of_10000_sites() -> None:
    """The /api/v1/sites body of 10,000 sites is built and is valid; the time it takes is printed."""
    targets = [located_target(f"site-{i:05d}", district=f"d{i % 40}") for i in range(10_000)]
    sink = SiteStateSink()
    sink.set_targets(targets)
    cycle = Cycle("icmp", "g", 1000.0, 1.0, tuple(icmp(t, 1000.0, 0.01, 0.012, None, 0.011) for t in targets))
    started = time.perf_counter()
    sink.consume(cycle)  # a cycle's cost for the sink: a dict assignment or two per result
    consumed = time.perf_counter() - started
    sink.consume(Cycle("throughput", "g", 1000.0, 5.0, tuple(rate_test(t, 1000.0, 5e6) for t in targets[::10])))
    sites: list[dict] = []
    slices: list[float] = []
    for start in range(0, len(targets), SITES_PER_SLICE):  # as the handler builds it, between other loop work
        began = time.perf_counter()
        sites.extend(sink.sites(targets[start:start + SITES_PER_SLICE]))
        slices.append(time.perf_counter() - began)
    began = time.perf_counter()
    body = json.dumps({"generated_at": 1000.0, "sites": sites}, ensure_ascii=False, allow_nan=False)
    dumped = time.perf_counter() - began
    print(f"\n10,000 sites: consume {consumed * 1e3:.1f} ms per cycle, build {sum(slices) * 1e3:.1f} ms in "
          f"{len(slices)} slices (longest {max(slices) * 1e3:.1f} ms on the loop), json.dumps {dumped * 1e3:.1f} ms "
          f"(in a worker thread), {len(body) / 1e6:.1f} MB")
    assert sites == sink.sites()
    SPEC.validate_response(MockRequest("http://connmon", "get", "/api/v1/sites"),
                           MockResponse(body.encode(), status_code=200, content_type="application/json"))
    assert len(json.loads(body)["sites"]) == 10_000


def test_the_readme_sample_site_is_what_the_api_answers() -> None:
    """The docs' sample site (docs/api.md) has exactly the fields of a real answer and is valid under the OpenAPI
    document."""
    section = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    sample = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    body = json.dumps({"generated_at": 1790000001.0, "sites": [sample]})
    SPEC.validate_response(MockRequest("http://connmon", "get", "/api/v1/sites"),
                           MockResponse(body.encode(), status_code=200, content_type="application/json"))
    t = located_target("school-12")
    real = SiteStateSink()
    real.set_targets([t])
    real.consume(Cycle("icmp", "g", 1.0, 1.0, (icmp(t, 1.0, 0.02, 0.021),)))
    real.consume(Cycle("throughput", "g", 1.0, 5.0, (rate_test(t, 1.0, 9e6),)))
    answer = real.site("school-12")
    assert answer is not None
    assert set(sample) == set(answer) and set(sample["icmp"]) == set(answer["icmp"])
    assert set(sample["throughput"]) == set(answer["throughput"]) and set(sample["labels"]) == set(answer["labels"])


def test_the_readme_rollout_sample_is_what_the_summary_answers(tmp_path: Path) -> None:
    """The docs' rollout sample (docs/api.md) is the summary's section for the sites it describes, computed by the
    report."""
    section = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    sample = json.loads(section.split("```json\n")[2].split("```", 1)[0])
    aktobe = [located_target("school-12"), located_target("school-31", planned_date=dt.date(2026, 10, 14)),
              located_target("school-40", host="", address=None, status="planned", planned_date=dt.date(2027, 2, 1))]
    shalkar = [located_target(name, kind="clinic", district="Shalkar", status=status) for name, status in (
        ("clinic-7", "connected"), ("clinic-9", "planned"), ("clinic-11", "planned"), ("clinic-2", "retired"))]
    store = SqliteStore(tmp_path / "history.sqlite3")
    store.write([EndpointRecord.of(t) for t in aktobe + shalkar],
                [icmp(shalkar[0], dt.datetime(2026, 10, 20, 9, tzinfo=dt.UTC).timestamp(), 0.02)])
    store.close()
    sink = SiteStateSink()
    sink.set_targets(aktobe + shalkar)
    api = SiteApi(sink, lambda: SqliteStore(tmp_path / "history.sqlite3", read_only=True))
    [(status, summary)] = api_answers(api, ["/api/v1/summary?from=2026-10-01&to=2026-10-31&timezone=UTC"])
    assert status == 200 and isinstance(summary, dict)
    assert summary["rollout"] == sample



def test_the_summary_splits_downtime_by_cause_and_lists_the_upstream_nodes(tmp_path: Path) -> None:
    """A history with an upstream node and silences of every cause (issue 21): the summary, checked against the
    OpenAPI document, gives each site's and district's hours by cause and the node's section, not the node as a
    site."""
    a, b = located_target("a"), located_target("b")
    agg = located_target("agg", group=UPSTREAM_GROUP, kind="router", district="", link="")
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC).timestamp()
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
    rows: list[IcmpResult] = []
    for i in range(6):  # every 10 minutes from midnight; a's second and third cycles charged to agg
        t = start + i * 600
        rows.append(IcmpResult(a, t, a.address, 1, (None,), ProbeErrorReason.UPSTREAM_DOWN, upstream_detail("agg"))
                    if i in (1, 2) else icmp(a, t, 0.01))
        rows.append(icmp(b, t, None, error=ProbeErrorReason.MAINTENANCE) if i == 3 else
                    icmp(b, t, None, error=ProbeErrorReason.TIMEOUT) if i == 4 else icmp(b, t, 0.01))
        rows.append(icmp(agg, t, None) if i in (1, 2) else icmp(agg, t, 0.002))
    state = tmp_path / "state"
    state.mkdir()
    store = SqliteStore(database_path(state))
    store.write([], rows)
    store.close()
    sink = SiteStateSink()
    sink.set_targets([a, b])
    api = SiteApi(sink, store_opener(None, str(state), read_only=True), clock=lambda: now)
    [(status, summary)] = api_answers(api, ["/api/v1/summary?timezone=UTC"])
    assert status == 200 and isinstance(summary, dict)
    assert [s["name"] for s in summary["sites"]] == ["a", "b"] and summary["site_count"] == 2
    site = {s["name"]: s for s in summary["sites"]}
    assert (site["a"]["cycles"], site["a"]["cycles_up"], site["a"]["upstream_down_seconds"],
            site["a"]["site_down_seconds"]) == (6, 4, {"agg": 1200.0}, 0.0)
    assert (site["b"]["cycles"], site["b"]["cycles_up"], site["b"]["maintenance_seconds"],
            site["b"]["site_down_seconds"], site["b"]["upstream_down_seconds"]) == (5, 4, 600.0, 600.0, {})
    district = summary["by_district"][0]
    assert (district["upstream_down_seconds"], district["site_down_seconds"], district["maintenance_seconds"]) == (
        {"agg": 1200.0}, 600.0, 600.0)
    assert summary["upstreams"] == [{"name": "agg", "kind": "router", "cycles": 6, "cycles_up": 4,
                                     "availability_ratio": 4 / 6, "down_seconds": 1200.0, "sites": 1,
                                     "site_seconds": 1200.0}]
    assert summary["kpis"]["groups"][0]["current"]["upstream_down_seconds"] == {"agg": 1200.0}
