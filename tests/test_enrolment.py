"""Enrolment (issue 18): a one-time code from ``connmon agent-invite``, traded once by ``connmon agent enrol``.

The token tables are checked on both stores (SQLite and a real PostgreSQL); then, for each store,
a real ``connmon run`` on 127.0.0.1 takes codes from the CLI, a real ``connmon agent enrol`` writes the
agent's config, and a real ``connmon agent`` started with it reports: its results show in the
centre's ``/metrics`` and history. Used, expired and wrong codes get one answer; wrong codes are rate
limited; a revoke by the CLI (another process) makes the token's next request 401; enrolling again
replaces the token. Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.centre.enrolment import ALPHABET, WRONG_CODE, code_hash, is_code, new_code, normalise
from monitor.agent.centre.registry import token_hash
from monitor.agent.site.config import load_agent_config
from monitor.history.agent_tokens import TokenBook, open_book
from monitor.history.sqlite import database_path
from monitor.history.store_url import opener as store_opener
from tests.conftest import need_root
from tests.pki import make_pki
from tests.postgres import pg_server, pg_url  # noqa: F401 (fixtures)
from tests.running import samples, stop_process, value

HOST = "127.0.0.1"
PORTS = {"sqlite": 19580, "postgresql": 19581, "https": 19582}  # this module's range is 19580-19599
SITE = "school-enrol"
OTHER = "school-other"
T0 = 1_790_000_000.0


# ------------------------------------------------------------------------------------------------ codes
def test_codes_are_twelve_crockford_characters_in_three_groups_and_typed_loosely() -> None:
    """A code is XXXX-XXXX-XXXX of Crockford's base 32; case, dashes and the look-alikes O, I, L do not matter."""
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}", code) and is_code(code)
        assert set(normalise(code)) <= set(ALPHABET) and not set(normalise(code)) & set("ILOU")
    assert code_hash("K7QF-M2XD-9PZ0") == code_hash("k7qfm2xd9pzo") == code_hash("K7QF M2XD 9PZ0")
    assert code_hash("1111-1111-1111") == code_hash("iIlL-1111-1111")
    assert not is_code("K7QF-M2XD") and not is_code("K7QF--M2XD-9PZ0") and not is_code("K7QF-M2XD-9PZ0-AAAA")


# ------------------------------------------------------------------------------------------------ the store
@pytest.fixture(params=["sqlite", "postgresql"])
def book(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenBook]:
    if request.param == "sqlite":
        the_book = open_book(None, str(tmp_path))
    else:
        the_book = open_book(request.getfixturevalue("pg_url"), str(tmp_path))
    try:
        yield the_book
    finally:
        the_book.close()


def test_a_code_is_taken_once_before_it_expires_and_a_revoke_ends_token_and_codes(book: TokenBook) -> None:
    """Redeem gives the site once; a used, expired or unknown code gives None; a new invite ends the site's open
    code; enrolling again replaces the token; a revoke ends the token and the open codes."""
    assert book.tokens() == {}
    assert book.invite(SITE, code_hash("AAAA-AAAA-AAAA"), T0, T0 + 100) == 0
    assert book.invite(SITE, code_hash("BBBB-BBBB-BBBB"), T0, T0 + 100) == 1  # the first one ends
    assert book.redeem(code_hash("AAAA-AAAA-AAAA"), "h0", T0 + 1) is None
    assert book.redeem(code_hash("CCCC-CCCC-CCCC"), "h0", T0 + 1) is None  # unknown
    assert book.redeem(code_hash("BBBB-BBBB-BBBB"), "h1", T0 + 1) == SITE
    assert book.redeem(code_hash("BBBB-BBBB-BBBB"), "h2", T0 + 2) is None  # used
    assert book.tokens() == {SITE: "h1"}
    book.invite(OTHER, code_hash("DDDD-DDDD-DDDD"), T0, T0 + 100)
    assert book.redeem(code_hash("DDDD-DDDD-DDDD"), "h3", T0 + 100) is None  # expired (at its end)
    book.invite(SITE, code_hash("EEEE-EEEE-EEEE"), T0 + 2, T0 + 100)
    assert book.redeem(code_hash("EEEE-EEEE-EEEE"), "h4", T0 + 3) == SITE  # enrolling again replaces the token
    assert book.tokens() == {SITE: "h4"}
    book.invite(SITE, code_hash("FFFF-FFFF-FFFF"), T0 + 3, T0 + 100)
    revoked = book.revoke(SITE)
    assert (revoked.token, revoked.codes) == (True, 1)
    assert book.redeem(code_hash("FFFF-FFFF-FFFF"), "h5", T0 + 4) is None
    assert book.tokens() == {}
    assert (book.revoke(SITE).token, book.revoke(SITE).codes) == (False, 0)


