"""The agent's config (``agent.yaml``): located errors, defaults, the token file, the gateway look-up, the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.agent.site.config import AgentConfig, default_gateway, load_agent_config, parse_agent_config
from monitor.errors import ConfigError
from tests.pki import make_pki

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "agent.example.yaml"


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("  s3cret-token_value  \n", encoding="utf-8")
    path.chmod(0o600)
    return path


def load(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return load_agent_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return [str(p) for p in caught.value.problems]


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path, token: Path) -> None:
    config = load(tmp_path, f"centre: https://connmon.example.net/\nsite: school-1\ntoken_file: {token}\n")
    assert config.centre == "https://connmon.example.net" and config.site == "school-1"
    assert config.token == "s3cret-token_value"  # stripped, as the centre hashes it
    assert config.state_dir == Path("/var/lib/connmon-agent") and config.interval_seconds == 60.0
    assert (config.icmp.count, config.icmp.spacing_seconds, config.icmp.timeout_seconds) == (10, 0.2, 2.0)
    assert config.icmp_host == "connmon.example.net" and config.gateway is None
    assert not config.throughput_enabled and config.spool_max_results == 100_000
    assert (config.upload_batch, config.upload_timeout_seconds) == (500, 10.0)
    assert config.url("/api/v1/agent/results") == "https://connmon.example.net/api/v1/agent/results"
    assert "s3cret" not in repr(config)


def test_every_key_is_read(tmp_path: Path, token: Path) -> None:
    (tmp_path / "pki").mkdir()
    ca = tmp_path / "ca.pem"  # a real CA: OpenSSL must load it (issue 25)
    ca.write_bytes(make_pki(tmp_path / "pki", "127.0.0.1").ca.read_bytes())
    config = load(tmp_path, """
centre: https://[2001:db8::10]:8443/connmon
site: clinic-lte-7
token_file: token
ca_file: ca.pem
state_dir: /srv/agent
interval: 30s
icmp: {count: 5, spacing: 100ms, timeout: 1s, payload_bytes: 100, host: 198.51.100.7}
gateway: 192.0.2.1
throughput: {enabled: true}
spool: {max_results: 5000}
upload: {batch: 50, timeout: 20s}
""")
    assert config.centre_host == "2001:db8::10" and config.token_file == token and config.ca_file == ca
    assert config.url("/x") == "https://[2001:db8::10]:8443/connmon/x"
    assert config.icmp_host == "198.51.100.7" and config.icmp.payload_bytes == 100
    assert config.gateway == "192.0.2.1" and config.throughput_enabled
    assert (config.spool_max_results, config.upload_batch, config.upload_timeout_seconds) == (5000, 50, 20.0)
    assert config.state_dir == Path("/srv/agent") and config.interval_seconds == 30.0


def test_problems_name_file_line_column_and_key_all_at_once(tmp_path: Path, token: Path) -> None:
    found = problems(tmp_path, f"""centre: ftp://connmon.example.net
