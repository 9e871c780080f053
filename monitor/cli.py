"""The command line: ``connmon run | check | probe``.

Every error the project raises on purpose is printed without a traceback and mapped to its
exit code (see :mod:`monitor.errors`): 2 for a config error, 3 for a start-up problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence

from monitor import __version__
from monitor.config import load_config
from monitor.errors import ConfigError, ConnmonError
from monitor.icmp_engine import IcmpEngine
from monitor.listen import DEFAULT_LISTEN, parse_listen
from monitor.logs import configure
from monitor.probes import PROBES, ProbeContext
from monitor.results import IcmpResult
from monitor.shard import Shard, own_share
from monitor.targets import build_targets, select


def _listen_address(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connmon", description="Connectivity monitor for schools and clinics.")
    parser.add_argument("--version", action="version", version=f"connmon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", required=True, help="YAML endpoint list (see config/example.yaml)")
        sub.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
        sub.add_argument("--log-format", default="text", choices=("text", "json"))

    def sharding(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                         help="probe only share I (0-based) of N instances, by rendezvous hashing of endpoint "
                              "names; series get the label shard=\"I\"")

    run = commands.add_parser("run", help="run the monitoring daemon")
    common(run)
    run.add_argument("--listen", default=DEFAULT_LISTEN, type=_listen_address,
                     help=f"ADDR:PORT for /metrics (default {DEFAULT_LISTEN})")
    run.add_argument("--icmp-mode", default="auto", choices=("auto", "raw", "unprivileged"),
                     help="raw sockets need root or CAP_NET_RAW; unprivileged needs net.ipv4.ping_group_range")
    sharding(run)

    check = commands.add_parser("check", help="validate a config file and exit (0 valid, 2 invalid)")
    common(check)

    probe = commands.add_parser("probe", help="probe endpoints once now and print the results")
    common(probe)
    probe.add_argument("--endpoint", action="append", default=[], metavar="NAME",
                       help="only this endpoint (repeatable)")
    probe.add_argument("--json", action="store_true", help="one JSON object per endpoint per line")
    probe.add_argument("--icmp-mode", default="auto", choices=("auto", "raw", "unprivileged"))
    sharding(probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "probe":
            return asyncio.run(_probe(args))
        from monitor.daemon import serve  # the daemon's imports (aiohttp, apscheduler) only when needed

        return asyncio.run(serve(args.config, args.listen, args.icmp_mode, args.shard))
    except ConnmonError as err:
        print(f"connmon: {err}" if not isinstance(err, ConfigError) else str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


def _check(path: str) -> int:
    config = load_config(path)
    targets = build_targets(config)
    print(f"{path}: OK, {len(config.groups)} groups, {len(targets)} endpoints")
    return 0


async def _probe(args: argparse.Namespace) -> int:
    every = build_targets(load_config(args.config))
    targets = own_share(every, args.shard)
    try:
        chosen = select(targets, args.endpoint)
    except KeyError as err:
        known = {t.name for t in every}
        elsewhere = [n for n in args.endpoint if n in known and n not in {t.name for t in targets}]
        where = f"shard {args.shard} of {args.config} (other shards probe: {', '.join(elsewhere)})" if elsewhere \
            else args.config
        print(f"connmon: no such endpoint in {where}: {err.args[0]}", file=sys.stderr)
        return 2
    engine = IcmpEngine.open(args.icmp_mode)
    try:
        results = await PROBES["icmp"](chosen, ProbeContext(engine, time.time))
    finally:
        engine.close()
    if args.json:
        for result in results:
            print(json.dumps(result_to_json(result), ensure_ascii=False), flush=False)
    else:
        print(format_table(results))
    sys.stdout.flush()
    return 0 if all(r.up for r in results) else 1


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
    shown = [[cell.replace("\n", "\\n") for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in shown) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in shown]
    down = sum(1 for r in results if not r.up)
    lines.append(f"{len(results)} endpoints, {len(results) - down} up, {down} down")
    return "\n".join(lines)
