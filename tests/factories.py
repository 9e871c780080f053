"""Test values in one place: sites, results, histories, configs on disk, clocks and sinks that keep things.

Every test module builds its values here, so that a site "parsed, never probed" means the same
thing everywhere and no test module imports another (issue 23). The factories build exactly the
values the tests were written against: where modules wanted different sites (bare, labelled for a
map, tested by iperf3, reporting through an agent) each is a named preset over :func:`target`,
and keyword arguments override any field. Helpers that are not values (certificates, HTTP
headers, the OpenAPI document, packet counters) live in the small support modules beside this one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.agent.centre.registry import token_hash
from monitor.config import AgentSettings, Direction, IcmpSettings, Retention, ThroughputSettings
from monitor.errors import ProbeErrorReason
from monitor.history.sqlite import SqliteStore, database_path
from monitor.report.compliance import Period
from monitor.results import Cycle, DirectionResult, IcmpResult, Result, ThroughputResult
from monitor.targets import Target

# ----------------------------------------------------------------------------- sites

DOCUMENTATION_ADDRESS = "192.0.2.1"  # RFC 5737 TEST-NET-1: parsed, never probed


def target(name: str = "s", **fields: Any) -> Target:
    """A school at a documentation address in group ``g``, 4 Mbit/s, no labels; ``fields`` override any field."""
    values: dict[str, Any] = dict(name=name, host=DOCUMENTATION_ADDRESS, address=DOCUMENTATION_ADDRESS, group="g",
                                  kind="school", district="", link="", lat=None, lon=None,
                                  target_bits_per_second=4e6, icmp=IcmpSettings())
    values.update(fields)
    return Target(**values)


def located_target(name: str, **fields: Any) -> Target:
    """:func:`target` with the labels a dashboard shows: Aktobe, fibre, and a point on the map."""
    values: dict[str, Any] = dict(district="Aktobe", link="fibre", lat=50.28, lon=57.17)
    values.update(fields)
    return target(name, **values)


def scheduled_target(name: str, group: str, interval_seconds: float) -> Target:
    """:func:`target` in ``group``, its ICMP cycle every ``interval_seconds``: what the scheduler plans by."""
    return target(name, group=group, icmp=dataclasses.replace(IcmpSettings(), interval_seconds=interval_seconds))


def throughput_target(name: str, *, district: str = "Aktobe", kind: str = "school", mbps: float = 4.0,
                      budget: int | None = None, **throughput: Any) -> Target:
    """A fibre site whose throughput is tested against ``mbps``, with a monthly ``budget`` in bytes (None: none).

    The method is iperf3; ``throughput`` overrides it and the other :class:`ThroughputSettings` fields
    (``every_seconds``, ...). This is the site of the history, report and KPI tests (district Aktobe)
    and of the throughput plan's (district ``"d"``).
    """
    settings = dataclasses.replace(ThroughputSettings(method="iperf3", monthly_budget_bytes=budget), **throughput)
    return target(name, kind=kind, district=district, link="fibre", target_bits_per_second=mbps * 1e6,
                  throughput=settings)


def agent_token(name: str) -> str:
    """The bearer token the agent of site ``name`` holds in the registry tests."""
    return f"token-of-{name}"


def agent_target(name: str, **throughput: Any) -> Target:
    """A satellite school in Shalkar measured by its own agent (token :func:`agent_token`), pinged every minute."""
    return target(name, host="", address=None, group="vsat", district="Shalkar", link="satellite",
                  icmp=IcmpSettings(interval_seconds=60.0), mode="agent",
                  agent=AgentSettings(token_hash(agent_token(name)), None),
                  throughput=ThroughputSettings(**throughput))


def loopback(n: int, second_octet: int) -> list[str]:
    """``n`` distinct addresses in 127.``second_octet``.0.0/16, 250 to a /24: Linux answers for all of 127/8."""
    return [f"127.{second_octet}.{i // 250}.{i % 250 + 1}" for i in range(n)]


# ----------------------------------------------------------------------------- results

SOME_TIME = 1_700_000_000.0  # 14 Nov 2023: when the metrics tests' ICMP results started


def icmp(t: Target, at: float, *rtts: float | None, error: ProbeErrorReason | None = None,
         sent: int | None = None) -> IcmpResult:
    """``t``'s ICMP result of a cycle started ``at``: one echo per RTT (None: lost); ``sent`` if fewer went."""
    return IcmpResult(t, at, t.address, len(rtts) if sent is None else sent, tuple(rtts), error)


