"""The metrics sink: Prometheus text exposition derived from results, rendered when they change.

Why hand-rendered: prometheus-client's ``generate_latest`` re-renders every series on every
scrape (2.5 s at 10,000 endpoints on this machine). Here each endpoint keeps its rendered lines
per metric family; a finished cycle re-renders only its endpoints' fragments and joins the body
once; scrapes are served the cached bytes. Labels are escaped once, when a target is added, so
any UTF-8 site name (``№12 мектеп``, quotes, backslashes, newlines) survives intact.

prometheus-client still provides the process and platform collectors (CPU, memory, fds), which
are small and rendered per scrape so they stay current. Sample lines::

    connmon_up{endpoint="school-001",kind="school",district="Aktobe",link="fibre"} 1
    connmon_icmp_rtt_seconds_bucket{endpoint="school-001",kind="school",district="Aktobe",link="fibre",le="0.01"} 42
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import itertools
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString as _untyped_float_to_go_string

from monitor import __version__
from monitor.agent.centre.registry import REJECTION_CODES, AgentRegistry
from monitor.config.model import DIRECTIONS
from monitor.errors import ICMP_REASONS, THROUGHPUT_REASONS, ProbeErrorReason
from monitor.exposition.compression import CompressedBody, Segment, compress_chunks, gzip_member, inflate
from monitor.history.store import StoreStats
from monitor.results import Cycle, IcmpResult, Result, ThroughputResult
from monitor.targets import Target
from monitor.text import scalar_text

log = logging.getLogger(__name__)

# From a LAN (sub-millisecond) to geostationary satellite (~600 ms and more under load).
RTT_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0,
                       1.5, 2.5, 5.0)
# A large cycle is absorbed in event-loop turns of about SLICE_SECONDS, SLICE_RESULTS at a time
# (~1.5 ms each): scrapes are served in between. A scrape needs ~6 turns, so the turn's length, not
# the results' count, bounds its latency, on a fast machine or a busy one (issue 9: p99 ≤ 100 ms).
SLICE_SECONDS = 0.005
SLICE_RESULTS = 25
AT_ONCE_RESULTS = 250  # a cycle this small is absorbed at once (~15 ms): no stale body for a turn
# How long a changed chunk's plain text waits before it is compressed and let go (a burst of agent
# posts changes one group many times a second: compress it once, not per post).
COMPRESS_AFTER_SECONDS = 1.0
# Endpoints per page: a group's lines are kept in pages of this many endpoints, and a result
# re-renders only its page. An agent's post changes one site (issue 10): with a 10,000-site group
# as one block, each post re-rendered and re-joined 44 MB; a page is 200 sites, ~0.9 MB.
PAGE_ENDPOINTS = 200

_Page = tuple[str, int]  # (group, page number within the group)
CYCLE_BUCKETS_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# The text format writes floats as Go does (1e+06, +Inf, NaN); prometheus-client's helper is untyped.
floatToGoString = cast(Callable[[float], str], _untyped_float_to_go_string)

_RTT_LE = [floatToGoString(b) for b in RTT_BUCKETS_SECONDS] + ["+Inf"]
_CYCLE_LE = [floatToGoString(b) for b in CYCLE_BUCKETS_SECONDS] + ["+Inf"]


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format: backslash, double quote and newline.

    Any lone surrogate becomes U+FFFD, so every value renders as UTF-8: one odd value must never
    fail the whole exposition (issue 24; text from outside is also refused at the edge).
    """
    return scalar_text(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{key}="{escape_label_value(value)}"' for key, value in pairs)


# Per-endpoint families, in exposition order: (name, type, help).
_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("connmon_endpoint_info", "gauge",
     "Descriptive labels of each configured endpoint, its roll-out status and provider included (value 1)."),
    ("connmon_target_bits_per_second", "gauge", "Download rate each probed endpoint is contracted to reach."),
    # Issue 11: what the contract says, only for sites whose contracted_mbps is set (it may differ from the target).
    ("connmon_contracted_bits_per_second", "gauge",
     "Download rate in the site's contract, where contracted_mbps is set."),
    ("connmon_up", "gauge", "1 if the endpoint answered at least one echo in its last ICMP cycle."),
    ("connmon_icmp_loss_ratio", "gauge", "Share of echoes without a reply in the last ICMP cycle."),
    ("connmon_icmp_jitter_seconds", "gauge",
     "Mean absolute RTT difference of consecutive echoes in the last ICMP cycle."),
    ("connmon_icmp_rtt_last_seconds", "gauge", "Minimum, average and maximum RTT of the last ICMP cycle."),
    ("connmon_icmp_rtt_seconds", "histogram", "Round-trip time of every answered echo."),
    ("connmon_icmp_packets_sent_total", "counter", "Echo requests sent."),
    ("connmon_icmp_packets_received_total", "counter", "Echo replies received within the timeout."),
    ("connmon_probe_errors_total", "counter",
     "ICMP cycles in which an endpoint could not be probed or answered only with ICMP unreachable, and "
     "throughput tests that failed or were skipped, by probe and reason."),
    ("connmon_last_probe_timestamp_seconds", "gauge", "Unix time the endpoint's last cycle or test started, by probe."),
    # Throughput (issue 3): only endpoints with a throughput method have these. Directions are the site's.
    ("connmon_target_upload_bits_per_second", "gauge", "Upload rate each endpoint is contracted to reach, if set."),
    ("connmon_throughput_bits_per_second", "gauge",
     "Receiver-side rate of the last test that measured it, by direction as seen from the site."),
    ("connmon_target_met", "gauge",
     "1 if the last test that measured the site reached its target (download, and upload when set), else 0."),
    # Issue 6: "below target for the last N tests" needs a count in a row; no PromQL window can count tests.
    ("connmon_target_missed_consecutive_tests", "gauge",
     "Tests in a row, up to the last that gave a verdict, that missed the target (0 after one that met it)."),
    ("connmon_throughput_last_test_timestamp_seconds", "gauge", "Unix time the last test that measured started."),
    ("connmon_throughput_test_duration_seconds", "gauge", "Wall time of the last test, all directions."),
    ("connmon_throughput_tests_total", "counter", "Throughput tests run or skipped, whatever their outcome."),
    ("connmon_throughput_bytes_total", "counter",
     "Bytes moved by throughput tests (warm-up included, as a metered link bills them), by direction."),
    ("connmon_throughput_tcp_retransmits_total", "counter",
     "TCP segments retransmitted during throughput tests where the method can tell, by direction."),
    ("connmon_throughput_budget_remaining_bytes", "gauge",
     "Bytes the site's throughput tests may still move this month (only with monthly_budget)."),
)
_F = {name: index for index, (name, _, _) in enumerate(_FAMILIES)}
_AGENT_FAMILIES = (
    ("connmon_agent_silent", "gauge", "1 when nothing arrived from the site's agent within stale_after."),
    ("connmon_agent_last_seen_timestamp_seconds", "gauge", "Unix time the centre last received a post from the agent."),
    ("connmon_agent_info", "gauge", "The agent's software version (value 1)."),
    ("connmon_agent_uptime_seconds", "gauge", "Uptime of the agent's machine, as it last reported."),
    ("connmon_agent_gap_cause", "gauge",
     "1 on the cause of the agent's current (while silent: unknown) or last silence: link, power or unknown."),
    ("connmon_agent_gaps_total", "counter", "Silences of the agent that ended, by the cause found."),
    ("connmon_agent_results_total", "counter", "Results posted by the agent: accepted, or duplicate (already had)."),
    ("connmon_agent_spool_dropped_total", "counter",
     "Results the agent dropped from its full spool while the centre was unreachable (as it reports)."),
    ("connmon_agent_gateway_up", "gauge", "1 if the agent's last ping of the site's own gateway was answered."),
    ("connmon_agent_gateway_rtt_seconds", "gauge", "Average RTT of the agent's last ping of the site's gateway."),
    ("connmon_agent_requests_rejected_total", "counter",
     "Agent API requests refused, by HTTP status (401 token, 403 other site, 400 bad body, 413, 429)."),
)
_NO_FRAGMENTS = ("",) * len(_FAMILIES)
# Which families of an endpoint a change touches, as bits of a mask (bit i: _FAMILIES[i]). A page's
# block of one family is re-rendered, re-joined and re-compressed only when one of its endpoints
# changed that family: a healthy site's info, target, up, loss and error-counter lines (30 % of its
# text) stay as they were from cycle to cycle (issue 9: rendering and compressing them again was a
# fifth of the daemon's CPU at 10,000 sites).
_ALL_FAMILIES = (1 << len(_FAMILIES)) - 1


