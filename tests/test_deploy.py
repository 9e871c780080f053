"""The deployment files: Dockerfile, docker-compose.yml and the systemd units, checked against the repo.

No Docker engine runs here, so the Dockerfile and the compose file are parsed: every copied or
mounted path must exist, ports must agree with each other and with the Prometheus and Grafana
configs, the image must run as a non-root user with a health check on /-/healthy. The systemd
units go through the real ``systemd-analyze verify``. Every connmon command line in these files
is parsed by connmon's own argument parser. The image's own command line runs for real as the
image's user without any capability, in a network namespace of its own with the docs'
``docker run`` sysctl (docs/deployment.md), and must ping.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from monitor.cli import build_parser
from monitor.shard import Shard
from tests.conftest import need
from tests.netlab import child_env
from tests.running import samples
from tests.running import value as sample_value

ROOT = Path(__file__).resolve().parent.parent
UNITS = [ROOT / "deploy" / "connmon.service", ROOT / "deploy" / "connmon@.service"]
AGENT_UNIT = ROOT / "deploy" / "connmon-agent.service"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines = [line for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
             if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def exec_form(args: str) -> list[str]:
    return yaml.safe_load(args)  # a JSON array is YAML too


def test_dockerfile_copies_only_what_exists() -> None:
    """Every COPY source is a file or directory of the repository."""
    copies = instructions("COPY")
    assert copies
    for args in copies:
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source


def test_dockerfile_runs_as_a_non_root_user_on_a_slim_python() -> None:
    """Slim Python base, a created system user, USER is not root, iperf3 installed through apt."""
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", instructions("FROM")[0])
    user = instructions("USER")[-1]
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    runs = " ".join(instructions("RUN"))
    assert f"useradd --system --uid 10001 --gid {user}" in runs
    assert re.search(r"apt-get install [^&]*\biperf3\b", runs)


def test_state_directory_is_a_volume_owned_by_the_user() -> None:
    """/var/lib/connmon is created owned by the connmon user and declared a VOLUME (after it is created)."""
    user = instructions("USER")[-1]
    names = [instruction for instruction, _ in dockerfile()]
    runs = instructions("RUN")
    create = next(i for i, (ins, args) in enumerate(dockerfile()) if ins == "RUN" and "install -d" in args)
    assert f"install -d -o {user} -g {user} -m 0750 /var/lib/connmon" in " ".join(runs)
    volume = names.index("VOLUME")
    assert create < volume
    assert exec_form(instructions("VOLUME")[0]) == ["/var/lib/connmon"]


def test_healthcheck_port_and_command() -> None:
    """HEALTHCHECK asks /-/healthy on the EXPOSEd port; ENTRYPOINT + CMD is a valid `connmon run`."""
    assert instructions("EXPOSE") == ["9077"]
    health = instructions("HEALTHCHECK")[0]
    assert "http://127.0.0.1:9077/-/healthy" in health
    assert exec_form(instructions("ENTRYPOINT")[0]) == ["connmon"]
    args = build_parser().parse_args(exec_form(instructions("CMD")[0]))
    assert args.command == "run" and args.listen == ":9077"
    assert args.config == "/etc/connmon/sites.yaml"
    assert "COPY config/example.yaml /etc/connmon/sites.yaml" in [f"COPY {a}" for a in instructions("COPY")]


def test_compose_services_mounts_and_ports() -> None:
    """Four services; every bind mount's source exists; each published port is the service's own."""
    services = compose()["services"]
    assert set(services) == {"connmon", "prometheus", "alertmanager", "grafana"}
    assert services["connmon"]["build"] == "." and (ROOT / "Dockerfile").is_file()
    named = set(compose().get("volumes", {}))
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source, target, *_mode = mount.split(":")
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source}"
                assert _mode == ["ro"], f"{name}: {mount} should be read-only"
            else:
                assert source in named, f"{name}: {source}"
    ports = {name: [p.split(":") for p in service["ports"]] for name, service in services.items()}
    assert ports["connmon"] == [["9077", instructions("EXPOSE")[0]]]
    assert ports["prometheus"] == [["9090", "9090"]]
    assert ports["alertmanager"] == [["9093", "9093"]]
    assert ports["grafana"] == [["3000", "3000"]]


def test_compose_connmon_pings_without_root_or_capabilities() -> None:
    """connmon in compose: unprivileged ICMP through the sysctl, every capability dropped, read-only root."""
    service = compose()["services"]["connmon"]
    assert service["sysctls"]["net.ipv4.ping_group_range"] == "0 2147483647"
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert service["read_only"] is True
    assert "connmon-state:/var/lib/connmon" in service["volumes"]
    args = build_parser().parse_args(service["command"])
    assert args.icmp_mode == "unprivileged"
    site_list = next(m.split(":")[0] for m in service["volumes"] if m.endswith(f"{args.config}:ro"))
    check = subprocess.run([sys.executable, "-m", "monitor", "check", "--config", str(ROOT / site_list)],
                           capture_output=True, text=True, check=False, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_compose_wires_prometheus_alertmanager_and_grafana_together() -> None:
    """Prometheus' config and rules land where it reads them; its targets and Grafana's data source
    name compose services on their ports; Grafana gets the provisioning and the dashboards."""
    services = compose()["services"]
    prom = services["prometheus"]
    mounts = dict(m.split(":")[:2] for m in prom["volumes"])
    config_target = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert mounts["./config/prometheus.yml"] == config_target
    prom_config = yaml.safe_load((ROOT / "config/prometheus.yml").read_text())
    for rule_file in prom_config["rule_files"]:  # relative to prometheus.yml, there and in the container
        assert (ROOT / "config" / rule_file).is_file()
        assert mounts[f"./config/{rule_file}"] == str(Path(config_target).parent / rule_file)
    published = {name: service["ports"][0].split(":")[1] for name, service in services.items()}
    scrape = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom_config["scrape_configs"]}
    assert scrape["connmon"] == [f"connmon:{published['connmon']}"]
    alertmanagers = prom_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == [f"alertmanager:{published['alertmanager']}"]
    am_mounts = dict(m.split(":")[:2] for m in services["alertmanager"]["volumes"])
    am_config = next(a.split("=", 1)[1] for a in services["alertmanager"]["command"] if a.startswith("--config.file="))
    assert am_mounts["./config/alertmanager.yml"] == am_config
    grafana = dict(m.split(":")[:2] for m in services["grafana"]["volumes"])
    assert grafana["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/connmon.yml").read_text())["datasources"][0]
    assert datasource["url"] == f"http://prometheus:{published['prometheus']}"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboards_dir = grafana["./grafana/dashboards"]
    assert home.startswith(dashboards_dir + "/") and (ROOT / "grafana/dashboards" / Path(home).name).is_file()


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_unit_is_hardened_and_runs_connmon_as_its_user(path: Path) -> None:
    """Non-root user, CAP_NET_RAW as the only capability, hardening, state dir; ExecStart parses."""
    s = unit_settings(path)
    assert s["User"] == ["connmon"] and s["Group"] == ["connmon"]
    assert s["AmbientCapabilities"] == ["CAP_NET_RAW"] and s["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("ExecReload", "/bin/kill -HUP $MAINPID")):
        assert s[key] == [value], key
    assert s["StateDirectory"][0].startswith("connmon")
    argv = systemd_words(s["ExecStart"][0].replace("%i", "0"), s.get("Environment", []))
    assert argv[0] == "/opt/connmon/.venv/bin/connmon"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/connmon/sites.yaml"
    if path.name == "connmon@.service":  # the template's defaults: 4 shards, 1 replica, no shared store
        assert (args.shard, args.replicas, args.store) == (Shard(0, 4), 1, None)
        replicated = build_parser().parse_args(systemd_words(
            s["ExecStart"][0].replace("%i", "2"), ["CONNMON_SHARDS=3 CONNMON_REPLICAS=2",
                                                   "CONNMON_STORE=--store=postgresql://connmon@db/connmon"])[1:])
        assert (replicated.shard, replicated.replicas) == (Shard(2, 3), 2)
        assert replicated.store == "postgresql://connmon@db/connmon"


def systemd_words(command: str, environment: list[str]) -> list[str]:
    """``command`` as systemd runs it: ``${VAR}`` replaced in a word, an unquoted ``$VAR`` split into words
    (none when empty), with the unit's ``Environment=`` lines (later ones win, as an EnvironmentFile's would)."""
    values: dict[str, str] = {}
    for line in environment:
        values.update(item.split("=", 1) for item in shlex.split(line))
    words: list[str] = []
    for word in shlex.split(command):
        if re.fullmatch(r"\$[A-Z_]+", word):
            words += values.get(word[1:], "").split()
            continue
        words.append(re.sub(r"\$\{([A-Z_]+)\}", lambda m: values.get(m.group(1), ""), word))
    return words


def test_agent_unit_is_hardened_and_runs_connmon_agent_as_its_own_user() -> None:
    """The site agent's unit: its own non-root user, CAP_NET_RAW only, a private state dir for the spool,
    the same hardening as the centre's, always restarted; ExecStart is a valid `connmon agent`."""
    s = unit_settings(AGENT_UNIT)
    assert s["User"] == ["connmon-agent"] and s["Group"] == ["connmon-agent"]
    assert s["AmbientCapabilities"] == ["CAP_NET_RAW"] and s["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    centre = unit_settings(UNITS[0])
    for key in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "RestrictAddressFamilies", "RestrictNamespaces", "SystemCallArchitectures"):
        assert s[key] == centre[key], key
    assert s["StateDirectory"] == ["connmon-agent"] and s["StateDirectoryMode"] == ["0700"]
    assert s["Restart"] == ["always"] and "ExecReload" not in s
    args = build_parser().parse_args(shlex.split(s["ExecStart"][0])[1:])
    assert args.command == "agent" and args.config == "/etc/connmon-agent/agent.yaml"
    assert shlex.split(s["ExecStart"][0])[0] == "/opt/connmon/.venv/bin/connmon"


