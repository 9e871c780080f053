"""Traces (issue 21, "where the path ends"): the hops toward an address, from TTL-limited echoes.

One trace is one call of :meth:`monitor.icmp.engine.IcmpEngine.echo_hops`: an echo per TTL from 1 to
``max_hops``, sent a few milliseconds apart and waited for together, so a trace costs about one
timeout whatever the path's length. Each router on the way answers the echo whose TTL runs out
there with Time Exceeded, from its address toward the centre; the destination answers with its
echo reply. What comes back is a :class:`Trace`: every hop in TTL order (None where nothing
answered), the last hop that answered, and whether the destination did.

When to trace, and what a trace means for the sites, is :mod:`monitor.tracer`'s business; this
module only measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from monitor.icmp.engine import HopAnswer
from monitor.results import Hop, Trace

DEFAULT_MAX_HOPS = 16
DEFAULT_TIMEOUT_SECONDS = 1.0
DEFAULT_PROBES_PER_HOP = 2  # a single lost probe must not end the path one hop early


class HopProber(Protocol):
    """What a trace needs of the engine (tests give a fake)."""

    async def echo_hops(self, address: str, ttls: Sequence[int], timeout_seconds: float,
                        spacing_seconds: float = ..., payload_bytes: int = ...) -> list[HopAnswer]: ...


def trace_from_answers(at: float, target: str, answers: Sequence[HopAnswer], max_hops: int) -> Trace:
    """Fold the engine's answers (any number per TTL) into a :class:`Trace`."""
    by_ttl: dict[int, HopAnswer] = {}
    for one in answers:
        kept = by_ttl.get(one.ttl)
        # an answer beats silence; the destination's reply beats a hop's; the quicker of two alike
        if kept is None or (kept.address is None and one.address is not None) or (one.reached and not kept.reached):
            by_ttl[one.ttl] = one
    hops: list[Hop] = []
    reached = False
    last: str | None = None
    last_ttl = 0
    for ttl in range(1, max_hops + 1):
        got = by_ttl.get(ttl)
        if got is None:
            continue
        if got.address is not None:
            last, last_ttl = got.address, ttl
        if got.reached or got.unreachable:
            reached = got.reached
            break
    end = last_ttl if reached or (last_ttl and by_ttl[last_ttl].unreachable) else min(max_hops, last_ttl + 1)
    for ttl in range(1, end + 1):
        answer = by_ttl.get(ttl)
        if answer is None or answer.address is None:
            hops.append(Hop(ttl, None, None))
        else:
            hops.append(Hop(ttl, answer.address, answer.rtt_seconds))
    return Trace(at, target, tuple(hops), last, reached)


async def trace(prober: HopProber, address: str, at: float, *, max_hops: int = DEFAULT_MAX_HOPS,
                timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
                probes_per_hop: int = DEFAULT_PROBES_PER_HOP) -> Trace:
    """Trace the path to ``address`` (an IP literal) once; ``at`` is the trace's time (the caller's clock).

    Args:
        prober: the ICMP engine (raw or unprivileged sockets alike).
        address: where the path goes.
        at: Unix time stamped on the trace.
        max_hops: the highest TTL tried.
        timeout_seconds: how long after the last probe answers are waited for.
        probes_per_hop: echoes per TTL (the first answer of each counts).
    """
    ttls = [ttl for ttl in range(1, max_hops + 1) for _ in range(probes_per_hop)]
    answers = await prober.echo_hops(address, ttls, timeout_seconds)
    return trace_from_answers(at, address, answers, max_hops)
