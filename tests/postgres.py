"""A real PostgreSQL server for the tests: Debian's binaries, a temporary cluster, a Unix socket only.

The server runs as ``nobody`` (PostgreSQL refuses to run as root), listens on no TCP address
(``listen_addresses=''``), only on a socket in its own temporary directory, and is stopped and
removed at the end of the session. Each test gets a fresh database in it.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need

_databases = itertools.count(1)


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class PgServer:
    bin_dir: Path
    socket_dir: Path
    user: str = "connmon"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        return subprocess.run([str(self.bin_dir / "psql"), "-h", str(self.socket_dir), "-U", self.user, "-d",
                               database, "-XAtc", sql], check=True, capture_output=True, text=True).stdout

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(_databases)}"
        self.psql(f"CREATE DATABASE {name}")
        return name


def _as_nobody(*argv: str) -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", *argv]


@dataclass(frozen=True)
class PgCluster:
    """A temporary cluster (data directory and socket directory) that a test may start and stop at will."""

    server: PgServer
    top: Path

    @classmethod
    def create(cls) -> PgCluster:
        """Initialise a cluster in a new temporary directory; it is not started."""
        bin_dir = _bin_dir()
        need(bin_dir is not None, "needs Debian's postgresql package (scripts/install --test)")
        need(os.geteuid() == 0, "needs root to run the server as an unprivileged user")
        assert bin_dir is not None
        top = Path(tempfile.mkdtemp(prefix="connmon-pg-"))
        os.chmod(top, 0o755)
        data, sock = top / "data", top / "sock"
        data.mkdir()
        sock.mkdir()
        shutil.chown(data, "nobody", "nogroup")
        shutil.chown(sock, "nobody", "nogroup")
        os.chmod(sock, 0o777)  # clients of any uid (tests, daemons) may connect
        subprocess.run(_as_nobody(str(bin_dir / "initdb"), "-D", str(data), "-U", "connmon", "--auth=trust",
                                  "-E", "UTF8", "--locale=C.UTF-8"), check=True, capture_output=True, cwd=top)
        log = top / "server.log"
        log.touch()
        shutil.chown(log, "nobody", "nogroup")
        return cls(PgServer(bin_dir, sock), top)

    def start(self) -> None:
        subprocess.run(_as_nobody(str(self.server.bin_dir / "pg_ctl"), "-D", str(self.top / "data"), "-l",
                                  str(self.top / "server.log"), "-w", "-t", "60", "-o",
                                  f"-c listen_addresses='' -c unix_socket_directories={self.server.socket_dir} "
                                  "-c fsync=off", "start"), check=True, capture_output=True, cwd=self.top)

    def stop(self) -> None:
        subprocess.run(_as_nobody(str(self.server.bin_dir / "pg_ctl"), "-D", str(self.top / "data"), "-m", "fast",
                                  "-w", "stop"), capture_output=True, cwd=self.top)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server on a Unix socket in a temporary directory, for the whole session."""
    cluster = PgCluster.create()
    cluster.start()
    try:
        yield cluster.server
    finally:
        cluster.remove()


@pytest.fixture()
def pg_url(pg_server: PgServer) -> str:
    """The URL of a fresh, empty database."""
    return pg_server.url(pg_server.new_database())
