"""The history's rows: how an endpoint, an ICMP cycle, a throughput test and a gap become row values, and back.

SQLite (:mod:`monitor.history.sqlite`) and PostgreSQL (:mod:`monitor.history.postgres`) keep the
same tables with the same columns in the same order; this module is the one place that maps
connmon's values to those columns and reads them back, so the two backends give the same answers
(the store contract test holds them to it) and a new column is added once. Before issue 23 the
PostgreSQL store imported SQLite's private helpers and kept copies of others, which could drift.

The values given are ones both drivers bind alike: a verdict is a ``bool`` (SQLite stores it as
the integer 1 or 0, PostgreSQL as ``BOOLEAN``), a planned date is ISO text (SQLite has no date
type; psycopg sends text untyped, so PostgreSQL reads it into its ``DATE`` column), RTTs are one
packed blob. The decoders take what either driver reads back (a ``DATE`` or its ISO text, a
``BOOLEAN`` or an integer). The SQL, the schema and its migrations, endpoint ids and transactions
are the backends' own.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.config import Direction
from monitor.errors import ProbeErrorReason
from monitor.history.store import EndpointRecord, StoredCycle, StoredGap, StoredTest
from monitor.results import DirectionResult, Gap, Hop, IcmpResult, Result, ThroughputResult, Trace
from monitor.targets import Target

DETAIL_MAX = 500  # error details are for people; a runaway message must not bloat the history

# EndpointRecord field order → column: the one place a new label column is added (with endpoint_params and
# endpoint_record); first_result_at is the store's own and never written from a record
ENDPOINT_COLUMNS: tuple[str, ...] = ("name", "kind", "district", "link", "grp", "target_bps", "status", "planned_date",
                                     "provider", "contracted_bps")
# what the readers select (i: icmp, t: throughput, g: gaps, e: endpoints), in the order the decoders below take
CYCLE_COLUMNS = "i.started_at, i.sent, i.rtts, i.error, i.error_detail"
AGENT_INSTANCE = ""  # an agent site's cycles, whichever instance took them: the site measured them once (issue 19)
TEST_COLUMNS = ("e.name, t.method, t.started_at, t.ended_at, t.address, t.directions, t.target_bps, "
                "t.target_upload_bps, t.target_met, t.error, t.error_detail, t.budget_remaining")
GAP_COLUMNS = "g.started_at, g.ended_at, g.cause, g.interval_seconds"
TRACE_COLUMNS = "r.at, r.hops, r.last_answering_hop, r.reached"  # (r: traces, issue 21)


def instance_cycle_columns(has_instance: bool) -> str:
    """:data:`CYCLE_COLUMNS` and the instance that wrote the cycle (issue 19, PostgreSQL schema 7), "" before it.

    A report may read a history no daemon has migrated yet (read-only): its cycles then all read as one instance's.
    """
    return CYCLE_COLUMNS + (", i.instance" if has_instance else ", ''")


def test_columns(has_latency: bool) -> str:
    """:data:`TEST_COLUMNS` and the test's ``max_added_latency`` (issue 20, schema 5), NULL in an older schema.

    A report may read a history no daemon has migrated yet (read-only): its tests then have no limit.
    """
    return TEST_COLUMNS + (", t.max_added_latency" if has_latency else ", NULL")


def pack_rtts(rtts: Sequence[float | None]) -> bytes:
    return struct.pack(f"<{len(rtts)}d", *(math.nan if r is None else r for r in rtts))


def unpack_rtts(blob: bytes) -> tuple[float | None, ...]:
    return tuple(None if math.isnan(r) else r for r in struct.unpack(f"<{len(blob) // 8}d", blob))


def directions_json(directions: Sequence[DirectionResult]) -> str:
    # with the latency-under-load samples (issue 20), which the agents' wire (as_json alone) does not carry yet
    return json.dumps([{**d.as_json(d.error_detail[:DETAIL_MAX]), **d.latency_json()} for d in directions],
                      separators=(",", ":"))


def directions_from_json(text: str) -> tuple[DirectionResult, ...]:
    out = []
    for d in json.loads(text):
        direction: Direction = "download" if d["direction"] == "download" else "upload"
        # the issue-20 samples are absent from tests stored before it (and from tests without ICMP)
        out.append(DirectionResult(direction, d["started_at"], d["ended_at"], d["bits_per_second"], d["bytes"],
                                   d["measured_seconds"], d["retransmits"], ProbeErrorReason.stored(d["error"]),
                                   d["error_detail"], tuple(d.get("idle_rtts_seconds", ())),
                                   tuple(d.get("loaded_rtts_seconds", ())), tuple(d.get("connect_seconds", ()))))
    return tuple(out)


# ---------------------------------------------------------------------- writing: values → row values
@dataclass(slots=True)
class ResultRows:
    """A batch of results as the rows of both tables, and each new endpoint's earliest result in it."""

    icmp: list[tuple[object, ...]] = field(default_factory=list)
    throughput: list[tuple[object, ...]] = field(default_factory=list)
    first: dict[int, float] = field(default_factory=dict)  # endpoint id → its earliest result in this batch