def _bits(*names: str) -> int:
    return sum(1 << _F[name] for name in names)


_UP, _LOSS, _HISTOGRAM, _RECEIVED, _SENT, _ERRORS = (_bits(name) for name in (
    "connmon_up", "connmon_icmp_loss_ratio", "connmon_icmp_rtt_seconds", "connmon_icmp_packets_received_total",
    "connmon_icmp_packets_sent_total", "connmon_probe_errors_total"))
_LAST_PROBE = _bits("connmon_last_probe_timestamp_seconds")
_EVERY_CYCLE = _bits("connmon_icmp_jitter_seconds", "connmon_icmp_rtt_last_seconds",
                     "connmon_last_probe_timestamp_seconds")
_STATIC = _bits("connmon_endpoint_info", "connmon_target_bits_per_second", "connmon_contracted_bits_per_second")
# A throughput test: its own families, and the two it shares with ICMP (error counters, last probe time).
_THROUGHPUT = (_ALL_FAMILIES & ~((1 << _F["connmon_target_upload_bits_per_second"]) - 1)) | _bits(
    "connmon_probe_errors_total", "connmon_last_probe_timestamp_seconds")
# An endpoint's ICMP error counters, one line per reason, as one str.format call.
_ICMP_ERROR_LINES = "".join(
    f'connmon_probe_errors_total{{{{{{lb}},probe="icmp",reason="{r.value}"}}}} {{{i}}}\n'
    for i, r in enumerate(ICMP_REASONS))
