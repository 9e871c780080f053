"""Results: the raw facts a probe or an agent reports, as values.

A result holds measurements in base units exactly as measured (nothing rounded); derived
figures (loss, jitter, min/avg/max) are properties so every sink derives them the same way.
:class:`~monitor.pipeline.ResultPipeline` hands each finished cycle to every sink; probes never
touch metrics, logs or storage themselves, and results an agent posts enter there too.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from monitor.config import Direction
from monitor.errors import ProbeErrorReason
from monitor.targets import Target


@dataclass(frozen=True, slots=True)
class IcmpResult:
    """One endpoint's ICMP cycle.

    ``rtts_seconds`` holds one entry per echo attempted, in order, None where no reply came within
    the timeout (or the echo could not be sent): keeping the gaps lets jitter compare only echoes
    that were consecutive. ``sent`` counts the echoes that actually left.
    """

    target: Target
    started_at: float  # Unix time the cycle started
    address: str | None  # the address actually probed (after DNS), None if none
    sent: int
    rtts_seconds: tuple[float | None, ...]
    error: ProbeErrorReason | None = None
    error_detail: str = ""
    # the name's look-up failed and ``address`` is its last good one (issue 22: names survive a resolver hiccup)
    address_from_cache: bool = False

    @property
    def received(self) -> int:
        rtts = self.rtts_seconds
        return len(rtts) - rtts.count(None)  # in C: read for every result by several sinks

    @property
    def up(self) -> bool:
        """Up means at least one echo came back in this cycle."""
        return self.received > 0

    @property
    def loss_ratio(self) -> float:
        """Share of attempted echoes with no reply (an echo that could not be sent is lost too).

        1 when nothing could be sent at all.
        """
        attempted = len(self.rtts_seconds)
        return 1.0 - self.received / attempted if attempted and self.sent else 1.0

    @property
    def replies_seconds(self) -> list[float]:
        return [r for r in self.rtts_seconds if r is not None]

    @property
    def rtt_min_seconds(self) -> float | None:
        replies = self.replies_seconds
        return min(replies) if replies else None

    @property
    def rtt_max_seconds(self) -> float | None:
        replies = self.replies_seconds
        return max(replies) if replies else None

    @property
    def rtt_avg_seconds(self) -> float | None:
        replies = self.replies_seconds
        return statistics.fmean(replies) if replies else None

    @property
    def jitter_seconds(self) -> float | None:
        """Mean absolute difference between RTTs of consecutive echoes (RFC 3550's idea, unsmoothed).

        Only pairs where both echoes were answered count; None when no such pair exists.
        """
        rtts = self.rtts_seconds
        diffs = [abs(b - a) for a, b in zip(rtts, rtts[1:], strict=False) if a is not None and b is not None]
        return statistics.fmean(diffs) if diffs else None


PEP_NOTE = "TCP is terminated before the site: speed figures include a proxy"  # site JSON and report (issue 20)
PEP_CONNECT_SHARE = 0.5  # a handshake under half the ICMP round trip cannot have reached the site and back
PEP_MIN_IDLE_RTT_SECONDS = 0.02
ECHO_WIRE_BYTES = 84  # one echo or reply on the wire with the default 56-byte payload: IPv4 20 + ICMP 8 + 56
# Review finding F (issue 20): a lost loaded echo is no delay figure (a full tail-drop queue drops it,
# or it waited past the timeout), so the quantiles leave it out; but a direction that lost far more
# echoes under load than idle fails the latency verdict, whatever its few answered echoes say.
LOADED_LOSS_MARGIN = 0.5  # loaded loss more than this above the idle burst's loss fails the verdict


def _replies(rtts: Sequence[float | None]) -> list[float]:
    return sorted(r for r in rtts if r is not None)


def _median(rtts: Sequence[float | None]) -> float | None:
    replies = _replies(rtts)
    return statistics.median(replies) if replies else None


def _quantile(rtts: Sequence[float | None], q: float) -> float | None:
    """The ``q`` quantile of the answered samples, interpolated between the two nearest (NumPy's default)."""
    replies = _replies(rtts)
    if not replies:
        return None
    position = q * (len(replies) - 1)
    low = int(position)
    high = min(low + 1, len(replies) - 1)
    return replies[low] + (replies[high] - replies[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class DirectionResult:
    """One direction of one throughput test, from the site's point of view.

    ``bits_per_second`` is the receiver-side rate over the measured span (slow start omitted);
    ``bytes`` is everything that crossed the link, warm-up included, because that is what a
    metered link bills. None/0 when the direction failed: ``error`` says why.
    """

    direction: Direction
    started_at: float
    ended_at: float
    bits_per_second: float | None = None
    bytes: int = 0
    measured_seconds: float = 0.0
    retransmits: int | None = None
    error: ProbeErrorReason | None = None
    error_detail: str = ""
    # Issue 20, latency under load: ICMP echoes to the site from a short burst just before the
    # direction (idle) and at 10 a second while it ran (loaded), one entry per echo, None where no
    # reply came. Empty when the test ran without an ICMP engine (or the site's address is unknown).
    idle_rtts_seconds: tuple[float | None, ...] = ()
    loaded_rtts_seconds: tuple[float | None, ...] = ()
    connect_seconds: tuple[float, ...] = ()  # TCP handshakes of the test's connections (issue 20, PEP)

    @property
    def idle_rtt_seconds(self) -> float | None:
        """Median RTT of the idle burst before the direction ran."""
        return _median(self.idle_rtts_seconds)

    @property
    def loaded_rtt_seconds(self) -> float | None:
        """Median RTT while the direction ran."""
        return _median(self.loaded_rtts_seconds)

    @property
    def loaded_rtt_p90_seconds(self) -> float | None:
        """90th percentile RTT while the direction ran: the figure that tracks a deep queue's depth."""
        return _quantile(self.loaded_rtts_seconds, 0.9)

    @property
    def added_latency_seconds(self) -> float | None:
        """Loaded median minus idle median (can be slightly negative on an unqueued link)."""
        idle, loaded = self.idle_rtt_seconds, self.loaded_rtt_seconds
        return None if idle is None or loaded is None else loaded - idle

    @property
    def added_latency_p90_seconds(self) -> float | None:
        """Loaded 90th percentile minus idle median: how deep the queue got."""
        idle, loaded = self.idle_rtt_seconds, self.loaded_rtt_p90_seconds
        return None if idle is None or loaded is None else loaded - idle

    @property
    def round_trips_per_minute(self) -> float | None:
        """Responsiveness as the IETF draft counts it: 60 / loaded RTT in seconds."""
        loaded = self.loaded_rtt_seconds
        return None if loaded is None or loaded <= 0 else 60.0 / loaded

    @property
    def loaded_loss_ratio(self) -> float | None:
        """Share of the loaded echoes that got no reply; None without loaded echoes."""
        sent = len(self.loaded_rtts_seconds)
        return self.loaded_rtts_seconds.count(None) / sent if sent else None

    @property
    def idle_loss_ratio(self) -> float | None:
        """Share of the idle burst's echoes that got no reply; None without an idle burst."""
        sent = len(self.idle_rtts_seconds)
        return self.idle_rtts_seconds.count(None) / sent if sent else None

    @property
    def lost_under_load(self) -> bool:
        """The load, not the path, lost the echoes: idle answered, and under load every echo was lost or
        the loss rose more than :data:`LOADED_LOSS_MARGIN` above idle (review finding F)."""
        loaded, idle = self.loaded_loss_ratio, self.idle_loss_ratio
        if loaded is None or idle is None or self.idle_rtt_seconds is None:
            return False
        return loaded == 1.0 or loaded - idle > LOADED_LOSS_MARGIN

    def latency_ok(self, limit_seconds: float) -> bool | None:
        """This direction's latency verdict: fails when lost under load, else added latency within the limit.

        None when it cannot be told (no idle figure, no loaded echo).
        """
        if self.lost_under_load:
            return False
        added = self.added_latency_seconds
        return None if added is None else added <= limit_seconds

    @property
    def pep_suspected(self) -> bool | None:
        """Whether a proxy answered the TCP handshake before the site (issue 20, docs/latency-under-load.md).

        True when every handshake took less than :data:`PEP_CONNECT_SHARE` of the idle ICMP median and
        that median is at least :data:`PEP_MIN_IDLE_RTT_SECONDS` (below it, a few milliseconds of
        timing noise could decide); None without both figures.
        """
        idle = self.idle_rtt_seconds
        if idle is None or not self.connect_seconds:
            return None
        if idle < PEP_MIN_IDLE_RTT_SECONDS:
            return False
        return max(self.connect_seconds) < PEP_CONNECT_SHARE * idle

    @property
    def latency_sample_bytes(self) -> int:
        """Bytes the ICMP samples put on the link, both ways (a metered link bills them too)."""
        kept = (self.idle_rtts_seconds, self.loaded_rtts_seconds)
        echoes = sum(len(rtts) for rtts in kept)
        return (2 * echoes - sum(rtts.count(None) for rtts in kept)) * ECHO_WIRE_BYTES

    def as_json(self, error_detail: str) -> dict[str, Any]:
        """The one JSON shape of a direction, for the agents' wire and the history's rows alike.

        ``error_detail`` as the caller keeps it (cleaned for the wire, cut to the column for the
        history). The API and ``connmon probe --json`` flatten a test instead (``download_bits_per_second``,
        ``upload_bits_per_second``, ...): those are published field names, kept as they are.
        """
        return {"direction": self.direction, "started_at": self.started_at, "ended_at": self.ended_at,
                "bits_per_second": self.bits_per_second, "bytes": self.bytes,
                "measured_seconds": self.measured_seconds, "retransmits": self.retransmits,
                "error": None if self.error is None else self.error.value, "error_detail": error_detail}

    def latency_figures(self) -> dict[str, float | None]:
        """The derived latency-under-load figures (issue 20), as ``connmon probe --json`` and the API name them."""
        return {"idle_rtt_seconds": self.idle_rtt_seconds, "loaded_rtt_seconds": self.loaded_rtt_seconds,
                "loaded_rtt_p90_seconds": self.loaded_rtt_p90_seconds,
                "added_latency_seconds": self.added_latency_seconds,
                "round_trips_per_minute": self.round_trips_per_minute}

    def latency_json(self) -> dict[str, Any]:
        """The issue-20 samples, only when there are any, for the history's row (beside :meth:`as_json`).

        Not part of :meth:`as_json`, the agents' wire, until the agents' protocol carries them.
        """
        out: dict[str, Any] = {}
        if self.idle_rtts_seconds:
            out["idle_rtts_seconds"] = list(self.idle_rtts_seconds)
        if self.loaded_rtts_seconds:
            out["loaded_rtts_seconds"] = list(self.loaded_rtts_seconds)
        if self.connect_seconds:
            out["connect_seconds"] = list(self.connect_seconds)
        return out


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    """One endpoint's throughput test: every direction it ran, and whether the site met its target.

    ``error`` is set when the test could not run at all (``dns``, ``budget``, ``tool_missing``) or,
    else, to the first direction's error. ``budget_remaining_bytes`` is what the site may still
    move this month after this test (None without a budget).
    """

    target: Target
    method: str
    started_at: float
    ended_at: float
    address: str | None
    directions: tuple[DirectionResult, ...] = ()
    error: ProbeErrorReason | None = None
    error_detail: str = ""
    budget_remaining_bytes: int | None = None

    def direction(self, name: Direction) -> DirectionResult | None:
        return next((d for d in self.directions if d.direction == name), None)

    @property
    def download_bits_per_second(self) -> float | None:
        found = self.direction("download")
        return found.bits_per_second if found else None

    @property
    def upload_bits_per_second(self) -> float | None:
        found = self.direction("upload")
        return found.bits_per_second if found else None

    @property
    def bytes(self) -> int:
        """Everything the test put on the link: each direction's bytes and its latency samples (issue 20).

        This is what the monthly budget is charged and what the history keeps with the test.
        """
        return sum(d.bytes + d.latency_sample_bytes for d in self.directions)

    @property
    def measured(self) -> bool:
        """True when at least one direction produced a rate."""
        return any(d.bits_per_second is not None for d in self.directions)

    @property
    def target_met(self) -> bool | None:
        """The verdict: did every checked direction reach its target? None when it cannot be told.

        Download is checked against ``target_bits_per_second`` when it was tested; upload against
        ``target_upload_bits_per_second`` when that is configured and upload was tested. A checked
        direction that failed makes the verdict unknown (None), not a fail: a broken test server
        is not proof that the site is slow, and it is reported under its own error reason.
        """
        checks: list[bool | None] = []
        down = self.direction("download")
        if down is not None:
            rate = down.bits_per_second
            checks.append(None if rate is None else rate >= self.target.target_bits_per_second)
        up = self.direction("upload")
        up_target = self.target.target_upload_bits_per_second
        if up is not None and up_target is not None:
            checks.append(None if up.bits_per_second is None else up.bits_per_second >= up_target)
        if not checks or any(c is None for c in checks):
            return None
        return all(checks)


    @property
    def max_added_latency_seconds(self) -> float | None:
        """The largest added latency under load of the directions sampled (issue 20); None if none was."""
        added = [a for a in (d.added_latency_seconds for d in self.directions) if a is not None]
        return max(added) if added else None

    @property
    def pep_detected(self) -> bool | None:
        """True when some direction's TCP handshakes were answered before the site (a PEP); None: not judged."""
        verdicts = [v for v in (d.pep_suspected for d in self.directions) if v is not None]
        return any(verdicts) if verdicts else None

    @property
    def latency_under_load_ok(self) -> bool | None:
        """The verdict beside the speed one: did every sampled direction stay within ``max_added_latency``?

        See :func:`latency_verdict`.
        """
        return latency_verdict(self.directions, self.target.max_added_latency_seconds)


def latency_verdict(directions: Sequence[DirectionResult], limit_seconds: float) -> bool | None:
    """The latency-under-load verdict of a test's directions against ``limit_seconds`` (issue 20).

    False when some direction added more than the limit or lost its echoes under load
    (:attr:`DirectionResult.lost_under_load`); True when every direction that could be judged passed;
    None when none could (no ICMP engine, echoes blocked idle too). The live result and the
    history's stored test both decide with it.
    """
    verdicts = [v for v in (d.latency_ok(limit_seconds) for d in directions) if v is not None]
    return all(verdicts) if verdicts else None


Result = IcmpResult | ThroughputResult

GapCause = Literal["link", "power", "unknown"]
GAP_CAUSES: tuple[GapCause, ...] = ("link", "power", "unknown")


@dataclass(frozen=True, slots=True)
class Gap:
    """A classified silence of an agent site (issue 10): when the centre heard nothing, and why.

    Not a measurement, but the history keeps it so that reports can treat the hours right:
    ``power`` hours are left out of availability (the site had no power), ``link`` and ``unknown``
    hours count as down time. ``interval_seconds`` is the site's ICMP interval, so a report can
    tell how many cycles would have run in the gap. The span is half-open: [started_at, ended_at).

    While a site is silent its gap is stored as ``unknown`` up to now, again every minute or so, so
    that a report made meanwhile (or a site that never comes back) counts the silence as down. The
    classified gap then replaces that provisional one: the store keys gaps by (site, start), and
    ``replaces_start`` names the provisional one's start when the classified gap starts elsewhere
    (a power gap starts at the last result from before the boot).
    """

    target: Target
    started_at: float
    ended_at: float
    cause: GapCause
    interval_seconds: float
    replaces_start: float | None = None


@dataclass(frozen=True, slots=True)
class Cycle:
    """Everything one scheduled run of one probe over one batch of targets produced.

    ICMP cycles hold one :class:`IcmpResult` per endpoint of a group; a throughput "cycle" is one
    site's test (probe ``"throughput"``), since tests are spread over time one site at a time.
    """

    probe: str  # "icmp" or "throughput"
    group: str
    started_at: float
    duration_seconds: float
    results: tuple[Result, ...]
    gaps: tuple[Gap, ...] = ()  # agent sites only: a silence the batch of ``results`` ended (agent.centre)


@dataclass(frozen=True, slots=True)
class Hop:
    """One TTL of a trace: who answered (None: nobody in time) and the answer's round trip."""

    ttl: int
    address: str | None
    rtt_seconds: float | None

    def as_json(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "address": self.address, "rtt_seconds": self.rtt_seconds}


@dataclass(frozen=True, slots=True)
class Trace:
    """The path toward ``target`` (an address) as seen at Unix time ``at`` (issue 21, :mod:`monitor.icmp.trace`).

    ``hops`` run from TTL 1 to the destination when it answered (``reached``), else to one past the
    last hop that answered (that silent hop is where the path ends). ``last_answering_hop`` is the
    address of the farthest hop that answered, the destination itself when reached; None when
    nothing did. Read back from the history, ``target`` is "" (the history keeps the hops, not the address).
    """

    at: float
    target: str
    hops: tuple[Hop, ...]
    last_answering_hop: str | None
    reached: bool

    def hops_json(self) -> list[dict[str, Any]]:
        return [h.as_json() for h in self.hops]
