"""Logging: one line per event, with level and endpoint, as text or JSON; and the event-log sink.

The sink logs *changes* (an endpoint going down, coming back, failing for a new reason), not
every cycle, so that 500 sites at one cycle a minute do not bury the one that matters. A change of
a site's state to one that names a cause outside the site's link (issue 21: ``maintenance``,
``monitor_cut_off``, ``power``) is said in one line of its own, with ``state=`` (one line, cut here)::

    2026-12-06T11:40:02.120Z WARNING endpoint=school-001 probe=icmp reason=monitor_cut_off address=10.77.0.2
    state=monitor_cut_off state monitor_cut_off: no reply while the centre's uplink checks all failed (gateway, isp-1)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from monitor.errors import ProbeErrorReason
from monitor.results import Cycle, GapCause, IcmpResult, ThroughputResult
from monitor.site_states import CAUSE_STATES, MaintenanceWatch, SiteStateName, derive, describe
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.maintenance import MaintenanceBook

log = logging.getLogger("monitor.events")

_EXTRA_KEYS = ("endpoint", "group", "probe", "reason", "address", "state")


class TextFormatter(logging.Formatter):
    """``2026-11-25T02:48:07.123Z WARNING endpoint=school-001 message``: grep-able, one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = "".join(f" {key}={_quote(getattr(record, key))}" for key in _EXTRA_KEYS
                         if getattr(record, key, None) is not None)
        message = one_line(record.getMessage())
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname}{fields} {message}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line for log shippers (Loki, Elasticsearch, journald's JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# Line breaks (everything str.splitlines() splits at) and terminal controls (ESC): a site name holding
# one must not split, forge or recolour a log line (issue 7). Tabs stay.
_UNSAFE = {code: f"\\u{code:04x}" for code in (*range(0x20), *range(0x7f, 0xa0), 0x2028, 0x2029)
           if code != 0x09} | {ord("\n"): "\\n", ord("\r"): "\\r"}


def one_line(text: str) -> str:
    """``text`` with line breaks and control characters escaped, so that one event stays one line."""
    return text.translate(_UNSAFE)


def _quote(value: object) -> str:
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return one_line(json.dumps(text, ensure_ascii=False))  # json escapes controls (ESC too); U+2028 is left


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send all logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class EventLogSink:
    """Logs endpoint state changes derived from results.

    Two kinds of line: the site's own (up, down, cannot probe: when its last result's verdict or
    reason changed, as before issue 21), and its state's (:mod:`monitor.site_states`), when the state
    changed to one with a cause, or from one with a cause while the site's own line says nothing
    (``state up (was maintenance)``). A result that the state's line explains (``monitor_cut_off``)
    gets no line of its own. ``clock`` is now, for the maintenance windows, which are asked at each
    cycle: a window that opens is logged without waiting for the site's next result.
    """

    def __init__(self, clock: Callable[[], float] = time.time, maintenance: MaintenanceBook | None = None) -> None:
        self._state: dict[str, tuple[bool, str | None]] = {}
        self._clock = clock
        self._targets: dict[str, Target] = {}
        self._last: dict[str, IcmpResult] = {}
        self._gap_cause: dict[str, GapCause] = {}
        self._site_state: dict[str, SiteStateName] = {}
        self._maintenance = MaintenanceWatch(maintenance)  # the daemon's book: the API's windows too

    def set_targets(self, targets: Sequence[Target]) -> None:
        names = {t.name for t in targets}
        self._state = {name: state for name, state in self._state.items() if name in names}
        self._targets = {t.name: t for t in targets}
        for kept in (self._last, self._gap_cause, self._site_state):
            for name in [n for n in kept if n not in names]:
                del kept[name]
        self._maintenance.watch(t for t in targets if t.probed)  # a planned site's window is nobody's news

    def consume(self, cycle: Cycle) -> None:
        for name in self._maintenance.update(self._clock()) if self._maintenance.watching else ():
            self._log_state(name, said=False)
        up = 0
        for result in cycle.results:
            if isinstance(result, ThroughputResult):
                log_throughput(result)
                continue
            up += result.up
            self._log_state(result.target.name, said=self._log_change(result), result=result)
        for gap in cycle.gaps:  # after the results the batch that ended the silence brought: only a lasting state
            self._gap_cause[gap.target.name] = gap.cause
            self._log_state(gap.target.name, said=False)
        log.debug("cycle done: %d of %d endpoints up in %.2fs", up, len(cycle.results), cycle.duration_seconds,
                  extra={"probe": cycle.probe, "group": cycle.group})

    def cycle_skipped(self, probe: str, group: str) -> None:
        log.warning("cycle skipped: the previous one is still running",
                    extra={"probe": probe, "group": group})

    def _log_state(self, name: str, *, said: bool, result: IcmpResult | None = None) -> None:
        """Log a change of site ``name``'s state (``result``: its new last one, if any), unless the site's own
        line (``said``) already told it."""
        if name not in self._targets:  # removed by a reload while its cycle ran
            return
        if result is not None:
            self._last[name] = result
        last, window = self._last.get(name), self._maintenance.window(name)
        state = derive(last, window, self._gap_cause.get(name))
        previous = self._site_state.get(name, SiteStateName.UNKNOWN)
        self._site_state[name] = state
        if state is previous:
            return
        extra = {"endpoint": name, "probe": "icmp", "state": state.value,
                 "address": None if last is None else last.address,
                 "reason": None if last is None or last.error is None else last.error.value}
        if state in CAUSE_STATES:
            level = logging.INFO if state is SiteStateName.MAINTENANCE else logging.WARNING
            log.log(level, "state %s: %s", state.value, describe(state, last, window), extra=extra)
        elif previous in CAUSE_STATES and not said:
            log.info("state %s (was %s)", state.value, previous.value, extra=extra)

    def _log_change(self, result: IcmpResult) -> bool:
        """Log a change of the site's own verdict or reason; True if a line was written."""
        name = result.target.name
        reason = result.error.value if result.error else None
        previous = self._state.get(name)
        self._state[name] = (result.up, reason)
        if previous == (result.up, reason) or result.error is ProbeErrorReason.MONITOR_CUT_OFF:
            return False  # monitor_cut_off: the state's line says it (issue 21)
        extra = {"endpoint": name, "probe": "icmp", "address": result.address, "reason": reason}
        if result.error is ProbeErrorReason.UNREACHABLE:
            log.warning("down: %s (%d echoes)", result.error_detail, result.sent, extra=extra)
        elif result.error is not None:
            log.warning("cannot probe: %s", result.error_detail or reason, extra=extra)
        elif result.up:
            rtt = result.rtt_avg_seconds or 0.0
            verb = "up" if previous is None else "back up"
            log.info("%s: %d/%d echoes answered, avg rtt %.3f ms", verb, result.received, result.sent,
                     rtt * 1000, extra=extra)
        else:
            log.warning("down: no reply to %d echoes", result.sent, extra=extra)
        return True


def describe_throughput(result: ThroughputResult) -> str:
    """One line in ops' words: each direction as the site sees it, against the target."""
    parts = []
    for d in result.directions:
        if d.bits_per_second is not None:
            parts.append(f"{d.direction} {d.bits_per_second / 1e6:.2f} Mbit/s")
        else:
            parts.append(f"{d.direction} failed ({d.error.value if d.error else '?'}: {d.error_detail})")
    target = result.target.target_bits_per_second / 1e6
    verdict = {True: f"target {target:g} Mbit/s met", False: f"BELOW target {target:g} Mbit/s",
               None: "target not checked"}[result.target_met]
    return f"{', '.join(parts)}; {verdict}"


def log_throughput(result: ThroughputResult) -> None:
    """Every test is logged: they are rare (hours apart) and each is evidence for the contract."""
    extra = {"endpoint": result.target.name, "probe": "throughput", "address": result.address,
             "reason": result.error.value if result.error else None}
    if not result.directions:
        log.warning("throughput test not run: %s", result.error_detail, extra=extra)
    elif result.error is not None or result.target_met is False:
        log.warning("throughput (%s): %s", result.method, describe_throughput(result), extra=extra)
    else:
        log.info("throughput (%s): %s", result.method, describe_throughput(result), extra=extra)
