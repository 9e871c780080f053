"""Openers of fresh history stores for tests that run against both backends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from monitor.history.postgres import PostgresStore
from monitor.history.sqlite import SqliteStore
from monitor.history.store import HistoryStore

Opener = Callable[[], HistoryStore]


class StoreOpeners:
    """Opens connections to one store of one backend, and closes every one it opened."""

    def __init__(self, backend: str, sqlite_path: Path, pg_url: str | None) -> None:
        self.backend, self.sqlite_path, self.pg_url = backend, sqlite_path, pg_url
        self.opened: list[HistoryStore] = []

    def __call__(self) -> HistoryStore:
        if self.backend == "sqlite":
            self.opened.append(SqliteStore(self.sqlite_path))
        else:
            assert self.pg_url is not None
            self.opened.append(PostgresStore(self.pg_url))
        return self.opened[-1]

    def close_all(self, closed_already: bool = False) -> None:
        """Close what was opened; ``closed_already``: a sink may have closed some (their second close may raise)."""
        for store in self.opened:
            if closed_already:
                with contextlib.suppress(Exception):
                    store.close()
            else:
                store.close()
