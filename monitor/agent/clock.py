"""An agent's clock against the centre's (issue 18): measured on every exchange, and how sure.

A centre that measures agents' clocks says so in every version 2 answer (200) with ``offset_seconds`` (how far
the agent's clock is from the centre's, positive when ahead), ``offset_bound_seconds`` (how sure: half the
round trip, null when no round trip was known) and ``settings_version`` (see
:data:`~monitor.agent.protocol.SETTINGS_PATH`). Only once an answer carried ``offset_seconds`` does the agent
add ``round_trip_seconds`` (its last exchange's round trip, on its monotonic clock) and ``spool_depth``
(results waiting) to ``agent``: a centre from before refuses unknown fields there. The measurement is NTP's,
one-way: the agent stamps ``sent_at`` on its clock; the centre reads its own clock when the batch is in; the
batch took between 0 and one round trip, so the offset lies in [sent_at − received, sent_at − received + round
trip], and its middle is taken, good to half the round trip (:func:`measure_offset`). Each result may carry
its start on the boot's clock (``boot_id``, ``uptime_seconds``, sent under the same care): one of the batch's
boot gets its own offset, so a clock stepped between measuring and uploading (NTP, after a boot days behind)
is still corrected (:func:`monitor.agent.decode.decode_batch`). A result whose offset is more than
:data:`MAX_CLOCK_OFFSET_SECONDS` has every time in it moved by the offset, and says so in its ``error_detail``
(which the history keeps); when the offset cannot be bounded well enough (a round trip over 2 ×
:data:`MAX_OFFSET_BOUND_SECONDS`) it is refused with ``retry_after_seconds`` and held by the agent until an
exchange is quick enough. A result is never stored at a time the centre knows to be false. An agent always has
a round trip before its first post: it fetches its settings first (any HTTP answer, even an older centre's
404, times one). A batch without a round trip (an agent from before issue 18) is judged as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_CLOCK_OFFSET_SECONDS = 60.0  # issue 18: an agent's clock further off than this has its times corrected
MAX_OFFSET_BOUND_SECONDS = 30.0  # ... when the offset is known this well (half the round trip), else held
CLOCK_HOLD_SECONDS = 30.0  # results held for an unbounded offset are sent again after this (with a round trip)


@dataclass(frozen=True, slots=True)
class ClockOffset:
    """How far an agent's clock is from the centre's, measured on one exchange (issue 18).

    ``offset_seconds`` > 0: the agent's clock is ahead. ``bound_seconds``: the offset is within this
    of the truth (half the round trip); None when the agent gave no round trip.
    """

    offset_seconds: float
    bound_seconds: float | None

    @property
    def off(self) -> bool:
        """Beyond :data:`MAX_CLOCK_OFFSET_SECONDS` for certain (every offset the exchange allows is).

        Without a round trip (an agent from before issue 18) nothing is known for certain here:
        such a batch is judged as before (a time over
        :data:`~monitor.agent.protocol.MAX_FUTURE_SKEW_SECONDS` ahead is refused).
        """
        if self.bound_seconds is None:
            return False
        return abs(self.offset_seconds) - self.bound_seconds > MAX_CLOCK_OFFSET_SECONDS

    @property
    def correctable(self) -> bool:
        return self.bound_seconds is not None and self.bound_seconds <= MAX_OFFSET_BOUND_SECONDS


def measure_offset(sent_at: float, received_at: float, round_trip_seconds: float | None) -> ClockOffset:
    """The agent's clock offset from its send time and the centre's receive time, bounded by the round trip.

    The batch was stamped ``sent_at`` on the agent's clock and read whole at ``received_at`` on the
    centre's; it travelled between 0 and ``round_trip_seconds``, so the offset lies in
    [sent_at − received_at, that + round trip]: the middle is taken (NTP's estimate, one-way).
    """
    raw = sent_at - received_at
    if round_trip_seconds is None:
        return ClockOffset(raw, None)
    return ClockOffset(raw + round_trip_seconds / 2, round_trip_seconds / 2)


def read_clock_answer(body: Any) -> ClockOffset | None:
    """The offset a 200 answer tells the agent (issue 18); None from a centre that does not measure it."""
    if not isinstance(body, dict):
        return None
    offset, bound = body.get("offset_seconds"), body.get("offset_bound_seconds")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
        return None
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not math.isfinite(bound):
        bound = None
    return ClockOffset(float(offset), None if bound is None else float(bound))
