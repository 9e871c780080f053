"""The agent needs only connmon's required dependencies; the centre's are the extra connmon[centre] (issue 18).

A virtual environment is made with what ``pip install connmon`` brings: connmon and the
distributions its ``[project] dependencies`` need (followed through their own requirements, no
extras), copied from the test's own environment, so no download. ``pip check`` there proves the
metadata agrees; the agent then runs in it, against a stand-in centre on the loopback. Nothing of
the centre (PostgreSQL driver, bcrypt, jinja2, tabulate, openpyxl, APScheduler) is in it, so any
import of them on the agent's path fails the test, and a centre command must name the extra.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from monitor.cli import CENTRE_MODULES
from tests.conftest import need_root

ROOT = Path(__file__).resolve().parent.parent
STUB = Path(__file__).resolve().parent / "agent_centre_stub.py"
CENTRE_PORT = 19561
TOKEN = "lean-agent-token-0123456789abcdefghijklmnopqrstu"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str], extra: str = "") -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` need, theirs followed too (no extras of theirs)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), extra) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": wanted}):
            continue
        if normalise(req.name) == "connmon":  # the test extra names connmon[centre]
            todo.extend((Requirement(r), e) for e in req.extras for r in PROJECT["optional-dependencies"][e])
            continue
        if normalise(req.name) in found:
            continue
        dist = metadata.distribution(req.name)
        found[normalise(req.name)] = dist
        todo.extend((Requirement(r), "") for r in dist.requires or ())
    return found


def top_level_modules(dist: metadata.Distribution) -> set[str]:
    """The names a distribution's files make importable (``import NAME``)."""
    names = set()
    for file in dist.files or ():
        first = file.parts[0]
        if first.endswith((".dist-info", ".data")) or first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        names.add(first.removesuffix(".py") if len(file.parts) == 1 else first)
    return {n.split(".")[0] for n in names if not n.endswith(".libs")}


def install_like_pip(venv: Path) -> None:
    """connmon and its required distributions into ``venv``, laid out as pip lays out an install."""
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path("
                                "'purelib'))"], check=True, capture_output=True, text=True).stdout.strip())
    for dist in closure(PROJECT["dependencies"]).values():
        for file in dist.files or ():
            if file.parts[0] == "..":  # console scripts of libraries: not needed
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(str(dist.locate_file(file))), target)
    shutil.copytree(ROOT / "monitor", site / "monitor", ignore=shutil.ignore_patterns("__pycache__"))
    info = site / f"connmon-{PROJECT['version']}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", "Name: connmon", f"Version: {PROJECT['version']}",
             f"Requires-Python: {PROJECT['requires-python']}"]
    lines += [f"Requires-Dist: {r}" for r in PROJECT["dependencies"]]
    for extra, requirements in PROJECT["optional-dependencies"].items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f"Requires-Dist: {r} ; extra == \"{extra}\"" for r in requirements]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "INSTALLER").write_text("test_lean_agent\n")
    (info / "RECORD").write_text("")
    scripts = "".join(f"{name} = {target}\n" for name, target in PROJECT["scripts"].items())
    (info / "entry_points.txt").write_text(f"[console_scripts]\n{scripts}")
    for name, target in PROJECT["scripts"].items():
        module, _, function = target.partition(":")
        script = venv / "bin" / name
        script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\n"
                          f"sys.exit({function}())\n")
        script.chmod(0o755)


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # pip from ensurepip: no download
    install_like_pip(venv)
    (venv / "sites.xlsx").write_bytes(b"PK\x03\x04 not read: openpyxl is missing")  # for connmon import
    return venv


def lean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def run(venv: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True,
                            env=lean_env(), cwd=venv, stdin=subprocess.DEVNULL, timeout=120)
    if check:
        assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


def test_the_required_dependencies_hold_none_of_the_centres_and_pip_check_agrees(lean: Path) -> None:
    """An install of connmon without extras has no centre library (psycopg, bcrypt, jinja2, tabulate, openpyxl,
    apscheduler) and pip finds its requirements met.
    """
    found = run(lean, "python", "-c", "import importlib.util, json, sys; "
                f"print(json.dumps([m for m in {sorted(CENTRE_MODULES)!r} if importlib.util.find_spec(m)]))")
    assert json.loads(found.stdout) == []
    assert "No broken requirements" in run(lean, "python", "-m", "pip", "check").stdout