# One endpoint's RTT histogram as one str.format call: {0}…{15} cumulative counts, {lb} its labels.
_HISTOGRAM_LINES = "".join(
    [f'connmon_icmp_rtt_seconds_bucket{{{{{{lb}},le="{le}"}}}} {{{i}}}\n' for i, le in enumerate(_RTT_LE)]
    + ["connmon_icmp_rtt_seconds_sum{{{lb}}} {sum}\n", "connmon_icmp_rtt_seconds_count{{{lb}}} {count}\n"])
_HEADERS = tuple(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode() for name, kind, help_text in _FAMILIES)


@dataclass(slots=True)
class _EndpointState:
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
    throughput: _ThroughputState | None = None
    page: _Page = ("", 0)
    dirty: int = _ALL_FAMILIES  # families whose lines changed since the page was last joined

    def absorb(self, result: Result) -> None:
        if isinstance(result, ThroughputResult):
            if self.throughput is None:
                self.throughput = _ThroughputState()
            self.throughput.absorb(result)
            self.dirty |= _THROUGHPUT
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
        if previous is None or previous.loss_ratio != result.loss_ratio:
            changed |= _LOSS
        if result.error is not None:
            self.errors[result.error.value] = self.errors.get(result.error.value, 0) + 1
            changed |= _ERRORS
        self.dirty |= changed

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
                self.throughput = _ThroughputState()  # every series exists from start-up, at 0
            if mask & _THROUGHPUT:
                self.throughput.render(t, lb, f, mask)
        else:
            self.throughput = None


