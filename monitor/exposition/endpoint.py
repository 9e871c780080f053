"""One endpoint's derived state between cycles, and its rendering into family lines.

An endpoint keeps counters, its last ICMP result and its throughput figures, and a ``dirty`` mask of
the families whose lines a change touched; it keeps no rendered text. Pages of endpoints, the chunks
they are joined into and their compression are :mod:`monitor.exposition.pages` and
:mod:`monitor.exposition.body`. Sample lines::

    connmon_up{endpoint="school-001",kind="school",district="Aktobe",link="fibre"} 1
    connmon_site_state{endpoint="school-001",kind="school",district="Aktobe",link="fibre",state="up"} 1
    connmon_icmp_rtt_seconds_bucket{endpoint="school-001",kind="school",district="Aktobe",link="fibre",le="0.01"} 42
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from dataclasses import dataclass, field

from monitor.config import DIRECTIONS
from monitor.errors import ICMP_REASONS, THROUGHPUT_REASONS
from monitor.exposition.families import (
    FAMILIES,
    FAMILY_INDEX,
    RTT_BUCKETS_SECONDS,
    RTT_LE,
    floatToGoString,
    label_pairs,
)
from monitor.results import DirectionResult, GapCause, IcmpResult, Result, ThroughputResult
from monitor.site_states import SITE_STATES, SiteStateName, derive
from monitor.targets import Target

Page = tuple[str, int]  # (group, page number within the group)
_F = FAMILY_INDEX  # (short: it is looked up for every line rendered)
NO_FRAGMENTS = ("",) * len(FAMILIES)  # one empty slot per family, copied per endpoint rendered
# Which families of an endpoint a change touches, as bits of a mask (bit i: FAMILIES[i]). A page's
# block of one family is re-rendered, re-joined and re-compressed only when one of its endpoints
# changed that family: a healthy site's info, target, up, loss and error-counter lines (30 % of its
# text) stay as they were from cycle to cycle (issue 9: rendering and compressing them again was a
# fifth of the daemon's CPU at 10,000 sites).
ALL_FAMILIES = (1 << len(FAMILIES)) - 1


def _bits(*names: str) -> int:
    return sum(1 << _F[name] for name in names)


_UP, _LOSS, _HISTOGRAM, _RECEIVED, _SENT, _ERRORS = (_bits(name) for name in (
    "connmon_up", "connmon_icmp_loss_ratio", "connmon_icmp_rtt_seconds", "connmon_icmp_packets_received_total",
    "connmon_icmp_packets_sent_total", "connmon_probe_errors_total"))
_LAST_PROBE = _bits("connmon_last_probe_timestamp_seconds")
_STATE, _MAINTENANCE = _bits("connmon_site_state"), _bits("connmon_maintenance")
_EVERY_CYCLE = _bits("connmon_icmp_jitter_seconds", "connmon_icmp_rtt_last_seconds",
                     "connmon_last_probe_timestamp_seconds")
_STATIC = _bits("connmon_endpoint_info", "connmon_target_bits_per_second", "connmon_contracted_bits_per_second")
# A throughput test: its own families, and the two it shares with ICMP (error counters, last probe time).
THROUGHPUT = (ALL_FAMILIES & ~((1 << _F["connmon_target_upload_bits_per_second"]) - 1)) | _bits(
    "connmon_probe_errors_total", "connmon_last_probe_timestamp_seconds")
# An endpoint's ICMP error counters, one line per reason, as one str.format call.
_ICMP_ERROR_LINES = "".join(
    f'connmon_probe_errors_total{{{{{{lb}},probe="icmp",reason="{r.value}"}}}} {{{i}}}\n'
    for i, r in enumerate(ICMP_REASONS))
# An endpoint's state lines, one str.format call ({lb}: its labels) per state it can be in (issue 21):
#   connmon_site_state{endpoint="s",kind="school",district="Aktobe",link="fibre",state="maintenance"} 1
_STATE_LINES = {state: "".join(f'connmon_site_state{{{{{{lb}},state="{s.value}"}}}} {int(s is state)}\n'
                               for s in SITE_STATES) for state in SITE_STATES}
# One endpoint's RTT histogram as one str.format call: {0}…{15} cumulative counts, {lb} its labels.
_HISTOGRAM_LINES = "".join(
    [f'connmon_icmp_rtt_seconds_bucket{{{{{{lb}},le="{le}"}}}} {{{i}}}\n' for i, le in enumerate(RTT_LE)]
    + ["connmon_icmp_rtt_seconds_sum{{{lb}}} {sum}\n", "connmon_icmp_rtt_seconds_count{{{lb}}} {count}\n"])


@dataclass(slots=True)
class EndpointState:
    """What the exposition needs to remember about one endpoint between cycles.

    It keeps no rendered text: :meth:`render` is a function of this state, called when the page
    the endpoint is on is re-joined, for the families in that page's ``dirty`` mask.
    """

    target: Target
    labels: str  # escaped endpoint/kind/district/link pairs, ready to paste
    buckets: list[int] = field(default_factory=lambda: [0] * (len(RTT_BUCKETS_SECONDS) + 1))
    rtt_sum: float = 0.0
    sent: int = 0
    received: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in ICMP_REASONS})
    last: IcmpResult | None = None
    throughput: ThroughputState | None = None
    # Issue 21: the inputs of its state besides ``last`` (both set by the sink), and the state they give.
    window: str | None = None  # the declared maintenance window open now
    gap_cause: GapCause | None = None  # an agent site's current or last silence's cause
    state: SiteStateName = SiteStateName.UNKNOWN
    page: Page = ("", 0)
    dirty: int = ALL_FAMILIES  # families whose lines changed since the page was last joined

    def absorb(self, result: Result) -> None:
        if isinstance(result, ThroughputResult):
            if self.throughput is None:
                self.throughput = ThroughputState()
            self.throughput.absorb(result)
            self.dirty |= THROUGHPUT
            return
        previous = self.last
        self.last = result
        changed = _EVERY_CYCLE
        if result.sent:
            self.sent += result.sent
            changed |= _SENT
        replies = result.replies_seconds
        if replies:
            changed |= _HISTOGRAM | _RECEIVED
            self.received += len(replies)
            buckets = self.buckets
            for rtt in replies:
                self.rtt_sum += rtt
                buckets[bisect.bisect_left(RTT_BUCKETS_SECONDS, rtt)] += 1  # the first bound ≥ rtt; past the last: +Inf
        if previous is None or previous.up != result.up:
            changed |= _UP
            self.reassess()
        elif previous.error is not result.error:
            self.reassess()
        if previous is None or previous.loss_ratio != result.loss_ratio:
            changed |= _LOSS
        if result.error is not None:
            self.errors[result.error.value] = self.errors.get(result.error.value, 0) + 1
            changed |= _ERRORS
        self.dirty |= changed

    def reassess(self) -> bool:
        """Derive the state again (its window, its gap or its last result changed); True if it changed.

        Only a change re-renders ``connmon_site_state`` (and ``connmon_maintenance`` when it goes in or
        out of maintenance), as for the other families.
        """
        state = derive(self.last, self.window, self.gap_cause)
        if state is self.state:
            return False
        changed = _STATE
        if (state is SiteStateName.MAINTENANCE) != (self.state is SiteStateName.MAINTENANCE):
            changed |= _MAINTENANCE
        self.state = state
        self.dirty |= changed
        return True

    def restore(self, result: ThroughputResult, missed_in_a_row: int | None, verdict: bool | None) -> bool:
        """Show a test from the history (see :meth:`ThroughputState.restore`); False if it is not shown."""
        if not self.target.throughput.enabled:
            return False
        if self.throughput is None:
            self.throughput = ThroughputState()
        elif self.throughput.tests:  # a late restore (PostgreSQL was away): this process's test is newer
            return False
        self.throughput.restore(result)
        if missed_in_a_row is not None:
            self.throughput.missed_in_a_row = missed_in_a_row
        if verdict is not None:
            self.throughput.target_met = verdict
        self.dirty |= THROUGHPUT
        return True

    def _static_lines(self) -> tuple[str, str, str]:
        t, lb = self.target, self.labels
        info = label_pairs((("group", t.group), ("host", t.host),
                            ("lat", "" if t.lat is None else repr(t.lat)),
                            ("lon", "" if t.lon is None else repr(t.lon)),
                            ("status", t.status), ("provider", t.provider or "")))
        contracted = t.contracted_bits_per_second
        return (f"connmon_endpoint_info{{{lb},{info}}} 1\n",
                f"connmon_target_bits_per_second{{{lb}}} {floatToGoString(t.target_bits_per_second)}\n",
                "" if contracted is None
                else f"connmon_contracted_bits_per_second{{{lb}}} {floatToGoString(contracted)}\n")

    def render(self, mask: int, f: list[str]) -> None:
        """Write this endpoint's lines of the families in ``mask`` into ``f`` (one slot per family,
        "" where it has none); slots outside ``mask`` are left as they are."""
        t, lb = self.target, self.labels
        if mask & _STATIC:
            static = self._static_lines()
            f[_F["connmon_endpoint_info"]] = static[0]
            f[_F["connmon_contracted_bits_per_second"]] = static[2]
            if t.probed:
                f[_F["connmon_target_bits_per_second"]] = static[1]
        if not t.probed:  # planned or retired: counted in connmon_sites and described, but no probe series
            self.throughput = None
            return
        if mask & _STATE:
            f[_F["connmon_site_state"]] = _STATE_LINES[self.state].format(lb=lb)
        if mask & _MAINTENANCE:
            f[_F["connmon_maintenance"]] = (
                f"connmon_maintenance{{{lb}}} {int(self.state is SiteStateName.MAINTENANCE)}\n")
        last = self.last
        if last is not None:
            if mask & _UP:
                f[_F["connmon_up"]] = f"connmon_up{{{lb}}} {1 if last.up else 0}\n"
            if mask & _LOSS:
                # Per cycle, per endpoint: plain repr() (finite floats; the text format reads any float
                # notation) instead of the Go-style helper, a quarter of this function's time.
                f[_F["connmon_icmp_loss_ratio"]] = f"connmon_icmp_loss_ratio{{{lb}}} {last.loss_ratio!r}\n"
            if mask & _EVERY_CYCLE:
                jitter = last.jitter_seconds
                f[_F["connmon_icmp_jitter_seconds"]] = (
                    "" if jitter is None else f"connmon_icmp_jitter_seconds{{{lb}}} {jitter!r}\n")
                replies = last.replies_seconds
                f[_F["connmon_icmp_rtt_last_seconds"]] = "" if not replies else (
                    f'connmon_icmp_rtt_last_seconds{{{lb},stat="min"}} {min(replies)!r}\n'
                    f'connmon_icmp_rtt_last_seconds{{{lb},stat="avg"}} {statistics.fmean(replies)!r}\n'
                    f'connmon_icmp_rtt_last_seconds{{{lb},stat="max"}} {max(replies)!r}\n')
                f[_F["connmon_last_probe_timestamp_seconds"]] = (
                    f'connmon_last_probe_timestamp_seconds{{{lb},probe="icmp"}} {float(last.started_at)!r}\n')
        if mask & _HISTOGRAM:
            f[_F["connmon_icmp_rtt_seconds"]] = _HISTOGRAM_LINES.format(
                *itertools.accumulate(self.buckets), lb=lb, sum=repr(float(self.rtt_sum)), count=sum(self.buckets))
        if mask & _SENT:
            f[_F["connmon_icmp_packets_sent_total"]] = f"connmon_icmp_packets_sent_total{{{lb}}} {self.sent}\n"
        if mask & _RECEIVED:
            f[_F["connmon_icmp_packets_received_total"]] = (
                f"connmon_icmp_packets_received_total{{{lb}}} {self.received}\n")
        if mask & _ERRORS:
            errors = self.errors
            f[_F["connmon_probe_errors_total"]] = (
                _ICMP_ERROR_LINES.format(*errors.values(), lb=lb) if len(errors) == len(ICMP_REASONS)
                else "".join(f'connmon_probe_errors_total{{{lb},probe="icmp",reason="{reason}"}} {count}\n'
                             for reason, count in errors.items()))  # an agent site's: agent_silent too
        if t.throughput.enabled:
            if self.throughput is None:
                self.throughput = ThroughputState()  # every series exists from start-up, at 0
            if mask & THROUGHPUT:
                self.throughput.render(t, lb, f, mask)
        else:
            self.throughput = None


@dataclass(slots=True)
class ThroughputState:
    """One endpoint's throughput figures between tests."""

    tests: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    retransmits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    errors: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in THROUGHPUT_REASONS})
    rates: dict[str, float] = field(default_factory=dict)  # last measured rate per direction
    target_met: bool | None = None
    missed_in_a_row: int = 0
    measured_at: float | None = None
    attempted_at: float | None = None
    duration_seconds: float | None = None
    budget_remaining: int | None = None
    latency: dict[str, DirectionResult] = field(default_factory=dict)  # last sampled direction (issue 20)
    latency_ok: bool | None = None
    pep: bool | None = None  # issue 20: a proxy answered the handshakes in the last test that could tell

    def absorb(self, result: ThroughputResult) -> None:
        """A test of this process: count it, then show its figures."""
        self.tests += 1
        if result.error is not None:
            self.errors[result.error.value] = self.errors.get(result.error.value, 0) + 1
        for d in result.directions:
            self.bytes[d.direction] += d.bytes + d.latency_sample_bytes  # a metered link bills the echoes too
            self.retransmits[d.direction] += d.retransmits or 0
        if result.target_met is not None:
            self.missed_in_a_row = 0 if result.target_met else self.missed_in_a_row + 1
        self.restore(result)

    def restore(self, result: ThroughputResult) -> None:
        """Show a test's rates, verdict and times without counting it (also: from the history after a restart).

        The counters restart at zero (Prometheus handles the reset); counting the old test again
        would add a test and its bytes that did not happen in this process.
        """
        self.attempted_at = result.started_at
        if result.directions:  # a skipped test (budget, DNS) has no duration to show
            self.duration_seconds = result.ended_at - result.started_at
        self.budget_remaining = result.budget_remaining_bytes
        for d in result.directions:
            if d.bits_per_second is not None:
                self.rates[d.direction] = d.bits_per_second
            if d.added_latency_seconds is not None:
                self.latency[d.direction] = d
        if result.latency_under_load_ok is not None:  # like the speed verdict: a test without samples keeps it
            self.latency_ok = result.latency_under_load_ok
        if result.pep_detected is not None:
            self.pep = result.pep_detected
        if result.measured:
            self.measured_at = result.started_at
        if result.target_met is not None:  # a partly failed test keeps the last verdict, not no verdict
            self.target_met = result.target_met

    def render(self, t: Target, lb: str, f: list[str], mask: int) -> None:
        """Fill the throughput families' fragments for one endpoint (labels ``lb`` already escaped).

        Its error counters and last-attempt time are added to the ICMP ones' fragments, which
        :meth:`EndpointState.render` wrote first when ``mask`` holds those families.
        """
        up_target = t.target_upload_bits_per_second
        f[_F["connmon_target_upload_bits_per_second"]] = (
            "" if up_target is None
            else f"connmon_target_upload_bits_per_second{{{lb}}} {floatToGoString(up_target)}\n")
        f[_F["connmon_throughput_bits_per_second"]] = "".join(
            f'connmon_throughput_bits_per_second{{{lb},direction="{d}"}} {floatToGoString(rate)}\n'
            for d, rate in sorted(self.rates.items()))
        f[_F["connmon_target_met"]] = (
            "" if self.target_met is None else f"connmon_target_met{{{lb}}} {int(self.target_met)}\n")
        # connmon_target_missed_consecutive_tests{endpoint="c",kind="school",district="Aktobe",link="dsl"} 3
        f[_F["connmon_target_missed_consecutive_tests"]] = (
            "" if self.target_met is None
            else f"connmon_target_missed_consecutive_tests{{{lb}}} {self.missed_in_a_row}\n")
        f[_F["connmon_throughput_last_test_timestamp_seconds"]] = (
            "" if self.measured_at is None
            else f"connmon_throughput_last_test_timestamp_seconds{{{lb}}} {floatToGoString(self.measured_at)}\n")
        f[_F["connmon_throughput_test_duration_seconds"]] = (
            "" if self.duration_seconds is None
            else f"connmon_throughput_test_duration_seconds{{{lb}}} {floatToGoString(self.duration_seconds)}\n")
        f[_F["connmon_throughput_tests_total"]] = f"connmon_throughput_tests_total{{{lb}}} {self.tests}\n"
        f[_F["connmon_throughput_bytes_total"]] = "".join(
            f'connmon_throughput_bytes_total{{{lb},direction="{d}"}} {n}\n' for d, n in self.bytes.items())
        f[_F["connmon_throughput_tcp_retransmits_total"]] = "".join(
            f'connmon_throughput_tcp_retransmits_total{{{lb},direction="{d}"}} {n}\n'
            for d, n in self.retransmits.items())
        budget = t.throughput.monthly_budget_bytes
        remaining = self.budget_remaining if self.budget_remaining is not None else budget
        f[_F["connmon_throughput_budget_remaining_bytes"]] = (
            "" if budget is None else f"connmon_throughput_budget_remaining_bytes{{{lb}}} {remaining}\n")
        self._render_latency(lb, f)
        if mask & _ERRORS:
            f[_F["connmon_probe_errors_total"]] += "".join(
                f'connmon_probe_errors_total{{{lb},probe="throughput",reason="{reason}"}} {count}\n'
                for reason, count in self.errors.items())
        if self.attempted_at is not None and mask & _LAST_PROBE:
            f[_F["connmon_last_probe_timestamp_seconds"]] += (
                f'connmon_last_probe_timestamp_seconds{{{lb},probe="throughput"}} '
                f"{floatToGoString(self.attempted_at)}\n")

    def _render_latency(self, lb: str, f: list[str]) -> None:
        """Latency under load (issue 20), absent until a test was sampled, e.g.::

            connmon_throughput_loaded_rtt_seconds{endpoint="s",...,direction="download",quantile="0.9"} 0.397
        """
        idle, loaded, added, rpm = [], [], [], []
        for d, r in sorted(self.latency.items()):
            idle.append(f'connmon_throughput_idle_rtt_seconds{{{lb},direction="{d}"}} '
                        f"{floatToGoString(r.idle_rtt_seconds or 0.0)}\n")
            for quantile, value in (("0.5", r.loaded_rtt_seconds), ("0.9", r.loaded_rtt_p90_seconds)):
                loaded.append(f'connmon_throughput_loaded_rtt_seconds{{{lb},direction="{d}",quantile="{quantile}"}} '
                              f"{floatToGoString(value or 0.0)}\n")
            added.append(f'connmon_throughput_added_latency_seconds{{{lb},direction="{d}"}} '
                         f"{floatToGoString(r.added_latency_seconds or 0.0)}\n")
            if r.round_trips_per_minute is not None:
                rpm.append(f'connmon_throughput_round_trips_per_minute{{{lb},direction="{d}"}} '
                           f"{floatToGoString(r.round_trips_per_minute)}\n")
        f[_F["connmon_throughput_idle_rtt_seconds"]] = "".join(idle)
        f[_F["connmon_throughput_loaded_rtt_seconds"]] = "".join(loaded)
        f[_F["connmon_throughput_added_latency_seconds"]] = "".join(added)
        f[_F["connmon_throughput_round_trips_per_minute"]] = "".join(rpm)
        f[_F["connmon_latency_under_load_ok"]] = (
            "" if self.latency_ok is None else f"connmon_latency_under_load_ok{{{lb}}} {int(self.latency_ok)}\n")
        f[_F["connmon_pep_detected"]] = (
            "" if self.pep is None else f"connmon_pep_detected{{{lb}}} {int(self.pep)}\n")
