"""The centre's reading of an agent's batch (issue 10): every value checked before anything is used.

:func:`decode_batch` turns a posted body into a :class:`~monitor.agent.protocol.Batch`: the envelope
(``site``, ``agent``, the list and each ``seq``) is checked as a whole, and in version 2 each result on
its own, so one bad value refuses that result, named by its JSON path, and the others are taken.
Each result is read on the agent's clock and moved to the centre's when that clock was off
(:mod:`monitor.agent.clock`); :func:`bind` then gives it the site's labels from the centre's config.
The wire format itself, and the agent's side of it, is :mod:`monitor.agent.protocol`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.agent.clock import CLOCK_HOLD_SECONDS, MAX_CLOCK_OFFSET_SECONDS, ClockOffset, measure_offset
from monitor.agent.protocol import (
    ANCHOR_FIELDS,
    ICMP_PATHS,
    LATENCY_FIELDS,
    MAX_AGE_SECONDS,
    MAX_BITS_PER_SECOND,
    MAX_BYTES,
    MAX_ECHOES,
    MAX_FUTURE_SKEW_SECONDS,
    MAX_RESULTS_PER_BATCH,
    MAX_ROUND_TRIP_SECONDS,
    MAX_RTT_SECONDS,
    MAX_TEXT,
    AgentInfo,
    AgentResult,
    Batch,
    ProtocolError,
    RefusedResult,
)
from monitor.config import DIRECTIONS, THROUGHPUT_METHODS, Direction, IcmpSettings
from monitor.errors import MEASURED_ICMP_REASONS, THROUGHPUT_REASONS, ProbeErrorReason
from monitor.results import DirectionResult, IcmpResult, ThroughputResult
from monitor.targets import Target
from monitor.text import text_fault


class _Reader:
    """Typed access to untrusted JSON; every failure names its path."""

    def __init__(self, now: float) -> None:
        self.now = now

    def obj(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise ProtocolError(path, "must be an object")
        return value

    def text(self, value: Any, path: str, *, empty: bool = False, limit: int = MAX_TEXT,
             free_text: bool = False) -> str:
        """A string field: a name, id or label unless ``free_text`` (an error's detail, for people).

        Text is checked here, at the edge, so no sink downstream meets what it cannot write
        (:mod:`monitor.text`: lone surrogates, control characters, bidirectional controls).
        """
        if not isinstance(value, str) or (not empty and not value) or len(value) > limit:
            raise ProtocolError(path, f"must be a {'' if empty else 'non-empty '}string of at most {limit} characters")
        fault = text_fault(value, free_text=free_text)
        if fault is not None:
            raise ProtocolError(path, fault)
        return value

    def number(self, value: Any, path: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not low <= value <= high:
            raise ProtocolError(path, f"must be a number from {low:g} to {high:g}")
        return float(value)

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        """A whole number; ``377.0`` is one too (JSON has one number type, and JSON Schema counts it an integer)."""
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ProtocolError(path, f"must be an integer from {low} to {high}")
        return value

    def time(self, value: Any, path: str) -> float:
        t = self.number(value, path, 0.0, 1e11)
        if t > self.now + MAX_FUTURE_SKEW_SECONDS:  # taken once the centre's clock is there: a cause that can pass
            raise ProtocolError(path, f"is {t - self.now:.0f}s in the future (the agent's clock is wrong)",
                                retry_after_seconds=t - self.now - MAX_FUTURE_SKEW_SECONDS)
        if t < self.now - MAX_AGE_SECONDS:
            raise ProtocolError(path, "is older than any retention keeps")
        return t

    def reason(self, value: Any, path: str, allowed: Sequence[ProbeErrorReason]) -> ProbeErrorReason | None:
        if value is None:
            return None
        for reason in allowed:
            if value == reason.value:
                return reason
        raise ProtocolError(path, f"must be null or one of {', '.join(r.value for r in allowed)}")

    def optional_address(self, value: Any, path: str) -> str | None:
        return None if value is None else self.text(value, path, limit=64)


def decode_batch(data: Any, now: float, per_result: bool = False) -> Batch:
    """Check a whole posted batch; the results are bound to targets later (:func:`bind`).

    ``per_result`` (version 2): a result that is wrong in itself is refused alone, into
    :attr:`Batch.refused`; the envelope (``site``, ``agent``, the list, every ``seq``) still fails the
    whole batch.

    Raises:
        ProtocolError: the first thing wrong (in version 2, with the envelope), with its path.
    """
    r = _Reader(now)
    body = r.obj(data, "$")
    unknown = set(body) - {"site", "agent", "results"}
    if unknown:
        raise ProtocolError(f"$.{sorted(unknown)[0]}", "unknown field")
    site = r.text(body.get("site"), "$.site", limit=200)
    a = r.obj(body.get("agent"), "$.agent")
    _no_unknown(a, {"version", "instance", "boot_id", "uptime_seconds", "sent_at", "spool_dropped",
                    "round_trip_seconds", "spool_depth"}, "$.agent")
    round_trip = a.get("round_trip_seconds")
    depth = a.get("spool_depth")
    agent = AgentInfo(
        version=r.text(a.get("version"), "$.agent.version", limit=64),
        instance=r.text(a.get("instance"), "$.agent.instance", limit=64),
        boot_id=r.text(a.get("boot_id"), "$.agent.boot_id", limit=64),
        uptime_seconds=r.number(a.get("uptime_seconds"), "$.agent.uptime_seconds", 0.0, 100 * 365 * 86400.0),
        # on the agent's clock, which may be off by anything: measured below, not judged against the centre's
        sent_at=r.number(a.get("sent_at"), "$.agent.sent_at", 0.0, 1e11),
        spool_dropped=r.integer(a.get("spool_dropped", 0), "$.agent.spool_dropped", 0, 2**62),
        round_trip_seconds=None if "round_trip_seconds" not in a
        else r.number(round_trip, "$.agent.round_trip_seconds", 0.0, MAX_ROUND_TRIP_SECONDS),
        spool_depth=None if "spool_depth" not in a else r.integer(depth, "$.agent.spool_depth", 0, 2**62),
    )
    # version 1 cannot hold a result on its own: its batches are judged as before issue 18 (an agent that
    # measures clocks speaks version 2)
    clock = measure_offset(agent.sent_at, now, agent.round_trip_seconds if per_result else None)
    if not clock.off:
        r.time(agent.sent_at, "$.agent.sent_at")  # a clock that is not (known to be) off: as before
    items = body.get("results")
    if not isinstance(items, list) or len(items) > MAX_RESULTS_PER_BATCH:
        raise ProtocolError("$.results", f"must be a list of at most {MAX_RESULTS_PER_BATCH} results")
    decoded: list[tuple[int, dict[str, Any]]] = []
    last_seq = 0
    for index, item in enumerate(items):
        path = f"$.results[{index}]"
        obj = r.obj(item, path)
        seq = r.integer(obj.get("seq"), f"{path}.seq", 1, 2**62)
        if seq <= last_seq:
            raise ProtocolError(f"{path}.seq", "sequence numbers must increase within a batch")
        last_seq = seq
        decoded.append((seq, dict(obj)))
    if not per_result:  # no round trip, nothing measured: every time is read as the agent stamped it
        return Batch(site, agent, tuple(_placeholder(r, seq, obj, f"$.results[{i}]")
                                        for i, (seq, obj) in enumerate(decoded)), (), clock)
    taken: list[AgentResult] = []
    refused: list[RefusedResult] = []
    for i, (seq, obj) in enumerate(decoded):
        path = f"$.results[{i}]"
        try:
            own = _result_clock(obj, path, agent, clock, now)
            if own.off and not own.correctable:  # issue 18: never stored at a false time; held until it can be
                raise ProtocolError(f"{path}.started_at", f"the agent's clock was about {own.offset_seconds:+.0f}s "
                                    "off the centre's, and its round trip is too long to correct it; held until one "
                                    "is short enough", CLOCK_HOLD_SECONDS)
            if own.off:  # read on the agent's clock, then moved to the centre's
                taken.append(_corrected(_placeholder(_Reader(now + own.offset_seconds), seq, obj, path), own))
            else:
                taken.append(_placeholder(r, seq, obj, path))
        except ProtocolError as err:
            refused.append(RefusedResult(seq, err.field, err.reason, err.retry_after_seconds))
    return Batch(site, agent, tuple(taken), tuple(refused), clock)


def _result_clock(obj: Mapping[str, Any], path: str, agent: AgentInfo, clock: ClockOffset,
                  now: float) -> ClockOffset:
    """The offset of the agent's clock when it measured this result (issue 18).

    A result stamped in this boot (its ``boot_id`` is the batch's) says how long after the boot it
    started (``uptime_seconds``): the boot's clock, which no step of the wall clock moves. Its true
    start is then when the batch left (received − half the round trip) less the uptime between the
    two, so a clock stepped (by NTP, after a boot days behind) between measuring and uploading
    corrects each result by its own offset, not the upload's. A result of an earlier boot, while the
    batch's clock is off, is held (a Raspberry Pi without a real-time clock reboots hours behind: its
    earlier results were stamped right, and this boot's offset would move them to false times). Any
    other result: the batch's offset.

    Raises:
        ProtocolError: the anchor is malformed (the result is refused), or an earlier boot's result
            waits for a right clock (refused with ``retry_after_seconds``).
    """
    anchor = _anchor(_Reader(now), obj, path)
    if anchor is None:
        return clock
    boot, uptime = anchor
    if boot != agent.boot_id and clock.off:  # measured before a reboot: this boot's offset says nothing of it
        raise ProtocolError(f"{path}.started_at", f"measured in an earlier boot of the agent, whose clock is now "
                            f"about {clock.offset_seconds:+.0f}s off the centre's: its own offset is unknown, so "
                            "it is held until the agent's clock is right", CLOCK_HOLD_SECONDS)
    started = obj.get("started_at")
    if clock.bound_seconds is None or boot != agent.boot_id or isinstance(started, bool) \
            or not isinstance(started, int | float) or not math.isfinite(started):
        return clock  # another boot, or nothing measured: the batch's offset (the start's own check follows)
    if uptime > agent.uptime_seconds + MAX_CLOCK_OFFSET_SECONDS:  # the anchor cannot be after the batch
        return clock
    true_start = now - clock.bound_seconds - (agent.uptime_seconds - uptime)
    return ClockOffset(float(started) - true_start, clock.bound_seconds)


def _anchor(r: _Reader, obj: Mapping[str, Any], path: str) -> tuple[str, float] | None:
    """A result's ``boot_id`` and ``uptime_seconds`` (both or neither), checked; None when it has none."""
    if "boot_id" not in obj and "uptime_seconds" not in obj:
        return None
    return (r.text(obj.get("boot_id"), f"{path}.boot_id", limit=64),
            r.number(obj.get("uptime_seconds"), f"{path}.uptime_seconds", 0.0, 100 * 365 * 86400.0))


def _corrected(item: AgentResult, clock: ClockOffset) -> AgentResult:
    """``item`` with every time moved from the agent's clock to the centre's, flagged in its detail (issue 18)."""
    shift = -clock.offset_seconds
    flag = (f"clock corrected: the agent's clock was {clock.offset_seconds:+.1f}s off "
            f"(±{clock.bound_seconds or 0.0:.1f}s); times moved by {shift:+.1f}s")
    result = item.result
    detail = f"{result.error_detail}; {flag}" if result.error_detail else flag
    moved: IcmpResult | ThroughputResult
    if isinstance(result, IcmpResult):
        moved = dataclasses.replace(result, started_at=result.started_at + shift, error_detail=detail)
    else:
        moved = dataclasses.replace(
            result, started_at=result.started_at + shift, ended_at=result.ended_at + shift, error_detail=detail,
            directions=tuple(dataclasses.replace(d, started_at=d.started_at + shift, ended_at=d.ended_at + shift)
                             for d in result.directions))
    return dataclasses.replace(item, result=moved, corrected=True)


_PLACEHOLDER = Target(name="", host="", address=None, group="", kind="", district="", link="", lat=None, lon=None,
                      target_bits_per_second=1.0, icmp=IcmpSettings())


def _placeholder(r: _Reader, seq: int, obj: Mapping[str, Any], path: str) -> AgentResult:
    """Decode one result against a placeholder target; :func:`bind` puts the site's real target in."""
    kind = obj.get("type")
    if kind == "icmp":
        known = {"seq", "type", "path", "started_at", "address", "sent", "rtts_seconds", "error", "error_detail",
                 *ANCHOR_FIELDS}
        _no_unknown(obj, known, path)
        _anchor(r, obj, path)
        icmp_path = obj.get("path", "centre")
        if icmp_path not in ICMP_PATHS:
            raise ProtocolError(f"{path}.path", f"must be one of {', '.join(ICMP_PATHS)}")
        sent = r.integer(obj.get("sent"), f"{path}.sent", 0, MAX_ECHOES)
        rtts_raw = obj.get("rtts_seconds")
        if not isinstance(rtts_raw, list) or len(rtts_raw) > MAX_ECHOES:
            raise ProtocolError(f"{path}.rtts_seconds", f"must be a list of at most {MAX_ECHOES} values")
        rtts = tuple(None if v is None else r.number(v, f"{path}.rtts_seconds[{i}]", 0.0, MAX_RTT_SECONDS)
                     for i, v in enumerate(rtts_raw))
        if sum(1 for v in rtts if v is not None) > sent:
            raise ProtocolError(f"{path}.rtts_seconds", "more replies than echoes sent")
        if sent > len(rtts):
            raise ProtocolError(f"{path}.sent", "more echoes sent than attempts listed in rtts_seconds")
        result: IcmpResult | ThroughputResult = IcmpResult(
            target=_PLACEHOLDER, started_at=r.time(obj.get("started_at"), f"{path}.started_at"),
            address=r.optional_address(obj.get("address"), f"{path}.address"), sent=sent, rtts_seconds=rtts,
            error=r.reason(obj.get("error"), f"{path}.error", MEASURED_ICMP_REASONS),
            error_detail=r.text(obj.get("error_detail", ""), f"{path}.error_detail", empty=True, free_text=True))
        return AgentResult(seq, result, icmp_path)
    if kind == "throughput":
        known = {*ANCHOR_FIELDS, "seq", "type", "method", "slot", "started_at", "ended_at", "address", "directions",
                 "error", "error_detail"}
        _no_unknown(obj, known, path)
        _anchor(r, obj, path)
        method = obj.get("method")
        if method not in THROUGHPUT_METHODS:
            raise ProtocolError(f"{path}.method", f"must be one of {', '.join(THROUGHPUT_METHODS)}")
        started = r.time(obj.get("started_at"), f"{path}.started_at")
        ended = r.time(obj.get("ended_at"), f"{path}.ended_at")
        if ended < started:
            raise ProtocolError(f"{path}.ended_at", "is before started_at")
        raw_dirs = obj.get("directions")
        if not isinstance(raw_dirs, list) or len(raw_dirs) > len(DIRECTIONS):
            raise ProtocolError(f"{path}.directions", f"must be a list of at most {len(DIRECTIONS)} directions")
        directions = tuple(_direction(r, d, f"{path}.directions[{i}]") for i, d in enumerate(raw_dirs))
        if len({d.direction for d in directions}) != len(directions):
            raise ProtocolError(f"{path}.directions", "a direction appears twice")
        slot = obj.get("slot")
        result = ThroughputResult(
            target=_PLACEHOLDER, method=method, started_at=started, ended_at=ended,
            address=r.optional_address(obj.get("address"), f"{path}.address"), directions=directions,
            error=r.reason(obj.get("error"), f"{path}.error", THROUGHPUT_REASONS),
            error_detail=r.text(obj.get("error_detail", ""), f"{path}.error_detail", empty=True, free_text=True))
        return AgentResult(seq, result, "centre", None if slot is None else r.text(slot, f"{path}.slot", limit=64))
    raise ProtocolError(f"{path}.type", "must be icmp or throughput")


def _direction(r: _Reader, value: Any, path: str) -> DirectionResult:
    obj = r.obj(value, path)
    _no_unknown(obj, {"direction", "started_at", "ended_at", "bits_per_second", "bytes", "measured_seconds",
                      "retransmits", "error", "error_detail", *LATENCY_FIELDS}, path)
    name = obj.get("direction")
    if name not in DIRECTIONS:
        raise ProtocolError(f"{path}.direction", f"must be one of {', '.join(DIRECTIONS)}")
    direction: Direction = name
    rate = obj.get("bits_per_second")
    retransmits = obj.get("retransmits")
    return DirectionResult(
        direction=direction,
        started_at=r.time(obj.get("started_at"), f"{path}.started_at"),
        ended_at=r.time(obj.get("ended_at"), f"{path}.ended_at"),
        bits_per_second=None if rate is None else r.number(rate, f"{path}.bits_per_second", 0.0, MAX_BITS_PER_SECOND),
        bytes=r.integer(obj.get("bytes", 0), f"{path}.bytes", 0, MAX_BYTES),
        measured_seconds=r.number(obj.get("measured_seconds", 0.0), f"{path}.measured_seconds", 0.0, 86400.0),
        retransmits=None if retransmits is None else r.integer(retransmits, f"{path}.retransmits", 0, 2**40),
        error=r.reason(obj.get("error"), f"{path}.error", THROUGHPUT_REASONS),
        error_detail=r.text(obj.get("error_detail", ""), f"{path}.error_detail", empty=True, free_text=True),
        idle_rtts_seconds=_rtts(r, obj.get("idle_rtts_seconds", []), f"{path}.idle_rtts_seconds"),
        loaded_rtts_seconds=_rtts(r, obj.get("loaded_rtts_seconds", []), f"{path}.loaded_rtts_seconds"),
        connect_seconds=tuple(v for v in _rtts(r, obj.get("connect_seconds", []), f"{path}.connect_seconds",
                                                  lost=False) if v is not None))


def _rtts(r: _Reader, value: Any, path: str, lost: bool = True) -> tuple[float | None, ...]:
    """A list of round-trip times (null: no reply, where ``lost`` allows one), at most :data:`MAX_ECHOES`."""
    if not isinstance(value, list) or len(value) > MAX_ECHOES:
        raise ProtocolError(path, f"must be a list of at most {MAX_ECHOES} values")
    if not lost and None in value:
        raise ProtocolError(path, "must hold numbers only")
    return tuple(None if v is None else r.number(v, f"{path}[{i}]", 0.0, MAX_RTT_SECONDS) for i, v in enumerate(value))


def _no_unknown(obj: Mapping[str, Any], known: set[str], path: str) -> None:
    unknown = set(obj) - known
    if unknown:
        raise ProtocolError(f"{path}.{sorted(unknown)[0]}", "unknown field")


def bind(result: AgentResult, target: Target) -> IcmpResult | ThroughputResult:
    """The decoded result as if the centre had measured it: the site's configured target and labels."""
    return dataclasses.replace(result.result, target=target)
