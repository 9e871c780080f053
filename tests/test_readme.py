"""The README's two set-up commands, as an operator would use them; and the docs/ pages held to the code:
every exported metric, every log ``logger`` name, every link from the README into the docs."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.documented import documented_metrics
from tests.factories import icmp, throughput_target
from tests.netlab import Lab, child_env

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def set_up_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)


def test_readme_gives_exactly_two_set_up_commands_and_ci_runs_the_test_one() -> None:
    """README's Set-up has two commands, run and test; .ci/run executes the test one."""
    assert set_up_commands() == ["./scripts/run", "./scripts/test"]
    assert "exec ./scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_run_command_serves_the_shipped_example(lab: Lab) -> None:
    """`./scripts/run` installs (or finds installed) connmon and serves the example's four sites, all up."""
    listen = f"{lab.prober_v4}:9077"
    proc = subprocess.Popen(["ip", "netns", "exec", lab.prober, str(ROOT / "scripts" / "run"), "--listen", listen],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        ups: dict[str, float] = {}
        for _ in range(120):  # bounded: up to a minute for the install check, start-up and a cycle per group
            try:
                status, text = lab.get(9077, "/metrics")
            except OSError:
                status, text = 0, ""
            if status == 200:
                ups = {s.labels["endpoint"]: s.value for f in text_string_to_metric_families(text)
                       for s in f.samples if s.name == "connmon_up"}
                if len(ups) == 4:
                    break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.5)
        assert ups == {"school-loopback-v4": 1, "№12 мектеп": 1, "clinic-loopback-v6": 1, "clinic-localhost": 1}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr


def test_readme_documents_every_exported_metric() -> None:
    """Each metric family /metrics can export (roll-out ones included) is named in the docs' Metrics page."""
    import dataclasses

    from monitor.centre_path import CentrePath
    from monitor.centre_path_exposition import CentrePathExposition
    from monitor.exposition.scrape import EngineExposition
    from monitor.exposition.sink import MetricsSink
    from monitor.history.exposition import StoreExposition
    from monitor.history.store import StoreStats
    from monitor.icmp.engine import EngineStats
    from monitor.maintenance import MaintenanceBook
    from monitor.maintenance_exposition import MaintenanceExposition
    from monitor.web.certificate import CertificateExposition, ServedCertificate
    from monitor.web.handshakes import HandshakeExposition, HandshakeWatch

    site = dataclasses.replace(throughput_target("s", budget=10**9), target_upload_bits_per_second=1e6,
                               contracted_bits_per_second=8e6)
    gateway = dataclasses.replace(site, name="gateway")
    centre_path = CentrePath([gateway])
    centre_path.record([icmp(gateway, 0.0, None)])  # connmon_uplink_up appears after a check's first run
    sink = MetricsSink(scrape=[EngineExposition(lambda: dataclasses.asdict(EngineStats())),
                               StoreExposition(StoreStats), CentrePathExposition(centre_path),
                               MaintenanceExposition(MaintenanceBook()),
                               CertificateExposition(ServedCertificate(Path("connmon.crt"), 1.8e9)),
                               HandshakeExposition(HandshakeWatch())],
                       tools={"iperf3": True}, shard="0")
    sink.set_targets([site, dataclasses.replace(site, name="p", status="planned")])
    exposition = b"".join(sink.exposition()).decode("utf-8")
    exported = {name for name in re.findall(r"^# TYPE (connmon_\w+) ", exposition, flags=re.M)}
    assert {"connmon_sites", "connmon_contracted_bits_per_second", "connmon_up", "connmon_uplink_up"} <= exported
    readme = (DOCS / "metrics.md").read_text(encoding="utf-8")
    assert exported - documented_metrics(readme) == set()


def code_logger_names() -> set[str]:
    """The names of the loggers monitor/ writes with: a module's path for ``getLogger(__name__)``, else the literal."""
    names = set()
    for path in (ROOT / "monitor").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for arg in re.findall(r"getLogger\((__name__|\"[^\"]+\")\)", path.read_text(encoding="utf-8")):
            names.add(module if arg == "__name__" else arg.strip('"'))
    return names


def test_docs_list_every_logger_name() -> None:
    """The docs' table of JSON-log ``logger`` names (How it is built) has exactly the loggers the code writes with."""
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## Log `logger` names", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    now = {re.findall(r"`([^`]+)`", cells[1])[0] for cells in rows[2:]}  # below the header and its --- line
    assert {"monitor.events", "monitor.daemon", "aiohttp.server"} <= code_logger_names()
    assert now == code_logger_names()


def test_readme_links_into_the_docs_resolve() -> None:
    """Every relative link of the README names a file of the repository, and a heading of it where it has an anchor;
    the README is the front page, at most 300 lines."""
    from markdown.extensions.toc import slugify

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    links = re.findall(r"\]\(((?!https?:|<)[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert {path for path, _ in links} >= {"docs/configuration.md", "docs/architecture.md"}
    for path, anchor in links:
        assert (ROOT / path).exists(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {slugify(h, "-") for h in headings}, f"{path}#{anchor}"
