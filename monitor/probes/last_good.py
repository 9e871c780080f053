"""Last good addresses (issue 22): a name whose look-up fails is probed at its last good address for a while.

Names are still looked up at every cycle, so a site whose record changes is followed. When a
look-up fails (the resolver times out or says the name is unknown), the address the name last
resolved to is used for ``icmp: {dns_fallback_intervals: N}`` of the site's intervals (default 5;
0: none) counted from that last good answer, half an interval of slack for the scheduler's
spread. A resolver that hiccups for a minute then costs no site its availability; a name that
really went away fails with ``dns`` once the allowance is spent.

The book also says how the names fared at their last look-up, for the scrape
(:class:`~monitor.probes.last_good_exposition.ResolverExposition`, one family, a closed label set,
no endpoint label)::

    connmon_resolver_names{outcome="resolved"} 480
    connmon_resolver_names{outcome="last_good"} 60
    connmon_resolver_names{outcome="failed"} 0

A resolver failing for most names is one monitor-wide alert on this family, not one per site
(``ConnmonResolverFailing`` in ``config/connmon.rules.yml``). A name not asked for in a while (a
reload took its site away) is forgotten, so its outcome stops counting.

What it leaves to others: :mod:`monitor.probes.resolver` looks names up and asks the book; the
result's ``address_from_cache`` carries the fact to the sinks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SLACK_INTERVALS = 0.5  # a cycle may start a little late (spread, a busy loop): the allowance is not cut short
FORGET_AFTER_INTERVALS = 3  # a name not asked for in this many intervals beyond its allowance is forgotten


class LookupOutcome(enum.StrEnum):
    """How a name fared at its last look-up."""

    RESOLVED = "resolved"
    LAST_GOOD = "last_good"  # the look-up failed; the last good address was used
    FAILED = "failed"  # the look-up failed and no last good address was left


@dataclass(frozen=True, slots=True)
class _Entry:
    address: str | None  # the last good address, None if the name never resolved
    resolved_at: float  # when it last resolved (Unix time)
    asked_at: float
    outcome: LookupOutcome
    interval_seconds: float
    keep_intervals: int


class LastGoodAddresses:
    """The last good address of each (name, family), when it was had, and how the last look-up went.

    Times are the probe context's clock (Unix seconds), handed in with each look-up so tests can pin them.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._now = float("-inf")  # the latest time handed in: names are forgotten relative to it

    def resolved(self, key: tuple[str, str], address: str, now: float, interval_seconds: float,
                 keep_intervals: int) -> None:
        """The name resolved to ``address`` at ``now``."""
        self._entries[key] = _Entry(address, now, now, LookupOutcome.RESOLVED, interval_seconds, keep_intervals)
        self._forget_old(now)

    def failed(self, key: tuple[str, str], now: float, interval_seconds: float, keep_intervals: int) -> str | None:
        """The look-up of the name failed at ``now``: its last good address if still within the allowance, else None."""
        entry = self._entries.get(key)
        allowance = (keep_intervals + SLACK_INTERVALS) * interval_seconds if keep_intervals > 0 else 0.0
        usable = entry is not None and entry.address is not None and now - entry.resolved_at <= allowance
        address = entry.address if usable and entry is not None else None
        self._entries[key] = _Entry(entry.address if entry is not None else None,
                                    entry.resolved_at if entry is not None else now, now,
                                    LookupOutcome.LAST_GOOD if address is not None else LookupOutcome.FAILED,
                                    interval_seconds, keep_intervals)
        self._forget_old(now)
        return address

    def counts(self) -> dict[LookupOutcome, int]:
        """How many names fared each way at their last look-up (names forgotten by now left out)."""
        self._forget_old(self._now)
        counts = dict.fromkeys(LookupOutcome, 0)
        for entry in self._entries.values():
            counts[entry.outcome] += 1
        return counts

    def _forget_old(self, now: float) -> None:
        """Drop names not asked for in a while: one pass per new ``now`` (a batch's look-ups share theirs),
        so a cycle of 10,000 names costs one scan, not one per name."""
        if now <= self._now and self._entries:
            return
        now = self._now = max(self._now, now)
        stale = [key for key, e in self._entries.items()
                 if now - e.asked_at > (max(e.keep_intervals, 1) + FORGET_AFTER_INTERVALS) * e.interval_seconds]
        for key in stale:
            del self._entries[key]
