"""Saying what is wrong with TLS (issue 25): located config errors, the centre's expiring certificate, TLS failures.

Everything runs on 127.0.0.1 with certificates made by the ``openssl`` command (:mod:`tests.pki`): a bad
``ca_file`` at the agent and a bad certificate or key at the centre stop the real CLI with exit 2; a real
``connmon run`` with an expired certificate warns and exports its expiry; a real ``connmon agent`` that does
not trust the centre's CA logs a TLS failure naming the cause; the agent's client, against a small TLS server,
names each other cause (expired, name mismatch, a plain-HTTP port).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from monitor.agent.centre.registry import token_hash
from monitor.agent.site.client import CentreClient, CentreTlsFailure, CentreUnreachable, TlsCause
from monitor.agent.site.config import load_agent_config
from monitor.errors import ConfigError
from monitor.exposition.families import ShardLabels
from monitor.web.certificate import WARN_DAYS, CertificateExposition, ServedCertificate, read_certificate
from monitor.web.config import load_web_config
from monitor.web.handshakes import LOG_SECONDS, HandshakeFailure, HandshakeWatch
from tests.factories import Clock
from tests.pki import Pki, make_pki, openssl, server_certificate
from tests.running import request, samples, stop_process, value

HOST = "127.0.0.1"
CENTRE_PORT, AGENT_CENTRE_PORT, CLIENT_PORT = 19995, 19996, 19997
TOKEN = "token-of-tls-school"
DAY = 86400.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), HOST)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})


def agent_yaml(directory: Path, centre: str, extra: str = "") -> Path:
    token = directory / "token"
    token.write_text(TOKEN + "\n", encoding="utf-8")
    token.chmod(0o600)
    path = directory / "agent.yaml"
    path.write_text(f"centre: {centre}\nsite: tls-school\ntoken_file: token\nstate_dir: {directory / 'spool'}\n"
                    f"interval: 1s\nicmp: {{count: 1, spacing: 10ms, timeout: 200ms}}\n{extra}", encoding="utf-8")
    return path


def centre_yaml(directory: Path) -> Path:
    """A centre with one agent site and nothing to probe itself: every byte stays on 127.0.0.1."""
    path = directory / "centre.yaml"
    path.write_text("defaults: {icmp: {interval: 1s, count: 1, timeout: 200ms}}\ngroups:\n"
                    "  - {name: vsat, kind: school, mode: agent, endpoints: "
                    f"[{{name: tls-school, agent: {{token_sha256: {token_hash(TOKEN)}}}}}]}}\n", encoding="utf-8")
    return path


def web_yaml(directory: Path, cert: Path, key: Path, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n", encoding="utf-8")
    return path


def openssl_not_after(cert: Path) -> float:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-enddate"], capture_output=True, text=True,
                         check=True).stdout.strip().split("=", 1)[1]
    return dt.datetime.strptime(out, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC).timestamp()


def accept_any() -> ssl.SSLContext:
    """A client context that verifies nothing: a scraper told to accept the certificate, for the test."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


@contextlib.contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", *argv], stdout=subprocess.DEVNULL, stderr=err,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[str], log: Path,
             seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"{what}: {log.read_text()}"
        time.sleep(0.2)


# ----------------------------------------------------------------------------- located errors, exit 2

