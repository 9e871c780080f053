"""Least privilege and no injection: connmon runs as an ordinary user with only what ICMP needs, and
nothing in ``monitor/`` can hand text (from the config or anywhere) to a shell or an evaluator."""

from __future__ import annotations

import ast
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netlab import Lab, Site, child_env
from tests.running import running_daemon, scrape_when, value

MONITOR = Path(__file__).resolve().parent.parent / "monitor"
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture(scope="module")
def site(lab: Lab) -> Site:
    return lab.add_site("target")


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A directory the unprivileged user can read (pytest's tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="connmon-nobody-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def write_sites(directory: Path, site: Site) -> Path:
    config = directory / "sites.yaml"
    config.write_text("defaults: {icmp: {interval: 1s, count: 2, spacing: 10ms, timeout: 300ms}}\ngroups:\n"
                      f"  - {{name: g, endpoints: [{{name: site, host: {site.v4}}}, {{name: v6, host: '{site.v6}'}},"
                      " {name: loop, host: 127.0.0.2}]}\n", encoding="utf-8")
    config.chmod(0o644)
    return config


@pytest.mark.parametrize(("how", "mode"), [("ping_group_range", "unprivileged datagram"), ("cap_net_raw", "raw")])
def test_daemon_runs_as_nobody_with_only_what_icmp_needs(lab: Lab, site: Site, readable_dir: Path,
                                                          how: str, mode: str) -> None:
    """As uid/gid 65534, with either net.ipv4.ping_group_range or the one ambient capability CAP_NET_RAW,
    the daemon probes sites over both families and serves /metrics."""
    lab.allow_unprivileged_icmp(how == "ping_group_range")
    caps = ["--inh-caps=+net_raw", "--ambient-caps=+net_raw"] if how == "cap_net_raw" else ["--inh-caps=-all"]
    config = write_sites(readable_dir, site)
    port = 9131 if how == "ping_group_range" else 9132
    try:
        with running_daemon(lab, config, port, prefix=[*AS_NOBODY, *caps]) as proc:
            parsed = scrape_when(f"http://{lab.prober_v4}:{port}/metrics",
                                 lambda p: len(p.get("connmon_up", {})) == 3, proc)
            for name in ("site", "v6", "loop"):
                assert value(parsed, "connmon_up", endpoint=name) == 1, name
            status = Path(f"/proc/{proc.pid}/status").read_text(encoding="ascii")
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert fields["Uid"].split() == [str(NOBODY)] * 4
            assert fields["Gid"].split() == [str(NOBODY)] * 4
            effective = int(fields["CapEff"], 16)
            assert effective == (1 << 13 if how == "cap_net_raw" else 0)  # 13 = CAP_NET_RAW, nothing else
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
    finally:
        lab.allow_unprivileged_icmp(False)
    assert proc.returncode == 0, stderr
    assert f"ICMP engine: {mode} ICMP sockets (IPv4+IPv6)" in stderr


def test_without_either_privilege_start_up_names_both_fixes(lab: Lab, site: Site, readable_dir: Path) -> None:
    """As nobody without CAP_NET_RAW or ping_group_range, `connmon run` exits 3 and says how to fix it."""
    lab.allow_unprivileged_icmp(False)
    config = write_sites(readable_dir, site)
    proc = subprocess.run(["ip", "netns", "exec", lab.prober, *AS_NOBODY, "--inh-caps=-all", sys.executable, "-m",
                           "monitor", "run", "--config", str(config), "--listen", f"{lab.prober_v4}:9133"],
                          capture_output=True, text=True, env=child_env(), timeout=60, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "CAP_NET_RAW" in proc.stderr and "net.ipv4.ping_group_range" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- no injection

_SHELL_CALLS = {"os.system", "os.popen", "os.execl", "os.execle", "os.execlp", "os.execlpe", "os.execv", "os.execve",
                "os.execvp", "os.execvpe", "os.spawnl", "os.spawnlp", "os.spawnv", "os.spawnvp", "os.posix_spawn",
                "os.posix_spawnp", "asyncio.create_subprocess_shell", "subprocess.getoutput",
                "subprocess.getstatusoutput", "eval", "exec", "compile", "pickle.loads", "pickle.load",
                "marshal.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"}
# These take the program and its arguments as one list; a single string there means a command line
# meant for a shell. (asyncio.create_subprocess_exec takes the program as a string and never uses one.)
_SUBPROCESS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
               "subprocess.check_output"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_text(node: ast.expr) -> bool:
    """A string built in place: a literal, an f-string, ``+``/``%`` on strings, or ``.format``/``.join``."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp):
        return _is_text(node.left) or _is_text(node.right)
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join")


def injection_risks(source: str, filename: str) -> list[str]:
    """Calls in ``source`` that could hand text to a shell or an evaluator, as ``file:line: call``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{filename}:{node.lineno}"
        if name in _SHELL_CALLS:
            found.append(f"{where}: {name}")
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"{where}: {name}(shell=...)")
        if name in _SUBPROCESS and node.args and _is_text(node.args[0]):
            found.append(f"{where}: {name} with a command line as one string")
    return found


def test_the_checker_finds_what_it_looks_for() -> None:
    """The scan flags shell=True, os.system, a string command, eval and yaml.load, and passes an argv list."""
    bad = ("import os, subprocess, yaml\nos.system(x)\nsubprocess.run(cmd, shell=True)\nsubprocess.run(f'ping {h}')\n"
           "subprocess.Popen('iperf3 -c ' + host)\neval(s)\nyaml.load(t)\n")
    assert [r.split(": ", 1)[1] for r in injection_risks(bad, "bad.py")] == [
        "os.system", "subprocess.run(shell=...)", "subprocess.run with a command line as one string",
        "subprocess.Popen with a command line as one string", "eval", "yaml.load"]
    ok = ("import asyncio, subprocess\nsubprocess.run(['iperf3', '-c', host], check=False)\nsubprocess.run(argv)\n"
          "asyncio.create_subprocess_exec('iperf3', '-c', host)\n")
    assert injection_risks(ok, "ok.py") == []


def test_nothing_in_monitor_can_reach_a_shell_or_an_evaluator() -> None:
    """No module of connmon calls a shell, eval/exec, pickle or an unsafe YAML loader; subprocesses get argv lists."""
    risks = [risk for path in sorted(MONITOR.rglob("*.py"))
             for risk in injection_risks(path.read_text(encoding="utf-8"), str(path.relative_to(MONITOR.parent)))]
    assert risks == []
