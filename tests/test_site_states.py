"""One state per site (issue 21): the precedence, each state and its cause, the maintenance windows asked once a
minute, and the same state said by every sink that shows it (/metrics, the API's site JSON, the event log)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from zoneinfo import ZoneInfo

import pytest

from monitor.centre_path import RESOLVER_DETAIL, UPLINK_DETAIL
from monitor.config.windows import MaintenanceWindows, open_window, parse_maintenance_window, parse_window
from monitor.errors import ProbeErrorReason
from monitor.exposition.sink import MetricsSink
from monitor.logs import EventLogSink
from monitor.results import Cycle, Gap, GapCause, IcmpResult
from monitor.site_states import (
    SITE_STATES,
    MaintenanceWatch,
    SiteStateName,
    derive,
    site_state,
)
from monitor.targets import Target
from monitor.web.site_state import SiteStateSink
from tests.factories import Clock, agent_target, icmp, located_target
from tests.running import samples, value

ALMATY = ZoneInfo("Asia/Almaty")
SUNDAY_NIGHT = MaintenanceWindows("Asia/Almaty", weekly=(parse_window("Sun 02:00-04:00"),))
SUNDAY = dt.datetime(2026, 12, 6, tzinfo=ALMATY)  # a Sunday
SITE = located_target("a")
CUT_OFF = f"{UPLINK_DETAIL} (gateway, isp-1)"
RESOLVER = f"{RESOLVER_DETAIL} (3 names in a cycle of group g)"


def at(hour: int, minute: int = 0, second: int = 0) -> float:
    """Unix time of ``hour:minute:second`` that Sunday in Almaty."""
    return (SUNDAY + dt.timedelta(hours=hour, minutes=minute, seconds=second)).timestamp()


def result(error: ProbeErrorReason | None = None, *rtts: float | None, detail: str = "") -> IcmpResult:
    return dataclasses.replace(icmp(SITE, at(1), *(rtts or (None,)), error=error), error_detail=detail)


UP = result(None, 0.01)
SILENT = IcmpResult(SITE, at(1), None, 0, (), ProbeErrorReason.AGENT_SILENT, "nothing received")


@pytest.mark.parametrize(("last", "window", "gap", "expected"), [
    (None, None, None, "unknown"),
    (UP, None, None, "up"),
    (result(None, None, 0.02), None, None, "up"),  # one reply is enough
    (result(), None, None, "down"),
    (result(ProbeErrorReason.UNREACHABLE), None, None, "down"),
    (result(ProbeErrorReason.DNS), None, None, "down"),
    (result(ProbeErrorReason.MONITOR_CUT_OFF, detail=CUT_OFF), None, None, "monitor_cut_off"),
    (SILENT, None, "power", "power"),
    (SILENT, None, "link", "down"),
    (SILENT, None, "unknown", "down"),
    (SILENT, None, None, "down"),
    (UP, None, "power", "up"),  # back from a power cut, answering
    (None, "Sun 02:00-04:00 Asia/Almaty", None, "maintenance"),
    (UP, "Sun 02:00-04:00 Asia/Almaty", None, "maintenance"),
    (result(ProbeErrorReason.MONITOR_CUT_OFF), "Sun 02:00-04:00 Asia/Almaty", None, "maintenance"),
    (SILENT, "Sun 02:00-04:00 Asia/Almaty", "power", "maintenance"),
])
def test_the_precedence_gives_each_state(last: IcmpResult | None, window: str | None, gap: GapCause | None,
                                         expected: str) -> None:
    """Maintenance first, then the centre cut off, then a power cut, then the site's own echoes; unknown before any."""
    assert derive(last, window, gap) == expected


def test_the_states_are_the_closed_set_in_exposition_order() -> None:
    """The seven states, upstream_down among them (reserved until upstream nodes are built)."""
    assert [s.value for s in SITE_STATES] == ["up", "down", "upstream_down", "monitor_cut_off", "maintenance",
                                              "power", "unknown"]


def test_the_cause_names_what_is_at_fault() -> None:
    """A cause for the states that have one (the rule that cut the centre off, the window, the power), none else."""
    site = dataclasses.replace(SITE, maintenance=SUNDAY_NIGHT)

    def state(last: IcmpResult | None, now: float = at(1), gap: GapCause | None = None) -> dict[str, object]:
        return site_state(site, last, now, gap).as_json()

    assert state(result(ProbeErrorReason.MONITOR_CUT_OFF, detail=CUT_OFF)) == {
        "state": "monitor_cut_off", "cause": {"monitor": "uplink"}}
    assert state(result(ProbeErrorReason.MONITOR_CUT_OFF, detail=RESOLVER)) == {
        "state": "monitor_cut_off", "cause": {"monitor": "resolver"}}
    assert state(UP, at(3)) == {"state": "maintenance", "cause": {"maintenance": "Sun 02:00-04:00 Asia/Almaty"}}
    assert state(SILENT, gap="power") == {"state": "power", "cause": {"power": "site"}}
    assert state(UP) == {"state": "up", "cause": None}
    assert state(result()) == {"state": "down", "cause": None}
    assert state(None) == {"state": "unknown", "cause": None}


