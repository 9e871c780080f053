"""The command line: ``connmon run | check | probe | report | import | agent [enrol] | agent-token | agent-invite |
agent-revoke``.

Every error the project raises on purpose is printed without a traceback and mapped to its
exit code (see :mod:`monitor.errors`): 2 for a config error, 3 for a start-up problem.
"""

from __future__ import annotations

import argparse
import asyncio
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

from monitor.cli_parser import build_parser, with_replicas
from monitor.config import ReportSettings, load_config
from monitor.config.windows import MaintenanceWindows
from monitor.errors import ConfigError, ConnmonError
from monitor.history.store import EndpointRecord
from monitor.history.store_url import describe, error_line, is_postgres, sqlite_path
from monitor.history.store_url import opener as store_opener
from monitor.icmp.engine import IcmpEngine
from monitor.logs import configure
from monitor.probe_output import format_table, format_throughput_table, result_to_json, throughput_to_json
from monitor.probes import PROBES, ProbeContext
from monitor.probes.iperf3 import find_iperf3
from monitor.report.compliance import Period, build_report
from monitor.report.kpis import Thresholds, maintenance_of
from monitor.report.school_hours import calendars_of
from monitor.results import IcmpResult, ThroughputResult
from monitor.shard import own_share
from monitor.targets import Target, build_targets, probed, select

# The centre's own libraries, installed by the extra connmon[centre] (issue 18): a site agent has none of
# them, so every import of them is inside the command that needs it, and a missing one is said plainly.
CENTRE_MODULES = frozenset({"apscheduler", "tzlocal", "bcrypt", "jinja2", "markupsafe", "tabulate", "babel", "psycopg",
                            "psycopg_binary", "psycopg_pool", "openpyxl", "et_xmlfile"})


def _store_errors() -> tuple[type[BaseException], ...]:
    """The errors a store raises when it cannot be read (psycopg's only when it is installed)."""
    try:
        import psycopg
    except ImportError:
        return (OSError, sqlite3.Error)
    return (OSError, sqlite3.Error, psycopg.Error)


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
    with_replicas(parser, args)
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
                print(f"connmon: the history store {describe(args.store) or args.state_dir}: {error_line(err)}",
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
        print(f"connmon: cannot read the history at {where}: {error_line(err)}", file=sys.stderr)
        return 3
    try:
        period = Period(args.first, args.last, args.timezone or region_zone or local_zone())
        report = build_report(store, period, kind=args.kind, district=args.district, configured=configured,
                              now=time.time(), maintenance=maintenance, thresholds=thresholds, calendars=calendars)
    except failures as err:  # not a connmon history (an empty or foreign file), or an I/O error
        print(f"connmon: cannot read the history at {where}: {error_line(err)}", file=sys.stderr)
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