def test_the_image_runs_the_agent_too() -> None:
    """`docker run IMAGE agent --config …`: the ENTRYPOINT is connmon, so the agent command parses after it."""
    entry = exec_form(instructions("ENTRYPOINT")[0])
    args = build_parser().parse_args([*entry[1:], "agent", "--config", "/etc/connmon-agent/agent.yaml",
                                 "--icmp-mode", "unprivileged"])
    assert entry == ["connmon"] and args.command == "agent" and args.icmp_mode == "unprivileged"


@pytest.mark.parametrize("path", [*UNITS, AGENT_UNIT], ids=lambda p: p.name)
def test_systemd_analyze_verifies_the_unit(path: Path, tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say (the connmon path pointed at this checkout's)."""
    need(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (Debian package systemd)")
    connmon = Path(sys.executable).parent / "connmon"
    need(connmon.is_file(), "needs the .venv's connmon script (scripts/install)")
    copy = tmp_path / path.name
    copy.write_text(path.read_text(encoding="utf-8").replace("/opt/connmon/.venv/bin/connmon", str(connmon)))
    unit = copy if "@" not in path.name else tmp_path / path.name.replace("@", "@0")
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False,
                          timeout=60)
    assert proc.returncode == 0 and (proc.stdout + proc.stderr).strip() == "", proc.stdout + proc.stderr


def documentation() -> str:
    """The README and every page of docs/, as one text: what the tests below hold to the shipped files."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def test_readme_unit_excerpts_are_from_the_shipped_units() -> None:
    """Each ini block of the docs (README and docs/) that names a unit file shows only lines of that file in deploy/."""
    readme = documentation()
    blocks = re.findall(r"```ini\n(.*?)```", readme, flags=re.S)
    shown = {path.name: 0 for path in [*UNITS, AGENT_UNIT]}
    for block in blocks:
        named = re.match(r"# (?:/etc/systemd/system/|deploy/)(connmon(?:@|-agent)?\.service)", block)
        assert named, f"a docs unit example names no shipped unit:\n{block}"
        unit_lines = set((ROOT / "deploy" / named.group(1)).read_text(encoding="utf-8").splitlines())
        for line in block.splitlines()[1:]:
            if line.strip() and line.strip() != "...":
                assert line in unit_lines, f"{named.group(1)}: {line!r}"
        shown[named.group(1)] += 1
    assert all(shown.values()), shown


def test_the_image_keeps_its_history_in_var_lib_connmon(monkeypatch: pytest.MonkeyPatch) -> None:
    """ENV CONNMON_STATE_DIR and the CMD both give /var/lib/connmon (the VOLUME): the daemon writes there, and a
    `docker exec … connmon report` without --state-dir reads the same history."""
    env = dict(arg.split("=", 1) for args in instructions("ENV") for arg in shlex.split(args))
    assert env["CONNMON_STATE_DIR"] == "/var/lib/connmon"
    monkeypatch.setenv("CONNMON_STATE_DIR", env["CONNMON_STATE_DIR"])
    run = build_parser().parse_args(exec_form(instructions("CMD")[0]))
    assert run.state_dir == "/var/lib/connmon" and not run.no_history
    report = build_parser().parse_args(["report", "--from", "2026-10-01", "--to", "2026-10-31"])
    assert report.state_dir == "/var/lib/connmon"


# ------------------------------------------------------------------------------ ICMP without root in the image
IMAGE_LISTEN_PORT = 9522  # on the loopback of the test's own namespace


def readme_docker_run() -> list[str]:
    """The docs' `docker run` command of the image (continuation lines joined), as argv."""
    readme = documentation()
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
              if "docker run" in b and "docker build" in b]
    assert len(blocks) == 1, "one docs block builds and runs the image"
    line = next(part for part in re.sub(r"\\\n\s*", " ", blocks[0]).splitlines() if part.startswith("docker run"))
    return shlex.split(line)


def image_ids() -> tuple[int, int]:
    """The uid and gid the Dockerfile gives the image's user."""
    runs = " ".join(instructions("RUN"))
    uid = re.search(r"useradd --system --uid (\d+)", runs)
    gid = re.search(r"groupadd --system --gid (\d+)", runs)
    assert uid is not None and gid is not None
    return int(uid.group(1)), int(gid.group(1))


def test_readme_docker_run_allows_unprivileged_icmp_for_the_image_user() -> None:
    """The docs run the image with every capability dropped and with a ping_group_range that holds
    the image's gid: the default command then has unprivileged ICMP, and needs nothing else."""
    argv = readme_docker_run()
    assert argv[-1] == "connmon" and "--cap-drop" in argv and argv[argv.index("--cap-drop") + 1] == "ALL"
    assert not {"--cap-add", "--privileged", "--user", "-u"} & set(argv)
    sysctls = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--sysctl")
    low, high = map(int, sysctls["net.ipv4.ping_group_range"].split())
    _, gid = image_ids()
    assert low <= gid <= high
    # the default command leaves --icmp-mode at auto: raw sockets when the process may (it may not
    # here), else unprivileged ones; the real run below shows the fallback
    assert build_parser().parse_args(exec_form(instructions("CMD")[0])).icmp_mode == "auto"


@contextlib.contextmanager
def loopback_namespace(ping_group_range: str) -> Iterator[str]:
    """A network namespace of this test's own with only its loopback up and the given sysctl."""
    name = f"h6img{os.getpid()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.ping_group_range={ping_group_range}"],
                       check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def image_command(config: Path, state: Path) -> list[str]:
    """ENTRYPOINT + CMD of the Dockerfile, the site list, listen address and state dir pointed at the test's."""
    argv = [*exec_form(instructions("ENTRYPOINT")[0]), *exec_form(instructions("CMD")[0])]
    assert argv[0] == "connmon"
    replace = {"--config": str(config), "--listen": f"127.0.0.1:{IMAGE_LISTEN_PORT}", "--state-dir": str(state)}
    for i, arg in enumerate(argv[:-1]):
        if arg in replace:
            argv[i + 1] = replace[arg]
    return [sys.executable, "-m", "monitor", *argv[1:]]