def test_a_window_is_open_from_its_start_to_its_end_in_its_zone() -> None:
    """A weekly window in its zone, start included, end not; a dated one; the first that covers when several do."""
    assert open_window(SUNDAY_NIGHT, at(1, 59, 59)) is None
    assert open_window(SUNDAY_NIGHT, at(2)) == "Sun 02:00-04:00 Asia/Almaty"
    assert open_window(SUNDAY_NIGHT, at(3, 59, 59)) == "Sun 02:00-04:00 Asia/Almaty"
    assert open_window(SUNDAY_NIGHT, at(4)) is None
    assert open_window(SUNDAY_NIGHT, at(2) + 86400) is None  # Monday
    assert open_window(None, at(3)) is None
    dated = parse_maintenance_window("2026-12-06 01:00-2026-12-06 02:30")
    assert isinstance(dated, tuple)
    both = dataclasses.replace(SUNDAY_NIGHT, once=(dated,))
    assert open_window(both, at(1, 30)) == "2026-12-06 01:00-2026-12-06 02:30 Asia/Almaty"
    assert open_window(both, at(2, 15)) == "2026-12-06 01:00-2026-12-06 02:30 Asia/Almaty"
    assert open_window(both, at(2, 30)) == "Sun 02:00-04:00 Asia/Almaty"


def test_the_watch_asks_once_a_minute_and_once_per_set_of_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sites sharing a group's windows are asked as one; nothing is asked again within the minute; the sites whose
    window opened or closed are named; a new set of sites is asked at the next update."""
    asked: list[MaintenanceWindows] = []
    covers = MaintenanceWindows.covers

    def counting(self: MaintenanceWindows, t: float) -> bool:
        asked.append(self)
        return covers(self, t)

    monkeypatch.setattr(MaintenanceWindows, "covers", counting)
    evening = MaintenanceWindows("Asia/Almaty", weekly=(parse_window("Sun 20:00-21:00"),))
    sites = [located_target(f"g{i}", maintenance=SUNDAY_NIGHT) for i in range(3)]
    sites += [located_target("e", maintenance=evening), located_target("none")]
    watch = MaintenanceWatch()
    watch.watch(sites)
    assert watch.update(at(1, 59)) == [] and len(asked) == 2  # two sets of windows, neither open
    assert watch.update(at(1, 59, 59)) == [] and len(asked) == 2  # the same minute: not asked
    asked.clear()
    assert watch.update(at(2, 0, 1)) == ["g0", "g1", "g2"]
    assert [watch.window(s.name) for s in sites] == ["Sun 02:00-04:00 Asia/Almaty"] * 3 + [None, None]
    assert asked.count(SUNDAY_NIGHT) >= 1 and asked.count(evening) == 1  # (an open one is asked again for its text)
    assert watch.update(at(3)) == []
    assert watch.update(at(4)) == ["g0", "g1", "g2"] and watch.window("g0") is None
    watch.watch(sites[1:2])  # a reload: only g1 keeps a window
    asked.clear()
    assert watch.update(at(4)) == [] and len(asked) == 1  # the same minute, but new sites: asked
    assert watch.update(at(20, 30)) == []
    watch.watch([dataclasses.replace(sites[1], maintenance=evening)])
    assert watch.update(at(20, 30)) == ["g1"] and watch.window("g1") == "Sun 20:00-21:00 Asia/Almaty"


# ----------------------------------------------------------------------------- every sink says the same


class Sinks:
    """The three sinks that show a site's state, fed the same cycles, with one clock."""

    def __init__(self, clock: Clock, targets: list[Target]) -> None:
        self.clock = clock
        self.metrics, self.api, self.events = MetricsSink(clock=clock), SiteStateSink(clock), EventLogSink(clock)
        self.all = (self.metrics, self.api, self.events)
        self.targets = targets
        for sink in self.all:
            sink.set_targets(targets)

    def feed(self, now: float, *results: IcmpResult, gaps: tuple[Gap, ...] = (), group: str = "g") -> None:
        self.clock.now = now
        for sink in self.all:
            sink.consume(Cycle("icmp" if not gaps else "agent", group, now, 0.5, results, gaps))

    def states(self) -> dict[str, str]:
        """Each probed site's state: /metrics and the API must agree on it."""
        parsed = samples(b"".join(self.metrics.exposition()).decode("utf-8"))
        shown = {}
        for t in self.targets:
            ones = [s for s in SITE_STATES if value(parsed, "connmon_site_state", endpoint=t.name, state=s.value) == 1]
            assert len(ones) == 1, (t.name, ones)
            maintenance = value(parsed, "connmon_maintenance", endpoint=t.name)
            assert maintenance == (ones[0] is SiteStateName.MAINTENANCE)
            answer = self.api.site(t.name)
            assert answer is not None and answer["state"] == ones[0].value, (t.name, answer, ones)
            shown[t.name] = ones[0].value
        return shown


