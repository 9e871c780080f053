"""The command line as users run it: exit codes, the table, the JSON lines, errors without tracebacks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import __version__
from tests.factories import write_config
from tests.netlab import Lab, child_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.yaml"
JSON_KEYS = {"endpoint", "kind", "up", "sent", "received", "loss_ratio", "rtt_min_seconds", "rtt_avg_seconds",
             "rtt_max_seconds", "jitter_seconds", "error"}


def connmon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=child_env())


def test_probe_prints_a_table_of_the_shipped_example(lab: Lab) -> None:
    """`connmon probe` on config/example.yaml shows every endpoint up and exits 0."""
    proc = lab.connmon("probe", "--config", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["ENDPOINT", "KIND", "DISTRICT"]
    for name in ("school-loopback-v4", "№12 мектеп", "clinic-loopback-v6", "clinic-localhost"):
        assert any(line.startswith(name) and " up " in line for line in lines), name
    assert lines[-1] == "4 endpoints, 4 up, 0 down"


def test_probe_json_selects_endpoints_and_has_the_documented_keys(lab: Lab) -> None:
    """--endpoint limits the run; --json prints one object per endpoint with the documented keys."""
    proc = lab.connmon("probe", "--config", str(EXAMPLE), "--json", "--endpoint", "№12 мектеп",
                       "--endpoint", "clinic-loopback-v6")
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["endpoint"] for o in objects] == ["№12 мектеп", "clinic-loopback-v6"]
    for o in objects:
        assert set(o) >= JSON_KEYS
        assert o["sent"] == o["received"] == 5 and o["up"] is True and o["kind"] in ("school", "clinic")


def test_unknown_endpoint_and_invalid_config_exit_2_without_traceback(tmp_path: Path) -> None:
    """Naming an endpoint that is not configured, or a broken config, exits 2 with a clear message."""
    proc = connmon("probe", "--config", str(EXAMPLE), "--endpoint", "nope")
    assert proc.returncode == 2 and "no such endpoint" in proc.stderr and "nope" in proc.stderr
    bad = write_config(tmp_path, "groups:\n  - name: g\n    endpoints:\n      - {name: a, hots: 127.0.0.1}\n")
    for command in ("probe", "run", "check"):
        proc = connmon(command, "--config", str(bad))
        assert proc.returncode == 2, (command, proc.stderr)
        assert f"{bad}:4:19: groups[0].endpoints[0].hots: unknown key 'hots'; did you mean 'host'?" in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout


def test_listen_errors_are_start_up_errors(lab: Lab, tmp_path: Path) -> None:
    """A malformed --listen is a usage error (2); a port already taken is a start-up error (3)."""
    proc = connmon("run", "--config", str(EXAMPLE), "--listen", "nonsense")
    assert proc.returncode == 2 and "--listen" in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = connmon("run", "--config", str(EXAMPLE), "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 3 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_and_console_script() -> None:
    """`python -m monitor --version` and the installed `connmon` script both answer."""
    assert connmon("--version").stdout.strip() == f"connmon {__version__}"
    script = Path(sys.executable).parent / "connmon"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == f"connmon {__version__}"


def test_state_dir_defaults_to_state_without_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain `connmon run` / `connmon report` keeps its history in ./state; CONNMON_STATE_DIR overrides that."""
    from monitor.cli import build_parser

    monkeypatch.delenv("CONNMON_STATE_DIR", raising=False)
    report_args = ["report", "--from", "2026-10-01", "--to", "2026-10-31"]
    assert build_parser().parse_args(["run", "--config", "c.yaml"]).state_dir == "state"
    assert build_parser().parse_args(report_args).state_dir == "state"
    monkeypatch.setenv("CONNMON_STATE_DIR", "/srv/connmon")
    assert build_parser().parse_args(["run", "--config", "c.yaml"]).state_dir == "/srv/connmon"
    assert build_parser().parse_args(report_args).state_dir == "/srv/connmon"
