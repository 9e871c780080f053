"""Graceful shutdown: SIGTERM stops scheduling, lets short cycles finish, cancels long ones, exits 0 in bound."""

from __future__ import annotations

import select
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from monitor.pipeline import ResultPipeline
from monitor.results import Cycle
from monitor.targets import Target
from tests.netlab import Lab, Site
from tests.running import running_daemon

EXIT_BOUND_SECONDS = 15  # the daemon promises 10 s; the margin is for a loaded CI machine, not for the daemon


def config_for(site: Site, timeout: str) -> str:
    return (f"defaults: {{icmp: {{interval: 60s, count: 1, timeout: {timeout}}}}}\n"
            f"groups:\n  - {{name: g, endpoints: [{{name: dropped, host: {site.v4}}}]}}\n")


@pytest.fixture(scope="module")
def dropping(lab: Lab) -> Site:
    site = lab.add_site("dropping")
    site.drop_icmp()
    return site


def wait_for_echo(site: Site, proc: subprocess.Popen[str], before: int) -> None:
    """Bounded wait until the site's firewall has dropped an echo of this daemon: its cycle is running."""
    for _ in range(120):
        assert proc.poll() is None, proc.communicate()[1]
        if site.dropped_echoes() > before:
            return
        time.sleep(0.1)
    raise AssertionError("no echo reached the site")


def read_until(proc: subprocess.Popen[str], needle: str, lines: list[str], limit_seconds: float = 20) -> None:
    """Read stderr lines into ``lines`` until one contains ``needle`` (bounded)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline()
            lines.append(line)
            if needle in line:
                return
    raise AssertionError(f"{needle!r} not logged; got:\n{''.join(lines)}")


def test_sigterm_during_a_long_cycle_cancels_it_and_exits_zero(lab: Lab, dropping: Site, tmp_path: Path) -> None:
    """A cycle that would wait 60 s for replies is cancelled after the drain bound; the exit code is 0."""
    config = tmp_path / "long.yaml"
    config.write_text(config_for(dropping, "59s"), encoding="utf-8")
    with running_daemon(lab, config, 9121) as proc:
        wait_for_echo(dropping, proc, dropping.dropped_echoes())
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=EXIT_BOUND_SECONDS)
    assert proc.returncode == 0, stderr
    assert "1 running cycle(s) get up to 5s to finish" in stderr
    assert "cancelling 1 cycle(s) still running" in stderr
    assert "cycle cancelled by shutdown" in stderr
    assert "down: no reply" not in stderr  # the half-done cycle was not published
    assert stderr.rstrip().endswith("stopped") and "Traceback" not in stderr


def test_sigterm_during_a_short_cycle_lets_it_finish_and_publishes_it(
        lab: Lab, dropping: Site, tmp_path: Path) -> None:
    """A cycle that ends within the drain bound is finished and its result reaches the sinks before exit 0."""
    config = tmp_path / "short.yaml"
    config.write_text(config_for(dropping, "2s"), encoding="utf-8")
    with running_daemon(lab, config, 9122) as proc:
        wait_for_echo(dropping, proc, dropping.dropped_echoes())
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=EXIT_BOUND_SECONDS)
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    stopping = next(i for i, line in enumerate(lines) if "1 running cycle(s) get up to" in line)
    down = next(i for i, line in enumerate(lines) if "endpoint=dropped" in line and "down: no reply" in line)
    assert stopping < down  # published during the drain, after SIGTERM
    assert "cancelling" not in stderr and lines[-1].endswith("stopped")


def test_a_second_signal_skips_the_wait(lab: Lab, dropping: Site, tmp_path: Path) -> None:
    """SIGINT after SIGTERM cancels running cycles at once instead of waiting for the drain bound."""
    config = tmp_path / "impatient.yaml"
    config.write_text(config_for(dropping, "59s"), encoding="utf-8")
    with running_daemon(lab, config, 9123) as proc:
        wait_for_echo(dropping, proc, dropping.dropped_echoes())
        proc.send_signal(signal.SIGTERM)
        lines: list[str] = []
        read_until(proc, "get up to 5s to finish", lines)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=EXIT_BOUND_SECONDS)
    stderr = "".join(lines) + rest
    assert proc.returncode == 0, stderr
    assert "second signal: not waiting for running cycles" in stderr
    assert "cancelling 1 cycle(s)" in stderr and stderr.rstrip().endswith("stopped")


def test_sigterm_exits_even_while_a_dns_look_up_is_stuck(lab: Lab, tmp_path: Path) -> None:
    """A look-up blocked on a DNS server that never answers (20 s by resolv.conf) does not hold the exit.

    The prober's DNS queries to its own loopback are dropped on arrival by its firewall, so the look-up hangs
    without any packet leaving the test's namespace.
    """
    resolv = lab.etc / "resolv.conf"
    saved = resolv.read_text(encoding="ascii")
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:10 attempts:2\n", encoding="ascii")
    drop = ["INPUT", "-i", "lo", "-p", "udp", "--dport", "53", "-j", "DROP"]  # sent, never answered
    lab.pr("iptables", "-I", *drop)
    config = tmp_path / "stuck.yaml"
    config.write_text("defaults: {icmp: {interval: 60s, count: 1, timeout: 1s}}\n"
                      "groups:\n  - {name: g, endpoints: [{name: stuck, host: nowhere.lab.test}]}\n", encoding="utf-8")
    try:
        with running_daemon(lab, config, 9124) as proc:
            for _ in range(100):  # bounded: until the look-up is under way (the firewall has dropped a query)
                counts = lab.pr("iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
                if any("dpt:53" in line and int(line.split()[0]) > 0 for line in counts.splitlines()[2:]):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("no DNS query was sent")
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=EXIT_BOUND_SECONDS)
    finally:
        lab.pr("iptables", "-D", *drop)
        resolv.write_text(saved, encoding="ascii")
    assert proc.returncode == 0, stderr
    assert "cancelling 1 cycle(s) still running" in stderr
    assert "exiting without waiting for DNS look-ups that are still blocked" in stderr


class RecordingSink:
    def __init__(self, log: list[str], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def set_targets(self, targets: Sequence[Target]) -> None: ...

    def consume(self, cycle: Cycle) -> None: ...

    def cycle_skipped(self, probe: str, group: str) -> None: ...

    def close(self) -> None:
        self.log.append(self.name)
        if self.fail:
            raise RuntimeError("disk full")


class SinkWithoutClose:
    def set_targets(self, targets: Sequence[Target]) -> None: ...

    def consume(self, cycle: Cycle) -> None: ...

    def cycle_skipped(self, probe: str, group: str) -> None: ...


def test_pipeline_close_flushes_every_sink_that_can_even_if_one_fails() -> None:
    """close() reaches each sink with a close method, in order; one that raises does not stop the next."""
    closed: list[str] = []
    pipeline = ResultPipeline([RecordingSink(closed, "a", fail=True), SinkWithoutClose(), RecordingSink(closed, "b")])
    pipeline.close()
    assert closed == ["a", "b"]
