"""One region, one clock (issue 22): ``monitor.timezone`` is the default zone of throughput windows,
maintenance windows, reports, KPIs and the API's summary, and each can still say otherwise.

Europe/Berlin has daylight saving time (Asia/Aqtobe has none): CET (UTC+1) until 29 March 2026 02:00,
CEST (UTC+2) until 25 October 2026 03:00, then CET again. So 08:00 local is 07:00 UTC in winter and
06:00 UTC in summer, and 25 October 2026 is a local day of 25 hours.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import test_utils, web  # test_utils, not its Test* names: pytest would try to collect them

from monitor.config import load_config
from monitor.config.windows import current_or_next
from monitor.errors import ConfigError
from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import EndpointRecord
from monitor.history.store_url import opener as store_opener
from monitor.months import month_of
from monitor.report.compliance import Period, build_report
from monitor.report.kpis import maintenance_of
from monitor.targets import build_targets
from monitor.throughput_plan import allowed_start
from monitor.web.site_api import SiteApi
from monitor.web.site_state import SiteStateSink
from tests.factories import icmp, located_target, write_config
from tests.netlab import child_env

BERLIN = "Europe/Berlin"
HOUR = 3600.0


def utc(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()  # type: ignore[misc]


REGION = """\
monitor:
  timezone: Europe/Berlin
groups:
  - name: regional
    kind: school
    throughput: {method: iperf3, every: 1d, windows: ["08:00-09:00"]}
    maintenance: {windows: ["Mon-Fri 08:00-09:00"]}
    endpoints:
      - {name: a, host: 192.0.2.1}
  - name: own-zone
    kind: school
    throughput: {method: iperf3, every: 1d, windows: ["08:00-09:00"], timezone: UTC}
    maintenance: {timezone: UTC, windows: ["Mon-Fri 08:00-09:00"]}
    endpoints:
      - {name: b, host: 192.0.2.2}
"""


def test_throughput_windows_follow_monitor_timezone_across_dst(tmp_path: Path) -> None:
    """A window 08:00-09:00 with monitor.timezone Europe/Berlin opens at 07:00 UTC before the spring change and
    06:00 UTC after it, and a test is booked inside it; a group's own throughput.timezone (UTC) still wins."""
    targets = {t.name: t for t in build_targets(load_config(write_config(tmp_path, REGION)))}
    regional, own = targets["a"].throughput, targets["b"].throughput
    assert (regional.timezone, own.timezone) == (BERLIN, "UTC")
    before, after = utc(2026, 3, 27), utc(2026, 3, 30)  # Friday before, Monday after 29 March
    assert current_or_next(before, regional.windows, regional.timezone) == (utc(2026, 3, 27, 7), utc(2026, 3, 27, 8))
    assert current_or_next(after, regional.windows, regional.timezone) == (utc(2026, 3, 30, 6), utc(2026, 3, 30, 7))
    assert utc(2026, 3, 27, 7) <= allowed_start(before, "a", regional) < utc(2026, 3, 27, 8)
    assert utc(2026, 3, 30, 6) <= allowed_start(after, "a", regional) < utc(2026, 3, 30, 7)
    # and back in autumn: 06:00 UTC in summer, 07:00 UTC after 25 October
    assert current_or_next(utc(2026, 10, 23), regional.windows, regional.timezone)[0] == utc(2026, 10, 23, 6)
    assert current_or_next(utc(2026, 10, 26), regional.windows, regional.timezone)[0] == utc(2026, 10, 26, 7)
    for t in (before, after):
        assert current_or_next(t, own.windows, own.timezone)[0] == t - t % 86400 + 8 * HOUR
    # the monthly budget's month is the region's too: 31 March 23:30 local is still March there
    assert month_of(utc(2026, 3, 31, 21, 30), regional.timezone) == "2026-03"
    assert month_of(utc(2026, 3, 31, 22, 30), regional.timezone) == "2026-04"
    assert month_of(utc(2026, 3, 31, 22, 30), own.timezone) == "2026-03"


def test_maintenance_windows_follow_monitor_timezone_across_dst(tmp_path: Path) -> None:
    """A maintenance block without a timezone takes monitor.timezone: Mon-Fri 08:00-09:00 Berlin covers 06:30 UTC
    on Friday 23 October (CEST) and 07:30 UTC on Monday 26 October (CET), not the other; its own timezone wins."""
    config = load_config(write_config(tmp_path, REGION))
    windows = maintenance_of(config)
    regional, own = windows["a"], windows["b"]
    assert (regional.timezone, own.timezone) == (BERLIN, "UTC")
    assert regional.covers(utc(2026, 10, 23, 6, 30)) and not regional.covers(utc(2026, 10, 23, 7, 30))
    assert regional.covers(utc(2026, 10, 26, 7, 30)) and not regional.covers(utc(2026, 10, 26, 6, 30))
    assert own.covers(utc(2026, 10, 23, 8, 30)) and own.covers(utc(2026, 10, 26, 8, 30))
    targets = {t.name: t for t in build_targets(config)}  # the probes' and site states' windows are the same
    assert targets["a"].maintenance == regional


def test_without_monitor_timezone_windows_stay_in_utc(tmp_path: Path) -> None:
    """A config that does not set monitor.timezone keeps the shipped defaults: windows and maintenance in UTC."""
    config = load_config(write_config(tmp_path, REGION.replace("monitor:\n  timezone: Europe/Berlin\n", "")))
    assert config.monitor.timezone is None
    a = build_targets(config)[0]
    assert a.throughput.timezone == "UTC" and a.maintenance is not None and a.maintenance.timezone == "UTC"