def test_connmon_agent_starts_and_every_agent_module_imports_without_the_centre(lean: Path) -> None:
    """connmon agent --help and python -m monitor agent --help work there, and importing the CLI and every module of
    the agent loads no centre library.
    """
    assert "--config" in run(lean, "connmon", "agent", "--help").stdout
    assert "--config" in run(lean, "python", "-m", "monitor", "agent", "--help").stdout
    loaded = run(lean, "python", "-c", (
        "import importlib, json, pkgutil, sys\n"
        "import monitor.cli, monitor.agent.protocol, monitor.agent.site\n"
        "for info in pkgutil.iter_modules(monitor.agent.site.__path__, 'monitor.agent.site.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"))
    top = set(json.loads(loaded.stdout))
    assert "monitor" in top and "aiohttp" in top
    assert not top & CENTRE_MODULES


@pytest.mark.parametrize("argv", [
    ("run", "--config", str(ROOT / "config" / "example.yaml"), "--listen", "127.0.0.1:19562", "--no-history"),
    ("report", "--from", "2026-01-01", "--to", "2026-01-31", "--state-dir", "."),
    ("import", "sites.xlsx", "--output", "sites.yaml", "--dry-run"),  # a CSV needs no openpyxl; a workbook does
    ("check", "--config", str(ROOT / "config" / "example.yaml"), "--web.config.file",
     str(ROOT / "config" / "web-config.example.yml")),
], ids=["run", "report", "import", "check-web-config"])
def test_a_centre_command_without_the_extra_names_it_instead_of_a_traceback(lean: Path, argv: tuple[str, ...]) -> None:
    """A centre command in an agent-only install exits 3 and says pip install 'connmon[centre]', with no traceback."""
    result = run(lean, "connmon", *argv, check=False)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "pip install 'connmon[centre]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_centre_modules_the_cli_names_cover_the_centre_extra() -> None:
    """Every module the centre extra adds over the required dependencies is in monitor.cli.CENTRE_MODULES, so a missing
    one is never a traceback.
    """
    required = closure(PROJECT["dependencies"])
    centre = closure(PROJECT["optional-dependencies"]["centre"])
    added = set().union(*(top_level_modules(d) for name, d in centre.items() if name not in required))
    assert added, "the centre extra adds nothing?"
    assert added <= CENTRE_MODULES, added - CENTRE_MODULES
    assert not set().union(*(top_level_modules(d) for d in required.values())) & CENTRE_MODULES


def test_the_agent_measures_and_uploads_from_the_lean_environment(lean: Path, tmp_path: Path) -> None:
    """The agent of a lean install pings the centre on the loopback and uploads its results, which the centre
    acknowledges.
    """
    need_root()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = tmp_path / "agent.yaml"
    config.write_text(f"centre: http://127.0.0.1:{CENTRE_PORT}\nsite: school-lean\ntoken_file: {token}\n"
                      f"state_dir: {tmp_path / 'state'}\ninterval: 1s\n"
                      "icmp: {count: 2, spacing: 50ms, timeout: 500ms}\n")
    state = tmp_path / "centre"
    state.mkdir()
    centre = subprocess.Popen([sys.executable, str(STUB), "--port", str(CENTRE_PORT), "--token-sha256",
                               hashlib.sha256(TOKEN.encode()).hexdigest(), "--state", str(state)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    agent = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", CENTRE_PORT)) == 0:
                    break
            time.sleep(0.1)
        agent = subprocess.Popen([str(lean / "bin" / "connmon"), "agent", "--config", str(config)], env=lean_env(),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        batches = state / "batches.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.poll() is None and not batches.exists():
            time.sleep(0.2)
        assert agent.poll() is None, agent.communicate(timeout=10)
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
        assert agent.returncode == 0, stderr
    finally:
        for proc in (agent, centre):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    results = [r for line in batches.read_text().splitlines() for r in json.loads(line)["body"]["results"]]
    assert results and all(r["error"] is None and r["address"] == "127.0.0.1" for r in results)
    assert sysconfig.get_path("purelib") not in stderr  # no traceback from this (full) environment
