"""Latency under load (issue 20): ICMP round trips to the site just before and while a throughput test runs.

A link can meet its speed target and still fail a video lesson: when a deep modem buffer fills,
every packet waits behind it. So every direction of a throughput test gets

* an **idle** figure: a short burst of :data:`IDLE_ECHOES` echoes right before the test starts;
* **loaded** samples: one echo every :data:`LOADED_SPACING_SECONDS` (10 a second) from the moment
  the test starts until it ends.

The echoes go through the daemon's ICMP engine (``ctx.icmp_engine``), never over the test's own
TCP connection, so they wait in the same queue as the test's data but not behind its
retransmissions. Each loaded echo is its own one-echo ``ping`` call, launched on a clock: an echo
answered late does not hold back the next one, and when the test ends no further echo leaves. The
calls still in flight are waited for (a reply behind a full queue is the figure we want), up to
:data:`LOADED_TIMEOUT_SECONDS`.

Sampling runs from the test's start until its end, so it also covers what is not load: the tool's
start-up and control exchange, the warm-up (``omit``) and the tear-down; on a long-RTT link these
are seconds. Every echo still counts as loaded. Review finding E (issue 20) asked to leave out the
start-up's echoes, placing the data's start at ``ended_at - measured_seconds - omit_seconds``. In
the lab that cut the load itself: both tools' tear-down is long (closing connections flush their
buffers; iperf3 exchanges its results), so the estimate fell seconds after the data began, and the
warm-up's slow start, which fills a deep queue as every burst of a classroom's traffic does, was
left out: the deep queue's p90 read 22-29% low instead of within 1%. So the start-up's idle echoes
are a documented limit (on a long-RTT link they lower the median more than the 90th percentile).
Each echo keeps its send time all the same (``sent_at``), for a reader that wants to place it.

It returns raw samples; medians, percentiles and the verdict are derived in :mod:`monitor.results`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from monitor.icmp.engine import EchoJob

if TYPE_CHECKING:
    from monitor.probes import Pinger

IDLE_ECHOES = 10
IDLE_SPACING_SECONDS = 0.02  # a 0.2 s burst: short enough to stay idle, long enough for a median of ten
IDLE_TIMEOUT_SECONDS = 3.0  # a geostationary link answers in ~0.6 s; an idle echo later than this is lost
LOADED_SPACING_SECONDS = 0.1  # 10 samples a second, as the issue asks
LOADED_TIMEOUT_SECONDS = 5.0  # a full queue on a satellite link can add seconds; later than this counts as lost
PAYLOAD_BYTES = 56


async def idle_rtts(engine: Pinger, address: str) -> tuple[float | None, ...]:
    """The idle burst's RTTs, one per echo (None: no reply); empty if the engine cannot reach ``address``."""
    outcome = (await engine.ping([EchoJob(address, IDLE_ECHOES, IDLE_SPACING_SECONDS, IDLE_TIMEOUT_SECONDS,
                                          PAYLOAD_BYTES)]))[0]
    return tuple(outcome.rtts_seconds) if outcome.sent else ()


@dataclass(slots=True)
class LoadedSamples:
    """The echoes sent while one direction ran, filled in as their replies come; read after the block ends.

    ``sent_at[i]`` is when echo ``i`` left, on the clock given to :func:`sampling` (the clock of the
    measurement's ``started_at``/``ended_at``); ``rtts_seconds[i]`` its RTT, None: no reply.
    """

    rtts_seconds: list[float | None] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)


def loaded(samples: LoadedSamples, measured_seconds: float) -> tuple[float | None, ...]:
    """The direction's loaded samples: every echo sent while it ran (see the module doc), none when it
    measured nothing (a direction that failed before its data flowed put no load on the link)."""
    return tuple(samples.rtts_seconds) if measured_seconds > 0 else ()


@contextlib.asynccontextmanager
async def sampling(engine: Pinger, address: str, clock: Callable[[], float]) -> AsyncIterator[LoadedSamples]:
    """Sample the RTT to ``address`` every :data:`LOADED_SPACING_SECONDS` while the block runs.

    On leaving the block (normally, by timeout or by cancellation) no further echo is sent; the
    echoes in flight are awaited, then ``rtts_seconds`` holds one entry per echo sent, in send order,
    and ``sent_at`` its send time on ``clock``. When the block is cancelled (shutdown), the echoes in
    flight are given up instead.
    """
    samples = LoadedSamples()
    in_flight: list[asyncio.Task[tuple[float, tuple[float | None, ...]]]] = []
    job = EchoJob(address, 1, LOADED_SPACING_SECONDS, LOADED_TIMEOUT_SECONDS, PAYLOAD_BYTES)

    async def one() -> tuple[float, tuple[float | None, ...]]:
        sent_at = clock()
        outcome = (await engine.ping([job]))[0]
        return sent_at, tuple(outcome.rtts_seconds) if outcome.sent else ()

    async def launch() -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            in_flight.append(asyncio.create_task(one()))
            due += LOADED_SPACING_SECONDS
            await asyncio.sleep(max(0.0, due - loop.time()))  # on a clock: a late wake-up does not drift the rate

    launcher = asyncio.create_task(launch())
    try:
        yield samples
    except BaseException:  # cancelled (shutdown) or a bug: give the echoes up, leave nothing running
        for task in (launcher, *in_flight):
            task.cancel()
        await asyncio.gather(launcher, *in_flight, return_exceptions=True)
        raise
    launcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await launcher
    outcomes = await asyncio.gather(*in_flight, return_exceptions=True)
    for outcome in outcomes:  # in send order; a call that failed (an engine closing under us) contributes nothing
        if not isinstance(outcome, BaseException):
            sent_at, rtts = outcome
            samples.rtts_seconds.extend(rtts)
            samples.sent_at.extend([sent_at] * len(rtts))
