"""The Grafana dashboards: their structure, and every panel query run by a real Prometheus on real data.

A real ``connmon run`` probes namespace sites (ICMP, and short iperf3 tests so that throughput
series exist) and listens on the prober namespace's loopback. A real Prometheus (Debian's) runs
in the same namespace, scrapes only that loopback address every second and loads
``config/connmon.rules.yml``. Every target expression of every panel, with the dashboard
variables substituted as Grafana would, must then return at least one series from
``/api/v1/query``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.agent.centre.registry import token_hash
from tests.conftest import need
from tests.factories import write_config
from tests.netlab import Lab, Site, can_measure_throughput, child_env
from tests.running import samples, stop_process

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "config" / "connmon.rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CONNMON_PORT = 9201  # in the prober namespace, on its loopback
PROMETHEUS_PORT = 9202  # in the prober namespace, on the lab address the host reaches it by
WAIT_SECONDS = 150  # an upper bound: the wait ends as soon as every query has data

# What Grafana puts in for its built-in interval variables. With a 1 s scrape interval Grafana's own
# $__rate_interval would be a few seconds; 30 s keeps several samples in every window.
BUILTINS = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m", "__range_s": "300",
            "__interval_ms": "5000"}
BUILT_IN_PANELS = {"stat", "timeseries", "table", "geomap", "barchart", "heatmap"}
METRIC = re.compile(r"\b(connmon_[a-zA-Z0-9_]+|process_[a-zA-Z0-9_]+)\b")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels that query (rows, also those nested in collapsed rows, excluded)."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for top in dashboard["panels"] for p in [top, *top.get("panels", [])]]


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(panel["title"], t["expr"]) for panel in query_panels(dashboard) for t in panel.get("targets", [])]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def datasource_objects(node: Any) -> Iterator[Any]:
    """Every value of a ``datasource`` key anywhere in the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            yield from datasource_objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_objects(item)


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` (longest names first), as Grafana interpolates a query."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name])
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m, n=name: values[n], expr)
    assert "$" not in expr, f"an unsubstituted variable is left in {expr}"
    return expr


# ------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    """Current schema, unique panel ids, data source only through $datasource, no hard-coded uid."""
    dashboard = load(path)
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"].startswith("connmon-") and dashboard["id"] is None
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    for panel in query_panels(dashboard):
        assert panel["type"] in BUILT_IN_PANELS, panel["type"]  # no plugin to install
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for ds in datasource_objects(dashboard):
        # the built-in annotation query is Grafana's own; everything else goes through the variable
        assert ds == DATASOURCE or ds == {"type": "grafana", "uid": "-- Grafana --"}, ds
    ds_var = variables(dashboard)["datasource"]
    assert (ds_var["type"], ds_var["query"]) == ("datasource", "prometheus")
    for var in variables(dashboard).values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE
            assert var["definition"].startswith("label_values(")
    # A panel gridPos must stay inside Grafana's 24-column grid.
    for panel in all_panels(dashboard):
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_the_three_dashboards_and_their_variables() -> None:
    """Region overview and Site detail filter by kind, district and endpoint; Site detail shows one site."""
    by_uid = {load(p)["uid"]: load(p) for p in DASHBOARDS}
    assert set(by_uid) == {"connmon-region-overview", "connmon-site-detail", "connmon-monitor-health"}
    for uid in ("connmon-region-overview", "connmon-site-detail"):
        assert {"datasource", "kind", "district", "endpoint"} <= set(variables(by_uid[uid]))
    assert variables(by_uid["connmon-site-detail"])["endpoint"]["multi"] is False
    assert variables(by_uid["connmon-region-overview"])["endpoint"]["multi"] is True
    for uid in ("connmon-region-overview", "connmon-site-detail"):  # only sites with measurements to pick
        endpoint = variables(by_uid[uid])["endpoint"]
        assert endpoint["definition"] == endpoint["query"]["query"], uid  # what Grafana shows is what it runs
        selector = re.fullmatch(r"label_values\((\w+)\{(.*)\}, endpoint\)", endpoint["definition"])
        assert selector is not None and selector.group(1) == "connmon_endpoint_info", uid
        assert 'status="connected"' in selector.group(2).split(","), uid  # planned (and retired) sites left out
    types = {p["type"] for p in query_panels(by_uid["connmon-region-overview"])}
    assert {"geomap", "barchart", "table", "stat"} <= types
    assert "heatmap" in {p["type"] for p in query_panels(by_uid["connmon-site-detail"])}


SITE_LINK_VALUE = re.compile(r"var-endpoint=\$\{(__value\.raw|__data\.fields\.endpoint):percentencode\}(?:&|$)")


def test_links_to_the_site_view_use_its_uid_and_variable() -> None:
    """The worst-sites table and the map link to /d/connmon-site-detail with var-endpoint and the data source;
    the site name is percent-encoded (``№12 мектеп``, or a name with ``&`` or ``#``, must reach the variable whole)."""
    overview = load(ROOT / "grafana" / "dashboards" / "region-overview.json")
    urls = re.findall(r'"url": "([^"]*)"', json.dumps(overview))
    site_links = [u for u in urls if u.startswith("/d/connmon-site-detail/")]
    assert len(site_links) >= 2
    assert all("var-endpoint=" in u and "${datasource:queryparam}" in u for u in site_links)
    for url in site_links:
        assert SITE_LINK_VALUE.search(url), url
        assert url.count("var-endpoint=") == 1, url
    geomap = next(p for p in query_panels(overview) if p["type"] == "geomap")
    table = next(p for p in query_panels(overview) if p["title"] == "Worst sites")
    assert "__data.fields.endpoint:percentencode" in json.dumps(geomap["fieldConfig"]["defaults"]["links"])
    endpoint_column = next(o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "endpoint")
    assert "__value.raw:percentencode" in json.dumps(endpoint_column["properties"])


# (dashboard uid, panel title, panel type, metrics that must all be in the panel's expressions): every
# panel issue 6 names. Deleting one, changing its kind, or dropping what it must show fails here.
REQUIRED: list[tuple[str, str, str, tuple[str, ...]]] = [
    # Region overview
    ("connmon-region-overview", "Sites up, per kind", "stat", ("connmon_up",)),
    # issue 18: the fleet at a glance
    ("connmon-region-overview", "Agent fleet", "table",
     ("connmon_agent_state", "connmon_agent_last_seen_timestamp_seconds", "connmon_agent_last_result_timestamp_seconds",
      "connmon_agent_clock_offset_seconds", "connmon_agent_spool_depth", "connmon_agent_spool_dropped_total")),
    ("connmon-region-overview", "Sites meeting their bandwidth target, per kind", "stat", ("connmon_target_met",)),
    ("connmon-region-overview", "Sites by state", "geomap", ("connmon_up", "connmon_endpoint_info")),
    ("connmon-region-overview", "Sites up and down, per district", "barchart", ("connmon_up",)),
    ("connmon-region-overview", "Worst sites", "table",
     ("connmon_up", "connmon_icmp_loss_ratio", "connmon_icmp_rtt_last_seconds", "connmon_throughput_bits_per_second",
      "connmon_target_bits_per_second", "connmon_target_met")),
    # Site detail
    ("connmon-site-detail", "RTT distribution (smoke)", "heatmap", ("connmon_icmp_rtt_seconds_bucket",)),
    ("connmon-site-detail", "Loss", "timeseries", ("connmon_icmp_loss_ratio",)),
    ("connmon-site-detail", "Jitter", "timeseries", ("connmon_icmp_jitter_seconds",)),
    ("connmon-site-detail", "Download and upload against target", "timeseries",
     ("connmon_throughput_bits_per_second", "connmon_target_bits_per_second", "connmon_target_upload_bits_per_second")),
    ("connmon-site-detail", "Last ICMP cycle", "stat", ("connmon_last_probe_timestamp_seconds",)),
    ("connmon-site-detail", "Last measured throughput test", "stat",
     ("connmon_throughput_last_test_timestamp_seconds",)),
    ("connmon-site-detail", "Recent errors", "table", ("connmon_probe_errors_total",)),
    # Monitor health
    ("connmon-monitor-health", "Cycle duration (p99 and mean)", "timeseries",
     ("connmon_cycle_duration_seconds_bucket", "connmon_cycle_duration_seconds_sum",
      "connmon_cycle_duration_seconds_count")),
    ("connmon-monitor-health", "Skipped cycles", "timeseries", ("connmon_cycles_skipped_total",)),
    ("connmon-monitor-health", "Scrape", "stat", ("up",)),
    ("connmon-monitor-health", "Config reload", "stat", ("connmon_config_last_reload_successful",)),
    ("connmon-monitor-health", "Store errors", "timeseries", ("connmon_store_errors_total",)),
]


def uses_metric(expr: str, metric: str) -> bool:
    """Whether ``metric`` is selected in ``expr`` as a whole name (``up`` is not found in ``connmon_up``),
    itself or as the recording rule that merges its replicas (issue 19: ``endpoint:connmon_up:max``)."""
    return re.search(r"(?<![\w:])(?:[a-z_]+:)?" + re.escape(metric) + r"(?::\w+)?(?![\w:])", expr) is not None


def dashboards_by_uid() -> dict[str, dict[str, Any]]:
    return {load(p)["uid"]: load(p) for p in DASHBOARDS}


def panel(uid: str, title: str) -> dict[str, Any]:
    found = [p for p in query_panels(dashboards_by_uid()[uid]) if p["title"] == title]
    assert len(found) == 1, f"{uid}: {len(found)} panels titled {title!r}"
    return found[0]


@pytest.mark.parametrize(("uid", "title", "kind", "metrics"), REQUIRED, ids=[f"{u}/{t}" for u, t, _, _ in REQUIRED])
def test_required_panel_is_there(uid: str, title: str, kind: str, metrics: tuple[str, ...]) -> None:
    """Each panel the issue asks for exists once, is of its kind, and queries what it must show."""
    found = panel(uid, title)
    assert found["type"] == kind, (title, found["type"])
    exprs = [t["expr"] for t in found["targets"]]
    for metric in metrics:
        assert any(uses_metric(e, metric) for e in exprs), f"{title}: no query selects {metric}"


def test_panel_titles_are_unique_per_dashboard() -> None:
    """REQUIRED and the docs find panels by title, so a title names one panel (a row may share it)."""
    for uid, dashboard in dashboards_by_uid().items():
        titles = [p["title"] for p in query_panels(dashboard)]
        assert len(titles) == len(set(titles)), uid


def test_rtt_heatmap_draws_the_histogram_buckets() -> None:
    """The smoke heatmap plots Prometheus' own buckets (format heatmap, one series per le), not a
    heatmap Grafana would calculate from raw values; its y axis is in seconds."""
    heatmap = panel("connmon-site-detail", "RTT distribution (smoke)")
    (target,) = heatmap["targets"]
    assert target["format"] == "heatmap" and target["legendFormat"] == "{{le}}"
    assert re.search(r"sum by \(le\) \(increase\(connmon_icmp_rtt_seconds_bucket\{", target["expr"]), target["expr"]
    assert heatmap["options"]["calculate"] is False
    assert heatmap["options"]["yAxis"]["unit"] == "s"


def test_throughput_panel_draws_the_targets_as_dashed_lines() -> None:
    """Download and upload against target: each contracted rate is its own series, drawn dashed."""
    throughput = panel("connmon-site-detail", "Download and upload against target")
    dashed = [o["matcher"]["options"] for o in throughput["fieldConfig"]["overrides"]
              if o["matcher"]["id"] == "byRegexp"
              and any(p["id"] == "custom.lineStyle" and p["value"]["fill"] == "dash" for p in o["properties"])]
    targets = {t["legendFormat"]: t["expr"] for t in throughput["targets"]}
    for metric in ("connmon_target_bits_per_second", "connmon_target_upload_bits_per_second"):
        legend = next(name for name, expr in targets.items() if uses_metric(expr, metric))
        assert any(re.fullmatch(pattern, legend) for pattern in dashed), (metric, legend, dashed)
    measured = next(name for name, expr in targets.items() if uses_metric(expr, "connmon_throughput_bits_per_second"))
    assert not any(re.fullmatch(pattern, measured.replace("{{direction}}", "download")) for pattern in dashed)


def test_geomap_places_and_colours_sites_by_state() -> None:
    """The map's marker layer takes its position from the lat and lon columns (converted to numbers:
    Prometheus labels are strings) and its colour from the value column through the thresholds:
    red below 1 (down), green at 1 (up)."""
    geomap = panel("connmon-region-overview", "Sites by state")
    (target,) = geomap["targets"]  # one query: its value column is called "Value"
    assert (target["format"], target["instant"]) == ("table", True)
    assert re.search(r"group_left \(lat, lon\) max without \(shard, instance\) \(connmon_endpoint_info\{",
                     target["expr"]), target["expr"]
    (layer,) = geomap["options"]["layers"]
    assert layer["type"] == "markers"
    assert layer["location"] == {"mode": "coords", "latitude": "lat", "longitude": "lon"}
    assert layer["config"]["style"]["color"]["field"] == "Value"
    conversions = [c for t in geomap["transformations"] if t["id"] == "convertFieldType"
                   for c in t["options"]["conversions"]]
    assert {c["targetField"]: c["destinationType"] for c in conversions} == {"lat": "number", "lon": "number"}
    defaults = geomap["fieldConfig"]["defaults"]
    assert defaults["color"]["mode"] == "thresholds"
    assert defaults["thresholds"]["mode"] == "absolute"
    assert [(s["color"], s["value"]) for s in defaults["thresholds"]["steps"]] == [("red", None), ("green", 1)]


def test_monitor_health_is_monitor_wide() -> None:
    """Monitor health has datasource and instance only, every query filters by the instance, and the
    docs say why it has no kind, district or endpoint (its data is per instance, probe and group;
    test_monitor_health_series_are_not_per_site shows it on real data)."""
    health = dashboards_by_uid()["connmon-monitor-health"]
    assert set(variables(health)) == {"datasource", "instance"}
    for title, expr in expressions(health):
        selectors = re.findall(r"(?<![\w:])([a-zA-Z_][\w:]*)\{([^}]*)\}", expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            assert 'instance=~"$instance"' in matchers.split(","), (title, metric)
    section = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    assert "Monitor health is monitor-wide" in section


def test_provisioning_points_at_the_mounted_dashboards() -> None:
    """The data source is Prometheus at the compose service; the provider reads the folder compose mounts."""
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/connmon.yml").read_text())["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/connmon.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts


# ------------------------------------------------------------------------------ with real data
@dataclass
class Stack:
    lab: Lab
    prometheus_url: str
    exposition: str
    site: str  # the site picked in the single-site dashboard's endpoint variable


def prom_get(url: str, path: str, **params: str | list[str]) -> Any:
    query = urllib.parse.urlencode(params, doseq=True)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}{path}?{query}", timeout=10) as response:
        body = json.loads(response.read().decode("utf-8"))
    assert body["status"] == "success", body
    return body["data"]


def instant(url: str, expr: str) -> list[dict[str, Any]]:
    data = prom_get(url, "/api/v1/query", query=expr)
    assert data["resultType"] == "vector", (expr, data["resultType"])
    return data["result"]  # type: ignore[no-any-return]


def every_query(site: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel, substituted PromQL) for every panel target of every dashboard."""
    out = []
    for path in DASHBOARDS:
        dashboard = load(path)
        values = dict(BUILTINS)
        for name, var in variables(dashboard).items():
            if var["type"] == "query":
                values[name] = var["allValue"] if var["multi"] else site.replace("\\", "\\\\").replace('"', '\\"')
        for title, expr in expressions(dashboard):
            out.append((path.name, title, substitute(expr, values)))
    return out


AGENT_TOKEN = "token-of-vsat-agent"


def post_once_as_the_agent(lab: Lab) -> None:
    """One batch from vsat-agent (protocol 2, with its round trip and spool depth), so that the fleet's series
    (last contact, clock offset, spool depth: issue 18) exist as they do for any agent that ever reported."""
    now = time.time()
    body = json.dumps({"site": "vsat-agent", "agent": {
        "version": "0.test", "instance": "dash", "boot_id": "b", "uptime_seconds": 100.0, "sent_at": now,
        "spool_dropped": 0, "round_trip_seconds": 0.01, "spool_depth": 0}, "results": [{
            "seq": 1, "type": "icmp", "path": "centre", "started_at": now - 5, "address": "10.77.0.1", "sent": 3,
            "rtts_seconds": [0.6, 0.61, 0.62], "error": None, "error_detail": ""}]})
    script = ("import sys, urllib.request\n"
              "for _ in range(100):\n"
              "    try:\n"
              f"        r = urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:{CONNMON_PORT}"
              "/api/v1/agent/results', data=sys.argv[1].encode(), headers={'Content-Type': 'application/json', "
              f"'Authorization': 'Bearer {AGENT_TOKEN}', 'Connmon-Protocol': '2'}}), timeout=10)\n"
              "        sys.exit(0 if r.status == 200 else 1)\n"
              "    except OSError:\n"
              "        __import__('time').sleep(0.2)\n"
              "sys.exit(2)\n")
    lab.pr(sys.executable, "-c", script, body)


@pytest.fixture(scope="module")
def stack(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ok, reason = can_measure_throughput()
    need(ok, reason)
    need(shutil.which("prometheus") is not None, "needs prometheus (Debian package prometheus)")
    sites: dict[str, Site] = {name: lab.add_site(f"db-{name}") for name in ("a", "b", "c")}
    for name in ("a", "b"):
        sites[name].shape(10, 10)
        sites[name].start_iperf3()
    directory = tmp_path_factory.mktemp("dash")
    cfg = write_config(directory, f"""
throughput: {{max_concurrent: 1}}
monitor:  # an uplink check, so that connmon_uplink_up, which the rule file names, is exported (issue 21)
  uplink: [{{name: gateway, host: {sites['a'].v4}}}]
upstreams:  # and an upstream node above the schools, for connmon_upstream_state and _sites (issue 21)
  - {{name: aktobe-agg, host: {sites['a'].v4}}}
defaults:
  target_upload_mbps: 1
  icmp: {{interval: 2s, count: 3, spacing: 100ms, timeout: 500ms}}
  throughput: {{method: iperf3, every: 10s, duration: 1s, omit: 0s, timeout: 3s}}
groups:
  - name: schools
    kind: school
    district: Aktobe
    upstream: aktobe-agg
    endpoints:
      - {{name: a-fibre, host: {sites['a'].v4}, link: fibre, lat: 50.28, lon: 57.17}}
      - {{name: "№12 мектеп", host: {sites['b'].v4}, link: dsl, target_mbps: 20, lat: 50.30, lon: 57.20}}
  - name: clinics
    kind: clinic
    district: Kargaly
    link: satellite
    endpoints:
      - {{name: refused, host: {sites['c'].v4}, lat: 49.9, lon: 57.3}}
      # roll-out (issue 11): counted by connmon_sites, never probed, so in no up/down panel or the map
      - {{name: new-clinic, status: planned, planned_date: 2027-01-15, lat: 49.8, lon: 57.4}}
      - {{name: old-clinic, host: {sites['c'].v4}, status: retired}}
      # measured by an agent at the site (issue 10): it posts once (below), then is silent: down, reason agent_silent
      - {{name: vsat-agent, mode: agent, agent: {{token_sha256: {token_hash(AGENT_TOKEN)}, stale_after: 2s}},
         lat: 49.7, lon: 57.5}}
""")
    prom_config = directory / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        # only the connmon on the prober's own loopback; no alertmanager is configured at all
        "scrape_configs": [{"job_name": "connmon", "static_configs": [{"targets": [f"127.0.0.1:{CONNMON_PORT}"]}]}],
    }), encoding="utf-8")
    connmon = subprocess.Popen(lab.connmon_argv("run", "--config", str(cfg), "--listen", f"127.0.0.1:{CONNMON_PORT}"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    prom_log = (directory / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        ["ip", "netns", "exec", lab.prober, "prometheus", f"--config.file={prom_config}",
         f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address={lab.prober_v4}:{PROMETHEUS_PORT}",
         "--storage.tsdb.retention.time=1h"],
        stdin=subprocess.DEVNULL, stdout=prom_log, stderr=prom_log, env=child_env())
    url = f"http://{lab.prober_v4}:{PROMETHEUS_PORT}"
    try:
        post_once_as_the_agent(lab)
        queries = every_query("a-fibre")
        missing: list[str] = []
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            assert connmon.poll() is None, f"connmon exited: {connmon.communicate()[1][-2000:]}"
            assert prometheus.poll() is None, (directory / "prometheus.log").read_text()[-3000:]
            try:
                missing = [f"{board} / {title}: {expr}" for board, title, expr in queries
                           if not instant(url, expr)]
            except OSError:
                missing = ["Prometheus not answering yet"]
            if not missing:
                break
            time.sleep(2)
        exposition = lab.pr(sys.executable, "-c", "import sys, urllib.request; sys.stdout.write(urllib.request."
                            f"urlopen('http://127.0.0.1:{CONNMON_PORT}/metrics', timeout=10).read().decode())").stdout
        yield Stack(lab, url, exposition, "a-fibre")
    finally:
        for proc in (prometheus, connmon):
            stop_process(proc)
        prom_log.close()
        for site in sites.values():
            site.stop_servers()


@pytest.mark.netns
def test_every_panel_query_returns_data(stack: Stack) -> None:
    """Each panel target of each dashboard, variables substituted, returns at least one series."""
    queries = every_query(stack.site)
    assert len(queries) >= 40
    empty = []
    for board, title, expr in queries:
        result = instant(stack.prometheus_url, expr)  # also proves the expression is valid PromQL
        if not result:
            empty.append(f"{board} / {title}: {expr}")
    assert empty == []


@pytest.mark.netns
def test_variable_queries_list_the_sites(stack: Stack) -> None:
    """label_values() of each query variable (as Grafana asks Prometheus) lists the configured values."""
    found: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        for name, var in variables(load(path)).items():
            if var["type"] != "query":
                continue
            selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"]).groups()  # type: ignore[union-attr]
            selector = substitute(selector, {"kind": ".*", "district": ".*"})
            values = prom_get(stack.prometheus_url, f"/api/v1/label/{label}/values", **{"match[]": [selector]})
            found.setdefault(name, set()).update(values)
    assert found["kind"] == {"school", "clinic"}
    assert found["district"] == {"Aktobe", "Kargaly"}
    # connected sites only: the planned new-clinic and the retired old-clinic have nothing to show
    assert found["endpoint"] == {"a-fibre", "№12 мектеп", "refused", "vsat-agent"}
    described = prom_get(stack.prometheus_url, "/api/v1/label/endpoint/values",
                         **{"match[]": ["connmon_endpoint_info"]})
    assert {"new-clinic", "old-clinic"} <= set(described)  # they are there: the status matcher leaves them out
    assert stack.site in found["endpoint"]
    assert len(found["instance"]) == 1


@pytest.mark.netns
def test_map_query_gives_coordinates_and_state(stack: Stack) -> None:
    """The Geomap's query joins connmon_up with the lat/lon of connmon_endpoint_info, one row per site."""
    overview = load(ROOT / "grafana" / "dashboards" / "region-overview.json")
    geomap = next(p for p in query_panels(overview) if p["type"] == "geomap")
    expr = substitute(geomap["targets"][0]["expr"], {"kind": ".*", "district": ".*", "endpoint": ".*"})
    rows = {r["metric"]["endpoint"]: (r["metric"]["lat"], r["metric"]["lon"], r["value"][1])
            for r in instant(stack.prometheus_url, expr)}
    assert rows == {"a-fibre": ("50.28", "57.17", "1"), "№12 мектеп": ("50.3", "57.2", "1"),
                    "refused": ("49.9", "57.3", "1"), "vsat-agent": ("49.7", "57.5", "0")}  # its agent is silent


@pytest.mark.netns
def test_rollout_panel_counts_sites_by_district_and_status(stack: Stack) -> None:
    """The roll-out panel's query counts every configured site, planned and retired ones included."""
    overview = load(ROOT / "grafana" / "dashboards" / "region-overview.json")
    panel = next(p for p in query_panels(overview) if p["title"] == "Sites by roll-out status, per district")
    expr = substitute(panel["targets"][0]["expr"], {"kind": ".*", "district": ".*"})
    counts = {(r["metric"]["district"], r["metric"]["status"]): r["value"][1]
              for r in instant(stack.prometheus_url, expr)}
    assert counts == {("Aktobe", "connected"): "2", ("Kargaly", "connected"): "2", ("Kargaly", "planned"): "1",
                      ("Kargaly", "retired"): "1"}
    probed = instant(stack.prometheus_url, 'count(connmon_up{endpoint=~"new-clinic|old-clinic"})')
    assert probed == []  # no connmon_up for the planned and the retired site


@pytest.mark.netns
def test_every_referenced_metric_is_exported_by_connmon(stack: Stack) -> None:
    """Every connmon_* / process_* name in the dashboards and the rule file is in a running connmon's /metrics."""
    exported = set(samples(stack.exposition))
    assert "connmon_up" in exported and "connmon_throughput_bits_per_second" in exported
    # a family whose series exist only while their condition holds (a common fault: issue 21) is declared
    # (# TYPE) from start-up: a name the rules use that connmon does not even declare is still caught
    declared = set(re.findall(r"^# TYPE (\S+) ", stack.exposition, flags=re.M))
    conditional = {"connmon_common_fault", "connmon_common_fault_site"}
    assert conditional <= declared and not conditional & exported  # no fault in this lab: declared, no series
    exported |= conditional
    # exported only when connmon serves TLS (--web.config.file): tests/test_tls.py scrapes it from such a connmon
    exported |= {"connmon_tls_certificate_expiry_timestamp_seconds"}
    referenced = {name for path in DASHBOARDS for _, expr in expressions(load(path)) for name in METRIC.findall(expr)}
    referenced |= set(METRIC.findall(RULES.read_text(encoding="utf-8")))
    assert referenced <= exported, sorted(referenced - exported)
    assert {"connmon_up", "connmon_icmp_rtt_seconds_bucket", "connmon_cycle_duration_seconds_bucket",
            "connmon_target_missed_consecutive_tests"} <= referenced


@pytest.mark.netns
def test_prometheus_loads_and_evaluates_the_rule_file(stack: Stack) -> None:
    """The real Prometheus loaded every rule of config/connmon.rules.yml and evaluates them without error."""
    groups = prom_get(stack.prometheus_url, "/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    declared = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert len(rules) == len(declared)
    assert [r for r in rules if r["health"] != "ok"] == []
    thresholds = instant(stack.prometheus_url, "connmon:link_rtt_alert_threshold_seconds")
    assert {r["metric"]["link"] for r in thresholds} == {"satellite", "lte", "dsl", "fibre"}


# A metric named in a docs table cell: connmon's own, the process collector's, Prometheus' scrape series.
README_METRIC = re.compile(r"(?<![\w:])(connmon[_:][\w:]+|process_\w+|scrape_\w+|up(?=\{))")


def readme_panel_tables() -> dict[str, list[tuple[str, str, str]]]:
    """Per dashboard uid, the docs' (docs/dashboards.md) (row, panel, what it shows) lines; an empty row cell
    repeats the last."""
    section = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    parts = re.split(r"^## .*\(`(connmon-[\w-]+)`\)$", section, flags=re.M)
    tables: dict[str, list[tuple[str, str, str]]] = {}
    for uid, body in zip(parts[1::2], parts[2::2], strict=True):
        rows: list[tuple[str, str, str]] = []
        for line in body.splitlines():
            if not line.startswith("| ") or line.startswith(("| row |", "| --- |")):
                continue
            row, title, shows = (c.strip() for c in line.strip().strip("|").split(" | ", 2))
            rows.append((row or rows[-1][0], title, shows))
        tables[uid] = rows
    return tables


def panels_by_row(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(title of the row the panel is under, panel) for every querying panel, in dashboard order."""
    out: list[tuple[str, dict[str, Any]]] = []
    row = ""
    for top in dashboard["panels"]:
        if top["type"] == "row":
            row = top["title"]
            out.extend((row, nested) for nested in top.get("panels", []))
        else:
            out.append((row, top))
    return out


def readme_metrics(cell: str) -> set[str]:
    """Metric names inside the backtick spans of a docs table cell."""
    return {name for span in re.findall(r"`([^`]+)`", cell) for name in README_METRIC.findall(span)}


def shows_metric(exprs: list[str], metric: str) -> bool:
    """The docs may name a histogram or summary by its family: its _bucket/_sum/_count series count."""
    return any(uses_metric(e, name) for e in exprs for name in (metric, f"{metric}_bucket", f"{metric}_sum",
                                                                 f"{metric}_count"))


def test_readme_panel_tables_match_the_dashboards() -> None:
    """Both ways: the docs' table of each dashboard lists exactly its panels, each under its row,
    and every metric a docs line names in backticks is queried by that panel."""
    tables = readme_panel_tables()
    by_uid = dashboards_by_uid()
    assert set(tables) == set(by_uid)
    for uid, dashboard in by_uid.items():
        in_readme = [(row, title) for row, title, _ in tables[uid]]
        in_json = [(row, p["title"]) for row, p in panels_by_row(dashboard)]
        assert sorted(in_readme) == sorted(in_json), uid
        panels = {p["title"]: p for _, p in panels_by_row(dashboard)}
        for _, title, shows in tables[uid]:
            exprs = [t["expr"] for t in panels[title]["targets"]]
            for metric in readme_metrics(shows):
                assert shows_metric(exprs, metric), f"{uid} / {title}: the docs name {metric}, no query has it"


@pytest.mark.netns
def test_worst_sites_columns_line_up_per_site(stack: Stack) -> None:
    """The worst-sites table's queries all return the same labels for a site, so Grafana's merge joins them."""
    overview = load(ROOT / "grafana" / "dashboards" / "region-overview.json")
    table = next(p for p in query_panels(overview) if p["title"] == "Worst sites")
    by_site: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for target in table["targets"]:
        expr = substitute(target["expr"], {**BUILTINS, "kind": ".*", "district": ".*", "endpoint": ".*"})
        for row in instant(stack.prometheus_url, expr):
            by_site.setdefault(row["metric"]["endpoint"], set()).add(tuple(sorted(row["metric"].items())))
    assert set(by_site) == {"a-fibre", "№12 мектеп", "refused", "vsat-agent"}
    for site, label_sets in by_site.items():
        assert len(label_sets) == 1, (site, label_sets)
        # the site's labels, replicas merged (issue 19): no instance, no shard
        assert {key for key, _ in next(iter(label_sets))} == {"endpoint", "kind", "district", "link", "job"}


# ------------------------------------------------------------------------------ the overview's counts, exactly
ALL_SITES = {**BUILTINS, "kind": ".*", "district": ".*", "endpoint": ".*"}


def target_expr(uid: str, title: str, ref: str) -> str:
    (target,) = [t for t in panel(uid, title)["targets"] if t["refId"] == ref]
    return substitute(target["expr"], ALL_SITES)


def by_label(url: str, expr: str, label: str) -> dict[str, float]:
    """The instant result as {value of ``label`` ('' when absent): value}."""
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in instant(url, expr)}


def settled(read: Callable[[], dict[str, float]], expected: dict[str, float]) -> dict[str, float]:
    """Read until the figures are the expected ones (a throughput verdict may still be on its way) or
    the wait is over; returns the last read, for the caller to assert on."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        got = read()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(2)


# What the stack's sites imply. Connected and probed: a-fibre and №12 мектеп (schools, Aktobe; both
# answer pings; a-fibre's ~10 Mbit/s meets the default 4 Mbit/s, №12 мектеп's misses its 20), refused
# (clinic, Kargaly; answers pings, its test server refuses, so no verdict) and vsat-agent (clinic,
# Kargaly; its agent is silent: down, no verdict). new-clinic (planned) and old-clinic (retired) are
# counted nowhere here.
OVERVIEW_FIGURES = [
    ("Sites up, per kind", "A", "kind", {"school": 2, "clinic": 1}),
    ("Sites up, per kind", "B", "kind", {"school": 2, "clinic": 2}),  # not 4 clinics: planned/retired left out
    ("Sites meeting their bandwidth target, per kind", "A", "kind", {"school": 1}),
    # tested = sites with a verdict: no clinic has one (count(connmon_up) would say 2)
    ("Sites meeting their bandwidth target, per kind", "B", "kind", {"school": 2}),
    ("Share of sites up / meeting target", "A", "", {"": 0.75}),
    ("Share of sites up / meeting target", "B", "", {"": 0.5}),
    ("Sites up and down, per district", "A", "district", {"Aktobe": 2, "Kargaly": 1}),
    ("Sites up and down, per district", "B", "district", {"Aktobe": 0, "Kargaly": 1}),  # down, not up again
]


@pytest.mark.netns
@pytest.mark.parametrize(("title", "ref", "label", "expected"), OVERVIEW_FIGURES,
                         ids=[f"{t}/{r}" for t, r, _, _ in OVERVIEW_FIGURES])
def test_region_overview_counts_are_right(stack: Stack, title: str, ref: str, label: str,
                                          expected: dict[str, float]) -> None:
    """Region overview's counts, All selected, are exactly what the lab's sites imply."""
    expr = target_expr("connmon-region-overview", title, ref)
    assert settled(lambda: by_label(stack.prometheus_url, expr, label), expected) == expected, expr


@pytest.mark.netns
def test_monitor_health_series_are_not_per_site(stack: Stack) -> None:
    """No Monitor health query returns a series with a site's kind, district or endpoint: a kind,
    district or endpoint variable would have nothing to filter there (see docs/dashboards.md)."""
    health = dashboards_by_uid()["connmon-monitor-health"]
    seen = 0
    for title, expr in expressions(health):
        for row in instant(stack.prometheus_url, substitute(expr, {**BUILTINS, "instance": ".*"})):
            assert not {"kind", "district", "endpoint"} & set(row["metric"]), (title, row["metric"])
            seen += 1
    assert seen >= len(expressions(health))


def merged_metrics() -> dict[str, str]:
    """Per-site metric → the recording rule that merges its replicas (``endpoint:<metric>:<operation>``, issue 19)."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    rules = [rule for group in groups for rule in group["rules"] if "record" in rule]
    return {rule["record"].split(":")[1]: rule["record"] for rule in rules if rule["record"].startswith("endpoint:")}


def test_site_panels_show_the_merged_series() -> None:
    """Region overview and Site detail never select a per-site gauge that has a merged series raw (issue 19):
    with --replicas R a raw selector would draw a site R times and keep a dead replica's view."""
    merged = merged_metrics()
    assert {"connmon_up", "connmon_site_state", "connmon_icmp_loss_ratio", "connmon_icmp_rtt_last_seconds",
            "connmon_throughput_bits_per_second", "connmon_target_met"} <= set(merged)
    by_uid = dashboards_by_uid()
    for uid in ("connmon-region-overview", "connmon-site-detail"):
        for title, expr in expressions(by_uid[uid]):
            for metric, rule in merged.items():
                assert not re.search(r"(?<![\w:])" + re.escape(metric) + r"(?![\w:])", expr), (uid, title, rule)
            # the rest (info, targets) is merged in place; counters and buckets are summed over the replicas
            for raw in re.findall(r"(?<![\w:])(connmon_\w+)\{", expr):
                wrapped = re.search(r"(max|group) without \(shard, instance\) \(" + raw + r"\{", expr)
                summed = raw.endswith(("_total", "_bucket")) and re.search(r"sum by \([^)]*\) \(increase\(" + raw, expr)
                assert wrapped or summed or raw.startswith("connmon_agent_"), (uid, title, raw)