def test_every_sink_says_the_same_state_and_the_event_log_says_each_change_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """A site up, then cut off with the centre, back up, in a window that opens and closes without a result of its
    own (another group's cycle tells), then down; an agent site silent, then known to have had no power. /metrics
    and the API show the same state after every step; the event log says each change in one line."""
    caplog.set_level(logging.INFO, logger="monitor.events")
    a = dataclasses.replace(SITE, maintenance=SUNDAY_NIGHT)
    vsat = agent_target("vsat")
    sinks = Sinks(Clock(at(1)), [a, vsat])
    assert sinks.states() == {"a": "unknown", "vsat": "unknown"}

    def lines() -> list[tuple[str, str | None, str]]:
        said = [(getattr(r, "endpoint", ""), getattr(r, "state", None), r.getMessage()) for r in caplog.records
                if r.levelno >= logging.INFO and r.name == "monitor.events"]
        caplog.clear()
        return said

    sinks.feed(at(1), icmp(a, at(1), 0.01), icmp(vsat, at(1), 0.6))
    assert sinks.states() == {"a": "up", "vsat": "up"}
    assert [(name, state) for name, state, _ in lines()] == [("a", None), ("vsat", None)]  # "up: ..." as before

    cut = dataclasses.replace(icmp(a, at(1, 1), None, None, error=ProbeErrorReason.MONITOR_CUT_OFF),
                              error_detail=CUT_OFF)
    sinks.feed(at(1, 1), cut)
    assert sinks.states() == {"a": "monitor_cut_off", "vsat": "up"}
    assert sinks.api.site("a")["cause"] == {"monitor": "uplink"}  # type: ignore[index]
    assert lines() == [("a", "monitor_cut_off", f"state monitor_cut_off: {CUT_OFF}")]  # no "cannot probe" line
    sinks.feed(at(1, 2), dataclasses.replace(cut, started_at=at(1, 2)))
    assert lines() == []  # not per cycle

    sinks.feed(at(1, 3), icmp(a, at(1, 3), 0.01))
    assert sinks.states()["a"] == "up"
    [(name, state, text)] = lines()  # the site's own line says it: no second one
    assert (name, state) == ("a", None) and text.startswith("back up: ")

    sinks.feed(at(2, 0, 30), group="other")  # the window opens: another group's (empty) cycle tells
    assert sinks.states()["a"] == "maintenance"
    assert sinks.api.site("a")["cause"] == {"maintenance": "Sun 02:00-04:00 Asia/Almaty"}  # type: ignore[index]
    assert lines() == [("a", "maintenance",
                        "state maintenance: the declared maintenance window Sun 02:00-04:00 Asia/Almaty is open")]
    sinks.feed(at(3), icmp(a, at(3), None))  # down in the window: still maintenance, the site's own line says it
    assert sinks.states()["a"] == "maintenance"
    assert lines() == [("a", None, "down: no reply to 1 echoes")]
    sinks.feed(at(3, 1), icmp(a, at(3, 1), 0.01))
    assert [text for _, _, text in lines()][0].startswith("back up: ")
    sinks.feed(at(4, 0, 5), group="other")  # it closes
    assert sinks.states()["a"] == "up"
    assert lines() == [("a", "up", "state up (was maintenance)")]

    silent = IcmpResult(vsat, at(4, 1), None, 0, (), ProbeErrorReason.AGENT_SILENT, "nothing received for 180s")
    sinks.feed(at(4, 1), silent, gaps=(Gap(vsat, at(1), at(4, 1), "unknown", 60.0),))
    assert sinks.states()["vsat"] == "down"
    assert [(name, state) for name, state, _ in lines()] == [("vsat", None)]  # "cannot probe: nothing received ..."
    # the agent reports again after a reboot, with nothing measured yet: the silence was a power cut
    sinks.feed(at(4, 30), gaps=(Gap(vsat, at(1), at(4, 20), "power", 60.0, at(1)),))
    assert sinks.states()["vsat"] == "power"
    assert sinks.api.site("vsat")["cause"] == {"power": "site"}  # type: ignore[index]
    assert [(name, state) for name, state, _ in lines()] == [("vsat", "power")]
    sinks.feed(at(4, 31), icmp(vsat, at(4, 31), 0.6))
    assert sinks.states()["vsat"] == "up"
    [(name, state, text)] = lines()
    assert (name, state) == ("vsat", None) and text.startswith("back up: ")


def test_a_power_gap_that_arrives_with_answers_is_no_state_of_its_own(caplog: pytest.LogCaptureFixture) -> None:
    """A batch that ends a power cut and brings answered results leaves the site up: no power line, no power state."""
    caplog.set_level(logging.INFO, logger="monitor.events")
    vsat = agent_target("vsat")
    sinks = Sinks(Clock(at(1)), [vsat])
    sinks.feed(at(1), IcmpResult(vsat, at(1), None, 0, (), ProbeErrorReason.AGENT_SILENT, "silent"))
    caplog.clear()
    sinks.feed(at(2), icmp(vsat, at(1, 50), 0.6), gaps=(Gap(vsat, at(0), at(1, 40), "power", 60.0),))
    assert sinks.states() == {"vsat": "up"}
    assert [getattr(r, "state", None) for r in caplog.records if r.name == "monitor.events"] == [None]  # "back up"
