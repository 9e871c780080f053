"""Where the path ends (issue 21), on real routers: traces through connmon's engine and ConnmonCommonFault.

The lab is tests/fault_lab.py's: the centre, ``isp`` → ``agg`` forwarding with the ICMP rate limit
off, three sites behind ``agg``, two behind ``isp``, one beside both. The engine's traces are
checked on raw and on unprivileged sockets; then ``connmon run`` in the centre, with no
``upstreams:`` in its config, is shown a cut site (its trace ends at ``agg``) and a dead ``agg``
(one common fault at ``isp``'s address, naming exactly the three sites behind ``agg``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openapi_core.testing import MockRequest, MockResponse

from monitor.history.sqlite import SqliteStore, database_path
from tests.api_spec import SPEC
from tests.conftest import need
from tests.factories import write_config
from tests.fault_lab import SITE_NAMES, SITES_BEHIND, FaultLab
from tests.netlab import can_make_namespaces, child_env
from tests.running import Samples, request, running_daemon, scrape_when, value

PORT = 19950
AGG_SITES = SITES_BEHIND["agg"]

# Traces three sites through the engine in the given mode and prints them as JSON (run inside the centre).
_TRACE_SCRIPT = """
import asyncio, json, sys, time
from monitor.icmp.engine import EchoJob, IcmpEngine
from monitor.icmp.trace import trace

async def main():
    engine = IcmpEngine.open(sys.argv[1])
    try:
        out = {}
        received = {}
        for address in sys.argv[2:]:
            # a cycle's echoes to the same address at the same time: the trace's TTLs must not touch them
            t, (cycle,) = await asyncio.gather(trace(engine, address, time.time(), max_hops=8, timeout_seconds=0.5),
                                               engine.ping([EchoJob(address, 10, 0.01, 0.5)]))
            out[address] = {"hops": [h.address for h in t.hops], "last": t.last_answering_hop, "reached": t.reached,
                            "rtts": [h.rtt_seconds for h in t.hops]}
            received[address] = sum(r is not None for r in cycle.rtts_seconds)
        print(json.dumps({"mode": "raw" if engine.privileged else "unprivileged", "traces": out,
                          "received": received, "unmatched": engine.stats.replies_unmatched}))
    finally:
        engine.close()

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def fl() -> Iterator[FaultLab]:
    ok, reason = can_make_namespaces()
    need(ok, reason)
    lab = FaultLab(tag=os.environ.get("CONNMON_TEST_LAB_TAG", "")).open()
    try:
        yield lab
    finally:
        lab.close()