@pytest.mark.netns
@pytest.mark.parametrize("allowed", [True, False], ids=["readme-sysctl", "no-sysctl"])
def test_image_command_pings_as_the_image_user_without_capabilities(allowed: bool) -> None:
    """The image's own command, as its uid/gid with no capability at all (``--cap-drop ALL``): with the
    docs' ping_group_range it pings over unprivileged ICMP; without it, it stops and names the sysctl."""
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv to switch users")
    uid, gid = image_ids()
    sysctl = dict(a.split("=", 1) for a in readme_docker_run() if a.startswith("net.ipv4."))
    directory = Path(tempfile.mkdtemp(prefix="connmon-image-"))
    try:
        directory.chmod(0o755)
        config = directory / "sites.yaml"
        config.write_text("defaults: {icmp: {interval: 1s, count: 2, spacing: 10ms, timeout: 300ms}}\n"
                          "groups: [{name: g, endpoints: [{name: loop, host: 127.0.0.1}]}]\n", encoding="utf-8")
        config.chmod(0o644)
        state = directory / "state"
        state.mkdir(mode=0o750)
        os.chown(state, uid, gid)
        as_image_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
                         "--bounding-set=-all"]
        env = {**child_env(), "CONNMON_STATE_DIR": str(state)}
        with loopback_namespace(sysctl["net.ipv4.ping_group_range"] if allowed else "1 0") as ns:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *as_image_user, *image_command(config, state)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            try:
                if not allowed:
                    _, stderr = proc.communicate(timeout=60)
                    assert proc.returncode == 3, stderr
                    assert "net.ipv4.ping_group_range" in stderr and "Traceback" not in stderr
                    return
                scrape = [sys.executable, "-c", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                          f"'http://127.0.0.1:{IMAGE_LISTEN_PORT}/metrics', timeout=5).read().decode())"]
                up = None
                for _ in range(120):  # bounded: until the first cycle is in /metrics
                    assert proc.poll() is None, proc.communicate()[1][-3000:]
                    got = subprocess.run(["ip", "netns", "exec", ns, *scrape], capture_output=True, text=True,
                                         check=False, timeout=30)
                    if got.returncode == 0 and "connmon_up{" in got.stdout:
                        up = sample_value(samples(got.stdout), "connmon_up", endpoint="loop")
                        break
                    time.sleep(0.25)
                assert up == 1
                status = Path(f"/proc/{proc.pid}/status").read_text(encoding="ascii")
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                assert fields["Uid"].split() == [str(uid)] * 4 and fields["Gid"].split() == [str(gid)] * 4
                assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
                proc.terminate()
                _, stderr = proc.communicate(timeout=30)
                assert "ICMP engine: unprivileged datagram ICMP sockets" in stderr, stderr[-3000:]
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=30)
    finally:
        shutil.rmtree(directory)
