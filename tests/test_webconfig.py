"""The web config (exporter-toolkit format): validation, basic auth, and a real TLS server with a real client.

Certificates are made with the ``openssl`` command (:mod:`tests.pki`): a CA, a server certificate for the lab's
prober address, and a client certificate for the mutual-TLS case.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
from pathlib import Path

import bcrypt
import pytest

from monitor.errors import ConfigError
from monitor.web.config import BasicAuth, load_web_config, parse_web_config
from tests.basic_auth import HASH, PASSWORD, basic
from tests.netlab import Lab, child_env
from tests.pki import Pki, make_pki, openssl
from tests.running import request, running_daemon, scrape_when, value

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "web-config.example.yml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), "127.0.0.1")


def problems(text: str, directory: Path) -> list[str]:
    """The located problems of a web config written to ``directory``/web.yml."""
    path = directory / "web.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(path))
    return [str(p).replace(str(directory) + "/", "") for p in caught.value.problems]


# ----------------------------------------------------------------------------- validation

def test_example_file_is_valid_and_its_hash_is_the_documented_password(tmp_path: Path, pki: Pki) -> None:
    """config/web-config.example.yml loads once its certificate files exist, and 'change-me' is its password."""
    shutil.copy(EXAMPLE, tmp_path / "web.yml")
    shutil.copy(pki.server_crt, tmp_path / "connmon.crt")
    shutil.copy(pki.server_key, tmp_path / "connmon.key")
    config = load_web_config(str(tmp_path / "web.yml"))
    assert config.ssl_context is not None and config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert list(config.users) == ["prometheus"]
    assert bcrypt.checkpw(b"change-me", config.users["prometheus"])


def test_empty_file_means_plain_http_without_auth() -> None:
    """An empty web config is valid and turns nothing on, as in exporter-toolkit."""
    config = parse_web_config("", "web.yml")
    assert config.ssl_context is None and not config.users


def test_every_problem_is_reported_with_file_line_and_key(tmp_path: Path, pki: Pki) -> None:
    """Typos, missing files, a password instead of a hash and unsupported keys each name file, line and key."""
    text = (
        "tls_server_config:\n"
        f"  cert_file: {pki.server_crt}\n"
        "  key_fil: server.key\n"
        "  min_version: TLS9\n"
        "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        "basic_auth_users:\n"
        "  alice: hunter2\n"
        "  bob: " + HASH + "\n"
        "  bob: " + HASH + "\n"
        "basic_auth_user: {}\n"
    )
    assert problems(text, tmp_path) == [
        "web.yml:2:3: tls_server_config: missing required key 'key_file'",
        "web.yml:3:3: tls_server_config.key_fil: unknown key 'key_fil'; did you mean 'key_file'?",
        "web.yml:4:16: tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13, got 'TLS9'",
        "web.yml:5:3: tls_server_config.cipher_suites: connmon uses Python's default cipher suites "
        "(no RC4, 3DES or export ciphers); remove the key",
        "web.yml:7:10: basic_auth_users.alice: must be a bcrypt hash ($2y$10$... , 60 characters), not the "
        "password; make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'",
        "web.yml:9:3: basic_auth_users.bob: duplicate key (first given at line 8)",
        "web.yml:10:1: basic_auth_user: unknown key 'basic_auth_user'; did you mean 'basic_auth_users'?",
    ]


def test_certificate_problems_name_the_file_at_fault(tmp_path: Path, pki: Pki) -> None:
    """A missing file, a key of another certificate, an encrypted key, a CA without a client auth type are refused."""
    assert problems(f"tls_server_config: {{cert_file: nosuch.crt, key_file: {pki.server_key}}}\n", tmp_path) == [
        "web.yml:1:32: tls_server_config.cert_file: cannot read 'nosuch.crt': No such file or directory"]
    assert problems(f"tls_server_config: {{cert_file: {pki.server_key}, key_file: {pki.server_key}}}\n",
                    tmp_path)[0].startswith(f"web.yml:1:32: tls_server_config.cert_file: '{pki.server_key}' is "
                                            "not a PEM certificate")
    mismatch = problems(f"tls_server_config: {{cert_file: {pki.server_crt}, key_file: {pki.other_key}}}\n", tmp_path)
    assert len(mismatch) == 1 and mismatch[0].startswith("web.yml:1:") and "tls_server_config.key_file" in mismatch[0]
    assert "not a PEM private key matching cert_file" in mismatch[0]
    encrypted = tmp_path / "enc.key"
    openssl("pkey", "-in", str(pki.server_key), "-aes256", "-passout", "pass:x", "-out", str(encrypted), cwd=tmp_path)
    assert "is encrypted" in problems(
        f"tls_server_config: {{cert_file: {pki.server_crt}, key_file: {encrypted}}}\n", tmp_path)[0]
    assert problems(f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n"
                    f"  client_ca_file: {pki.ca}\n", tmp_path) == [
        "web.yml:4:19: tls_server_config.client_ca_file: a client CA is given without client_auth_type "
        "(e.g. RequireAndVerifyClientCert)"]
    assert "cannot do" in problems(f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n"
                                   "  client_auth_type: RequireAnyClientCert\n", tmp_path)[0]


def test_check_and_run_refuse_a_bad_web_config_with_exit_2(tmp_path: Path) -> None:
    """`connmon check` and `connmon run` both stop on a bad web config with exit 2, naming file and line."""
    sites = tmp_path / "sites.yaml"
    sites.write_text("groups:\n  - {name: g, endpoints: [{name: a, host: 127.0.0.1}]}\n", encoding="utf-8")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: hunter2\n", encoding="utf-8")
    for command in (["check"], ["run", "--listen", "127.0.0.1:1"]):  # run never gets to bind
        proc = subprocess.run([sys.executable, "-m", "monitor", *command, "--config", str(sites),
                               "--web.config.file", str(web)], capture_output=True, text=True, env=child_env(),
                              timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"{web}:2:10: basic_auth_users.alice: must be a bcrypt hash" in proc.stderr
        assert "Traceback" not in proc.stderr
    web.write_text(f"basic_auth_users:\n  alice: {HASH}\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "monitor", "check", "--config", str(sites), "--web.config.file",
                           str(web)], capture_output=True, text=True, env=child_env(), timeout=60, check=False)
    assert proc.returncode == 0 and "plain HTTP, basic auth for 1 user(s)" in proc.stdout


# ----------------------------------------------------------------------------- basic auth

def test_basic_auth_accepts_only_the_right_password_and_caches_bcrypt() -> None:
    """Right password: yes, and bcrypt runs once for repeats; wrong password, unknown user, junk headers: no."""
    async def scenario() -> None:
        auth = BasicAuth({"alice": HASH.encode()})
        try:
            assert await auth.check(basic("alice", PASSWORD))
            assert await auth.check(basic("alice", PASSWORD))
            assert auth.bcrypt_runs == 1  # the second check came from the cache
            assert not await auth.check(basic("alice", PASSWORD + "x"))
            assert not await auth.check(basic("alice", PASSWORD.upper()))
            runs = auth.bcrypt_runs
            assert not await auth.check(basic("mallory", PASSWORD))
            assert auth.bcrypt_runs == runs + 1  # an unknown user costs a bcrypt too: timing tells nothing
            assert not await auth.check(basic("alice", "x" * 100))  # over bcrypt's 72 bytes: no, not an error
            for header in (None, "", "Basic", "Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"alice").decode(),
                           "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
                assert not await auth.check(header), header
            assert await auth.check("basic  " + basic("alice", PASSWORD)[6:])  # scheme is case-insensitive
        finally:
            auth.close()

    asyncio.run(scenario())


def test_the_auth_cache_is_bounded() -> None:
    """Many different wrong passwords never grow the cache past its size."""
    async def scenario() -> None:
        auth = BasicAuth({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))}, cache_entries=8)
        try:
            for i in range(20):
                assert not await auth.check(basic("alice", f"guess-{i}"))
            assert len(auth._cache) == 8
            assert await auth.check(basic("alice", "pw"))
        finally:
            auth.close()

    asyncio.run(scenario())


# ----------------------------------------------------------------------------- a real TLS server

SITES = "defaults: {icmp: {interval: 1s, count: 1, timeout: 200ms}}\ngroups:\n" \
        "  - {name: g, endpoints: [{name: loop, host: 127.0.0.2}]}\n"


def client_context(pki: Pki, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        context.load_cert_chain(str(pki.client_crt), str(pki.client_key))
    return context


def test_tls_and_basic_auth_on_a_running_daemon(lab: Lab, tmp_path: Path) -> None:
    """Over HTTPS (verified against the test CA) every route wants the password: 401 without, 200 with;
    plain HTTP to the TLS port fails for that client only, without a traceback in the log."""
    pki = make_pki(tmp_path, lab.prober_v4)
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES, encoding="utf-8")
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                   f"basic_auth_users:\n  prometheus: {HASH}\n", encoding="utf-8")
    base = f"https://{lab.prober_v4}:9111"
    context = client_context(pki)
    good = {"Authorization": basic("prometheus", PASSWORD)}
    with running_daemon(lab, sites, 9111, "--web.config.file", str(web)) as proc:
        parsed = scrape_when(f"{base}/metrics", lambda p: "connmon_up" in p, proc, context=context, headers=good)
        assert value(parsed, "connmon_up", endpoint="loop") == 1
        for path in ("/metrics", "/-/healthy", "/-/ready", "/"):
            status, headers, _ = request(f"{base}{path}", context=context)
            assert (status, headers.get("WWW-Authenticate")) == (401, "Basic"), path
            status, headers, _ = request(f"{base}{path}", context=context,
                                         headers={"Authorization": basic("prometheus", "wrong")})
            assert (status, headers.get("WWW-Authenticate")) == (401, "Basic"), path
            assert request(f"{base}{path}", context=context, headers=good)[0] == 200, path
        assert request(f"{base}/-/reload", "POST", context=context, headers=good)[0] == 403

        with pytest.raises(OSError):  # RemoteDisconnected and ConnectionResetError are OSErrors
            plain = http.client.HTTPConnection(lab.prober_v4, 9111, timeout=10)
            plain.request("GET", "/metrics")
            plain.getresponse()
        with socket.create_connection((lab.prober_v4, 9111), timeout=10) as raw:  # garbage, then hang up
            raw.sendall(b"\x16\x03\x01\x00\x05hello")
        with pytest.raises(urllib.error.URLError) as untrusted:  # a client that does not trust the certificate
            request(f"{base}/metrics", context=ssl.create_default_context())
        assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)
        assert request(f"{base}/metrics", context=context, headers=good)[0] == 200  # still serving
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr
    assert "web: TLS (client certificates: NoClientCert), basic auth for 1 user(s)" in stderr


def test_client_certificates_are_required_when_configured(lab: Lab, tmp_path: Path) -> None:
    """With RequireAndVerifyClientCert a client without a certificate from the CA cannot connect; one with can."""
    pki = make_pki(tmp_path, lab.prober_v4)
    sites = tmp_path / "sites.yaml"
    sites.write_text(SITES, encoding="utf-8")
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                   "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n",
                   encoding="utf-8")
    base = f"https://{lab.prober_v4}:9112"
    with running_daemon(lab, sites, 9112, "--web.config.file", str(web)) as proc:
        scrape_when(f"{base}/metrics", lambda p: "connmon_up" in p, proc, context=client_context(pki, with_cert=True))
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            status, _, _ = request(f"{base}/metrics", context=client_context(pki))
            raise AssertionError(f"served without a client certificate: {status}")  # pragma: no cover
        old = client_context(pki, with_cert=True)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, OSError)):
            request(f"{base}/metrics", context=old)
        assert request(f"{base}/metrics", context=client_context(pki, with_cert=True))[0] == 200
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
