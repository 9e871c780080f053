"""The agents' API on a running centre (issue 10): every bad request gets its status and changes nothing.

A real ``connmon run`` with two agent sites (and basic auth for people, which agent routes do not
take); the test posts as the agents would. After each refused request the site's series in
/metrics and its rows in the history are exactly what they were.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from openapi_core.testing import MockRequest, MockResponse

from monitor.agent.centre.registry import BURST, token_hash
from tests.api_spec import SPEC
from tests.arrivals import arrivals, count_arrivals
from tests.basic_auth import HASH, PASSWORD, basic
from tests.factories import write_config
from tests.netlab import Lab
from tests.running import running_daemon, samples, scrape_when, value

PORT = 19481
TOKENS = {"vsat-1": "first-sites-token", "vsat-2": "second-sites-token"}


def call(url: str, body: bytes | None, token: str | None = None, method: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request without proxies: (status, headers, JSON body or text).

    Agent API answers are checked against the OpenAPI document (``monitor/web/openapi.yaml``), and so are
    the requests the test means to be valid (status 200).
    """
    status, got, parsed, raw = _call(url, body, token, method, headers)
    path = urllib.parse.urlsplit(url)
    if path.path.startswith("/api/v1/agent/"):
        content_type = got.get("Content-Type", "").split(";")[0]
        request = MockRequest("http://connmon", method.lower(), path.path,
                              args=dict(urllib.parse.parse_qsl(path.query)),
                              headers={"Authorization": f"Bearer {token}"} if token else {},
                              data=body or b"", content_type="application/json")
        if status == 200:
            SPEC.validate_request(request)
        SPEC.validate_response(request, MockResponse(raw, status_code=status, content_type=content_type,
                                                     headers=got))
    return status, got, parsed


def _call(url: str, body: bytes | None, token: str | None, method: str,
          headers: dict[str, str] | None) -> tuple[int, dict[str, str], Any, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    try:
        with opener.open(req, timeout=30) as response:
            status, got, text = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, got, text = err.code, dict(err.headers), err.read()
    try:
        return status, got, json.loads(text), text
    except ValueError:
        return status, got, text.decode("utf-8"), text


def batch(site: str, first_seq: int, count: int, at: float, rtts: list[float | None] | None = None) -> dict[str, Any]:
    rtts = rtts if rtts is not None else [0.6, 0.61, None]
    return {"site": site,
            "agent": {"version": "0.1.0", "instance": "i1", "boot_id": "b1", "uptime_seconds": 5000.0,
                      "sent_at": at + count, "spool_dropped": 0},
            "results": [{"seq": first_seq + i, "type": "icmp", "path": "centre", "started_at": at + i,
                         "address": "10.77.0.1", "sent": len(rtts), "rtts_seconds": rtts, "error": None,
                         "error_detail": ""} for i in range(count)]}


def site_series(text: str, site: str) -> dict[str, dict]:
    """Every series of one endpoint (agent_last_seen aside: a refused post does not touch it either), but the
    refusals it counts (issue 25), which a refusal does change."""
    out: dict[str, dict] = {}
    for name, series in samples(text).items():
        if name == "connmon_agent_site_requests_rejected_total":
            continue
        kept = {k: v for k, v in series.items() if dict(k).get("endpoint") == site}
        if kept:
            out[name] = kept
    return out


def history_rows(state: Path) -> int:
    with sqlite3.connect(state / "history.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM icmp").fetchone()[0])


def agent_sites_config(tmp_path: Path, *sites: str) -> Path:
    """A centre's config with these agent sites (tokens from :data:`TOKENS`) in one satellite group."""
    endpoints = "\n".join(f"      - {{name: {site}, agent: {{token_sha256: {token_hash(TOKENS[site])}}}}}"
                           for site in sites)
    return write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 60s}}
