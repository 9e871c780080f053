"""The command line: ``connmon run | check | probe | report | import | agent [enrol] | agent-token | agent-invite |
agent-revoke``.

Every error the project raises on purpose is printed without a traceback and mapped to its
exit code (see :mod:`monitor.errors`): 2 for a config error, 3 for a start-up problem.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from monitor import __version__
from monitor.agent.protocol import BODY_IDLE_SECONDS
from monitor.config import ReportSettings, load_config
from monitor.config.durations import parse_duration
from monitor.config.model import REPORT_LANGUAGES
from monitor.config.windows import MaintenanceWindows
from monitor.errors import ConfigError, ConnmonError
from monitor.history.store import EndpointRecord
from monitor.history.store_url import describe, is_postgres, sqlite_path
from monitor.history.store_url import opener as store_opener
from monitor.icmp.engine import IcmpEngine
from monitor.logs import configure
from monitor.probe_output import format_table, format_throughput_table, result_to_json, throughput_to_json
from monitor.probes import PROBES, ProbeContext
from monitor.probes.iperf3 import find_iperf3
from monitor.report.compliance import FORMATS, Period, build_report
from monitor.report.kpis import Thresholds, maintenance_of
from monitor.report.school_hours import calendars_of
from monitor.results import IcmpResult, ThroughputResult
from monitor.shard import Shard, own_share
from monitor.targets import Target, build_targets, probed, select
from monitor.web.listen import DEFAULT_LISTEN, parse_listen

# The centre's own libraries, installed by the extra connmon[centre] (issue 18): a site agent has none of
# them, so every import of them is inside the command that needs it, and a missing one is said plainly.
CENTRE_MODULES = frozenset({"apscheduler", "tzlocal", "bcrypt", "jinja2", "markupsafe", "tabulate", "babel", "psycopg",
                            "psycopg_binary", "psycopg_pool", "openpyxl", "et_xmlfile"})


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


def _with_replicas(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connmon", description="Connectivity monitor for schools and clinics.")
    parser.add_argument("--version", action="version", version=f"connmon {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", required=True, help="YAML endpoint list (see config/example.yaml)")
        sub.add_argument("--config.allow-empty", dest="allow_empty", action="store_true",
                         help="accept a config with no endpoint at all (refused by default, at start-up and at "
                              "a reload, so a truncated file never stops monitoring)")
        sub.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
        sub.add_argument("--log-format", default="text", choices=("text", "json"))

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
    report.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    report.add_argument("--log-format", default="text", choices=("text", "json"))

    agent = commands.add_parser("agent", help="run at a site the centre cannot reach (behind NAT): measure from "
                                              "inside and report to the centre")
    agent.add_argument("--config", required=True, help="the agent's YAML config (see config/agent.example.yaml); "
                                                       "`connmon agent enrol --help` writes one from an enrolment "
                                                       "code")
    agent.add_argument("--icmp-mode", default="auto", choices=("auto", "raw", "unprivileged"),
                       help="raw sockets need root or CAP_NET_RAW; unprivileged needs net.ipv4.ping_group_range")
    agent.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    agent.add_argument("--log-format", default="text", choices=("text", "json"))

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
    importing.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    importing.add_argument("--log-format", default="text", choices=("text", "json"))

    token = commands.add_parser("agent-token", help="make a new agent token and print the hash for the centre's "
                                                    "config")
    token.add_argument("--output", metavar="FILE",
                       help="write the token to FILE (created with mode 600, never overwritten) instead of printing it")
    token.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    token.add_argument("--log-format", default="text", choices=("text", "json"))

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
        sub.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
        sub.add_argument("--log-format", default="text", choices=("text", "json"))
    invite.add_argument("--config", required=True, help="the centre's YAML config (the site must be in it)")
    return parser


def _store_errors() -> tuple[type[BaseException], ...]:
    """The errors a store raises when it cannot be read (psycopg's only when it is installed)."""
    try:
        import psycopg
    except ImportError:
        return (OSError, sqlite3.Error)
    return (OSError, sqlite3.Error, psycopg.Error)


def _one_line(err: BaseException) -> str:
    """An error's message on one line, with no password in it (psycopg may quote the URL)."""
    from monitor.history.postgres import scrub

    return " ".join(scrub(str(err)).split()) or type(err).__name__


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


def local_zone() -> str:
    """The machine's IANA zone name (TZ, else /etc/localtime's link), UTC when it cannot be told."""
    for candidate in (os.environ.get("TZ", "").lstrip(":"), _zone_of_localtime()):
        if candidate:
            try:
                ZoneInfo(candidate)
                return candidate
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


def _zone_of_localtime() -> str:
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return ""
    return target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else ""


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:2] == ["agent", "enrol"]:  # the site's enrolment (issue 18): its own options, no --config required
        from monitor.agent.site.enrol import main as enrol

        configure("warning", "text")
        return enrol(given[2:])
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.log_level, args.log_format)
    _with_replicas(parser, args)
    if args.command == "run":  # the access log (issue 22): its own switch, the event log's format
        from monitor.web.access_log import AccessLogMode
        from monitor.web.access_log import configure as configure_access_log

        configure_access_log(AccessLogMode(args.access_log), args.log_format)
    try:
        if args.command == "check":
            return _check(args.config, args.web_config_file, args.allow_empty)
        if args.command == "probe":
            return asyncio.run(_probe(args))
        if args.command == "report":
            return _report(args)
        if args.command == "agent-token":
            return _agent_token(args.output)
        if args.command in ("agent-invite", "agent-revoke"):
            from monitor.agent.centre import invites

            try:
                return (invites.invite(args.site, args.config, args.state_dir, args.store, args.expires)
                        if args.command == "agent-invite" else invites.revoke(args.site, args.state_dir, args.store))
            except _store_errors() as err:
                print(f"connmon: the history store {describe(args.store) or args.state_dir}: {_one_line(err)}",
                      file=sys.stderr)
                return 1
        if args.command == "import":
            from monitor.config.import_command import run_import  # openpyxl only for an import

            return run_import(args)
        if args.command == "agent":
            from monitor.agent.site.main import run_agent  # the agent's imports (aiohttp client) only when needed

            code = asyncio.run(run_agent(args.config, args.icmp_mode))
            _exit_without_stuck_lookups(code)
            return code
        from monitor.daemon import serve  # the daemon's imports (aiohttp, apscheduler) only when needed
        from monitor.malloc_tuning import tune_malloc

        tune_malloc()  # before any thread starts: the arena cap applies to arenas made from now on
        code = asyncio.run(serve(args.config, args.listen, args.icmp_mode, web_config_path=args.web_config_file,
                                 enable_lifecycle=args.enable_lifecycle, enable_admin_api=args.enable_admin_api,
                                 watch_interval_seconds=args.watch_interval if args.config_watch else None,
                                 shard=args.shard, state_dir=None if args.no_history else args.state_dir,
                                 store_url=args.store, timezone=local_zone(),
                                 agent_body_timeout_seconds=args.agent_body_timeout, allow_empty=args.allow_empty,
                                 replica_lease_seconds=args.replica_lease))
        _exit_without_stuck_lookups(code)
        return code
    except ConnmonError as err:
        print(f"connmon: {err}" if not isinstance(err, ConfigError) else str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as err:  # an agent-only install (issue 18): no traceback, the one command that helps
        if (err.name or "").partition(".")[0] not in CENTRE_MODULES:
            raise
        print(f"connmon: {args.command} needs the centre's libraries, and {err.name} is not installed: "
              "pip install 'connmon[centre]'", file=sys.stderr)
        return 3


def _exit_without_stuck_lookups(code: int) -> None:
    """Exit now if DNS look-up threads are stuck, instead of letting Python's exit wait for them.

    Issue 7 promises exit within 10 s of SIGTERM; a look-up blocked on a dead DNS server could hold
    the interpreter's final thread join for 30 s or more. Everything worth writing is written by now
    (the daemon closed its sinks), so the log is flushed and the process ends with ``os._exit``.
    """
    from monitor.probes.resolver import close_pool

    if close_pool(timeout_seconds=1.0):
        return
    logging.getLogger(__name__).warning("exiting without waiting for DNS look-ups that are still blocked")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _agent_token(output: str | None) -> int:
    """A new random token for one site's agent, and the line for the site's endpoint in the centre's config."""
    from monitor.agent.centre.registry import token_hash  # the centre's own hashing, so the two can never disagree

    token = secrets.token_urlsafe(32)
    line = f"agent: {{token_sha256: {token_hash(token)}}}"
    if output is None:
        print(token)
        print(f"# the line above goes into the agent's token_file; this one into the site's endpoint (mode: agent) "
              f"in the centre's config:\n{line}")
        return 0
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        print(f"connmon: {output}: {err.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(token + "\n")
    print(f"# token written to {output}; this line goes into the site's endpoint (mode: agent) in the centre's "
          f"config:\n{line}")
    return 0


def _check(path: str, web_config_path: str | None, allow_empty: bool = False) -> int:
    config = load_config(path, allow_empty=allow_empty)
    targets = build_targets(config)
    statuses = [t.status for t in targets]
    unprobed = "" if all(t.probed for t in targets) else (
        f" ({statuses.count('planned')} planned and {statuses.count('retired')} retired: not probed)")
    print(f"{path}: OK, {len(config.groups)} groups, {len(targets)} endpoints{unprobed}")
    if len(config.sources) > 1:  # split with include: (issue 22): what each file holds
        for source in config.sources:
            groups = [g for g in config.groups if g.location.file == source.path]
            print(f"  {source.path}: {len(groups)} groups, {sum(len(g.endpoints) for g in groups)} endpoints")
    if web_config_path is not None:
        from monitor.web.config import load_web_config  # bcrypt and ssl only when asked

        web_config = load_web_config(web_config_path)
        print(f"{web_config_path}: OK, {web_config.describe()}")
        if web_config.certificate is not None:  # an expired or expiring certificate is valid, but said (issue 25)
            web_config.certificate.check(time.time())
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.last < args.first:
        print(f"connmon: --to {args.last} is before --from {args.first}", file=sys.stderr)
        return 2
    configured: list[EndpointRecord] = []
    maintenance: dict[str, MaintenanceWindows] | None = None  # None: no config, nothing left out (said in the report)
    settings = ReportSettings()
    region_zone: str | None = None  # monitor.timezone (issue 22): the days' zone unless --timezone says otherwise
    region_language = "en"  # monitor.language (issue 22): the report's language unless --lang says otherwise
    calendars = None  # school calendars (issue 22): only when the config declares some
    if args.config is not None:
        config = load_config(args.config)
        configured = [EndpointRecord.of(t) for t in build_targets(config)]
        maintenance, settings = maintenance_of(config), config.report
        region_zone = config.monitor.timezone
        region_language = config.monitor.language
        calendars = calendars_of(config) if config.calendars else None
    thresholds = Thresholds(args.at_risk_days if args.at_risk_days is not None else settings.at_risk_days,
                            args.dropped_days if args.dropped_days is not None else settings.dropped_days)
    if thresholds.dropped_days <= thresholds.at_risk_days:
        print(f"connmon: dropped days ({thresholds.dropped_days:g}) must be more than at-risk days "
              f"({thresholds.at_risk_days:g})", file=sys.stderr)
        return 2
    try:
        where = describe(args.store) if is_postgres(args.store) else str(sqlite_path(args.store, args.state_dir))
        open_store = store_opener(args.store, args.state_dir, read_only=True)
    except ValueError as err:
        print(f"connmon: {err}", file=sys.stderr)
        return 2
    failures = _store_errors()
    try:
        store = open_store()
    except failures as err:
        print(f"connmon: cannot read the history at {where}: {_one_line(err)}", file=sys.stderr)
        return 3
    try:
        period = Period(args.first, args.last, args.timezone or region_zone or local_zone())
        report = build_report(store, period, kind=args.kind, district=args.district, configured=configured,
                              now=time.time(), maintenance=maintenance, thresholds=thresholds, calendars=calendars)
    except failures as err:  # not a connmon history (an empty or foreign file), or an I/O error
        print(f"connmon: cannot read the history at {where}: {_one_line(err)}", file=sys.stderr)
        return 3
    finally:
        store.close()
    from monitor.report.render import render  # jinja2 and tabulate only for a report

    text = render(report, args.format, args.lang or region_language)
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{args.output}: {len(report.sites)} sites, {report.period}", file=sys.stderr)
    return 0


async def _probe(args: argparse.Namespace) -> int:
    config = load_config(args.config, allow_empty=args.allow_empty)
    every = build_targets(config)
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
    not_probed = [t for t in chosen if not t.probed] if args.endpoint else []
    if not_probed:  # asked by name: say why nothing is sent rather than skip it quietly
        print("connmon: not probed (only status: connected sites are): "
              + ", ".join(f"{t.name} (status: {t.status})" for t in not_probed), file=sys.stderr)
        return 2
    by_agent = [t.name for t in chosen if t.probed and not t.probed_by_centre] if args.endpoint else []
    if by_agent:
        print("connmon: not probed from here (mode: agent; the site's agent measures it and reports to the "
              "daemon): " + ", ".join(by_agent), file=sys.stderr)
        return 2
    # planned and retired sites are counted by the daemon, never probed; agent sites are measured from inside
    chosen = tuple(t for t in probed(chosen) if t.probed_by_centre)
    engine = IcmpEngine.open(args.icmp_mode)
    ctx = ProbeContext(engine, time.time, iperf3_path=find_iperf3(),
                       throughput_slots=asyncio.Semaphore(config.throughput_max_concurrent))
    tests: dict[str, ThroughputResult] = {}
    try:
        results = [r for r in await PROBES["icmp"](chosen, ctx) if isinstance(r, IcmpResult)]
        if args.throughput:  # the engine stays open: the tests sample latency under load through it (issue 20)
            tests = await _throughput_now(chosen, ctx)
    finally:
        engine.close()
    if args.json:
        for result in results:
            entry = result_to_json(result)
            if args.throughput:
                entry.update(throughput_to_json(result.target, tests.get(result.target.name)))
            print(json.dumps(entry, ensure_ascii=False), flush=False)
    else:
        print(format_table(results))
        if args.throughput:
            print()
            print(format_throughput_table(chosen, tests))
    sys.stdout.flush()
    failed = [t for t in tests.values() if t.error is not None or t.target_met is False]
    return 0 if all(r.up for r in results) and not failed else 1


async def _throughput_now(targets: Sequence[Target], ctx: ProbeContext) -> dict[str, ThroughputResult]:
    """Run every configured test now, all methods at once (the context's slots bound them)."""
    by_method: dict[str, list[Target]] = {}
    for target in targets:
        if target.throughput.enabled:
            by_method.setdefault(target.throughput.method, []).append(target)
    batches = await asyncio.gather(*(PROBES[method](batch, ctx) for method, batch in by_method.items()))
    return {r.target.name: r for batch in batches for r in batch if isinstance(r, ThroughputResult)}