def result_rows(results: Sequence[Result], endpoint_id: Callable[[Target], int],
                first_known: Container[int], instance: str | None = None) -> ResultRows:
    """The rows of ``results`` for either backend; ``first`` only for endpoints not in ``first_known``.

    ``instance`` (PostgreSQL, issue 19): the writer's identity, appended to each ICMP row (:func:`cycle_instance`);
    None (SQLite, one instance): rows without it.
    """
    rows = ResultRows()
    first = rows.first
    for result in results:
        eid = endpoint_id(result.target)
        if eid not in first_known:
            first[eid] = min(first.get(eid, result.started_at), result.started_at)
        if isinstance(result, IcmpResult):
            row = icmp_row(eid, result)
            rows.icmp.append(row if instance is None else (*row, cycle_instance(result.target, instance)))
        elif isinstance(result, ThroughputResult):
            rows.throughput.append(throughput_row(eid, result))
    return rows


def endpoint_params(rec: EndpointRecord) -> tuple[object, ...]:
    """The record's values for :data:`ENDPOINT_COLUMNS`, in that order."""
    return (rec.name, rec.kind, rec.district, rec.link, rec.group, rec.target_bits_per_second, rec.status,
            None if rec.planned_date is None else rec.planned_date.isoformat(), rec.provider,
            rec.contracted_bits_per_second)


def cycle_instance(target: Target, instance: str) -> str:
    """The instance a cycle of ``target`` is stored under: the writer's, but "" for an agent site's cycles.

    An agent's batch may reach two instances (a retry through a load balancer): stored under "" by
    both, it is one row by the primary key, not two replicas' views to merge (issue 19).
    """
    return AGENT_INSTANCE if target.mode == "agent" else instance


def icmp_row(endpoint_id: int, r: IcmpResult) -> tuple[object, ...]:
    """The ``icmp`` table's row of a cycle, in column order."""
    return (endpoint_id, r.started_at, r.address, r.sent, pack_rtts(r.rtts_seconds),
            r.error.value if r.error is not None else None, r.error_detail[:DETAIL_MAX] or None)


def throughput_row(endpoint_id: int, r: ThroughputResult) -> tuple[object, ...]:
    """The ``throughput`` table's row of a test, in column order, with the target and verdict it had."""
    return (endpoint_id, r.started_at, r.ended_at, r.method, r.address, r.download_bits_per_second,
            r.upload_bits_per_second, r.bytes, directions_json(r.directions), r.target.target_bits_per_second,
            r.target.target_upload_bits_per_second, r.target_met,
            r.error.value if r.error is not None else None, r.error_detail[:DETAIL_MAX] or None,
            r.budget_remaining_bytes, r.target.max_added_latency_seconds)


def gap_row(endpoint_id: int, gap: Gap) -> tuple[object, ...]:
    """The ``gaps`` table's row of a classified silence, in column order."""
    return (endpoint_id, gap.started_at, gap.ended_at, gap.cause, gap.interval_seconds)


def trace_row(endpoint_id: int, trace: Trace) -> tuple[object, ...]:
    """The ``traces`` table's row of a trace (issue 21), in column order: the hops as one JSON list."""
    return (endpoint_id, trace.at, json.dumps(trace.hops_json(), separators=(",", ":")),
            trace.last_answering_hop, trace.reached)


# ---------------------------------------------------------------------- reading: row values → values
def endpoint_record(row: Sequence[Any]) -> EndpointRecord:
    """A record from the values of :data:`ENDPOINT_COLUMNS` (a planned date as ``DATE`` or ISO text)."""
    name, kind, district, link, group, target, status, planned, provider, contracted = row
    return EndpointRecord(str(name), str(kind), str(district), str(link), str(group), float(target),
                          str(status), None if planned is None else dt.date.fromisoformat(str(planned)),
                          None if provider is None else str(provider),
                          None if contracted is None else float(contracted))


def stored_cycle(row: Sequence[Any]) -> StoredCycle:
    """A cycle from the values of :data:`CYCLE_COLUMNS` (the RTT blob as ``bytes``, a ``bytea`` too)."""
    started_at, sent, rtts, error, detail = row
    return StoredCycle(float(started_at), int(sent), unpack_rtts(bytes(rtts)), error,
                       "" if detail is None else str(detail))


def stored_test(row: Sequence[Any]) -> StoredTest:
    """A test from the values of :func:`test_columns`."""
    (name, method, started_at, ended_at, address, directions, target, target_upload, met, error, detail,
     budget, max_added) = row
    return StoredTest(str(name), str(method), float(started_at), float(ended_at),
                      None if address is None else str(address), directions_from_json(str(directions)),
                      float(target), None if target_upload is None else float(target_upload),
                      None if met is None else bool(met), None if error is None else str(error),
                      "" if detail is None else str(detail), None if budget is None else int(budget),
                      None if max_added is None else float(max_added))


def instance_cycle(row: Sequence[Any]) -> tuple[str, StoredCycle]:
    """The instance and cycle from the values of :func:`instance_cycle_columns`."""
    return str(row[-1]), stored_cycle(row[:-1])


def stored_trace(row: Sequence[Any]) -> Trace:
    """A trace from the values of :data:`TRACE_COLUMNS` (its address is not kept: ``target`` is "")."""
    at, hops, last, reached = row
    return Trace(float(at), "", tuple(Hop(int(h["ttl"]), h["address"], h["rtt_seconds"]) for h in json.loads(hops)),
                 None if last is None else str(last), bool(reached))


def stored_gap(endpoint: str, row: Sequence[Any]) -> StoredGap:
    """A gap of ``endpoint`` from the values of :data:`GAP_COLUMNS`."""
    started_at, ended_at, cause, interval = row
    return StoredGap(endpoint, float(started_at), float(ended_at), str(cause), float(interval))