def engine_traces(fl: FaultLab, mode: str, *addresses: str) -> dict[str, dict[str, object]]:
    no_raw = ["setpriv", "--bounding-set=-net_raw"] if mode == "unprivileged" else []
    proc = subprocess.run(["ip", "netns", "exec", fl.centre, *no_raw, sys.executable, "-c", _TRACE_SCRIPT, mode,
                           *addresses], capture_output=True, text=True, timeout=60, env=child_env(), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["mode"] == mode
    alive = [a for a, t in out["traces"].items() if t["reached"]]
    assert all(out["received"][a] == 10 for a in alive), out  # echoes sent beside a trace all came back
    assert out["unmatched"] == 0, out
    traces: dict[str, dict[str, object]] = out["traces"]
    return traces


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("mode", ["raw", "unprivileged"])
def test_engine_traces_name_every_router_and_stop_where_the_path_ends(fl: FaultLab, mode: str, family: str) -> None:
    """Through the engine's raw and unprivileged sockets alike, IPv4 and IPv6: the way to a site behind agg reads
    isp, agg, the site; with agg dead it ends at isp; with the site dead it ends at agg; a site beside both is
    one hop away. A cycle's echoes to the same site during its trace all come back (the TTL is the trace's
    probes' only)."""
    fl.lab.allow_unprivileged_icmp(mode == "unprivileged")
    isp, agg = (getattr(fl.routers[r], family) for r in ("isp", "agg"))
    site, beside = getattr(fl.sites["agg-1"], family), getattr(fl.sites["beside"], family)
    whole = engine_traces(fl, mode, site, beside)
    assert whole[site]["hops"] == [isp, agg, site] and whole[site]["reached"] is True
    assert all(isinstance(r, float) and 0 < r < 0.5 for r in whole[site]["rtts"])  # type: ignore[attr-defined]
    assert whole[beside]["hops"] == [beside] and whole[beside]["last"] == beside
    with fl.router_cut("agg"):
        cut = engine_traces(fl, mode, site)[site]
    assert cut["hops"] == [isp, None] and cut["last"] == isp and cut["reached"] is False
    fl.cut_site("agg-1")
    try:
        dead = engine_traces(fl, mode, site)[site]
    finally:
        fl.restore_site("agg-1")
    assert dead["hops"] == [isp, agg, None] and dead["last"] == agg and dead["reached"] is False


def api_site(fl: FaultLab, port: int, name: str) -> dict[str, object]:
    """The site's JSON, checked against the OpenAPI document (``last_trace`` null or not)."""
    path = f"/api/v1/sites/{name}"
    status, headers, body = request(f"http://{fl.lab.prober_v4}:{port}{path}")
    assert status == 200, body
    SPEC.validate_response(MockRequest("http://connmon", "get", path),
                           MockResponse(body.encode(), status_code=status,
                                        content_type=headers.get("Content-Type", "").split(";")[0]))
    site: dict[str, object] = json.loads(body)
    return site


def last_trace(fl: FaultLab, port: int, name: str) -> dict[str, object] | None:
    found = api_site(fl, port, name)["last_trace"]
    assert found is None or isinstance(found, dict)
    return found


def faults(parsed: Samples) -> dict[str, float]:
    """connmon_common_fault by hop."""
    return {dict(k)["hop"]: v for k, v in parsed.get("connmon_common_fault", {}).items()}


def fault_sites(parsed: Samples) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for k in parsed.get("connmon_common_fault_site", {}):
        labels = dict(k)
        out.setdefault(labels["hop"], set()).add(labels["endpoint"])
    return out


def all_up(parsed: Samples) -> bool:
    return all(value(parsed, "connmon_up", endpoint=n) == 1 for n in SITE_NAMES)


def test_a_cut_site_and_a_dead_router_without_declared_upstreams(fl: FaultLab, tmp_path: Path) -> None:
    """No upstreams: in the config. A dead site behind agg is traced once, its last answering hop agg's address,
    in the API and the history, and no common fault; a dead agg gives one ConnmonCommonFault series naming
    isp's address and exactly agg's three sites (none behind isp alone), which clears when they answer again;
    after a restart the API shows each site's last trace from the history."""
    fl.restore_all()
    isp, agg = fl.routers["isp"].v4, fl.routers["agg"].v4
    state = tmp_path / "state"
    cfg = write_config(tmp_path, fl.config_yaml(upstreams=False, monitor_extra="  traces_per_minute: 20\n",
                                                icmp="{interval: 1s, count: 3, spacing: 50ms, timeout: 400ms}"))
    base = f"http://{fl.lab.prober_v4}:{PORT}/metrics"
    with running_daemon(fl.lab, cfg, PORT, "--state-dir", str(state)) as daemon:
        def when(ready: Callable[[Samples], bool]) -> Samples:
            return scrape_when(base, ready, daemon, attempts=120)

        when(all_up)
        assert last_trace(fl, PORT, "agg-2") is None  # null before any trace
        when(lambda s: value(s, "connmon_traces_total", outcome="taken") == 0)

        cut_at = time.time()
        fl.cut_site("agg-2")
        when(lambda s: value(s, "connmon_up", endpoint="agg-2") == 0
             and value(s, "connmon_traces_total", outcome="taken") == 1)
        trace = last_trace(fl, PORT, "agg-2")
        assert trace is not None and trace["last_answering_hop"] == agg, trace
        assert [h["address"] for h in trace["hops"]] == [isp, agg, None]  # type: ignore[index, union-attr]
        assert isinstance(trace["at"], float) and trace["at"] >= cut_at - 1
        fl.restore_site("agg-2")
        parsed = when(all_up)
        assert faults(parsed) == {}
        # down again and again is not traced again: only the going down is
        assert value(parsed, "connmon_traces_total", outcome="taken") == 1

        fl.cut_router("agg")
        parsed = when(lambda s: faults(s) == {isp: 3})
        assert fault_sites(parsed) == {isp: set(AGG_SITES)}
        assert all(value(parsed, "connmon_up", endpoint=n) == 1 for n in SITES_BEHIND["isp"] + ("beside",))
        for name in AGG_SITES:
            t = last_trace(fl, PORT, name)
            assert t is not None and t["last_answering_hop"] == isp, (name, t)
        fl.restore_router("agg")
        parsed = when(lambda s: all_up(s) and faults(s) == {})
        assert value(parsed, "connmon_traces_total", outcome="taken") == 4
        assert value(parsed, "connmon_traces_total", outcome="skipped_budget") == 0

        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr[-3000:]
    assert stderr.count(f"common fault at {isp}: 3 sites") == 1, stderr[-3000:]
    assert stderr.count(f"common fault at {isp} cleared") == 1, stderr[-3000:]
    assert f"trace to {fl.sites['agg-2'].v4}: the path ends at {agg}" in stderr

    store = SqliteStore(database_path(state), read_only=True)
    try:
        kept = store.traces("agg-2", cut_at - 1, time.time() + 1)
        assert [(t.last_answering_hop, t.reached) for t in kept] == [(agg, False), (isp, False)]  # site, then agg
        assert {n: t.last_answering_hop for n, t in store.last_traces().items()} == {
            "agg-2": isp, "agg-1": isp, "agg-3": isp}
    finally:
        store.close()

    with running_daemon(fl.lab, cfg, PORT, "--state-dir", str(state)) as again:
        scrape_when(base, all_up, again, attempts=120)
        restored = last_trace(fl, PORT, "agg-2")
        assert restored is not None and restored["last_answering_hop"] == isp  # its latest: agg's cut
        assert last_trace(fl, PORT, "isp-1") is None
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)