def iperf3_test(t: Target, at: float, down: float | None, *, moved: int = 1_000_000,
                error: ProbeErrorReason | None = None) -> ThroughputResult:
    """An iperf3 download test of ``t`` started ``at``: ``down`` bit/s over 9 s, 3 retransmits, 123 bytes left."""
    direction = DirectionResult("download", at, at + 10, down, moved, 9.0, 3, error, "why" if error else "")
    return ThroughputResult(t, "iperf3", at, at + 11, t.address, (direction,), error, "why" if error else "",
                            budget_remaining_bytes=123)


def rate_test(t: Target, at: float, rate: float | None, direction: Direction = "download") -> ThroughputResult:
    """An iperf3 test of ``t`` started ``at`` that measured ``rate`` bit/s one way over 5 s (None: not measured)."""
    return ThroughputResult(t, "iperf3", at, at + 5, t.address,
                            (DirectionResult(direction, at, at + 5, bits_per_second=rate),))


# ----------------------------------------------------------------------------- histories

# The sinks write cycles at small Unix times (1970) and prune as they go: a retention that keeps them.
KEEP_ALL = Retention(icmp_seconds=1e11, throughput_seconds=1e11)

OCT = Period(dt.date(2026, 10, 1), dt.date(2026, 10, 31), "UTC")
START = OCT.start  # 2026-10-01 00:00 UTC
END = OCT.end  # 2026-11-01 00:00 UTC
HOUR = 3600.0


def october_rows() -> list[Result]:
    """The history of October 2026 (UTC), with rows just outside the month that must not count.

    s1 (school, Aktobe, 4 Mbit/s): 10 cycles of (10, 20, lost, 30) ms → availability 100%, loss 25%,
       RTT median 20 ms, p95 30 ms (rank 29 of 30); tests 5, 6, 7 Mbit/s → met, median 6, min 5.
    s2 (school, Aktobe, 4): 4 cycles, two without any reply → availability 50%, loss 50%;
       tests 3 and 5 Mbit/s → partly, 50% met.
    s3 (school, Khromtau, 4): tests 1 and 2 Mbit/s and one refused → never, 1 failed test.
    c1 (clinic, Khromtau, 2): ICMP only → untested.

    What the report says of it is in :mod:`tests.report_golden`.
    """
    s1, s2, s3 = throughput_target("s1"), throughput_target("s2"), throughput_target("s3", district="Khromtau")
    c1 = throughput_target("c1", kind="clinic", district="Khromtau", mbps=2)
    rows: list[Result] = [icmp(s1, START + i * HOUR, 0.010, 0.020, None, 0.030) for i in range(9)]
    rows.append(icmp(s1, END - 60, 0.010, 0.020, None, 0.030))  # the month's last minute counts
    rows += [icmp(s1, START - 1, None, None, None, None), icmp(s1, END, None, None, None, None)]  # outside
    rows += [icmp(s2, START + i * HOUR, *((0.005, 0.005) if i % 2 else (None, None))) for i in range(4)]
    rows += [icmp(c1, START + HOUR, 0.600, 0.700)]
    rows += [iperf3_test(s1, START + d * 86400, rate) for d, rate in ((1, 5e6), (2, 7e6), (3, 6e6))]
    rows += [iperf3_test(s1, END + 10, 1e6)]  # November: outside
    rows += [iperf3_test(s2, START + 86400, 3e6), iperf3_test(s2, START + 2 * 86400, 5e6)]
    rows += [iperf3_test(s3, START + 86400, 1e6), iperf3_test(s3, START + 2 * 86400, 2e6),
             iperf3_test(s3, START + 3 * 86400, None, moved=0, error=ProbeErrorReason.REFUSED)]
    return rows