def test_an_unknown_monitor_timezone_is_a_located_error(tmp_path: Path) -> None:
    """monitor.timezone must be an IANA zone: anything else is refused with file, line, column and key path."""
    path = write_config(tmp_path, REGION.replace("Europe/Berlin", "Mars/Olympus_Mons"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).splitlines() == [
        f"{path}:2:13: monitor.timezone: unknown time zone 'Mars/Olympus_Mons'; use an IANA name such as "
        "Asia/Almaty or UTC"]


def _record_days(state: Path) -> None:
    """Site a answers every hour on the hour (UTC) from 24 October 00:00 to 26 October 23:00 UTC."""
    a = located_target("a", host="192.0.2.1", address="192.0.2.1", group="regional")
    store = SqliteStore(database_path(state))
    start = utc(2026, 10, 24)
    store.write([EndpointRecord.of(a)], [icmp(a, start + i * HOUR, 0.01) for i in range(72)])
    store.close()


def _report(state: Path, config: Path, *extra: str) -> dict[str, object]:
    env = child_env()
    env["TZ"] = "UTC"  # the machine's zone, which monitor.timezone must beat
    proc = subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-10-25", "--to", "2026-10-25",
                           "--state-dir", str(state), "--config", str(config), "--format", "json", *extra],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def test_report_days_follow_monitor_timezone_across_dst(tmp_path: Path) -> None:
    """connmon report --config takes its days from monitor.timezone: 25 October in Berlin runs from 24 October
    22:00 UTC to 25 October 23:00 UTC, 25 hourly cycles; --timezone UTC still overrides it (24 cycles)."""
    state = tmp_path / "state"
    state.mkdir()
    _record_days(state)
    config = write_config(tmp_path, REGION)
    doc = _report(state, config)
    assert doc["period"] == {"first": "2026-10-25", "last": "2026-10-25", "timezone": BERLIN}
    kpis = doc["kpis"]
    assert isinstance(kpis, dict)
    assert kpis["period"] == {"start": utc(2026, 10, 24, 22), "end": utc(2026, 10, 25, 23)}
    assert kpis["groups"][0]["current"]["cycles"] == 25
    assert kpis["previous_period"] == {"start": utc(2026, 10, 23, 22), "end": utc(2026, 10, 24, 22)}
    overridden = _report(state, config, "--timezone", "UTC")
    assert overridden["period"] == {"first": "2026-10-25", "last": "2026-10-25", "timezone": "UTC"}
    assert overridden["kpis"]["groups"][0]["current"]["cycles"] == 24  # type: ignore[index]


def test_the_api_summary_follows_monitor_timezone(tmp_path: Path) -> None:
    """The summary's days are monitor.timezone's unless the query says ``timezone=``; a reload's config applies."""
    state = tmp_path / "state"
    state.mkdir()
    _record_days(state)
    config = load_config(write_config(tmp_path, REGION))
    a = build_targets(config)[0]
    sink = SiteStateSink()
    sink.set_targets([a])
    api = SiteApi(sink, store_opener(None, str(state), read_only=True), default_timezone="UTC",
                  clock=lambda: utc(2026, 10, 27, 12))
    api.set_report_settings(config)

    async def get(paths: list[str]) -> list[dict[str, object]]:
        app = web.Application()
        api.add_routes(app)
        async with test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1")) as client:
            out = []
            for path in paths:
                response = await client.get(path)
                assert response.status == 200, await response.text()
                out.append(await response.json())
            return out

    region, machine = asyncio.run(get(["/api/v1/summary?from=2026-10-25&to=2026-10-25",
                                       "/api/v1/summary?from=2026-10-25&to=2026-10-25&timezone=UTC"]))
    assert region["period"] == {"from": "2026-10-25", "to": "2026-10-25", "timezone": BERLIN,
                                "start": utc(2026, 10, 24, 22), "end": utc(2026, 10, 25, 23)}
    assert region["sites"][0]["cycles"] == 25  # type: ignore[index]
    assert machine["period"]["timezone"] == "UTC" and machine["sites"][0]["cycles"] == 24  # type: ignore[index]
    # a reload to a config in another region's zone: the summary follows it
    api.set_report_settings(load_config(write_config(tmp_path, REGION.replace("Europe/Berlin", "Asia/Aqtobe"))))
    (aqtobe,) = asyncio.run(get(["/api/v1/summary?from=2026-10-25&to=2026-10-25"]))
    assert aqtobe["period"]["start"] == utc(2026, 10, 24, 19)  # type: ignore[index]  # UTC+5 all year


def test_build_report_in_the_region_zone_moves_its_day_boundaries(tmp_path: Path) -> None:
    """The report's Period in Europe/Berlin: a summer day starts at 22:00 UTC, a winter day at 23:00 UTC."""
    summer = Period(dt.date(2026, 10, 24), dt.date(2026, 10, 24), BERLIN)
    winter = Period(dt.date(2026, 10, 26), dt.date(2026, 10, 26), BERLIN)
    assert (summer.start, summer.end) == (utc(2026, 10, 23, 22), utc(2026, 10, 24, 22))
    assert (winter.start, winter.end) == (utc(2026, 10, 25, 23), utc(2026, 10, 26, 23))
    state = tmp_path / "state"
    state.mkdir()
    _record_days(state)
    store = SqliteStore(database_path(state), read_only=True)
    try:
        cycles = [build_report(store, p).sites[0].cycles for p in (summer, winter)]
    finally:
        store.close()
    assert cycles == [22, 24]  # the history starts at 24 October 00:00 UTC, 02:00 local
