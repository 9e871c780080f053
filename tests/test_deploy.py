"""The deployment files: Dockerfile, docker-compose.yml and the systemd units, checked against the repo.

No Docker engine runs here, so the Dockerfile and the compose file are parsed: every copied or
mounted path must exist, ports must agree with each other and with the Prometheus and Grafana
configs, the image must run as a non-root user with a health check on /-/healthy. The systemd
units go through the real ``systemd-analyze verify``. Every connmon command line in these files
is parsed by connmon's own argument parser.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor.cli import _parser
from tests.conftest import need

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
    args = _parser().parse_args(exec_form(instructions("CMD")[0]))
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
    args = _parser().parse_args(service["command"])
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
    argv = shlex.split(s["ExecStart"][0].replace("%i", "0"))
    assert argv[0] == "/opt/connmon/.venv/bin/connmon"
    args = _parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/connmon/sites.yaml"


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
    args = _parser().parse_args(shlex.split(s["ExecStart"][0])[1:])
    assert args.command == "agent" and args.config == "/etc/connmon-agent/agent.yaml"
    assert shlex.split(s["ExecStart"][0])[0] == "/opt/connmon/.venv/bin/connmon"


def test_the_image_runs_the_agent_too() -> None:
    """`docker run IMAGE agent --config …`: the ENTRYPOINT is connmon, so the agent command parses after it."""
    entry = exec_form(instructions("ENTRYPOINT")[0])
    args = _parser().parse_args([*entry[1:], "agent", "--config", "/etc/connmon-agent/agent.yaml",
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


def test_readme_unit_excerpts_are_from_the_shipped_units() -> None:
    """Each ini block of the README that names a unit file shows only lines of that file in deploy/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```ini\n(.*?)```", readme, flags=re.S)
    shown = {path.name: 0 for path in [*UNITS, AGENT_UNIT]}
    for block in blocks:
        named = re.match(r"# (?:/etc/systemd/system/|deploy/)(connmon(?:@|-agent)?\.service)", block)
        assert named, f"a README unit example names no shipped unit:\n{block}"
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
    run = _parser().parse_args(exec_form(instructions("CMD")[0]))
    assert run.state_dir == "/var/lib/connmon" and not run.no_history
    report = _parser().parse_args(["report", "--from", "2026-10-01", "--to", "2026-10-31"])
    assert report.state_dir == "/var/lib/connmon"