def test_a_ca_file_that_is_not_pem_stops_the_agent_with_a_located_error_and_exit_2(tmp_path: Path, pki: Pki) -> None:
    """A ca_file of garbage, or a PEM key instead of a certificate, is `FILE:LINE:COL: ca_file:` and exit 2."""
    (tmp_path / "junk.crt").write_text("this is not a certificate\n", encoding="utf-8")
    for ca in ("junk.crt", str(pki.server_key)):
        config = agent_yaml(tmp_path, "https://127.0.0.1:1", f"ca_file: {ca}\n")
        proc = cli("agent", "--config", str(config), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"{config}:7:10: ca_file: " in proc.stderr and "holds no PEM CA certificate" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    config = agent_yaml(tmp_path, "https://127.0.0.1:1", f"ca_file: {pki.ca}\n")
    assert load_agent_config(config).ca_file == pki.ca  # a real CA is taken


def test_a_bad_certificate_or_key_stops_check_and_run_with_a_located_error_and_exit_2(tmp_path: Path,
                                                                                    pki: Pki) -> None:
    """`connmon check --web.config.file` and `connmon run` refuse a certificate that is not PEM and a key that
    does not match it, naming file, line and key, with exit 2 and no traceback."""
    sites = centre_yaml(tmp_path)
    junk = tmp_path / "junk.crt"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", encoding="utf-8")
    cases = [(web_yaml(tmp_path, junk, pki.server_key, "bad-cert.yml"), "2:14: tls_server_config.cert_file: ",
              "is not a PEM certificate"),
             (web_yaml(tmp_path, pki.server_crt, pki.other_key, "bad-key.yml"), "3:13: tls_server_config.key_file: ",
              "is not a PEM private key matching cert_file")]
    for web_config, where, what in cases:
        for command in (["check"], ["run", "--listen", f"{HOST}:{CENTRE_PORT}", "--no-history"]):
            proc = cli(*command, "--config", str(sites), "--web.config.file", str(web_config), cwd=tmp_path)
            assert proc.returncode == 2, (command, proc.stderr)
            assert f"{web_config}:{where}" in proc.stderr and what in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the centre's certificate

def test_the_expiry_is_read_from_the_certificate_as_openssl_reads_it(tmp_path: Path, pki: Pki) -> None:
    """notAfter as UTCTime (before 2050) and as GeneralizedTime (from 2050), equal to what openssl prints."""
    expired, _ = server_certificate(pki, "gone", f"IP:{HOST}", -1)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            "far.key", "-out", "far.crt", "-days", "40000", "-subj", "/CN=far", cwd=pki.dir)
    for cert in (pki.server_crt, expired, pki.dir / "far.crt"):
        assert read_certificate(cert).not_after == openssl_not_after(cert), cert
    assert read_certificate(pki.dir / "far.crt").not_after > dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp()
    with pytest.raises(ValueError):
        read_certificate(pki.server_key)


def test_a_certificate_is_warned_of_within_fourteen_days_and_once_expired(caplog: pytest.LogCaptureFixture) -> None:
    """No word while more than 14 days are left; a warning naming the file and the date within them and after."""
    cert = ServedCertificate(Path("/etc/connmon/connmon.crt"), 1_800_000_000.0)
    assert cert.warning(cert.not_after - (WARN_DAYS + 1) * DAY) is None
    soon = cert.warning(cert.not_after - 3 * DAY)
    assert soon is not None and "expires in 3.0 days" in soon and "/etc/connmon/connmon.crt" in soon
    assert "2027-01-15 08:00:00 UTC" in soon
    gone = cert.warning(cert.not_after + 2 * DAY)
    assert gone is not None and "expired 2.0 days ago" in gone and "renew it" in gone
    with caplog.at_level(logging.WARNING, logger="monitor.web.certificate"):
        assert cert.check(cert.not_after + 60) and not cert.check(cert.not_after - 30 * DAY)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    rendered = CertificateExposition(cert).render(ShardLabels.of(None), {}).decode()
    assert "connmon_tls_certificate_expiry_timestamp_seconds 1.8e+09\n" in rendered