# ------------------------------------------------------------------------------------------------ the centre
def _centre_config(tmp: Path) -> Path:
    path = tmp / "connmon.yaml"
    path.write_text(f"""
defaults:
  icmp: {{interval: 60s, count: 3, spacing: 50ms, timeout: 500ms}}
groups:
  - name: vsat
    kind: school
    district: Shalkar
    link: satellite
    mode: agent
    endpoints:
      - {{name: {SITE}}}
      - {{name: {OTHER}, agent: {{token_sha256: {token_hash("yaml-token-of-other")}}}}}
  - name: lan
    kind: school
    endpoints:
      - {{name: lo-probed, host: 127.0.0.2, mode: probe}}
""", encoding="utf-8")
    return path


def _connmon(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def _post(port: int, path: str, body: Any, token: str | None = None) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as response:
            return int(response.status), dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def _metrics(port: int) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{HOST}:{port}/metrics", timeout=30) as response:
        return samples(response.read().decode("utf-8"))


def _until(check: Any, what: str, attempts: int = 160) -> Any:
    """Poll ``check()`` until it returns something true (bounded: quarter-second tries)."""
    last = None
    for _ in range(attempts):
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within the bound (last: {last!r})")


def _token_works(port: int, site: str, token: str) -> int:
    """The status the agent API answers this token with (200: a valid token of ``site``; 401: none)."""
    return _post(port, "/api/v1/agent/slot", {"site": site}, token)[0]


@contextlib.contextmanager
def _centre(tmp: Path, port: int, store: list[str]) -> Iterator[subprocess.Popen[str]]:
    log = tmp / "centre.log"
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(_centre_config(tmp)),
                                 "--listen", f"{HOST}:{port}", *store], stdout=subprocess.DEVNULL, stderr=err,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _until(lambda: "connmon started" in log.read_text() or proc.poll() is not None, "start-up")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def _agent(config: Path, log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "agent", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        yield proc
    finally:
        stop_process(proc)


def _invite(store: list[str], tmp: Path, site: str, *extra: str) -> str:
    done = _connmon("agent-invite", site, "--config", str(tmp / "connmon.yaml"), *store, *extra)
    assert done.returncode == 0, done.stderr
    code = done.stdout.strip()
    assert is_code(code) and "connmon agent enrol" in done.stderr, (done.stdout, done.stderr)
    return code


def _enrol(port: int, code: str, config: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """``connmon agent enrol`` as root, for the agent's user ``nobody`` (the test's stand-in for connmon-agent)."""
    return _connmon("agent", "enrol", "--centre", f"http://{HOST}:{port}", "--code", code, "--config", str(config),
                    "--state-dir", str(state), "--user", "nobody")


def _history_cycles(store: list[str], site: str) -> int:
    opened = store_opener(store[1] if store[0] == "--store" else None, store[1], read_only=True)()
    try:
        return len(list(opened.icmp_cycles(site, 0, time.time() + 3600)))
    finally:
        opened.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_invite_enrol_agent_reports_then_codes_are_single_use_rate_limited_and_revocable(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The whole enrolment on a live centre: the written config runs a real agent whose results reach /metrics and
    the history; the code's second use, an expired code and a wrong one get the same 403 and text; a revoke in
    another process makes the token's next request 401; enrolling again replaces the token; ten wrong codes from one
    address, and the next request is 429 whatever its code."""
    need_root()  # the agent's ICMP to 127.0.0.1 on a raw socket
    port = PORTS[kind]
    store = ["--store", request.getfixturevalue("pg_url")] if kind == "postgresql" else \
        ["--state-dir", str(tmp_path / "state")]
    with _centre(tmp_path, port, store) as centre:
        code = _invite(store, tmp_path, SITE)
        config, agent_state = tmp_path / "site" / "agent.yaml", tmp_path / "site-state"
        done = _enrol(port, code.lower().replace("-", ""), config, agent_state)  # typed loosely
        assert done.returncode == 0, done.stderr
        assert f"enrolled site {SITE}" in done.stdout
        token_file = config.parent / "token"
        nobody = pwd.getpwnam("nobody")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and token_file.stat().st_uid == nobody.pw_uid
        assert stat.S_IMODE(agent_state.stat().st_mode) == 0o700 and agent_state.stat().st_uid == nobody.pw_uid
        first_token = token_file.read_text().strip()
        written = config.read_text()
        assert f'site: "{SITE}"' in written and f'centre: "http://{HOST}:{port}"' in written
        assert first_token not in written
        with _agent(config, tmp_path / "agent.log") as agent:
            parsed = _until(lambda: (lambda p: p if value(p, "connmon_icmp_packets_sent_total", endpoint=SITE) >= 3
                                     else None)(_metrics(port)), "the agent's first results in /metrics")
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()[-3000:]
        assert value(parsed, "connmon_up", endpoint=SITE, kind="school", district="Shalkar", link="satellite") == 1
        assert value(parsed, "connmon_agent_enrolments_total") == 1
        _until(lambda: _history_cycles(store, SITE) >= 1, "the agent's results in the history")

        # the same code again, an expired code and a wrong one: one answer
        again = _enrol(port, code, tmp_path / "again" / "agent.yaml", tmp_path / "again-state")
        assert again.returncode == 1 and WRONG_CODE in again.stderr and "HTTP 403" in again.stderr
        assert not (tmp_path / "again").exists()
        short = _invite(store, tmp_path, OTHER, "--expires", "100ms")
        time.sleep(0.3)  # past its expiry; what is asserted is the answer, not a time
        answers = {json.dumps(_post(port, "/api/v1/agent/enrol", {"code": c})[::2])
                   for c in (code, short, "ZZZZ-ZZZZ-ZZZZ")}
        assert answers == {json.dumps([403, {"error": WRONG_CODE, "parameter": "code"}])}
        assert _token_works(port, SITE, first_token) == 200

        # a revoke by the CLI: the next request with the token is 401; the YAML's token of another site stays
        revoked = _connmon("agent-revoke", SITE, *store)
        assert revoked.returncode == 0 and "token revoked" in revoked.stdout, revoked.stderr
        _until(lambda: _token_works(port, SITE, first_token) == 401, "the revoked token refused")
        assert _token_works(port, OTHER, "yaml-token-of-other") == 200
        assert _connmon("agent-revoke", SITE, *store).returncode == 1  # nothing left to revoke

        # enrolling again: a new token that works at once; the old one stays refused
        done = _enrol(port, _invite(store, tmp_path, SITE), config, agent_state)
        assert done.returncode == 0, done.stderr
        second_token = token_file.read_text().strip()
        assert second_token != first_token
        assert _token_works(port, SITE, second_token) == 200
        assert _token_works(port, SITE, first_token) == 401

        # wrong codes are limited per address: ten at once, then 429 before any code is looked at
        fresh = _invite(store, tmp_path, SITE)
        statuses = [_post(port, "/api/v1/agent/enrol", {"code": "ZZZZ-ZZZZ-ZZZ" + str(i % 10)})[0]
                    for i in range(6)]  # four wrong codes were sent above
        assert statuses == [403] * 6
        status, headers, answer = _post(port, "/api/v1/agent/enrol", {"code": fresh})
        assert status == 429 and int(headers["Retry-After"]) >= 1, answer
        parsed = _metrics(port)
        assert value(parsed, "connmon_agent_enrolments_refused_total", reason="code") == 10
        assert value(parsed, "connmon_agent_enrolments_refused_total", reason="rate_limited") == 1
        assert value(parsed, "connmon_agent_enrolments_total") == 2
        # not an agent's token refused: a technician's typo does not raise ConnmonAgentRequestsRejected
        assert value(parsed, "connmon_agent_requests_rejected_total", code="403") == 0
        assert _post(port, "/api/v1/agent/enrol", {"code": "not a code"})[0] == 400  # malformed: not a guess
        assert centre.poll() is None


def test_an_invite_is_only_for_an_agent_site_of_the_config(tmp_path: Path) -> None:
    """``agent-invite`` refuses a name the config lacks and a probed site, and writes no code for them."""
    _centre_config(tmp_path)
    store = ["--state-dir", str(tmp_path / "state")]
    for site, said in (("nowhere", "no site named 'nowhere'"), ("lo-probed", "has mode: probe, not agent")):
        done = _connmon("agent-invite", site, "--config", str(tmp_path / "connmon.yaml"), *store)
        assert done.returncode == 1 and said in done.stderr and not done.stdout
    assert not database_path(tmp_path / "state").exists()


def test_enrolment_over_https_needs_the_centres_ca_and_copies_it_beside_the_config(tmp_path: Path) -> None:
    """Against a centre with a private CA, enrol without ``--ca`` says to give it (and writes nothing); with it,
    the CA is copied beside the config, the config names it, and the token works over HTTPS."""
    pki = make_pki(tmp_path, HOST)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n",
                   encoding="utf-8")
    port = PORTS["https"]
    store = ["--state-dir", str(tmp_path / "state")]
    with _centre(tmp_path, port, [*store, "--web.config.file", str(web)]):
        code = _invite(store, tmp_path, SITE)
        config = tmp_path / "site" / "agent.yaml"
        argv = ["agent", "enrol", "--centre", f"https://{HOST}:{port}", "--code", code, "--config", str(config),
                "--state-dir", str(tmp_path / "site-state")]
        untrusted = _connmon(*argv)
        assert untrusted.returncode == 1 and "--ca FILE" in untrusted.stderr and not config.exists()
        done = _connmon(*argv, "--ca", str(pki.ca))
        assert done.returncode == 0, done.stderr
        loaded = load_agent_config(config)
        assert loaded.ca_file == config.parent / "centre-ca.pem" and loaded.site == SITE
        assert loaded.ca_file.read_bytes() == pki.ca.read_bytes()
        context = ssl.create_default_context(cafile=str(loaded.ca_file))
        req = urllib.request.Request(f"https://{HOST}:{port}/api/v1/agent/slot", method="POST",
                                     data=json.dumps({"site": SITE}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {loaded.token}"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=context))
        with opener.open(req, timeout=30) as response:
            assert response.status == 200


# ------------------------------------------------------------------------------------------------ files
def test_enrol_writes_through_no_symlink_planted_at_its_temporary_names(tmp_path: Path) -> None:
    """In a directory anyone may write (mode 1777), links planted at the temporary names the files are written
    through (``.token.PID.tmp``, ``.agent.yaml.PID.tmp``) are not followed: their targets keep their text (or are
    not made), and the token and config land where they belong, the token 0600."""
    from monitor.agent.site.enrol import TOKEN_NAME, write_agent_files

    directory = tmp_path / "etc"
    directory.mkdir()
    directory.chmod(0o1777)
    victim, absent = tmp_path / "victim", tmp_path / "made-by-the-link"
    victim.write_text("root's own file\n", encoding="utf-8")
    (directory / f".{TOKEN_NAME}.{os.getpid()}.tmp").symlink_to(victim)
    (directory / f".agent.yaml.{os.getpid()}.tmp").symlink_to(absent)
    config = directory / "agent.yaml"
    write_agent_files(config, "https://centre.example:9077", SITE, "the-token", tmp_path / "state", None, None)
    assert victim.read_text(encoding="utf-8") == "root's own file\n"
    assert not absent.exists() and not absent.is_symlink()
    token = directory / TOKEN_NAME
    assert not token.is_symlink() and token.read_text(encoding="ascii") == "the-token\n"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert load_agent_config(config).site == SITE
    assert sorted(p.name for p in directory.iterdir()) == ["agent.yaml", TOKEN_NAME]  # no temporary left
