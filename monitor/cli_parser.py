"""The command line's parser: every command, its options and the types that turn their text into values.

Apart from :mod:`monitor.cli`, which runs the commands: a type here raises ``ArgumentTypeError``
with a message that says what is expected, so a wrong option is argparse's clear error, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from monitor import __version__
from monitor.agent.protocol import BODY_IDLE_SECONDS
from monitor.config.durations import parse_duration
from monitor.config.model import REPORT_LANGUAGES
from monitor.report.compliance import FORMATS
from monitor.shard import Shard
from monitor.web.listen import DEFAULT_LISTEN, parse_listen


def _listen_address(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _watch_interval(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if seconds < 0.1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 100ms")
    return seconds


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _lease(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not 3.0 <= seconds <= 3600.0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 3s and 1h")
    return seconds


def _replicas(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of instances, e.g. 2") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need at least 1")
    return count


def with_replicas(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fold ``--replicas R`` into the shard (issue 19); R without --shard I/N means nothing, so it is refused."""
    replicas = getattr(args, "replicas", 1)
    if replicas == 1:
        return
    if args.shard is None:
        parser.error(f"--replicas {replicas} needs --shard I/N: replicas are instances of one sharded fleet")
    if replicas > args.shard.count:
        logging.getLogger(__name__).warning("--replicas %d with %d instances: each site is probed by all %d",
                                            replicas, args.shard.count, args.shard.count)
    args.shard = dataclasses.replace(args.shard, replicas=min(replicas, args.shard.count))


LOG_LEVELS = ("debug", "info", "warning", "error")