@dataclass(slots=True)
class _ThroughputState:
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

    def absorb(self, result: ThroughputResult) -> None:
        """A test of this process: count it, then show its figures."""
        self.tests += 1
        if result.error is not None:
            self.errors[result.error.value] = self.errors.get(result.error.value, 0) + 1
        for d in result.directions:
            self.bytes[d.direction] += d.bytes
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
        if result.measured:
            self.measured_at = result.started_at
        if result.target_met is not None:  # a partly failed test keeps the last verdict, not no verdict
            self.target_met = result.target_met

    def render(self, t: Target, lb: str, f: list[str], mask: int) -> None:
        """Fill the throughput families' fragments for one endpoint (labels ``lb`` already escaped).

        Its error counters and last-attempt time are added to the ICMP ones' fragments, which
        :meth:`_EndpointState.render` wrote first when ``mask`` holds those families.
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
        if mask & _ERRORS:
            f[_F["connmon_probe_errors_total"]] += "".join(
                f'connmon_probe_errors_total{{{lb},probe="throughput",reason="{reason}"}} {count}\n'
                for reason, count in self.errors.items())
        if self.attempted_at is not None and mask & _LAST_PROBE:
            f[_F["connmon_last_probe_timestamp_seconds"]] += (
                f'connmon_last_probe_timestamp_seconds{{{lb},probe="throughput"}} '
                f"{floatToGoString(self.attempted_at)}\n")


@dataclass(slots=True)
class _CycleStats:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(CYCLE_BUCKETS_SECONDS) + 1))
    total_seconds: float = 0.0
    skipped: int = 0


class MetricsSink:
    """Owns all exposition state; fed by the result pipeline, read by the web server.

    The body is kept as chunks: one header per family, and one block per (page, family) holding
    the lines of a page of :data:`PAGE_ENDPOINTS` endpoints of one group. A finished cycle
    re-renders its endpoints and re-joins only their pages' blocks (issue 9: at 10,000 endpoints
    re-joining the whole 40 MB body per cycle was the cost that grew with the fleet; issue 10: an
    agent's post changes one site, and re-joins one page); a scrape lists the current chunks
    without copying them.

    Chunks rest compressed (issue 9: resident memory). A changed chunk is plain text until, a
    second later or at the next gzip scrape, a worker thread deflates it (see
    :mod:`monitor.exposition.compression`); then its text is let go: 44 MB of text at 10,000 endpoints rests
    as 1.5 MB. Gzip scrapers (Prometheus always asks for gzip) are served the segments; concurrent
    ones share one compression. A plain scrape inflates the body once per version in the worker,
    shared by the plain scrapers of that version and let go when the next version comes.

    With ``shard`` set (``--shard I/N``), every series, the monitor-wide ones included, carries
    ``shard="I"`` so that the instances' series never clash where they are aggregated::

        connmon_up{endpoint="school-001",kind="school",district="Aktobe",link="fibre",shard="2"} 1
        connmon_build_info{version="0.1.0",python_version="3.11.7",shard="2"} 1
    """

    def __init__(self, engine_stats: Callable[[], Mapping[str, int]] | None = None,
                 clock: Callable[[], float] = time.time, shard: str | None = None,
                 tools: Mapping[str, bool] | None = None, store_stats: Callable[[], StoreStats] | None = None) -> None:
        self._tools = dict(tools or {})
        self._store_stats = store_stats
        self._endpoints: dict[str, _EndpointState] = {}
        self._pages: dict[_Page, list[_EndpointState]] = {}  # in exposition order
        self._cycles: dict[tuple[str, str], _CycleStats] = {}
        self._engine_stats = engine_stats
        self._clock = clock
        self._reload_ok = 1
        self._reload_success_at = 0.0
        self._shard_pairs = (("shard", shard),) if shard is not None else ()
        self._shard_suffix = "," + label_pairs(self._shard_pairs) if shard is not None else ""
        self._registry: _Collectable = REGISTRY if shard is None else _LabelledRegistry(REGISTRY, "shard", shard)
        # page → one chunk key per family; a key names one text for ever (new text, new key)
        self._blocks: dict[_Page, list[int]] = {}
        self._keys = itertools.count(len(_FAMILIES))  # 0 … len-1 are the family headers
        self._tail = -1
        self._version = 0
        self._order: tuple[int, ...] = ()  # chunk keys in exposition order
        self._plain: dict[int, bytes] = dict(enumerate(_HEADERS))  # chunks not compressed yet
        self._segments: dict[int, Segment] = {}  # chunks compressed; their text was let go
        self._compressed: CompressedBody | None = None
        self._compressing: tuple[int, asyncio.Future[CompressedBody]] | None = None
        self._compress_timer: asyncio.TimerHandle | None = None
        self._compressing_in_background = False  # scrapers meanwhile get the last body, not wait
        self._inflated: tuple[int, asyncio.Future[list[bytes]]] | None = None  # plain body of a version
        self._compressor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slices: collections.deque[tuple[Sequence[Result], int]] = collections.deque()  # (results, next)
        self._slice_pages: set[_Page] = set()
        self.agents: AgentRegistry | None = None  # set by the daemon when agent sites are served (issue 10)
        self._sites = ""  # connmon_sites lines, rendered at set_targets

    # ------------------------------------------------------------------ inputs
    def set_targets(self, targets: Sequence[Target]) -> None:
        """Start (or, at a reload, change) the set of endpoints; unchanged ones keep their state.

        Series of endpoints and groups no longer configured disappear from the exposition.
        """
        endpoints: dict[str, _EndpointState] = {}
        for target in targets:
            old = self._endpoints.get(target.name)
            labels = label_pairs((("endpoint", target.name), ("kind", target.kind),
                                  ("district", target.district), ("link", target.link), *self._shard_pairs))
            if old is not None and old.labels == labels:
                old.target = target
                state = old
            else:
                state = _EndpointState(target, labels)
            if target.mode == "agent":  # the centre's own reason for an agent site that went quiet
                state.errors.setdefault(ProbeErrorReason.AGENT_SILENT.value, 0)
            state.dirty = _ALL_FAMILIES  # its target may have changed: every line is rendered again
            endpoints[target.name] = state
        self._endpoints = endpoints
        groups: dict[str, list[_EndpointState]] = {}
        for state in endpoints.values():
            groups.setdefault(state.target.group, []).append(state)
        pages: dict[_Page, list[_EndpointState]] = {}
        for group, members in groups.items():
            for number, start in enumerate(range(0, len(members), PAGE_ENDPOINTS)):
                page = pages[(group, number)] = members[start:start + PAGE_ENDPOINTS]
                for state in page:
                    state.page = (group, number)
        self._pages = pages
        for keys in self._blocks.values():
            for key in keys:
                self._forget(key)
        self._blocks = {}
        cycle_groups = {("icmp", t.group) for t in targets if t.probed} | {
            ("throughput", t.group) for t in targets if t.probed and t.throughput.enabled}
        self._sites = self._render_sites(targets)
        self._cycles = {key: self._cycles.get(key) or _CycleStats() for key in sorted(cycle_groups)}
        self._rebuild()

    def config_loaded(self, success: bool) -> None:
        self._reload_ok = 1 if success else 0
        if success:
            self._reload_success_at = self._clock()
        self._rebuild(())

    def consume(self, cycle: Cycle) -> None:
        """Take a finished cycle; a large one is absorbed in slices between other event-loop work.

        Absorbing and rendering 10,000 results takes ~0.2 s of CPU; done in one go on the event
        loop, every scrape that arrived meanwhile waited for it (issue 9: scrape p99 ≤ 100 ms). In
        slices of :data:`SLICE_RESULTS`, scrapes are served between slices, and each page of
        :data:`PAGE_ENDPOINTS` replaces its old text whole once all its results are in: a scrape
        sees every endpoint's series from one cycle. Without a running loop (tools, tests) or for
        a small cycle, it is absorbed at once.
        """
        self._count_cycle(cycle)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (len(cycle.results) <= AT_ONCE_RESULTS and not self._slices):
            self._absorb(cycle.results)
            return
        self._slices.append((cycle.results, 0))
        if len(self._slices) == 1:
            loop.call_soon(self._absorb_slice, loop)

    def _absorb_slice(self, loop: asyncio.AbstractEventLoop) -> None:
        results, end = self._slices[0]
        until = time.perf_counter() + SLICE_SECONDS
        published = False
        while end < len(results):
            start, end = end, min(end + SLICE_RESULTS, len(results))
            pages = self._absorb_some(results[start:end])
            # Results come in config order, page after page: a page the last slices touched and this
            # one did not is whole, and is rendered now, inside this turn's time (a page is 200 sites,
            # ~2 ms). Re-joining every page in the last slice held the loop for ~90 ms at 10,000 sites.
            whole = self._slice_pages - pages
            self._slice_pages = (self._slice_pages - whole) | pages
            if whole:
                self._rebuild_pages(whole)
                published = True
            if time.perf_counter() >= until:
                break
        if end < len(results):
            self._slices[0] = (results, end)
        else:
            self._slices.popleft()
            self._rebuild_pages(self._slice_pages)  # the cycle is whole: its last pages' blocks change now
            self._slice_pages = set()
            published = True
        if published:
            self._publish()
        if self._slices:
            loop.call_soon(self._absorb_slice, loop)

    def _count_cycle(self, cycle: Cycle) -> None:
        stats = self._cycles.get((cycle.probe, cycle.group))  # None: its group went at a reload
        if stats is not None:
            stats.total_seconds += cycle.duration_seconds
            for index, bound in enumerate(CYCLE_BUCKETS_SECONDS):
                if cycle.duration_seconds <= bound:
                    stats.buckets[index] += 1
                    break
            else:
                stats.buckets[-1] += 1

    def _absorb(self, results: Sequence[Result]) -> None:
        self._rebuild(self._absorb_some(results))

    def _absorb_some(self, results: Sequence[Result]) -> set[_Page]:
        """Absorb and render ``results``; return the pages whose blocks must be re-joined."""
        changed: set[_Page] = set()
        for result in results:
            state = self._endpoints.get(result.target.name)
            if state is None:  # removed by a reload while its cycle ran
                continue
            state.absorb(result)
            changed.add(state.page)
        return changed

    def restore(self, results: Iterable[ThroughputResult], missed_in_a_row: Mapping[str, int] | None = None,
                verdicts: Mapping[str, bool] | None = None) -> None:
        """At start-up: show each site's last measured test from the history, with its original time.

        ``missed_in_a_row`` gives back ``connmon_target_missed_consecutive_tests``, so a restart does
        not silence the below-target alert that counts tests; ``verdicts`` the last verdict as it was
        given (against the target of the day, even when the last measured test gave none).
        """
        changed: set[_Page] = set()
        for result in results:
            state = self._endpoints.get(result.target.name)
            if state is None or not state.target.throughput.enabled:
                continue
            if state.throughput is None:
                state.throughput = _ThroughputState()
            elif state.throughput.tests:  # a late restore (PostgreSQL was away): this process's test is newer
                continue
            state.throughput.restore(result)
            if missed_in_a_row is not None and result.target.name in missed_in_a_row:
                state.throughput.missed_in_a_row = missed_in_a_row[result.target.name]
            if verdicts is not None and result.target.name in verdicts:
                state.throughput.target_met = verdicts[result.target.name]
            state.dirty |= _THROUGHPUT
            changed.add(state.page)
        self._rebuild(changed)

    def cycle_skipped(self, probe: str, group: str) -> None:
        stats = self._cycles.get((probe, group))
        if stats is not None:
            stats.skipped += 1
            self._rebuild(())

    # ------------------------------------------------------------------ output
    def _rebuild(self, pages: Iterable[_Page] | None = None) -> None:
        """Re-join the blocks of ``pages`` (all when None, none for ``()``) and publish the body."""
        self._rebuild_pages(self._pages if pages is None else pages)
        self._publish()

    def _rebuild_pages(self, pages: Iterable[_Page]) -> None:
        """Re-render and re-join the blocks of ``pages`` that changed: of each page only the families
        its endpoints' ``dirty`` masks name; the other blocks keep their key, so their compressed
        segment is reused as it is. Pages never built get every family; pages gone at a reload go.

        Cost: the changed families' text of the changed pages.
        """
        wanted = set(pages)
        wanted.update(page for page in self._pages if page not in self._blocks)  # never built yet
        wanted.update(page for page in self._blocks if page not in self._pages)  # gone at a reload
        families = range(len(_FAMILIES))
        for page in wanted:
            old = self._blocks.get(page)
            members = self._pages.get(page)
            if members is None:
                for key in old or ():
                    self._forget(key)
                self._blocks.pop(page, None)
                continue
            mask = _ALL_FAMILIES if old is None else 0
            for state in members:
                mask |= state.dirty
            if not mask:
                continue
            rendered: list[list[str]] = []
            for state in members:
                f = list(_NO_FRAGMENTS)
                state.render(mask, f)
                state.dirty = 0
                rendered.append(f)
            block = list(old) if old is not None else [-1] * len(_FAMILIES)
            for index in families:
                if mask >> index & 1:
                    self._forget(block[index])  # let the old text go before the new one exists
                    key = next(self._keys)
                    self._plain[key] = "".join([f[index] for f in rendered]).encode()
                    block[index] = key
            self._blocks[page] = block

    def _publish(self) -> None:
        """Render the monitor-wide tail and make the current blocks the body scrapes are served."""
        self._forget(self._tail)
        self._tail = next(self._keys)
        self._plain[self._tail] = self._render_tail().encode("utf-8")
        order: list[int] = []
        blocks = [self._blocks[page] for page in self._pages]
        for index in range(len(_FAMILIES)):
            order.append(index)
            order.extend(block[index] for block in blocks)
        order.append(self._tail)
        self._order = tuple(order)
        self._version += 1
        self._inflated = None  # a plain body of the last version: let it go
        self._compress_soon()

    def _forget(self, key: int) -> None:
        self._plain.pop(key, None)
        self._segments.pop(key, None)

    def _compress_soon(self) -> None:
        """Within :data:`COMPRESS_AFTER_SECONDS`, compress what changed and let its text go.

        Without a running loop (tools, tests) chunks stay plain: nothing would run the worker.
        """
        if self._compress_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._compress_timer = loop.call_later(COMPRESS_AFTER_SECONDS, self._compress_now)

    def _compress_now(self) -> None:
        self._compress_timer = None
        self._compressing_in_background = True
        task = asyncio.ensure_future(self._compressed_body())
        task.add_done_callback(self._compressed_in_background)

    def _compressed_in_background(self, task: asyncio.Future[CompressedBody]) -> None:
        self._compressing_in_background = False
        if not task.cancelled() and task.exception() is not None:
            log.error("metrics: compressing the exposition failed", exc_info=task.exception())
        elif self._plain_outside_headers():
            self._compress_soon()  # the body changed while it was compressed

    def _plain_outside_headers(self) -> bool:
        return any(key >= len(_FAMILIES) and data for key, data in self._plain.items())

    async def _compressed_body(self) -> CompressedBody:
        """The current version's compressed body; concurrent callers share one compression.

        If the body changes while it is compressed, the callers get the version they waited for:
        consistent, and a moment old.
        """
        body = self._compressed
        if body is not None and body.version == self._version:
            return body
        if self._compressing is None or self._compressing[0] != self._version:
            if self._compressor is None:
                self._compressor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="connmon-gzip")
            segments, plain = self._segments, self._plain
            items = [(key, segments.get(key) or plain[key]) for key in self._order]
            future = asyncio.get_running_loop().run_in_executor(
                self._compressor, compress_chunks, self._version, items)
            self._compressing = (self._version, future)
        version, future = self._compressing
        body = await asyncio.shield(future)
        if self._compressing is not None and self._compressing[0] == version:
            self._compressing = None
            self._rest(body)
            if self._compressed is None or body.version > self._compressed.version:
                self._compressed = body
        return body

    def _rest(self, body: CompressedBody) -> None:
        """Keep the segments of chunks still current, and let their plain text go."""
        plain, segments = self._plain, self._segments
        for key, segment in body.by_key.items():
            if key in plain:  # still part of the body (a key is never reused)
                segments[key] = segment
                del plain[key]

    def _braces(self, pairs: str = "") -> str:
        """``{pairs,shard="I"}``, or ``{pairs}``, or nothing when there are no labels at all."""
        inner = (pairs + self._shard_suffix) if pairs else self._shard_suffix[1:]
        return f"{{{inner}}}" if inner else ""

    def _render_sites(self, targets: Sequence[Target]) -> str:
        """``connmon_sites``: configured sites by kind, district, link and roll-out status (issue 11)."""
        counts = collections.Counter((t.kind, t.district, t.link, t.status) for t in targets)
        names = ("kind", "district", "link", "status")
        return ("# HELP connmon_sites Configured sites by kind, district, link and roll-out status "
                "(planned, connected, retired).\n# TYPE connmon_sites gauge\n"
                + "".join(f"connmon_sites{self._braces(label_pairs(zip(names, key, strict=True)))} {n}\n"
                          for key, n in sorted(counts.items())))

    def _render_tail(self) -> str:
        build = label_pairs((("version", __version__), ("python_version", platform.python_version())))
        return "".join((
            self._sites,
            self._render_cycles(),
            self._render_tools(),
            "# HELP connmon_build_info Version of connmon and of the Python running it (value 1).\n"
            "# TYPE connmon_build_info gauge\n"
            "connmon_build_info"
            f"{self._braces(build)} 1\n"
            "# HELP connmon_config_last_reload_successful 1 if the last config load or reload succeeded.\n"
            "# TYPE connmon_config_last_reload_successful gauge\n"
            f"connmon_config_last_reload_successful{self._braces()} {self._reload_ok}\n"
            "# HELP connmon_config_last_reload_success_timestamp_seconds Unix time of the last good load.\n"
            "# TYPE connmon_config_last_reload_success_timestamp_seconds gauge\n"
            f"connmon_config_last_reload_success_timestamp_seconds{self._braces()} "
            f"{floatToGoString(self._reload_success_at)}\n"))

    def _render_tools(self) -> str:
        if not self._tools:
            return ""
        return ("# HELP connmon_throughput_tool_available 1 if the tool a throughput method runs is installed "
                "(iperf3 tests report tool_missing otherwise).\n# TYPE connmon_throughput_tool_available gauge\n"
                + "".join(f'connmon_throughput_tool_available{self._braces(label_pairs((("tool", tool),)))} {int(ok)}\n'
                          for tool, ok in sorted(self._tools.items())))

    def _render_cycles(self) -> str:
        lines = ["# HELP connmon_cycle_duration_seconds Wall time of each probe cycle, by probe and group.\n"
                 "# TYPE connmon_cycle_duration_seconds histogram\n"]
        skipped = ["# HELP connmon_cycles_skipped_total Cycles not started because the previous one "
                   "of the same group was still running.\n# TYPE connmon_cycles_skipped_total counter\n"]
        for (probe, group), stats in self._cycles.items():
            lb = label_pairs((("probe", probe), ("group", group), *self._shard_pairs))
            cumulative = 0
            for le, count in zip(_CYCLE_LE, stats.buckets, strict=True):
                cumulative += count
                lines.append(f'connmon_cycle_duration_seconds_bucket{{{lb},le="{le}"}} {cumulative}\n')
            lines.append(f"connmon_cycle_duration_seconds_sum{{{lb}}} {floatToGoString(stats.total_seconds)}\n")
            lines.append(f"connmon_cycle_duration_seconds_count{{{lb}}} {cumulative}\n")
            skipped.append(f"connmon_cycles_skipped_total{{{lb}}} {stats.skipped}\n")
        return "".join(lines + skipped)

    @property
    def version(self) -> int:
        """Increases with every change of the cached body (a cycle, a reload, a skipped cycle)."""
        return self._version

    def exposition(self) -> list[bytes]:
        """The body to serve, as chunks: the cached probe series, then small per-scrape parts.

        Compressed chunks are inflated here, on the caller's thread: for tools and tests; the web
        server uses :meth:`plain_exposition`.
        """
        return [*self._plain_chunks(), self._render_per_scrape()]

    def _plain_chunks(self) -> list[bytes]:
        plain, segments = self._plain, self._segments
        return [plain[key] if key in plain else inflate(segments[key]) for key in self._order]

    async def plain_exposition(self) -> list[bytes]:
        """:meth:`exposition` for a scrape without gzip: the resting segments are inflated once per
        version in the worker thread, shared by that version's plain scrapers."""
        if not self._segments:
            return self.exposition()
        if self._inflated is None or self._inflated[0] != self._version:
            if self._compressor is None:
                self._compressor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="connmon-gzip")
            plain, segments = self._plain, self._segments
            items = [plain[key] if key in plain else segments[key] for key in self._order]
            self._inflated = (self._version, asyncio.get_running_loop().run_in_executor(
                self._compressor, _inflate_all, items))
        chunks = await asyncio.shield(self._inflated[1])
        return [*chunks, self._render_per_scrape()]

    async def gzip_exposition(self) -> list[bytes]:
        """The same body as one gzip member, as chunks; the cached part is compressed once per change.

        The compression runs in a worker thread (zlib releases the GIL), so probing goes on while
        it runs. A scraper that comes while the body is being compressed (or waits to be, for up
        to :data:`COMPRESS_AFTER_SECONDS`) is served the last body compressed, a moment older: a
        scrape never waits on a compression, except the first (issue 9: scrape p99 ≤ 100 ms; the
        scrapes that came during a 10,000-site cycle waited 0.3–0.6 s for its compression).
        """
        body = self._compressed
        under_way = self._compress_timer is not None or self._compressing_in_background
        if body is None or body.version == self._version or not under_way:
            body = await self._compressed_body()  # (nothing under way: no loop ran at the change)
        return gzip_member(body, self._render_per_scrape())

    def _render_per_scrape(self) -> bytes:
        """Engine counters and the process collectors: small, and current at every scrape."""
        return (self._render_engine() + self._render_store() + self._render_agents()
                + generate_latest(cast(CollectorRegistry, self._registry)))

    def _render_agents(self) -> bytes:
        """Site agents' liveness, versions and gaps (issue 10), current at every scrape (a few lines per agent)."""
        registry = self.agents
        if registry is None:
            return b""
        families: dict[str, list[str]] = {name: [] for name, _, _ in _AGENT_FAMILIES}
        for name, site in registry.sites.items():
            endpoint = self._endpoints.get(name)
            if endpoint is None:
                continue
            lb = endpoint.labels
            families["connmon_agent_silent"].append(f"connmon_agent_silent{{{lb}}} {int(site.silent)}\n")
            families["connmon_agent_gaps_total"].extend(
                f'connmon_agent_gaps_total{{{lb},cause="{cause}"}} {count}\n' for cause, count in site.gaps.items())
            if site.gap_cause is not None:
                families["connmon_agent_gap_cause"].extend(
                    f'connmon_agent_gap_cause{{{lb},cause="{cause}"}} {int(cause == site.gap_cause)}\n'
                    for cause in site.gaps)
            families["connmon_agent_results_total"].append(
                f'connmon_agent_results_total{{{lb},outcome="accepted"}} {site.accepted}\n'
                f'connmon_agent_results_total{{{lb},outcome="duplicate"}} {site.duplicates}\n')
            info = site.info
            families["connmon_agent_spool_dropped_total"].append(  # 0 until the agent says otherwise
                f"connmon_agent_spool_dropped_total{{{lb}}} {info.spool_dropped if info is not None else 0}\n")
            if info is not None:
                families["connmon_agent_last_seen_timestamp_seconds"].append(
                    f"connmon_agent_last_seen_timestamp_seconds{{{lb}}} {floatToGoString(site.last_seen)}\n")
                families["connmon_agent_info"].append(
                    f"connmon_agent_info{{{lb},{label_pairs((('version', info.version),))}}} 1\n")
                families["connmon_agent_uptime_seconds"].append(
                    f"connmon_agent_uptime_seconds{{{lb}}} {floatToGoString(info.uptime_seconds)}\n")
            gateway = site.gateway
            if gateway is not None:
                families["connmon_agent_gateway_up"].append(f"connmon_agent_gateway_up{{{lb}}} {int(gateway.up)}\n")
                if gateway.rtt_avg_seconds is not None:
                    families["connmon_agent_gateway_rtt_seconds"].append(
                        f"connmon_agent_gateway_rtt_seconds{{{lb}}} {floatToGoString(gateway.rtt_avg_seconds)}\n")
        rejected = {**dict.fromkeys(REJECTION_CODES, 0), **registry.rejected} if registry.sites else registry.rejected
        families["connmon_agent_requests_rejected_total"] = [  # every code from start-up, so increase() sees the first
            f"connmon_agent_requests_rejected_total{self._braces(label_pairs((('code', str(code)),)))} {count}\n"
            for code, count in sorted(rejected.items())]
        out = []
        for name, kind, help_text in _AGENT_FAMILIES:
            if families[name]:
                out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
                out.extend(families[name])
        return "".join(out).encode("utf-8")

    def _render_store(self) -> bytes:
        """The history store's health: written, waiting, dropped, set aside and failed, current at every scrape."""
        if self._store_stats is None:
            return b""
        stats = self._store_stats()
        braces = self._braces()
        errors = "".join(f"connmon_store_errors_total{self._braces(label_pairs((('operation', op),)))} {n}\n"
                         for op, n in stats.errors.items())
        return (
            "# HELP connmon_store_errors_total History store operations that failed (read-only or full disk, ...).\n"
            f"# TYPE connmon_store_errors_total counter\n{errors}"
            "# HELP connmon_store_results_written_total Results written to the history store.\n"
            f"# TYPE connmon_store_results_written_total counter\nconnmon_store_results_written_total{braces} "
            f"{stats.written}\n"
            "# HELP connmon_store_results_dropped_total Results never written: the store failed for so long that "
            "the backlog overflowed.\n"
            f"# TYPE connmon_store_results_dropped_total counter\nconnmon_store_results_dropped_total{braces} "
            f"{stats.dropped}\n"
            "# HELP connmon_store_results_set_aside_total Results the store could not write for a reason in the row "
            "itself; kept in the set-aside file.\n"
            f"# TYPE connmon_store_results_set_aside_total counter\nconnmon_store_results_set_aside_total{braces} "
            f"{stats.set_aside}\n"
            "# HELP connmon_store_results_set_aside_lost_total Results set aside that the set-aside file could not "
            "keep (full or unwritable).\n"
            "# TYPE connmon_store_results_set_aside_lost_total counter\n"
            f"connmon_store_results_set_aside_lost_total{braces} {stats.set_aside_lost}\n"
            "# HELP connmon_store_pending_results Results waiting to be written.\n"
            f"# TYPE connmon_store_pending_results gauge\nconnmon_store_pending_results{braces} {stats.pending}\n"
            "# HELP connmon_store_rows_pruned_total Rows deleted from the history because they outlived retention.\n"
            f"# TYPE connmon_store_rows_pruned_total counter\nconnmon_store_rows_pruned_total{braces} "
            f"{stats.pruned}\n"
            "# HELP connmon_store_last_write_timestamp_seconds Unix time of the last successful write.\n"
            "# TYPE connmon_store_last_write_timestamp_seconds gauge\n"
            f"connmon_store_last_write_timestamp_seconds{braces} {floatToGoString(stats.last_write_at)}\n"
        ).encode()

    def _render_engine(self) -> bytes:
        if self._engine_stats is None:
            return b""
        out = []
        braces = self._braces()
        for name, value in self._engine_stats().items():
            metric = f"connmon_icmp_{name}_total"
            out.append(f"# HELP {metric} ICMP engine counter: {name.replace('_', ' ')}.\n"
                       f"# TYPE {metric} counter\n{metric}{braces} {value}\n")
        return "".join(out).encode("utf-8")


def _inflate_all(items: Sequence[bytes | Segment]) -> list[bytes]:
    return [item if isinstance(item, bytes) else inflate(item) for item in items]


class _Collectable(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _LabelledRegistry:
    """prometheus-client's registry as seen through one extra label on every sample (the shard)."""

    def __init__(self, registry: _Collectable, name: str, value: str) -> None:
        self._registry, self._name, self._value = registry, name, value

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():  # copies: some collectors hand out the same object each time
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, self._name: self._value}) for s in family.samples]
            yield labelled