site: school-1
token_file: {token}
interval: 60
icmp: {{count: 0, spacing: fast}}
gateway: my-router
throughput: {{enabled: maybe}}
upload: {{batch: 5000}}
spool: {{max_result: 10}}
""")
    where = tmp_path / "agent.yaml"
    assert found == [
        f"{where}:1:9: centre: 'ftp://connmon.example.net' is not an http:// or https:// URL (the centre's address, "
        "e.g. https://connmon.example.net)",
        f"{where}:4:11: interval: '60' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h",
        f"{where}:5:15: icmp.count: must be ≥ 1 and ≤ 10000, got 0",
        f"{where}:5:27: icmp.spacing: 'fast' is not a duration; write a number with a unit, e.g. 250ms, 60s, 5m, 6h",
        f"{where}:6:10: gateway: 'my-router' must be an IP address, or auto (the default route's gateway)",
        f"{where}:7:23: throughput.enabled: must be true or false, got 'maybe'",
        f"{where}:8:17: upload.batch: must be ≥ 1 and ≤ 1000, got 5000",
        f"{where}:9:9: spool.max_result: unknown key 'max_result'; did you mean 'max_results'?",
    ]


def test_missing_keys_and_token_problems(tmp_path: Path) -> None:
    where = tmp_path / "agent.yaml"
    assert problems(tmp_path, "site: x\n") == [
        f"{where}:1:1: (top level): missing required key 'centre'",
        f"{where}:1:1: (top level): missing required key 'token_file'"]
    assert problems(tmp_path, "centre: http://127.0.0.1\nsite: x\ntoken_file: nowhere\n") == [
        f"{where}:3:13: token_file: {tmp_path / 'nowhere'}: no such file"]
    (tmp_path / "empty").write_text("\n \n")
    assert problems(tmp_path, "centre: http://127.0.0.1\nsite: x\ntoken_file: empty\n") == [
        f"{where}:3:13: token_file: {tmp_path / 'empty'}: must hold one token on one line "
        "(`connmon agent-token` makes one)"]
    assert problems(tmp_path, "") == [f"{where}:1:1: the file is empty; it needs centre, site and token_file"]


def test_icmp_cycle_must_fit_the_interval(tmp_path: Path, token: Path) -> None:
    found = problems(tmp_path, f"centre: http://127.0.0.1\nsite: x\ntoken_file: {token}\ninterval: 5s\n"
                               "icmp: {count: 20, spacing: 250ms}\n")
    assert found == [f"{tmp_path / 'agent.yaml'}:5:7: icmp: count × spacing + timeout = 7s does not fit in "
                     "interval 5s; lower count, spacing or timeout, or raise interval"]


def test_world_readable_token_is_a_warning_not_an_error(tmp_path: Path, token: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    token.chmod(0o644)
    load(tmp_path, f"centre: http://127.0.0.1\nsite: x\ntoken_file: {token}\n")
    assert "chmod 600" in caplog.text


def test_the_shipped_example_parses(tmp_path: Path, token: Path) -> None:
    """config/agent.example.yaml is valid once its token file exists; it names only documentation hosts."""
    text = EXAMPLE.read_text(encoding="utf-8").replace("/etc/connmon-agent/token", str(token))
    config = parse_agent_config(text, str(EXAMPLE))
    assert config.centre_host.endswith("example.net") and config.gateway == "auto" and config.throughput_enabled
    assert config.state_dir == Path("/var/lib/connmon-agent")


def test_default_gateway_from_a_route_table(tmp_path: Path) -> None:
    """/proc/net/route's format: the default route with the lowest metric wins; little-endian hex addresses."""
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wwan0\t00000000\t0102000A\t0003\t0\t0\t700\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n")
    assert default_gateway(str(table)) == "192.0.2.1"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                     "eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n")
    assert default_gateway(str(table)) is None
    assert default_gateway(str(tmp_path / "missing")) is None


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_cli_agent_exits_2_with_located_errors(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text("centre: http://127.0.0.1\nsite: x\ntoken_file: nowhere\n")
    proc = run_cli("agent", "--config", "agent.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "agent.yaml:3:13: token_file:" in proc.stderr and "no such file" in proc.stderr


def test_agent_token_prints_a_token_and_its_hash_for_the_centre(tmp_path: Path) -> None:
    proc = run_cli("agent-token", cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    token, line = lines[0], lines[-1]
    assert len(token) >= 43 and token.strip() == token
    assert line == f"agent: {{token_sha256: {hashlib.sha256(token.encode()).hexdigest()}}}"
    assert run_cli("agent-token", cwd=tmp_path).stdout.splitlines()[0] != token  # a new one every time

    written = run_cli("agent-token", "--output", "token", cwd=tmp_path)
    saved = (tmp_path / "token").read_text().strip()
    assert written.returncode == 0 and saved not in written.stdout
    assert written.stdout.splitlines()[-1] == f"agent: {{token_sha256: {hashlib.sha256(saved.encode()).hexdigest()}}}"
    assert (tmp_path / "token").stat().st_mode & 0o077 == 0
    assert run_cli("agent-token", "--output", "token", cwd=tmp_path).returncode == 1  # never overwritten
    assert (tmp_path / "token").read_text().strip() == saved