def test_the_daemon_warns_again_every_day(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The daily watch says the warning again at each turn while it holds."""
    from monitor import daemon_loops

    monkeypatch.setattr(daemon_loops, "CERTIFICATE_CHECK_SECONDS", 0.01)
    cert = ServedCertificate(Path("connmon.crt"), time.time() - DAY)

    async def scenario() -> None:
        task = asyncio.ensure_future(daemon_loops.watch_certificate(cert))
        await asyncio.sleep(0.1)
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="monitor.web.certificate"):
        asyncio.run(scenario())
    assert len([r for r in caplog.records if "expired" in r.getMessage()]) >= 3


def test_an_expired_centre_certificate_is_warned_of_at_start_and_exported(tmp_path: Path, pki: Pki) -> None:
    """`connmon run` with an expired certificate serves, says at start-up that it expired, and exports its expiry;
    `connmon check` says so too (and still exits 0: the file is valid)."""
    cert, key = server_certificate(pki, "expired", f"IP:{HOST}", -1)
    web = web_yaml(tmp_path, cert, key)
    sites = centre_yaml(tmp_path)
    checked = cli("check", "--config", str(sites), "--web.config.file", str(web), cwd=tmp_path)
    assert checked.returncode == 0 and f"TLS certificate {cert} expired" in checked.stderr, checked.stderr
    log = tmp_path / "centre.log"
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    lenient = accept_any()
    with running(["run", "--config", str(sites), "--listen", f"{HOST}:{CENTRE_PORT}", "--no-history",
                  "--web.config.file", str(web)], log) as proc:
        url = f"https://{HOST}:{CENTRE_PORT}/metrics"

        def scraped() -> bool:
            with contextlib.suppress(OSError):
                return request(url, context=lenient)[0] == 200
            return False

        wait_for("the centre serving", scraped, proc, log)
        parsed = samples(request(url, context=lenient)[2])
        with pytest.raises(OSError) as refused:  # a client that verifies it refuses it: why the warning matters
            request(url, context=trusting)
        assert "certificate has expired" in str(refused.value)
        wait_for("the refusal counted", lambda: value(samples(request(url, context=lenient)[2]),
                 "connmon_tls_handshake_failures_total", reason="certificate_expired") == 1, proc, log)
    said = [line for line in log.read_text().splitlines() if "TLS certificate" in line]
    assert len(said) == 1 and " WARNING " in said[0] and f"{cert} expired" in said[0], said
    assert value(parsed, "connmon_tls_certificate_expiry_timestamp_seconds") == openssl_not_after(cert)
    assert value(parsed, "connmon_tls_handshake_failures_total", reason="unknown_ca") == 0  # every reason from start
    assert "TLS handshake failed (certificate_expired)" in log.read_text()


# ----------------------------------------------------------------------------- TLS failures at the agent

def test_an_agent_that_does_not_trust_the_centres_ca_logs_a_tls_failure_naming_the_cause(tmp_path: Path,
                                                                                         pki: Pki) -> None:
    """A real agent posting to a real centre whose CA it does not trust: an ERROR that says TLS failure and
    untrusted_ca with the fix, never the outage's "cannot reach the centre"; its results stay spooled. (The
    centre cannot tell: an asyncio client hangs up without sending TLS's alert, so no failure reaches it.)"""
    sites = centre_yaml(tmp_path)
    web = web_yaml(tmp_path, pki.server_crt, pki.server_key)
    config = agent_yaml(tmp_path, f"https://{HOST}:{AGENT_CENTRE_PORT}")  # no ca_file: the system's CAs
    centre_log, agent_log = tmp_path / "centre.log", tmp_path / "agent.log"
    with running(["run", "--config", str(sites), "--listen", f"{HOST}:{AGENT_CENTRE_PORT}", "--no-history",
                  "--web.config.file", str(web)], centre_log) as centre:
        wait_for("the centre", lambda: "connmon started" in centre_log.read_text(), centre, centre_log)
        with running(["agent", "--config", str(config)], agent_log) as agent:
            wait_for("two TLS failures", lambda: agent_log.read_text().count("TLS failure") >= 2, agent, agent_log)
    lines = [line for line in agent_log.read_text().splitlines() if "TLS failure" in line]
    assert lines and all(" ERROR " in line and "certificate verify failed (untrusted_ca)" in line
                         and "set ca_file" in line for line in lines), lines  # the settings fetch's too (issue 18)
    assert any("results stay in the spool" in line for line in lines), lines  # and the upload's
    assert "cannot reach the centre" not in agent_log.read_text()
    assert "Traceback" not in agent_log.read_text()


@contextlib.contextmanager
def tls_server(context: ssl.SSLContext | None) -> Iterator[None]:
    """A small HTTPS (or, with None, HTTP) server on 127.0.0.1 that answers every POST 200, in a thread's loop."""
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"accepted": 0})

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, HOST, CLIENT_PORT, ssl_context=context).start()
        runner_box.append(runner)
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context


def post_with(config_dir: Path, centre: str, extra: str) -> BaseException | None:
    config = load_agent_config(agent_yaml(config_dir, centre, extra))

    async def scenario() -> BaseException | None:
        client = CentreClient(config)
        try:
            await client.post("/api/v1/agent/results", {})
        except CentreUnreachable as err:
            return err
        finally:
            await client.close()
        return None

    return asyncio.run(scenario())