groups:
  - name: vsat
    kind: school
    district: Shalkar
    link: satellite
    mode: agent
    endpoints:
{endpoints}
""")


def test_bad_agent_requests_get_their_status_and_change_nothing(lab: Lab, tmp_path: Path) -> None:
    cfg = agent_sites_config(tmp_path, "vsat-1", "vsat-2")
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  ops: {HASH}\n", encoding="utf-8")
    people = {"Authorization": basic("ops", PASSWORD)}
    state = tmp_path / "state"
    base = f"http://{lab.prober_v4}:{PORT}"
    results = f"{base}/api/v1/agent/results"
    with running_daemon(lab, cfg, PORT, "--web.config.file", str(web), "--state-dir", str(state)) as proc:
        scrape_when(f"{base}/metrics", lambda s: "connmon_agent_silent" in s, proc, headers=people)
        now = time.time()
        status, _, answer = call(results, json.dumps(batch("vsat-1", 1, 3, now - 10)).encode(), TOKENS["vsat-1"])
        assert (status, answer["accepted"], answer["duplicates"], answer["last_seq"]) == (200, 3, 0, 3), answer
        parsed = scrape_when(f"{base}/metrics", lambda s: value(s, "connmon_icmp_packets_sent_total",
                                                                 endpoint="vsat-1") == 9, proc, headers=people)
        assert value(parsed, "connmon_up", endpoint="vsat-1") == 1
        assert abs(value(parsed, "connmon_icmp_loss_ratio", endpoint="vsat-1") - 1 / 3) < 1e-12
        assert value(parsed, "connmon_agent_info", endpoint="vsat-1", version="0.1.0") == 1
        for _ in range(40):  # the history writer batches per cycle
            if history_rows(state) == 3:
                break
            time.sleep(0.25)
        assert history_rows(state) == 3

        def snapshot() -> tuple[dict, dict, int]:
            _, _, text = call(f"{base}/metrics", None, method="GET", headers=people)
            return site_series(text, "vsat-1"), site_series(text, "vsat-2"), history_rows(state)

        before = snapshot()
        good = json.dumps(batch("vsat-1", 10, 1, now)).encode()
        huge = batch("vsat-1", 10, 1, now)
        huge["results"][0]["error_detail"] = "x" * (3 * 1024 * 1024)
        future = batch("vsat-1", 10, 1, now + 3600)
        out_of_range = batch("vsat-1", 10, 1, now, rtts=[0.5, -0.1])
        refused = [
            ("no token", good, None, 401),
            ("unknown token", good, "guessed", 401),
            ("another site's token", good, TOKENS["vsat-2"], 403),
            ("a site the config does not have", json.dumps(batch("ghost", 10, 1, now)).encode(), TOKENS["vsat-1"],
             403),
            ("oversized body", json.dumps(huge).encode(), TOKENS["vsat-1"], 413),
            ("malformed JSON", b'{"site": "vsat-1", "results": [', TOKENS["vsat-1"], 400),
            ("NaN is not JSON", good.replace(b'"uptime_seconds": 5000.0', b'"uptime_seconds": NaN'),
             TOKENS["vsat-1"], 400),
            ("value out of range", json.dumps(out_of_range).encode(), TOKENS["vsat-1"], 400),
            ("timestamp far in the future", json.dumps(future).encode(), TOKENS["vsat-1"], 400),
        ]
        for what, body, token, expected in refused:
            status, headers, answer = call(results, body, token)
            assert status == expected, (what, status, answer)
            if expected == 401:
                assert headers.get("WWW-Authenticate", "").startswith("Bearer"), what
            if expected == 400:
                assert answer["error"], what
            assert snapshot() == before, what
        _, _, text = call(f"{base}/metrics", None, method="GET", headers=people)
        rejected = {(dict(k)["endpoint"], dict(k)["code"]): v
                    for k, v in samples(text)["connmon_agent_site_requests_rejected_total"].items() if v}
        assert rejected == {("vsat-2", "403"): 1, ("vsat-1", "403"): 1, ("vsat-1", "413"): 1,
                            ("vsat-1", "400"): 4}  # by the site whose token it was; 401s name none
        # the same batch again: acknowledged, nothing counted twice
        status, _, answer = call(results, json.dumps(batch("vsat-1", 1, 3, now - 10)).encode(), TOKENS["vsat-1"])
        assert (status, answer["accepted"], answer["duplicates"]) == (200, 0, 3)
        again = snapshot()
        assert value(again[0], "connmon_agent_results_total", outcome="duplicate") == 3
        for taken in (again, before):  # a duplicate is counted as one, and shows the agent alive; nothing else
            for name in ("connmon_agent_results_total", "connmon_agent_last_seen_timestamp_seconds"):
                taken[0].pop(name)
        assert again == before
        # people's routes still need basic auth; the agent's token opens nothing else
        assert call(f"{base}/metrics", None, TOKENS["vsat-1"], method="GET")[0] == 401
        assert call(f"{base}/api/v1/sites", None, TOKENS["vsat-1"], method="GET")[0] == 401
        # the rate limit: a burst is allowed, then 429 with Retry-After, and nothing of it is written
        codes = []
        for _ in range(BURST + 10):
            status, headers, _ = call(results, b'{"not": "a batch"}', TOKENS["vsat-2"])
            codes.append(status)
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
        assert codes.count(429) >= 5 and set(codes) == {400, 429}
        after = snapshot()
        for name in ("connmon_agent_results_total", "connmon_agent_last_seen_timestamp_seconds"):
            after[0].pop(name)
        assert after[0] == before[0] and after[2] == before[2]
        _, _, text = call(f"{base}/metrics", None, method="GET", headers=people)
        parsed = samples(text)
        for code in (401, 403, 413, 400, 429):
            assert value(parsed, "connmon_agent_requests_rejected_total", code=str(code)) >= 1
        assert "ghost" not in text
        assert proc.poll() is None


def test_the_centre_never_probes_an_agent_site_even_with_a_host(lab: Lab, tmp_path: Path) -> None:
    """An agent site is measured from inside: the daemon's cycles and `connmon probe` send it nothing,
    though its host answers; naming it to `connmon probe` says why (exit 2)."""
    reference, inside = lab.add_site("ag-reference"), lab.add_site("ag-inside")
    count_arrivals(inside)
    cfg = write_config(tmp_path, f"""
