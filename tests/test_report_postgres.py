"""``connmon report --store``: the same golden report from PostgreSQL and from sqlite:///, clear errors."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from monitor.history.postgres import PostgresStore, scrub
from monitor.history.sqlite import SqliteStore
from monitor.report.compliance import Period
from tests.factories import cause_day, october_rows, record_october
from tests.netlab import child_env
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.report_golden import GOLDEN_CSV


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", "report", "--from", "2026-10-01", "--to", "2026-10-31",
                           "--timezone", "UTC", "--format", "csv", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=child_env())


def golden_report(state: Path) -> str:
    """The SQLite report of the same rows, site table and KPI table: the golden site table is checked in
    tests/test_report.py, so equality here means the backends agree on every figure, KPIs included."""
    record_october(state)
    proc = report("--state-dir", str(state))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n\n")[0] + "\n" == GOLDEN_CSV
    return proc.stdout


def test_report_from_postgres_is_golden(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    """The report over a PostgreSQL history equals the SQLite golden report, row for row."""
    store = PostgresStore(pg_url)
    store.write([], october_rows())
    store.close()
    proc = report("--store", pg_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == golden_report(tmp_path / "default")


def test_report_from_sqlite_url_is_golden(tmp_path: Path) -> None:
    """``--store sqlite:///PATH`` reads that file."""
    path = tmp_path / "elsewhere.sqlite3"
    store = SqliteStore(path)
    store.write([], october_rows())
    store.close()
    proc = report("--store", f"sqlite://{path}", "--state-dir", str(tmp_path / "unused"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == golden_report(tmp_path / "default")


def test_unreachable_postgres_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """A database that cannot be reached: one line naming it, no password, no traceback, exit 3."""
    url = f"postgresql://connmon:s3cret@/history?host={tmp_path}/nothing-listens-here&connect_timeout=2"
    proc = report("--store", url)
    assert proc.returncode == 3
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("connmon: cannot read the history at postgresql://connmon:***@/history")
    assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_store_scheme_is_a_usage_error() -> None:
    """A URL that is neither PostgreSQL nor sqlite:/// is refused with exit 2."""
    proc = report("--store", "mysql://u:pw@db/h")
    assert proc.returncode == 2
    assert "expected postgresql://" in proc.stderr and "pw@" not in proc.stderr


def test_scrub_hides_passwords_in_messages() -> None:
    """Driver messages that quote a URL or a password setting lose the password."""
    assert "pw" not in scrub('connection to "postgresql://u:pw@h/d" failed; password=pw')


def test_the_report_by_cause_from_postgres_equals_sqlites(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    """A day with every cause of downtime and two upstream nodes (issue 21): the CSV from PostgreSQL, hours by
    cause and the upstream section included, is the one from SQLite."""
    day = Period(dt.date(2026, 11, 10), dt.date(2026, 11, 10), "UTC")
    rows = cause_day(day.start)
    store = PostgresStore(pg_url)
    store.write([], rows)
    store.close()
    path = tmp_path / "history.sqlite3"
    store = SqliteStore(path)
    store.write([], rows)
    store.close()
    dates = ("--from", "2026-11-10", "--to", "2026-11-10")
    from_pg, from_sqlite = report("--store", pg_url, *dates), report("--store", f"sqlite://{path}", *dates)
    assert from_pg.returncode == 0 and from_sqlite.returncode == 0, from_pg.stderr + from_sqlite.stderr
    assert from_pg.stdout == from_sqlite.stdout
    assert ",hours_site_down,hours_upstream_down,upstream_down_hours_by_node,hours_maintenance," in from_pg.stdout
    assert from_pg.stdout.endswith("agg,router,138,129,93.4783,1.5000,2,2.0000\n"
                                   "isp,pop,138,135,97.8261,0.5000,1,0.5000\n")
