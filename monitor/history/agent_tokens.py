"""Enrolled agents' tokens and their one-time codes, in the history store (issue 18).

``connmon agent-invite`` writes a code's hash, the daemon's enrolment route trades a code for a
token and writes the token's hash, ``connmon agent-revoke`` deletes it, and the daemon reads the
hashes every few seconds: all through the store the daemon already has (SQLite under
``--state-dir``, or the shared PostgreSQL of ``--store``), so the CLI, the daemon and other
instances of a shared history agree without a reload. The tables came with schema version
:data:`~monitor.history.sqlite.AGENT_TOKENS_VERSION`; opening a :class:`TokenBook` migrates
the store first, through the backend's own migrations.

Only SHA-256 hashes are kept: neither a token nor a code can be read back from the store. Each
operation is one transaction; a code is taken by one conditional ``UPDATE`` (``used_at IS NULL``
and not expired), so two enrolments racing for one code cannot both win. Codes and tokens
themselves (their alphabet, lengths and rates) are :mod:`monitor.agent.centre.enrolment`'s.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from monitor.history.store_url import is_postgres, sqlite_path


@dataclass(frozen=True, slots=True)
class Revoked:
    """What ``connmon agent-revoke`` ended: whether the site had an enrolled token, and its open codes."""

    token: bool
    codes: int


class TokenBook:
    """The agent token and invite tables of one store, over one connection (one thread at a time).

    Args:
        execute: runs one statement with ``?`` placeholders and returns its rows (for PostgreSQL the
            placeholders are turned into ``%s``).
        transaction: a context manager that makes the statements inside it one transaction.
        close: closes the connection.
    """

    def __init__(self, execute: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]],
                 transaction: Callable[[], contextlib.AbstractContextManager[None]], close: Callable[[], None]) -> None:
        self._execute, self._transaction, self._close = execute, transaction, close

    def close(self) -> None:
        self._close()

    def tokens(self) -> dict[str, str]:
        """Every enrolled site's token hash, by site name."""
        return {str(site): str(digest) for site, digest in self._execute(
            "SELECT site, token_sha256 FROM agent_tokens", ())}

    def invite(self, site: str, code_sha256: str, created_at: float, expires_at: float) -> int:
        """Keep a new code for ``site``; its earlier open codes end (one open code per site). Returns how many did."""
        with self._transaction():
            ended = self._execute("DELETE FROM agent_invites WHERE site = ? AND used_at IS NULL RETURNING site",
                                  (site,))
            # used and expired codes are kept a while for the record, then go
            self._execute("DELETE FROM agent_invites WHERE expires_at < ?", (created_at - 30 * 86400.0,))
            self._execute("INSERT INTO agent_invites (code_sha256, site, created_at, expires_at) VALUES (?, ?, ?, ?)",
                          (code_sha256, site, created_at, expires_at))
        return len(ended)

    def redeem(self, code_sha256: str, token_sha256: str, now: float) -> str | None:
        """Take an open, unexpired code once and make ``token_sha256`` its site's token; the site, or None.

        The site's other open codes end, and its earlier token with them: enrolling again replaces it.
        """
        with self._transaction():
            rows = self._execute("UPDATE agent_invites SET used_at = ? WHERE code_sha256 = ? AND used_at IS NULL "
                                 "AND expires_at > ? RETURNING site", (now, code_sha256, now))
            if not rows:
                return None
            site = str(rows[0][0])
            self._execute("DELETE FROM agent_invites WHERE site = ? AND used_at IS NULL", (site,))
            self._execute("INSERT INTO agent_tokens (site, token_sha256, issued_at) VALUES (?, ?, ?) "
                          "ON CONFLICT (site) DO UPDATE SET token_sha256 = excluded.token_sha256, "
                          "issued_at = excluded.issued_at", (site, token_sha256, now))
        return site

    def revoke(self, site: str) -> Revoked:
        """End ``site``'s enrolled token and its open codes."""
        with self._transaction():
            token = self._execute("DELETE FROM agent_tokens WHERE site = ? RETURNING site", (site,))
            codes = self._execute("DELETE FROM agent_invites WHERE site = ? AND used_at IS NULL RETURNING site",
                                  (site,))
        return Revoked(bool(token), len(codes))


def open_book(store_url: str | None, state_dir: str) -> TokenBook:
    """The token tables of the store ``--store``/``--state-dir`` name, migrated to the current schema first.

    Raises:
        OSError, sqlite3.Error, psycopg.Error: the store cannot be opened or migrated.
    """
    if store_url is not None and is_postgres(store_url):
        return _postgres(store_url)
    return _sqlite(str(sqlite_path(store_url, state_dir)))


def _sqlite(path: str) -> TokenBook:
    from monitor.history.sqlite import SqliteStore

    SqliteStore(path).close()  # creates or migrates the file, as the daemon's writer would
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 10000")

    def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return db.execute(sql, tuple(params)).fetchall()

    @contextlib.contextmanager
    def transaction() -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")  # the write lock at once: a code is checked and taken under it
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    return TokenBook(execute, transaction, db.close)


def _postgres(url: str) -> TokenBook:
    import psycopg

    from monitor.history.postgres import PostgresStore

    PostgresStore(url).close()  # migrates under the advisory lock, as the daemon's writer would
    conn = psycopg.connect(url, autocommit=True, connect_timeout=10)

    def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        cursor = conn.execute(sql.replace("?", "%s"), tuple(params))  # fixed text of this module
        return cursor.fetchall() if cursor.description is not None else []

    @contextlib.contextmanager
    def transaction() -> Iterator[None]:
        with conn.transaction():
            yield

    return TokenBook(execute, transaction, conn.close)