@pytest.mark.parametrize("case", ["expired", "name_mismatch", "untrusted_ca", "handshake", "trusted"])
def test_the_agents_client_names_each_tls_cause(tmp_path: Path, pki: Pki, case: str) -> None:
    """Against a real TLS server: an expired certificate, one for another address, one from a CA the agent does
    not trust, and a plain-HTTP port each fail as CentreTlsFailure with their cause; a good one posts."""
    url = f"https://{HOST}:{CLIENT_PORT}"
    other = make_pki(tmp_path, HOST) if case == "untrusted_ca" else None
    if case == "expired":
        context: ssl.SSLContext | None = server_context(*server_certificate(pki, "expired-client", f"IP:{HOST}", -1))
    elif case == "name_mismatch":
        context = server_context(*server_certificate(pki, "elsewhere", "IP:127.0.0.9", 2))
    elif other is not None:
        context = server_context(other.server_crt, other.server_key)
    elif case == "handshake":
        context = None
    else:
        context = server_context(pki.server_crt, pki.server_key)
    with tls_server(context):
        failure = post_with(tmp_path, url, f"ca_file: {pki.ca}\n")
    if case == "trusted":
        assert failure is None
        return
    assert isinstance(failure, CentreTlsFailure), repr(failure)
    assert failure.cause == TlsCause(case), str(failure)
    assert str(failure).startswith(f"{url}/api/v1/agent/results: TLS failure: ")
    if case == "expired":
        assert "certificate has expired" in str(failure) and "renew" in str(failure)
    if case == "handshake":
        assert "does not speak TLS" in str(failure)


def test_a_refused_connection_is_an_outage_not_a_tls_failure(tmp_path: Path, pki: Pki) -> None:
    """Nothing listening on an https:// centre is the plain outage it always was."""
    failure = post_with(tmp_path, f"https://{HOST}:{CLIENT_PORT}", f"ca_file: {pki.ca}\n")
    assert isinstance(failure, CentreUnreachable) and not isinstance(failure, CentreTlsFailure)


def test_web_config_keeps_the_served_certificate(tmp_path: Path, pki: Pki) -> None:
    """The web config hands the daemon the certificate it serves, with its expiry."""
    config = load_web_config(str(web_yaml(tmp_path, pki.server_crt, pki.server_key)))
    assert config.certificate is not None and config.certificate.path == pki.server_crt
    assert config.certificate.not_after == openssl_not_after(pki.server_crt)
    with pytest.raises(ConfigError):
        load_web_config(str(web_yaml(tmp_path, pki.server_key, pki.server_key)))


# ----------------------------------------------------------------------------- handshakes at the centre

def test_failed_handshakes_are_counted_by_reason_and_said_once_a_minute(tmp_path: Path, pki: Pki,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Against a real TLS server: three clients that do not trust its CA are three unknown_ca and one line; plain
    HTTP is not_tls; a trusting client is no failure; after a minute the reason is said again, with the count."""
    clock = Clock(0.0)
    watch = HandshakeWatch(clock)
    trusting = ssl.create_default_context(cafile=str(pki.ca))

    def connect(context: ssl.SSLContext | None) -> None:
        with socket.create_connection((HOST, CLIENT_PORT), timeout=10) as raw:
            if context is None:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                raw.recv(100)
                return
            with contextlib.suppress(ssl.SSLError), context.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                tls.recv(100)

    def until(reason: HandshakeFailure, count: int) -> None:
        deadline = time.monotonic() + 10
        while watch.failures[reason] < count:
            assert time.monotonic() < deadline, watch.failures
            time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="monitor.web.handshakes"), \
            tls_server(watch.watch(server_context(pki.server_crt, pki.server_key))):
        for _ in range(3):
            connect(ssl.create_default_context())  # the system's CAs: not the test CA
        until(HandshakeFailure.UNKNOWN_CA, 3)
        connect(None)
        until(HandshakeFailure.NOT_TLS, 1)
        connect(trusting)
        clock.now = LOG_SECONDS
        connect(ssl.create_default_context())
        until(HandshakeFailure.UNKNOWN_CA, 4)
    assert {r: n for r, n in watch.failures.items() if n} == {"unknown_ca": 4, "not_tls": 1}
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.web.handshakes"]
    assert len(lines) == 3 and lines[0].startswith("TLS handshake failed (unknown_ca): a client does not trust"), lines
    assert "(not_tls)" in lines[1] and "(unknown_ca)" in lines[2] and "2 more like it in the last 60s" in lines[2]
