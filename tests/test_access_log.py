"""The HTTP access log (issue 22): a real ``connmon run`` on loopback, behind basic auth, read and knocked at.

The daemon listens on 127.0.0.1 (ports 19450-19452) and probes one loopback address; its stderr is
the log under test, in each ``--log-format``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from monitor.agent.centre.registry import token_hash
from tests.basic_auth import HASH, PASSWORD, basic
from tests.netlab import child_env
from tests.running import request, samples, scrape_when, stop_process, value

AGENT_TOKEN = "token-of-vsat-1"
CONFIG = ("defaults: {icmp: {interval: 1s, count: 1, timeout: 300ms}}\n"
          "groups:\n  - {name: g, kind: school, endpoints: [{name: «Мектеп №1», host: 127.0.0.1}]}\n"
          "  - {name: v, kind: school, mode: agent, endpoints: [{name: vsat-1, agent: {token_sha256: "
          f"{token_hash(AGENT_TOKEN)}}}}}]}}\n")


@contextmanager
def daemon(tmp_path: Path, port: int, *extra: str) -> Iterator[subprocess.Popen[str]]:
    config, web = tmp_path / "sites.yaml", tmp_path / "web.yml"
    config.write_text(CONFIG, encoding="utf-8")
    web.write_text(f"basic_auth_users:\n  alice: '{HASH}'\n", encoding="utf-8")
    argv = [sys.executable, "-m", "monitor", "run", "--config", str(config), "--listen", f"127.0.0.1:{port}",
            "--web.config.file", str(web), "--no-history", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        yield proc
    finally:
        stop_process(proc)


def visit(port: int, proc: subprocess.Popen[str]) -> str:
    """An API read as alice, a wrong password, a knock without credentials, an agent's unknown token; checks the
    failed-login count is two (the knock is none) and returns the daemon's stderr."""
    good = {"Authorization": basic("alice", PASSWORD)}
    base = f"http://127.0.0.1:{port}"
    scrape_when(f"{base}/metrics", lambda p: value(p, "connmon_up", endpoint="«Мектеп №1»") >= 0, proc, headers=good)
    assert request(f"{base}/api/v1/sites", headers=good)[0] == 200
    assert request(f"{base}/api/v1/sites", headers={"Authorization": basic("alice", "wrong")})[0] == 401
    assert request(f"{base}/api/v1/sites")[0] == 401  # no credentials: a knock, not a failed login
    assert request(f"{base}/api/v1/agent/results", "POST",
                   headers={"Authorization": "Bearer no-such-token"})[0] == 401  # an agent's unknown token
    assert request(f"{base}/api/v1/agent/results", "POST",  # a known agent, no JSON body: 415, named as the agent
                   headers={"Authorization": f"Bearer {AGENT_TOKEN}"})[0] == 415
    assert request(f"{base}/api/v1/sites?token=SECRET-IN-QUERY&x", headers=good)[0] == 200
    assert request(f"{base}/api/v1/agent/download?slot=SLOT-ID-SECRET&bytes=7",  # a slot id grants its transfer
                   headers={"Authorization": f"Bearer {AGENT_TOKEN}"})[0] == 403
    scraped = samples(request(f"{base}/metrics", headers=good)[2])
    assert value(scraped, "connmon_http_failed_logins_total") == 2  # the wrong password and the unknown token
    stop_process(proc)
    return proc.communicate()[1]


def test_text_access_log_names_the_reader_and_the_failed_login(tmp_path: Path) -> None:
    """In text, an API read is a line with method, path, status, user, client and bytes; a wrong password is a
    WARNING line without a user, and so is an agent's unknown token; scrapes of /metrics are left out by default;
    the metric counts those two failures, not the knock without credentials."""
    with daemon(tmp_path, 19450) as proc:
        stderr = visit(19450, proc)
    lines = stderr.splitlines()
    read = [line for line in lines if " path=/api/v1/sites status=200 " in line]
    assert len(read) == 1, stderr
    assert " INFO method=GET path=/api/v1/sites status=200 user=alice client=127.0.0.1 bytes=" in read[0]
    assert int(read[0].split(" bytes=")[1].split()[0]) > 100  # the sites' JSON and the headers
    refused = [line for line in lines if " status=401 " in line]
    assert len(refused) == 3, stderr
    assert " WARNING method=GET path=/api/v1/sites status=401 user=- client=127.0.0.1 " in refused[0]
    assert refused[0].endswith(" failed login") and refused[1].endswith(" access")  # the knock
    assert " WARNING method=POST path=/api/v1/agent/results status=401 " in refused[2]
    assert refused[2].endswith(" failed login")
    assert [line for line in lines if " status=415 user=agent:vsat-1 client=127.0.0.1 " in line], stderr
    assert not [line for line in lines if "path=/metrics" in line]
    assert "SECRET" not in stderr  # query values are left out, their names kept
    assert [line for line in lines if ' path="/api/v1/sites?token=…&…" status=200 user=alice ' in line], stderr
    assert [line for line in lines
            if ' path="/api/v1/agent/download?slot=…&bytes=…" status=403 user=agent:vsat-1 ' in line], stderr


def test_json_access_log_has_the_fields_as_keys(tmp_path: Path) -> None:
    """With --log-format json every access line is a JSON object with the fields as keys, numbers as numbers;
    --web.access-log all logs the scrapes too."""
    with daemon(tmp_path, 19451, "--log-format", "json", "--web.access-log", "all") as proc:
        stderr = visit(19451, proc)
    entries = [json.loads(line) for line in stderr.splitlines()]
    access = [e for e in entries if e["logger"] == "monitor.access"]
    read = [e for e in access if e["path"] == "/api/v1/sites" and e["status"] == 200]
    assert len(read) == 1
    assert read[0]["method"] == "GET" and read[0]["user"] == "alice" and read[0]["client"] == "127.0.0.1"
    assert isinstance(read[0]["bytes"], int) and read[0]["bytes"] > 100 and read[0]["level"] == "info"
    refused = [e for e in access if e["status"] == 401 and e["msg"] == "failed login"]
    assert [e["path"] for e in refused] == ["/api/v1/sites", "/api/v1/agent/results"]
    assert refused[0]["user"] == "-" and refused[0]["level"] == "warning"
    assert any(e["path"] == "/metrics" and e["user"] == "alice" for e in access)
    assert "SECRET" not in stderr
    assert "/api/v1/agent/download?slot=…&bytes=…" in [e["path"] for e in access]


def test_access_log_off_writes_no_line_but_still_counts(tmp_path: Path) -> None:
    """--web.access-log off: no access line at all, and the failed login is counted all the same."""
    with daemon(tmp_path, 19452, "--web.access-log", "off") as proc:
        stderr = visit(19452, proc)
    assert "path=" not in stderr


@pytest.mark.parametrize("mode", ["bogus"])
def test_unknown_access_log_mode_is_refused(mode: str) -> None:
    """A mode other than on, all, off is a usage error (exit 2), not a silent default."""
    done = subprocess.run([sys.executable, "-m", "monitor", "run", "--config", "x.yaml", "--web.access-log", mode],
                          capture_output=True, text=True, env=child_env(), check=False)
    assert done.returncode == 2 and "--web.access-log" in done.stderr