defaults:
  icmp: {{interval: 1s, count: 2, spacing: 100ms, timeout: 500ms}}
groups:
  - name: mixed
    kind: school
    throughput: {{method: iperf3, every: 10s, duration: 1s, omit: 0s, timeout: 2s}}
    endpoints:
      - {{name: reference, host: {reference.v4}}}
      - {{name: inside, host: {inside.v4}, mode: agent, agent: {{token_sha256: {token_hash("inside-token")}}}}}
""", name="mixed.yaml")
    url = f"http://{lab.prober_v4}:{PORT + 1}/metrics"
    with running_daemon(lab, cfg, PORT + 1) as proc:
        parsed = scrape_when(url, lambda s: value(s, "connmon_icmp_packets_sent_total", endpoint="reference") >= 10,
                             proc)
        assert arrivals(inside) == (0, 0, 0)
        one_shot = lab.connmon("probe", "--config", str(cfg), "--json")
        assert [json.loads(line)["endpoint"] for line in one_shot.stdout.splitlines()] == ["reference"]
        named = lab.connmon("probe", "--config", str(cfg), "--endpoint", "inside")
        assert named.returncode == 2 and "mode: agent" in named.stderr and named.stdout == ""
        parsed = scrape_when(url, lambda s: value(s, "connmon_agent_silent", endpoint="inside") == 1, proc)
        assert value(parsed, "connmon_up", endpoint="inside") == 0
        assert arrivals(inside) == (0, 0, 0)


def test_a_batch_posted_again_after_the_centre_was_killed_is_not_counted_twice(lab: Lab, tmp_path: Path) -> None:
    """Uploads stay idempotent across a restart of the centre: the agent posts a batch, the centre is
    killed (SIGKILL) and started again on the same state dir, the agent posts the same batch (it never
    got the answer): acknowledged as duplicates, no new history row, no count in the metrics."""
    cfg = agent_sites_config(tmp_path, "vsat-1")
    state = tmp_path / "state"
    port = PORT + 7
    base = f"http://{lab.prober_v4}:{port}"
    body = json.dumps(batch("vsat-1", 1, 3, time.time() - 10)).encode()
    with running_daemon(lab, cfg, port, "--state-dir", str(state)) as proc:
        scrape_when(f"{base}/metrics", lambda s: "connmon_agent_silent" in s, proc)
        status, _, answer = call(f"{base}/api/v1/agent/results", body, TOKENS["vsat-1"])
        assert (status, answer["accepted"], answer["duplicates"]) == (200, 3, 0), answer
        for _ in range(40):  # the history writer batches per cycle
            if history_rows(state) == 3:
                break
            time.sleep(0.25)
        assert history_rows(state) == 3
    # running_daemon kills it with SIGKILL: nothing is flushed or closed on the way out
    with running_daemon(lab, cfg, port, "--state-dir", str(state)) as proc:
        scrape_when(f"{base}/metrics", lambda s: "connmon_agent_silent" in s, proc)
        status, _, answer = call(f"{base}/api/v1/agent/results", body, TOKENS["vsat-1"])
        assert (status, answer["accepted"], answer["duplicates"], answer["last_seq"]) == (200, 0, 3, 3), answer
        parsed = scrape_when(f"{base}/metrics", lambda s: value(s, "connmon_agent_results_total", endpoint="vsat-1",
                                                                outcome="duplicate") == 3, proc)
        assert value(parsed, "connmon_agent_results_total", endpoint="vsat-1", outcome="accepted") == 0
        status, _, answer = call(f"{base}/api/v1/agent/results",
                                 json.dumps(batch("vsat-1", 4, 1, time.time() - 5)).encode(), TOKENS["vsat-1"])
        assert (status, answer["accepted"], answer["last_seq"]) == (200, 1, 4), answer
        for _ in range(40):
            if history_rows(state) == 4:
                break
            time.sleep(0.25)
        time.sleep(1.0)
        assert history_rows(state) == 4
