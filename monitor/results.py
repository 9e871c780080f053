"""Results: the raw facts a probe or an agent reports, and the one place they reach the sinks.

A result holds measurements in base units exactly as measured (nothing rounded); derived
figures (loss, jitter, min/avg/max) are properties so every sink derives them the same way.
:class:`ResultPipeline` hands each finished cycle to every sink; probes never touch metrics,
logs or storage themselves, and results pushed by a site agent (a later issue) enter here too.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from monitor.errors import ProbeErrorReason
from monitor.targets import Target

log = logging.getLogger(__name__)


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

    @property
    def received(self) -> int:
        return sum(1 for r in self.rtts_seconds if r is not None)

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


@dataclass(frozen=True, slots=True)
class Cycle:
    """Everything one scheduled run of one probe over one batch of targets produced."""

    probe: str  # "icmp"; throughput probes add theirs
    group: str
    started_at: float
    duration_seconds: float
    results: tuple[IcmpResult, ...]


class Sink(Protocol):
    """Anything that derives state from finished cycles (metrics, logs, history)."""

    def set_targets(self, targets: Sequence[Target]) -> None:
        """The endpoints now configured (at start and at each reload): forget the ones that went."""

    def consume(self, cycle: Cycle) -> None: ...

    def cycle_skipped(self, probe: str, group: str) -> None: ...


@runtime_checkable
class ClosableSink(Protocol):
    """A sink with something to write out at shutdown (history, later); ``close`` is optional for sinks."""

    def close(self) -> None:
        """Flush and release what the sink holds; called once, after the last cycle was published."""


class ResultPipeline:
    """Fans every finished cycle out to the sinks; a failing sink never stops the others."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def publish(self, cycle: Cycle) -> None:
        for sink in self.sinks:
            try:
                sink.consume(cycle)
            except Exception:  # a bug in one sink must not lose the cycle for the others
                log.exception("sink %s failed on a %s cycle", type(sink).__name__, cycle.probe)

    def cycle_skipped(self, probe: str, group: str) -> None:
        for sink in self.sinks:
            try:
                sink.cycle_skipped(probe, group)
            except Exception:
                log.exception("sink %s failed on a skipped cycle", type(sink).__name__)

    def close(self) -> None:
        """At shutdown, after the last cycle: let every sink that has ``close`` flush; one failing stops none."""
        for sink in self.sinks:
            if isinstance(sink, ClosableSink):
                try:
                    sink.close()
                except Exception:
                    log.exception("sink %s failed to close", type(sink).__name__)
