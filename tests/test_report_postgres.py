"""``connmon report --store``: the same golden report from PostgreSQL and from sqlite:///, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from monitor.history.postgres import PostgresStore, scrub
from monitor.history.sqlite import SqliteStore
from tests.factories import october_rows, record_october
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
