"""What ``connmon probe`` prints: a table for people, or one JSON object per endpoint per line.

Apart from :mod:`monitor.cli` so the command line's parsing and dispatch stay one module's job;
the shapes here are published (scripts read ``--json``), so they change only on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from monitor.results import IcmpResult, ThroughputResult
from monitor.targets import Target


def throughput_to_json(target: Target, test: ThroughputResult | None) -> dict[str, object]:
    """The fields ``--throughput`` adds to an endpoint's JSON object (rates in bits per second)."""
    if test is None:
        return {"throughput_method": None, "download_bits_per_second": None, "upload_bits_per_second": None,
                "target_bits_per_second": target.target_bits_per_second,
                "target_upload_bits_per_second": target.target_upload_bits_per_second,
                "target_met": None, "throughput_error": "not_configured", "throughput_error_detail": None}
    return {
        "throughput_method": test.method,
        "download_bits_per_second": test.download_bits_per_second,
        "upload_bits_per_second": test.upload_bits_per_second,
        "target_bits_per_second": target.target_bits_per_second,
        "target_upload_bits_per_second": target.target_upload_bits_per_second,
        "target_met": test.target_met,
        "throughput_error": test.error.value if test.error else None,
        "throughput_error_detail": test.error_detail or None,
        "throughput_bytes": test.bytes,
        "pep_detected": test.pep_detected,  # issue 20: a proxy answered TCP before the site
        "throughput_started_at": test.started_at, "throughput_ended_at": test.ended_at,
        "throughput_directions": [
            {"direction": d.direction, "bits_per_second": d.bits_per_second, "bytes": d.bytes,
             "measured_seconds": d.measured_seconds, "retransmits": d.retransmits,
             "started_at": d.started_at, "ended_at": d.ended_at,
             "error": d.error.value if d.error else None, "error_detail": d.error_detail or None,
             **d.latency_figures(),  # issue 20: latency under load (None without ICMP samples)
             "tcp_connect_seconds": list(d.connect_seconds)}  # and the handshakes that can unmask a proxy
            for d in test.directions],
    }


def _mbps(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def format_throughput_table(targets: Sequence[Target], tests: Mapping[str, ThroughputResult]) -> str:
    """Mbit/s per direction (the site's) against the target, one row per endpoint with a method."""
    header = ("ENDPOINT", "METHOD", "DOWNLOAD Mbit/s", "UPLOAD Mbit/s", "TARGET Mbit/s", "VERDICT",
              "ADDED LATENCY ms down/up", "ERROR")
    rows = [header]
    for target in targets:
        test = tests.get(target.name)
        if test is None:
            continue
        verdict = {True: "met", False: "BELOW TARGET", None: "unknown"}[test.target_met]
        goal = _mbps(target.target_bits_per_second)
        if target.target_upload_bits_per_second is not None:
            goal += f" / {_mbps(target.target_upload_bits_per_second)} up"
        rows.append((target.name, test.method, _mbps(test.download_bits_per_second),
                     _mbps(test.upload_bits_per_second), goal, verdict, _added(test),
                     f"{test.error.value}: {test.error_detail}" if test.error else ""))
    if len(rows) == 1:
        return "no endpoint has a throughput method configured"
    return _table(rows) + f"\n{len(rows) - 1} tested, {sum(1 for r in rows[1:] if r[5] == 'met')} met the target"


def _added(test: ThroughputResult) -> str:
    """Added latency under load per direction tested (issue 20), e.g. ``312.4/8.1``; ``-`` where not sampled."""
    figures = []
    for found in sorted(test.directions, key=lambda d: d.direction):  # download before upload
        added = found.added_latency_seconds
        figures.append("-" if added is None else f"{added * 1000:.1f}")
    return "/".join(figures) or "-"


def _table(rows: Sequence[Sequence[str]]) -> str:
    shown = [[cell.replace("\n", "\\n") for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in shown)


def result_to_json(result: IcmpResult) -> dict[str, object]:
    """The ``--json`` object for one endpoint: raw counts and derived figures in base units."""
    t = result.target
    return {
        "endpoint": t.name, "kind": t.kind, "district": t.district, "link": t.link, "group": t.group,
        "host": t.host, "address": result.address, "timestamp": result.started_at,
        "up": result.up, "sent": result.sent, "received": result.received,
        "loss_ratio": result.loss_ratio,
        "rtt_min_seconds": result.rtt_min_seconds, "rtt_avg_seconds": result.rtt_avg_seconds,
        "rtt_max_seconds": result.rtt_max_seconds, "jitter_seconds": result.jitter_seconds,
        "rtts_seconds": list(result.rtts_seconds),
        "error": result.error.value if result.error else None, "error_detail": result.error_detail or None,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 1000:.3f}"


def format_table(results: Sequence[IcmpResult]) -> str:
    """A table for people: one row per endpoint, RTTs in milliseconds."""
    header = ("ENDPOINT", "KIND", "DISTRICT", "LINK", "ADDRESS", "STATE", "SENT", "RECV", "LOSS",
              "MIN ms", "AVG ms", "MAX ms", "JITTER ms", "ERROR")
    rows = [header]
    for r in results:
        t = r.target
        rows.append((t.name, t.kind or "-", t.district or "-", t.link or "-", r.address or t.host,
                     "up" if r.up else "DOWN", str(r.sent), str(r.received), f"{r.loss_ratio:.0%}",
                     _ms(r.rtt_min_seconds), _ms(r.rtt_avg_seconds), _ms(r.rtt_max_seconds),
                     _ms(r.jitter_seconds), f"{r.error.value}: {r.error_detail}" if r.error else ""))
    down = sum(1 for r in results if not r.up)
    return _table(rows) + f"\n{len(results)} endpoints, {len(results) - down} up, {down} down"
