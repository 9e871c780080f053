"""Nothing to monitor is a mistake (issue 22): a config with no endpoint is refused like an empty file, and a
reload to one keeps the running config, unless ``--config.allow-empty`` says it is meant.

The daemon tests run ``connmon run`` in a lab's prober namespace with loopback sites.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import load_config
from monitor.errors import ConfigError
from tests.netlab import Lab
from tests.running import endpoints, running_daemon, scrape_when, value

REPO = Path(__file__).resolve().parent.parent
NOTHING = "no endpoints: the config lists nothing to monitor (start with --config.allow-empty to allow that on purpose)"
SITES = """\
defaults:
  icmp: {interval: 1s, count: 2, spacing: 10ms, timeout: 200ms}
groups:
  - name: schools
    endpoints:
      - {name: s1, host: 127.0.0.2}
      - {name: s2, host: 127.0.0.3}
      - {name: s3, host: 127.0.0.4}
"""


def run_check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "monitor", "check", "--config", str(config), *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, encoding="utf-8", timeout=60, check=False)


@pytest.mark.parametrize(("text", "where"), [
    ("groups:\n", "1:8"),
    ("# truncated by a failed copy\ndefaults: {target_mbps: 20}\ngroups:   \n", "3:8"),
    ("groups: []\n", "1:9"),
    ("groups:\n  - name: schools\n    endpoints: []\n  - name: clinics\n    endpoints:\n", "2:3"),
])
def test_connmon_check_refuses_a_config_with_no_endpoint_with_a_located_error(tmp_path: Path, text: str,
                                                                              where: str) -> None:
    """`groups:` with nothing under it (or only empty groups): `connmon check` exits 2 with FILE:LINE:COL."""
    path = tmp_path / "connmon.yaml"
    path.write_text(text, encoding="utf-8")
    result = run_check(path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"{path}:{where}: groups: {NOTHING}"]


def test_the_flag_allows_an_empty_config_on_purpose(tmp_path: Path) -> None:
    """--config.allow-empty: the same file is valid, and said to hold nothing."""
    path = tmp_path / "connmon.yaml"
    path.write_text("groups:\n", encoding="utf-8")
    result = run_check(path, "--config.allow-empty")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{path}: OK, 0 groups, 0 endpoints\n", "")
    assert load_config(path, allow_empty=True).groups == ()


def test_included_files_with_no_endpoint_are_nothing_to_monitor_too(tmp_path: Path) -> None:
    """A main file of includes whose district files hold no endpoint: refused at its include line."""
    (tmp_path / "sites.d").mkdir()
    (tmp_path / "sites.d" / "aktobe.yaml").write_text("groups:\n  - name: a\n    endpoints: []\n", encoding="utf-8")
    path = tmp_path / "connmon.yaml"
    path.write_text("defaults: {target_mbps: 20}\ninclude: sites.d/*.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(p) for p in caught.value.problems] == [f"{path}:2:10: include: {NOTHING}"]


def test_other_problems_are_not_hidden_behind_nothing_to_monitor(tmp_path: Path) -> None:
    """A file with real problems reports those, not also the lack of endpoints that follows from them."""
    path = tmp_path / "connmon.yaml"
    path.write_text("groups:\n  - name: a\n    endpoints:\n      - {name: x, hots: 192.0.2.1}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert not any(NOTHING in str(p) for p in caught.value.problems)
    assert len(caught.value.problems) == 2


def test_a_reload_to_an_empty_config_keeps_the_running_one_in_process(tmp_path: Path) -> None:
    """The reloader refuses a config with no endpoint (nothing applied); with allow_empty it applies it."""
    import functools

    from monitor.reload import Reloader, load

    path = tmp_path / "connmon.yaml"
    path.write_text(SITES, encoding="utf-8")
    applied: list[int] = []
    reports: list[bool] = []
    strict = Reloader(str(path), lambda _c, targets: applied.append(len(targets)), reports.append,
                      load(str(path)).digest)
    lenient = Reloader(str(path), lambda _c, targets: applied.append(len(targets)), reports.append,
                       load(str(path)).digest, loader=functools.partial(load, allow_empty=True))
    path.write_text("groups:\n", encoding="utf-8")
    outcome = asyncio.run(strict.reload("test"))
    assert not outcome.ok and f"{path}:1:8: groups: {NOTHING}" in outcome.message
    assert asyncio.run(lenient.reload("test")).ok
    assert (applied, reports) == ([0], [False, True])


def test_sighup_to_groups_with_nothing_under_it_keeps_every_site_probed(lab: Lab, tmp_path: Path) -> None:
    """A running daemon whose file is truncated to `groups:`: SIGHUP fails the reload and every site goes on
    being probed; with --config.allow-empty the same SIGHUP empties the site list."""
    path = tmp_path / "connmon.yaml"
    path.write_text(SITES, encoding="utf-8")
    url = f"http://{lab.prober_v4}:19402"
    with running_daemon(lab, path, 19402) as proc:
        scrape_when(f"{url}/metrics", lambda p: endpoints(p) == {"s1", "s2", "s3"}
                    and all(value(p, "connmon_up", endpoint=s) == 1 for s in ("s1", "s2", "s3")), proc)
        path.write_text("groups:\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        failed = scrape_when(f"{url}/metrics", lambda p: value(p, "connmon_config_last_reload_successful") == 0,
                             proc)
        assert endpoints(failed) == {"s1", "s2", "s3"}
        sent = {s: value(failed, "connmon_icmp_packets_sent_total", endpoint=s) for s in ("s1", "s2", "s3")}
        scrape_when(f"{url}/metrics", lambda p: all(  # still probed: every site's counter moves on
            value(p, "connmon_icmp_packets_sent_total", endpoint=s) > sent[s] for s in sent), proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "reload failed (SIGHUP), keeping the running config" in stderr, stderr[-3000:]
    assert f"{path}:1:8: groups: {NOTHING}" in stderr

    path.write_text(SITES, encoding="utf-8")
    with running_daemon(lab, path, 19403, "--config.allow-empty") as proc:
        scrape_when(f"http://{lab.prober_v4}:19403/metrics", lambda p: endpoints(p) == {"s1", "s2", "s3"}, proc)
        path.write_text("groups:\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        scrape_when(f"http://{lab.prober_v4}:19403/metrics", lambda p: value(
            p, "connmon_config_last_reload_successful") == 1 and endpoints(p) == set(), proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