def record_october(state: Path) -> None:
    """Write :func:`october_rows` into the SQLite history of state directory ``state``."""
    store = SqliteStore(database_path(state))
    store.write([], october_rows())
    store.close()


def upstream_node(name: str, kind: str) -> Target:
    """An upstream node (issue 21) as the daemon keeps it in the history: group monitor.upstreams, its kind."""
    from monitor.upstreams import UPSTREAM_GROUP

    return target(name, group=UPSTREAM_GROUP, kind=kind, target_bits_per_second=0.0)


def cause_day(day: float) -> list[Result]:
    """A day from ``day`` (midnight), every 10 minutes, with silences of every cause (issue 21).

    Sites school-1 and school-2 (Aktobe) hang from the router ``agg``, itself behind the point of presence
    ``isp``; clinic-1 (Khromtau) from neither. The hours each report figure should give are worked out in
    :mod:`tests.test_report_gaps`.
    """
    from monitor.upstreams import upstream_detail

    s1, s2 = throughput_target("school-1"), throughput_target("school-2")
    c1 = throughput_target("clinic-1", kind="clinic", district="Khromtau", mbps=2)
    agg, isp = upstream_node("agg", "router"), upstream_node("isp", "pop")
    step, hour = 600.0, 3600.0

    def at(hours: int, minutes: int = 0) -> float:
        return day + hours * hour + minutes * 60.0

    def upstream(t: Target, when: float, node: str) -> IcmpResult:
        return IcmpResult(t, when, t.address, 2, (None, None), ProbeErrorReason.UPSTREAM_DOWN,
                          upstream_detail(node) + "; the probe said timeout")

    def silent(t: Target, when: float, error: ProbeErrorReason | None = None) -> IcmpResult:
        return icmp(t, when, None, None, error=error)

    rows: list[Result] = []
    for t in (day + i * step for i in range(144)):
        if at(2) <= t < at(3):
            rows += [upstream(s1, t, "agg"), upstream(s2, t, "agg"), silent(agg, t), icmp(isp, t, 0.001)]
        elif at(5) <= t < at(5, 30):
            rows += [upstream(s1, t, "isp"), icmp(s2, t, 0.01), silent(agg, t), silent(isp, t)]
        elif at(15) <= t < at(16):
            cut = ProbeErrorReason.MONITOR_CUT_OFF
            rows += [silent(s1, t, cut), icmp(s2, t, 0.01), silent(agg, t, cut), silent(isp, t, cut)]
        else:
            if t in (at(8), at(8, 10)):
                rows.append(silent(s1, t, ProbeErrorReason.TIMEOUT))
            elif at(12) <= t < at(13):
                rows.append(silent(s1, t, ProbeErrorReason.MAINTENANCE))
            else:
                rows.append(icmp(s1, t, 0.01, 0.02))
            rows.append(silent(s2, t) if t == at(20) or at(22) <= t < at(22, 30) else icmp(s2, t, 0.01))
            rows += [icmp(agg, t, 0.002), icmp(isp, t, 0.001)]
        rows.append(silent(c1, t, ProbeErrorReason.DNS) if t == at(9) else icmp(c1, t, 0.6))
    return rows


# ----------------------------------------------------------------------------- configs, clocks, sinks

def write_config(directory: Path, text: str, name: str = "connmon.yaml") -> Path:
    """``text`` written to ``directory``/``name``; its path."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


class Clock:
    """A clock that stands still until the test moves it: ``clock.now = ...``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A sink that keeps every cycle it is given."""

    def __init__(self) -> None:
        self.cycles: list[Cycle] = []

    def set_targets(self, targets: Sequence[Target]) -> None: ...

    def consume(self, cycle: Cycle) -> None:
        self.cycles.append(cycle)

    def cycle_skipped(self, probe: str, group: str) -> None: ...

    @property
    def results(self) -> list[Any]:
        return [r for c in self.cycles for r in c.results]


ONE_LOOPBACK_SITE = """
defaults:
  icmp: {interval: 1s, count: 1, timeout: 300ms}
groups:
  - name: loop
    endpoints:
      - {name: a, host: 127.0.0.2}
"""
"""A daemon's smallest real config: one site on loopback, pinged every second (for tests of the state dir)."""
