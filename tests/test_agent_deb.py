"""The agent's Debian package (issue 18), built by scripts/build-agent-deb and installed with apt into a fresh
Debian 12 root.

The root is made by debootstrap (tests/debian_root.py; cached between runs, made anew on a fresh
machine); apt inside it fetches only Debian's own packages from the mirror this machine uses. The
installed agent runs inside the root, as its system user with only CAP_NET_RAW as the unit gives
it, against a stand-in centre on the loopback (tests/agent_centre_stub.py), so the bundled
pure-Python aiohttp, icmplib and the rest are exercised for real.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.debian_root import (
    DebianRoot,
    build_deb,
    can_build_roots,
    deb_fields,
    deb_files,
    fresh_root,
    installed_root,
    split_depends,
)

STUB = Path(__file__).resolve().parent / "agent_centre_stub.py"
CENTRE_PORT = 19560
TOKEN = "deb-agent-token-0123456789abcdefghijklmnopqrstuv"
UPGRADE = "+upgrade1"  # a version above pyproject's, for the upgrade over itself
AS_THE_UNIT = ("setpriv", "--reuid=connmon-agent", "--regid=connmon-agent", "--init-groups",
               "--inh-caps=+net_raw", "--ambient-caps=+net_raw", "--")  # the unit's User= and AmbientCapabilities=


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ok, reason = can_build_roots()
    need(ok, reason)
    out = tmp_path_factory.mktemp("debs")
    first = build_deb(out)
    version = deb_fields(first)["Version"]
    return {"first": first, "upgrade": build_deb(out, version + UPGRADE)}


@pytest.fixture(scope="module")
def root(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    with installed_root(tmp_path_factory.mktemp("installed") / "root", debs["first"]) as the_root:
        yield the_root


def write_agent_config(root: DebianRoot) -> None:
    """What enrolment (or a technician) leaves in /etc/connmon-agent: a config and a token for the loopback centre."""
    root.file("/etc/connmon-agent/token").write_text(TOKEN + "\n")
    root.file("/etc/connmon-agent/agent.yaml").write_text(
        f"centre: http://127.0.0.1:{CENTRE_PORT}\nsite: school-deb\ntoken_file: /etc/connmon-agent/token\n"
        "state_dir: /var/lib/connmon-agent\ninterval: 1s\nicmp: {count: 2, spacing: 50ms, timeout: 500ms}\n")
    root.sh("chown root:connmon-agent /etc/connmon-agent/token /etc/connmon-agent/agent.yaml; "
            "chmod 640 /etc/connmon-agent/token /etc/connmon-agent/agent.yaml")


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def test_the_package_is_architecture_all_pure_python_and_depends_only_on_debian_packages_that_serve(
        debs: dict[str, Path]) -> None:
    """The .deb is Architecture: all, named connmon-agent_<version>_all.deb, holds no compiled file, bundles aiohttp
    and icmplib newer than Debian 12's and depends on no centre library.
    """
    deb = debs["first"]
    fields = deb_fields(deb)
    assert fields["Package"] == "connmon-agent"
    assert fields["Architecture"] == "all"
    assert deb.name == f"connmon-agent_{fields['Version']}_all.deb"
    depends = split_depends(fields["Depends"])
    assert {"python3", "python3-yaml", "adduser"} <= set(depends)
    # Debian 12's are too old (aiohttp 3.8.4, icmplib 2.1.1): bundled, and never pulled in from Debian
    assert not {"python3-aiohttp", "python3-icmplib", "python3-multidict", "python3-yarl"} & set(depends)
    assert not {"python3-psycopg", "python3-bcrypt", "python3-jinja2", "python3-tabulate", "python3-openpyxl",
                "python3-apscheduler"} & set(depends)
    files = deb_files(deb)
    assert not [f for f in files if f.endswith((".so", ".pyd"))]
    for bundled in ("aiohttp/__init__.py", "icmplib/__init__.py", "multidict/__init__.py", "yarl/__init__.py",
                    "monitor/agent/site/main.py"):
        assert f"/usr/lib/connmon-agent/{bundled}" in files
    assert "/lib/systemd/system/connmon-agent.service" in files
    assert "/usr/share/doc/connmon-agent/copyright" in files
    for licence in ("aiohttp/LICENSE.txt", "icmplib/LICENSE", "yarl/LICENSE"):  # what is bundled carries its licence
        assert f"/usr/share/doc/connmon-agent/licences/{licence}" in files
    assert "/usr/bin/connmon" in files
    assert not [f for f in files if f.startswith(("/etc/connmon-agent/", "/var/lib/connmon-agent/"))]  # never dpkg's


def test_apt_installs_the_unit_the_user_and_the_directories_and_the_commands_work(root: DebianRoot) -> None:
    """After apt-get install ./connmon-agent_*.deb: the unit (enabled, waiting for its config), the system user,
    /etc/connmon-agent and the spool directory; connmon agent --help and the agent's modules import from the bundled
    libraries.
    """
    unit = root.file("/lib/systemd/system/connmon-agent.service").read_text()
    assert "ExecStart=/usr/bin/connmon agent --config /etc/connmon-agent/agent.yaml" in unit
    assert "ConditionPathExists=/etc/connmon-agent/agent.yaml" in unit
    assert "User=connmon-agent" in unit and "AmbientCapabilities=CAP_NET_RAW" in unit
    assert root.file("/etc/systemd/system/multi-user.target.wants/connmon-agent.service").is_symlink()
    user = root.run("getent", "passwd", "connmon-agent").stdout.split(":")
    assert user[5] == "/var/lib/connmon-agent" and user[6].strip() == "/usr/sbin/nologin"
    assert int(user[2]) < 1000  # a system user
    modes = root.run("stat", "-c", "%n %U %G %a", "/etc/connmon-agent", "/var/lib/connmon-agent").stdout.splitlines()
    assert modes == ["/etc/connmon-agent root connmon-agent 750",
                     "/var/lib/connmon-agent connmon-agent connmon-agent 700"]
    helped = root.run("connmon", "agent", "--help")
    assert "--config" in helped.stdout
    imported = root.run("python3", "-I", "-c",
                        "import sys; sys.path.insert(0, '/usr/lib/connmon-agent'); import monitor.agent.site.main; "
                        "import aiohttp, icmplib, multidict, yaml; print(aiohttp.__file__, icmplib.__version__, "
                        "multidict.__file__, yaml.__file__)")
    aiohttp_file, icmplib_version, multidict_file, yaml_file = imported.stdout.split()
    assert aiohttp_file.startswith("/usr/lib/connmon-agent/")
    assert multidict_file.startswith("/usr/lib/connmon-agent/")
    assert icmplib_version.startswith("3.")
    assert yaml_file.startswith("/usr/lib/python3/dist-packages/")  # Debian's PyYAML
    # byte-compiled at install (py3compile), so the agent's user never needs to write next to the modules
    assert list(root.file("/usr/lib/connmon-agent/aiohttp").glob("__pycache__/client*.pyc"))


def test_a_centre_command_in_the_package_says_what_to_install(root: DebianRoot) -> None:
    """connmon report (a centre command) in the agent-only package exits 3 with pip install 'connmon[centre]', no
    traceback.
    """
    result = root.run("connmon", "report", "--from", "2026-01-01", "--to", "2026-01-02", "--state-dir", "/tmp",
                      check=False)
    assert result.returncode == 3, result.stderr
    assert "pip install 'connmon[centre]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_installed_agent_measures_and_uploads_to_a_centre_as_its_system_user(
        root: DebianRoot, tmp_path: Path) -> None:
    """The packaged agent, run as connmon-agent with only CAP_NET_RAW, pings the centre and uploads its results, which
    the centre acknowledges, leaving its spool in /var/lib/connmon-agent.
    """
    write_agent_config(root)
    state = tmp_path / "centre"
    state.mkdir()
    centre = subprocess.Popen([sys.executable, str(STUB), "--port", str(CENTRE_PORT), "--token-sha256",
                               hashlib.sha256(TOKEN.encode()).hexdigest(), "--state", str(state)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    agent: subprocess.Popen[str] | None = None
    try:
        wait_for_port(CENTRE_PORT)
        agent = subprocess.Popen(root.command(*AS_THE_UNIT, "connmon", "agent", "--config",
                                              "/etc/connmon-agent/agent.yaml"),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        batches = state / "batches.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.poll() is None:
            if batches.exists() and len(batches.read_text().splitlines()) >= 2:
                break
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
    sent = [json.loads(line)["body"] for line in batches.read_text().splitlines()]
    assert len(sent) >= 2, stderr
    results = [r for body in sent for r in body["results"]]
    assert {r["type"] for r in results} == {"icmp"}
    assert all(r["address"] == "127.0.0.1" and r["error"] is None and len(r["rtts_seconds"]) == 2 for r in results)
    assert sent[0]["site"] == "school-deb"
    owner = root.run("stat", "-c", "%U %a", "/var/lib/connmon-agent/spool.sqlite3").stdout.split()
    assert owner == ["connmon-agent", "600"]


def test_an_upgrade_keeps_config_token_and_spool_and_a_purge_removes_them(
        debs: dict[str, Path], tmp_path: Path) -> None:
    """apt-get install of a newer connmon-agent over the old keeps /etc/connmon-agent and the spool as they were; apt-
    get purge removes both, the unit and the command.
    """
    with fresh_root(tmp_path / "root") as root:
        root.install(debs["first"])
        write_agent_config(root)
        spool = root.file("/var/lib/connmon-agent/spool.sqlite3")
        spool.write_bytes(b"results not yet at the centre")
        root.run("chown", "connmon-agent:connmon-agent", "/var/lib/connmon-agent/spool.sqlite3")
        kept = ("/etc/connmon-agent/agent.yaml", "/etc/connmon-agent/token", "/var/lib/connmon-agent/spool.sqlite3")
        before = {path: (root.file(path).read_bytes(), root.run("stat", "-c", "%U %G %a", path).stdout)
                  for path in kept}

        root.install(debs["upgrade"])
        version = root.run("dpkg-query", "-W", "-f", "${Version}", "connmon-agent").stdout
        assert version == deb_fields(debs["upgrade"])["Version"] and version.endswith(UPGRADE)
        after = {path: (root.file(path).read_bytes(), root.run("stat", "-c", "%U %G %a", path).stdout)
                 for path in kept}
        assert after == before
        assert root.run("connmon", "--version").stdout.strip()
        assert root.file("/etc/systemd/system/multi-user.target.wants/connmon-agent.service").is_symlink()

        root.run("apt-get", "purge", "-y", "-q", "connmon-agent")
        for gone in ("/etc/connmon-agent", "/var/lib/connmon-agent", "/usr/lib/connmon-agent", "/usr/bin/connmon",
                     "/lib/systemd/system/connmon-agent.service",
                     "/etc/systemd/system/multi-user.target.wants/connmon-agent.service"):
            assert not root.file(gone).exists() and not root.file(gone).is_symlink(), gone
        assert root.run("dpkg-query", "-W", "connmon-agent", check=False).returncode != 0
