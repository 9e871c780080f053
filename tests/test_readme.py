"""The README's two set-up commands, as an operator would use them."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.netlab import Lab, _child_env

ROOT = Path(__file__).resolve().parent.parent


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
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
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


def documented_metrics(readme: str) -> set[str]:
    """Every ``connmon_*`` name the README mentions, with ``connmon_icmp_{a,b}_total`` spelled out."""
    names = set(re.findall(r"connmon_[a-z_]*[a-z]", readme))
    for prefix, choices, suffix in re.findall(r"(connmon_[a-z_]*)\{([a-z_,]+)\}(_[a-z_]+)", readme):
        names.update(f"{prefix}{choice}{suffix}" for choice in choices.split(","))
    return names


def test_readme_documents_every_exported_metric() -> None:
    """Each metric family /metrics can export (roll-out ones included) is named in the README."""
    import dataclasses

    from monitor.config.model import IcmpSettings, ThroughputSettings
    from monitor.exposition.sink import MetricsSink
    from monitor.history.store import StoreStats
    from monitor.icmp.engine import EngineStats
    from monitor.targets import Target

    site = Target("s", "192.0.2.1", "192.0.2.1", "g", "school", "Aktobe", "fibre", None, None, 4e6, IcmpSettings(),
                  ThroughputSettings(method="iperf3", monthly_budget_bytes=10**9), 1e6,
                  contracted_bits_per_second=8e6)
    sink = MetricsSink(engine_stats=lambda: dataclasses.asdict(EngineStats()), tools={"iperf3": True},
                       store_stats=StoreStats, shard="0")
    sink.set_targets([site, dataclasses.replace(site, name="p", status="planned")])
    exposition = b"".join(sink.exposition()).decode("utf-8")
    exported = {name for name in re.findall(r"^# TYPE (connmon_\w+) ", exposition, flags=re.M)}
    assert {"connmon_sites", "connmon_contracted_bits_per_second", "connmon_up"} <= exported
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert exported - documented_metrics(readme) == set()
