"""Replicas in the shared history (issue 19): one stream of ICMP cycles per site, however many instances probed it.

With ``--replicas R`` a site is probed by R instances, and on PostgreSQL each writes its own cycles
with its identity (the ``icmp.instance`` column: its shard index, ``""`` without ``--shard``; an
agent site's cycles keep ``""`` whichever instance took them, since the site measured them once).
Reports, KPIs and the API must count each site-interval once, and up when any replica saw it up.
This module merges the replicas' rows into that one stream; it is pure (rows in, cycles out), so the
rule is tested apart from any database, and the backend only selects the column and calls it.

The rule (:func:`merge`), for one site's cycles started in the span read:

1. **One instance** among the rows (or only ``""``): the rows as they are. SQLite, a single
   instance and an agent site pay nothing and read exactly what they read before issue 19.
2. **The interval** I: per instance with two cycles or more, the median spacing of its consecutive
   starts (a dead stretch or a restart is one long spacing among many, and does not move a median);
   the smallest of those. When no instance has two cycles, the whole span is one site-interval.
3. **Site-intervals**: the cycles, oldest first, are cut into groups. A group opens at the first
   cycle not yet grouped and takes every cycle that started less than ``reach = I × (1 − 1/(2n))``
   after it (n: the number of instances in the rows; 3/4 of I for two). Each replica fires once per
   I at a phase of its own; the n phases always fit in an arc shorter than the reach (their widest
   gap is at least I/n), and a group opened by the replica after that gap holds one cycle of each.
   The groups settle there by themselves within n groups, whatever the phases, and stay there with
   a margin of at least I/(2n) on each side, so a start a few milliseconds late (or a slow drift)
   never splits or doubles one. No grid is laid over the span: an estimate of I a little off costs
   nothing, and a replica restarted at another phase at most n − 1 more groups where the phases change.
4. **One instance per group**: its cycles are kept, the others' dropped. The best instance is the
   one with a reply (any reply beats none), then the largest share of replies to echoes, then one
   whose cycles say something of the site (an instance cut off itself, ``monitor_cut_off``, says
   nothing), then the lowest name (so every reader picks the same). Every cycle of that instance in
   the group is kept: two of them in one group are a restart or a shorter interval, not a copy.

So a site-interval is up when any replica saw the site answer; down only when every replica that
wrote a cycle for it saw it silent; and counted once. A replica that was dead for a stretch wrote
nothing there, and the others' cycles stand alone. It runs in O(n log n) (the sort, linear on rows
already in order; the medians) and streams group by group (:func:`merge_on`). Its limits are in
docs/history.md: an interval changed within the span is grouped at the shorter one, so a stretch
at a longer interval may count a site-interval once per replica.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Sequence

from monitor.errors import ProbeErrorReason
from monitor.history.store import StoredCycle

InstanceCycle = tuple[str, StoredCycle]  # (instance, cycle): a row of the shared history
_CUT_OFF = ProbeErrorReason.MONITOR_CUT_OFF.value


def instances(rows: Iterable[InstanceCycle]) -> set[str]:
    """The instances that wrote ``rows``."""
    return {instance for instance, _cycle in rows}


def interval_of(rows: Iterable[InstanceCycle]) -> float | None:
    """The smallest per-instance median spacing of consecutive starts; None when no instance has two cycles."""
    starts: dict[str, list[float]] = {}
    for instance, cycle in rows:
        starts.setdefault(instance, []).append(cycle.started_at)
    medians: list[float] = []
    for times in starts.values():
        if len(times) >= 2:
            times.sort()
            medians.append(statistics.median(b - a for a, b in zip(times, times[1:], strict=False)))
    return min(medians) if medians else None


def reach_of(rows: Sequence[InstanceCycle]) -> float:
    """How long after its first cycle a site-interval's group takes cycles (rule 3): I × (1 − 1/(2n))."""
    interval = interval_of(rows)
    if interval is None or interval <= 0:
        return math.inf
    return interval * (1 - 1 / (2 * len(instances(rows))))


def groups(rows: Iterable[InstanceCycle], reach: float) -> Iterator[list[InstanceCycle]]:
    """``rows`` (oldest first) cut into site-intervals: each opens at a cycle, takes those started within ``reach``."""
    group: list[InstanceCycle] = []
    opened = -math.inf
    for row in rows:
        started_at = row[1].started_at
        if group and started_at - opened < reach:
            group.append(row)
            continue
        if group:
            yield group
        group, opened = [row], started_at
    if group:
        yield group


def _rank(cycles: Sequence[StoredCycle]) -> tuple[bool, float, bool]:
    """How good one instance's cycles in a group are, larger better: answered, share of replies, telling."""
    received = attempted = 0
    telling = False
    for c in cycles:  # (counted in C: this runs for every row a report reads from replicas)
        rtts = c.rtts_seconds
        attempted += len(rtts)
        received += len(rtts) - rtts.count(None)
        telling = telling or c.error != _CUT_OFF
    return received > 0, received / attempted if attempted else 0.0, telling


def best(group: Sequence[InstanceCycle]) -> list[StoredCycle]:
    """The cycles of the group's best instance (rule 4 of the module doc), oldest first."""
    by: dict[str, list[StoredCycle]] = {}
    for instance, cycle in group:
        by.setdefault(instance, []).append(cycle)
    if len(by) == 1:
        return [cycle for _instance, cycle in group]
    best_instance, best_key = "", (False, -1.0, False)
    for instance in sorted(by):  # the lowest name first: a later one must be strictly better to win
        key = _rank(by[instance])
        if key > best_key:
            best_instance, best_key = instance, key
    return by[best_instance]


def merge_on(rows: Iterable[InstanceCycle], reach: float) -> Iterator[StoredCycle]:
    """The merged stream of ``rows`` (oldest first), one site-interval at a time: it streams what it reads."""
    for group in groups(rows, reach):
        yield from best(group)


def merge(rows: Sequence[InstanceCycle]) -> list[StoredCycle]:
    """One site's cycles as one stream: each site-interval once, up when any replica saw it up (the module doc).

    Args:
        rows: the site's cycles started in the span read, with the instance that wrote each, oldest first.

    Returns:
        The cycles kept, oldest first: ``rows``' own cycles, unchanged, when one instance wrote them all.
    """
    if len(instances(rows)) <= 1:
        return [cycle for _instance, cycle in rows]
    ordered = sorted(rows, key=lambda row: (row[1].started_at, row[0]))  # already so from the SQL: linear
    return list(merge_on(ordered, reach_of(ordered)))
