"""One owner per state directory (issue 25): a second ``connmon run`` or ``connmon agent`` on the same directory,
or a second instance with the same identity on a shared PostgreSQL history, exits 2 naming the first one's PID.

Daemons probe loopback addresses only and listen on 127.0.0.1 (ports 19990-19994); agents report to a centre
that does not answer (nothing listens on their port), which they survive by design.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.errors import StateInUseError
from monitor.state_lock import LOCK_FILE_NAME, StateLock
from tests.conftest import need_root
from tests.factories import ONE_LOOPBACK_SITE, write_config
from tests.netlab import child_env
from tests.postgres import PgServer, pg_server, pg_url  # noqa: F401 (fixtures)
from tests.running import request

HOST = "127.0.0.1"
PORT = 19990  # this module's range: 19990-19992
SITES = ONE_LOOPBACK_SITE


@contextlib.contextmanager
def started(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A connmon process, stopped (SIGTERM, then SIGKILL) at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "monitor", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def holds_lock(proc: subprocess.Popen[str], directory: Path, seconds: float = 30.0) -> None:
    """Wait until ``proc`` has written its PID into the directory's lock file."""
    deadline = time.monotonic() + seconds
    lock = directory / LOCK_FILE_NAME
    while not (lock.exists() and lock.read_text(encoding="ascii").strip() == str(proc.pid)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the process did not take the lock"
        time.sleep(0.1)


def ready(proc: subprocess.Popen[str], port: int, seconds: float = 30.0) -> None:
    """Wait until the daemon answers ``/-/ready`` (its locks are taken before it listens)."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        with contextlib.suppress(OSError):
            if request(f"http://{HOST}:{port}/-/ready")[0] == 200:
                return
        assert time.monotonic() < deadline, "the daemon did not get ready"
        time.sleep(0.1)


def refused(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *argv], capture_output=True, text=True, timeout=60,
                          check=False, env=child_env())


def test_a_second_take_is_refused_naming_the_holder_and_a_release_frees_the_directory(tmp_path: Path) -> None:
    """The lock is exclusive even within one process; the refusal names the directory and the PID; release frees it."""
    state = tmp_path / "state"
    first = StateLock.take(state, what="connmon run")
    assert first.held and (state / LOCK_FILE_NAME).read_text(encoding="ascii") == f"{os.getpid()}\n"
    with pytest.raises(StateInUseError) as caught:
        StateLock.take(state, what="connmon run")
    assert str(state) in str(caught.value) and f"PID {os.getpid()}" in str(caught.value)
    assert caught.value.exit_code == 2
    first.release()
    assert (state / LOCK_FILE_NAME).read_text(encoding="ascii") == ""  # no stale PID left behind
    again = StateLock.take(state, what="connmon run")
    assert again.held
    again.release()


def test_two_daemons_on_one_state_dir_the_second_exits_2_naming_the_first(tmp_path: Path) -> None:
    """A second ``connmon run`` on a state dir in use exits 2 naming the directory and the first one's PID;
    the first goes on, and once it has stopped the directory can be used again."""
    need_root()
    cfg = write_config(tmp_path, SITES)
    state = tmp_path / "state"
    argv = ["run", "--config", str(cfg), "--state-dir", str(state)]
    with started([*argv, "--listen", f"{HOST}:{PORT}"]) as first:
        ready(first, PORT)
        holds_lock(first, state)
        second = refused([*argv, "--listen", f"{HOST}:{PORT + 1}"])
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and str(state) in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    with started([*argv, "--listen", f"{HOST}:{PORT + 1}"]) as third:
        holds_lock(third, state)


def agent_config(tmp_path: Path, state: Path) -> Path:
    token = tmp_path / "token"
    token.write_text("t0ken\n", encoding="utf-8")
    token.chmod(0o600)
    return write_config(tmp_path, f"""
centre: http://{HOST}:{PORT + 2}
site: school-1
token_file: {token}
state_dir: {state}
interval: 1s
icmp: {{count: 1, timeout: 300ms}}
""", name="agent.yaml")


def test_two_agents_on_one_spool_the_second_exits_2_naming_the_first(tmp_path: Path) -> None:
    """A second ``connmon agent`` on a spool directory in use exits 2 naming the directory and the first's PID."""
    need_root()
    state = tmp_path / "spool"
    cfg = agent_config(tmp_path, state)
    with started(["agent", "--config", str(cfg)]) as first:
        holds_lock(first, state)
        second = refused(["agent", "--config", str(cfg)])
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and str(state) in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None
    assert (state / "spool.sqlite3").exists()  # the first one's spool, untouched by the second


def test_one_identity_per_shared_postgres_history(pg_url: str) -> None:  # noqa: F811 (fixture)
    """On PostgreSQL the identity's advisory lock refuses a second holder, naming the first's PID; another
    shard's identity is free, and a released identity can be taken again."""
    from monitor.history.postgres_identity import IdentityLock

    first = IdentityLock.take(pg_url, "shard 0/2")
    try:
        with pytest.raises(StateInUseError) as caught:
            IdentityLock.take(pg_url, "shard 0/2")
        assert f"connmon pid {os.getpid()}" in str(caught.value) and "shard 0/2" in str(caught.value)
        IdentityLock.take(pg_url, "shard 1/2").release()  # sharding is what the lock must allow
    finally:
        first.release()
    IdentityLock.take(pg_url, "shard 0/2").release()


def test_two_daemons_with_one_shard_on_one_postgres_the_second_exits_2(tmp_path: Path,
                                                                        pg_url: str) -> None:  # noqa: F811
    """Two ``connmon run --shard 0/2`` on one PostgreSQL history (each with its own state dir): the second exits 2
    naming the first's PID; ``--shard 1/2`` beside them runs."""
    need_root()
    cfg = write_config(tmp_path, SITES)
    common = ["run", "--config", str(cfg), "--store", pg_url]
    with started([*common, "--shard", "0/2", "--state-dir", str(tmp_path / "s0"),
                  "--listen", f"{HOST}:{PORT}"]) as first:
        ready(first, PORT)
        second = refused([*common, "--shard", "0/2", "--state-dir", str(tmp_path / "s0-again"),
                          "--listen", f"{HOST}:{PORT + 1}"])
        assert second.returncode == 2, second.stderr
        assert f"connmon pid {first.pid}" in second.stderr and "shard 0/2" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        with started([*common, "--shard", "1/2", "--state-dir", str(tmp_path / "s1"),
                      "--listen", f"{HOST}:{PORT + 1}"]) as other:
            ready(other, PORT + 1)
            assert first.poll() is None


def test_an_identity_lost_with_its_connection_is_taken_again_or_its_new_holder_named(
        pg_server: PgServer, pg_url: str) -> None:  # noqa: F811 (fixtures)
    """A lock whose connection the server ended (a restart) is taken again by ``keep``; if another instance took it
    meanwhile, ``keep`` names that one, and takes it back once it is free."""
    from monitor.history.postgres_identity import IdentityLock

    first = IdentityLock.take(pg_url, "shard 1/3")
    database = pg_url.split("@/")[1].split("?")[0]
    pg_server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'connmon pid%' "
                   f"AND datname = '{database}'")
    deadline = time.monotonic() + 10
    while True:  # free once the server has ended the first one's connection
        try:
            other = IdentityLock.take(pg_url, "shard 1/3")
            break
        except StateInUseError:
            assert time.monotonic() < deadline, "the terminated connection still holds the lock"
            time.sleep(0.1)
    try:
        with pytest.raises(StateInUseError) as caught:
            first.keep()
        assert "shard 1/3" in str(caught.value) and not first.held
    finally:
        other.release()
    first.keep()
    assert first.held
    with pytest.raises(StateInUseError):
        IdentityLock.take(pg_url, "shard 1/3")
    first.release()