def test_the_trace_budget_is_respected(fl: FaultLab, tmp_path: Path) -> None:
    """With monitor.traces_per_minute: 1, agg's three sites going down at once give one trace and two
    skipped_budget, and no common fault (one trace alone names no common hop)."""
    fl.restore_all()
    cfg = write_config(tmp_path, fl.config_yaml(upstreams=False, monitor_extra="  traces_per_minute: 1\n",
                                                icmp="{interval: 1s, count: 3, spacing: 50ms, timeout: 400ms}"))
    base = f"http://{fl.lab.prober_v4}:{PORT + 1}/metrics"
    with running_daemon(fl.lab, cfg, PORT + 1, "--state-dir", str(tmp_path / "state")) as daemon:
        scrape_when(base, all_up, daemon, attempts=120)
        with fl.router_cut("agg"):
            parsed = scrape_when(base, lambda s: value(s, "connmon_traces_total", outcome="skipped_budget") == 2
                                 and value(s, "connmon_traces_total", outcome="taken") == 1, daemon, attempts=120)
            time.sleep(2)  # a few more down cycles: still one trace
            parsed = scrape_when(base, lambda s: True, daemon)
        assert value(parsed, "connmon_traces_total", outcome="taken") == 1
        assert value(parsed, "connmon_traces_total", outcome="skipped_budget") == 2
        assert faults(parsed) == {}
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr[-3000:]
    assert stderr.count("skipped: 1 traces already taken in the last minute") == 2