def _logging_options(sub: argparse.ArgumentParser, level: str) -> None:
    """``--log-level`` (default ``level``: daemons say info, one-shot commands warnings) and ``--log-format``."""
    sub.add_argument("--log-level", default=level, choices=LOG_LEVELS)
    sub.add_argument("--log-format", default="text", choices=("text", "json"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connmon", description="Connectivity monitor for schools and clinics.")
    parser.add_argument("--version", action="version", version=f"connmon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", required=True, help="YAML endpoint list (see config/example.yaml)")
        sub.add_argument("--config.allow-empty", dest="allow_empty", action="store_true",
                         help="accept a config with no endpoint at all (refused by default, at start-up and at "
                              "a reload, so a truncated file never stops monitoring)")
        _logging_options(sub, "info")

    def sharding(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                         help="probe only share I (0-based) of N instances, by rendezvous hashing of endpoint "
                              "names; series get the label shard=\"I\"")
        sub.add_argument("--replicas", type=_replicas, default=1, metavar="R",
                         help="with --shard: probe each site from the R of the N instances that rank highest "
                              "for it (default 1), so it stays watched when one of them dies; the shipped "
                              "recording rules merge the replicas' series (docs: Several instances)")

    run = commands.add_parser("run", help="run the monitoring daemon")
    common(run)
    run.add_argument("--replicas.lease", dest="replica_lease", type=_lease, default=30.0, metavar="DURATION",
                     help="with --replicas on a shared PostgreSQL history: a site's throughput test is run by "
                          "one replica holding a lease this long, renewed while it lives; a killed replica's "
                          "tests move to the next one within about this (default 30s)")
    run.add_argument("--listen", default=DEFAULT_LISTEN, type=_listen_address,
                     help=f"ADDR:PORT for /metrics (default {DEFAULT_LISTEN})")
    run.add_argument("--icmp-mode", default="auto", choices=("auto", "raw", "unprivileged"),
                     help="raw sockets need root or CAP_NET_RAW; unprivileged needs net.ipv4.ping_group_range")
    run.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                     help="TLS and basic auth, in Prometheus exporter-toolkit's web-config format")
    run.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                     help="allow POST /-/reload (as Prometheus)")
    run.add_argument("--web.enable-admin-api", dest="enable_admin_api", action="store_true",
                     help="allow the API's writes: opening and closing maintenance windows (POST and DELETE "
                          "/api/v1/maintenance); behind basic auth when --web.config.file sets users")
    run.add_argument("--web.access-log", dest="access_log", default="on", choices=("on", "all", "off"),
                     help="one line per HTTP request, in --log-format: on (default) leaves out scrapes of /metrics "
                          "and the health checks, all logs them too, off logs none; failed logins are counted "
                          "either way (connmon_http_failed_logins_total)")
    run.add_argument("--config.watch", dest="config_watch", action="store_true",
                     help="reload when the config file's content changes (polled)")
    run.add_argument("--config.watch-interval", dest="watch_interval", type=_watch_interval, default=5.0,
                     metavar="DURATION", help="how often --config.watch looks at the file (default 5s)")
    run.add_argument("--web.agent-body-timeout", dest="agent_body_timeout", type=_watch_interval,
                     default=BODY_IDLE_SECONDS, metavar="DURATION",
                     help="an agent's request body that stops arriving for this long gets 408 "
                          f"(default {BODY_IDLE_SECONDS:g}s)")
    run.add_argument("--state-dir", default=os.environ.get("CONNMON_STATE_DIR") or "state", metavar="DIR",
                     help="where the history is kept (history.sqlite3); default $CONNMON_STATE_DIR or ./state")
    run.add_argument("--store", metavar="URL", default=os.environ.get("CONNMON_STORE") or None,
                     help="history store: postgresql://USER@HOST/DB (shared by several instances) or "
                          "sqlite:///PATH; default history.sqlite3 under --state-dir")
    run.add_argument("--no-history", action="store_true",
                     help="keep no history (no report, no restore after a restart)")
    sharding(run)

    check = commands.add_parser("check", help="validate a config file and exit (0 valid, 2 invalid)")
    common(check)
    check.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                       help="also validate this web config (TLS files, bcrypt hashes)")

    probe = commands.add_parser("probe", help="probe endpoints once now and print the results (connected sites only; "
                                              "planned and retired ones are skipped)")
    common(probe)
    probe.add_argument("--endpoint", action="append", default=[], metavar="NAME",
                       help="only this endpoint (repeatable); naming a planned or retired one exits 2")
    probe.add_argument("--json", action="store_true", help="one JSON object per endpoint per line")
    probe.add_argument("--icmp-mode", default="auto", choices=("auto", "raw", "unprivileged"))
    probe.add_argument("--throughput", action="store_true",
                       help="also run the throughput tests now (download and upload as the site sees them)")
    sharding(probe)

    report = commands.add_parser("report", help="the compliance report over a period, from the history")
    report.add_argument("--from", dest="first", required=True, type=_date, metavar="DATE",
                        help="first day (YYYY-MM-DD), from 00:00")
    report.add_argument("--to", dest="last", required=True, type=_date, metavar="DATE",
                        help="last day (YYYY-MM-DD), to 24:00")
    report.add_argument("--kind", help="only sites of this kind (school, clinic, ...)")
    report.add_argument("--district", help="only sites of this district")
    report.add_argument("--format", default="table", choices=FORMATS)
    report.add_argument("--lang", default=None, choices=REPORT_LANGUAGES,
                        help="the report's language (issue 22): en, ru or kk; default --config's monitor.language, "
                             "else en (CSV and JSON keys stay the same)")
    report.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    report.add_argument("--timezone", default=None, type=_zone, metavar="ZONE",
                        help="the days' time zone (IANA name, e.g. Asia/Almaty; default --config's monitor.timezone, "
                             "else the machine's)")
    report.add_argument("--state-dir", default=os.environ.get("CONNMON_STATE_DIR") or "state", metavar="DIR",
                        help="the daemon's --state-dir (default $CONNMON_STATE_DIR or ./state)")
    report.add_argument("--store", metavar="URL", default=os.environ.get("CONNMON_STORE") or None,
                        help="the daemon's --store (postgresql://... or sqlite:///PATH); default --state-dir's")
    report.add_argument("--config", help="also list configured sites the history has no data of, with "
                                         "today's labels; its maintenance windows are left out of availability "
                                         "(site table and KPIs; their hours are stated), and its report: block "
                                         "sets the thresholds")
    report.add_argument("--at-risk-days", type=_days, default=None, metavar="DAYS",
                        help="a site without a success for this long at the period's end is at risk (default 21)")
    report.add_argument("--dropped-days", type=_days, default=None, metavar="DAYS",
                        help="... and dropped after this long (default 28)")
    _logging_options(report, "warning")

    agent = commands.add_parser("agent", help="run at a site the centre cannot reach (behind NAT): measure from "
                                              "inside and report to the centre")
    agent.add_argument("--config", required=True, help="the agent's YAML config (see config/agent.example.yaml); "
                                                       "`connmon agent enrol --help` writes one from an enrolment "
                                                       "code")
    agent.add_argument("--icmp-mode", default="auto", choices=("auto", "raw", "unprivileged"),
                       help="raw sockets need root or CAP_NET_RAW; unprivileged needs net.ipv4.ping_group_range")
    _logging_options(agent, "info")

    importing = commands.add_parser(
        "import", help="sites from a spreadsheet (XLSX, or CSV as Excel writes it) into the config's YAML; "
                       "again later to update them in place")
    importing.add_argument("spreadsheet", metavar="SPREADSHEET", help="an .xlsx workbook (first sheet) or a CSV file")
    where = importing.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", metavar="FILE", help="one YAML file of groups, a group per kind")
    where.add_argument("--output-dir", metavar="DIR", help="a YAML file per district in DIR (for include: "
                                                           "DIR/*.yaml), a group per kind in each")
    importing.add_argument("--map", action="append", default=[], metavar="KEY=HEADER,...",
                           help="columns whose header is not the config's key, e.g. name=Школа,host=IP-адрес")
    importing.add_argument("--kind", help="the kind of a site whose row gives none (e.g. school)")
    importing.add_argument("--region-box", metavar="SOUTH,WEST,NORTH,EAST",
                           help="coordinates outside this box are bad rows (degrees)")
    importing.add_argument("--skip-bad", action="store_true",
                           help="write the good rows even when some are bad (the bad ones are listed and their "
                                "sites left as they were)")
    importing.add_argument("--dry-run", action="store_true",
                           help="print what would be added, changed and retired; write nothing")
    _logging_options(importing, "warning")

    token = commands.add_parser("agent-token", help="make a new agent token and print the hash for the centre's "
                                                    "config")
    token.add_argument("--output", metavar="FILE",
                       help="write the token to FILE (created with mode 600, never overwritten) instead of printing it")
    _logging_options(token, "warning")

    # enrolment (issue 18): codes and tokens in the history store the daemon uses; `connmon agent enrol` is the
    # site's side (monitor.agent.site.enrol, dispatched in main before this parser)
    invite = commands.add_parser("agent-invite", help="print a one-time enrolment code for an agent site (the "
                                                      "site's technician runs: connmon agent enrol --code CODE)")
    invite.add_argument("site", metavar="SITE", help="the site's endpoint name (mode: agent in --config)")
    invite.add_argument("--expires", type=_watch_interval, default=86400.0, metavar="DURATION",
                        help="how long the code is valid (default 24h)")
    revoke = commands.add_parser("agent-revoke", help="end an agent site's enrolled token and its open codes")
    revoke.add_argument("site", metavar="SITE", help="the site's endpoint name")
    for sub in (invite, revoke):
        sub.add_argument("--state-dir", default=os.environ.get("CONNMON_STATE_DIR") or "state", metavar="DIR",
                         help="the daemon's --state-dir (history.sqlite3 is there); default $CONNMON_STATE_DIR or "
                              "./state")
        sub.add_argument("--store", metavar="URL", default=os.environ.get("CONNMON_STORE") or None,
                         help="the daemon's --store (postgresql://... or sqlite:///PATH)")
        _logging_options(sub, "warning")
    invite.add_argument("--config", required=True, help="the centre's YAML config (the site must be in it)")
    return parser


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write a date as YYYY-MM-DD") from None


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of days (e.g. 21 or 20.5)") from None
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0 and at most 3650 days")
    return value


def _zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: not a time zone name (e.g. UTC, Asia/Almaty)") from None
    return text


