"""``--store URL``: which history backend a URL names, and how to open it.

``postgresql://`` (or ``postgres://``) selects :class:`~monitor.history.postgres.PostgresStore`;
``sqlite:///path`` an SQLite file; no URL keeps ``history.sqlite3`` under ``--state-dir`` (the
default). The described form never shows a password, so it can be logged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from monitor.history.sqlite import SqliteStore, database_path
from monitor.history.store import HistoryStore


def is_postgres(url: str | None) -> bool:
    return url is not None and url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str | None, state_dir: str) -> Path:
    """The SQLite file a URL (or no URL) names.

    Raises:
        ValueError: the URL is neither sqlite:/// nor postgresql://.
    """
    if url is None:
        return database_path(state_dir)
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite://"))
    raise ValueError(f"--store {describe(url)}: expected postgresql://..., postgres://... or sqlite:///PATH")


def describe(url: str | None) -> str:
    """The URL with its password hidden."""
    from monitor.history.postgres import redact

    return "" if url is None else redact(url)


def opener(url: str | None, state_dir: str, *, read_only: bool = False,
           recover: bool = False, instance: str = "") -> Callable[[], HistoryStore]:
    """A function that opens the named store (called where the store will be used).

    ``recover`` is for the history writer alone, the file's owner: an SQLite file that is corrupt is
    moved aside and a fresh one started (:mod:`monitor.sqlite_files`, issue 25); the store's
    ``moved_aside`` says where it went. Other users (the API, reports) only fail on it.
    ``instance`` is the writer's identity on a shared PostgreSQL history (issue 19: its shard index,
    "" without ``--shard``), whose readers merge the replicas' cycles; SQLite has one instance and ignores it.
    """
    if url is not None and is_postgres(url):
        from monitor.history.postgres import PostgresStore  # psycopg only when PostgreSQL is used

        return lambda: PostgresStore(url, read_only=read_only, instance=instance)
    path = sqlite_path(url, state_dir)
    return lambda: SqliteStore(path, read_only=read_only, recover=recover)


def error_line(err: BaseException) -> str:
    """An error's message on one line, with no password in it (psycopg may quote the store's URL), for a log line
    or stderr."""
    from monitor.history.postgres import scrub  # psycopg only with PostgreSQL

    return " ".join(scrub(str(err)).split()) or type(err).__name__
