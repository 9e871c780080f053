"""Hot reload of a running daemon: POST /-/reload and the file watcher (SIGHUP is in test_daemon.py).

Sites are loopback addresses inside the lab's prober namespace, so every probe stays on loopback.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.netlab import Lab
from tests.running import endpoints, request, running_daemon, samples, scrape_when, value

TEMPLATE = """\
defaults:
  icmp: {{interval: 1s, count: 2, spacing: 10ms, timeout: 200ms}}
groups:
  - name: schools
    kind: school
    endpoints:
{endpoints}
"""
FIRST = {"keep": "127.0.0.2, link: fibre", "gone": "127.0.0.3, link: fibre", "relabel": "127.0.0.4, link: dsl"}
SECOND = {"keep": "127.0.0.2, link: fibre", "relabel": "127.0.0.4, link: lte", "new": "127.0.0.5, link: fibre"}


def config_text(sites: dict[str, str]) -> str:
    rows = "".join(f"      - {{name: {name}, host: {rest}}}\n" for name, rest in sites.items())
    return TEMPLATE.format(endpoints=rows)


def broken_text() -> str:
    """The second config with a typo on line 8 (``hots``): a reload must refuse it."""
    text = config_text(SECOND)
    lines = text.splitlines(keepends=True)
    assert "name: relabel" in lines[7]
    lines[7] = lines[7].replace("host:", "hots:")
    return "".join(lines)


def test_post_reload_adds_removes_and_changes_sites_and_refuses_a_broken_file(lab: Lab, tmp_path: Path) -> None:
    """POST /-/reload: 200 and the new site set on /metrics; a broken file: 500 with file:line, nothing changes."""
    config = tmp_path / "connmon.yaml"
    config.write_text(config_text(FIRST), encoding="utf-8")
    url = f"http://{lab.prober_v4}:9101"
    with running_daemon(lab, config, 9101, "--web.enable-lifecycle") as proc:
        before = scrape_when(f"{url}/metrics", lambda p: len(p.get("connmon_up", {})) == 3
                             and value(p, "connmon_icmp_packets_sent_total", endpoint="keep") >= 6, proc)
        assert endpoints(before) == {"keep", "gone", "relabel"}
        kept_sent = value(before, "connmon_icmp_packets_sent_total", endpoint="keep")
        stamp = value(before, "connmon_config_last_reload_success_timestamp_seconds")

        config.write_text(config_text(SECOND), encoding="utf-8")
        status, _, body = request(f"{url}/-/reload", "POST")
        assert (status, body) == (200, f"reloaded {config}: 3 endpoints\n")
        after = samples(request(f"{url}/metrics")[2])  # applied before the answer: no waiting
        assert endpoints(after) == {"keep", "relabel", "new"}
        assert value(after, "connmon_endpoint_info", endpoint="relabel", link="lte") == 1
        assert not any(dict(k).get("link") == "dsl" for series in after.values() for k in series)
        assert value(after, "connmon_icmp_packets_sent_total", endpoint="keep") >= kept_sent  # state kept
        assert value(after, "connmon_config_last_reload_successful") == 1
        assert value(after, "connmon_config_last_reload_success_timestamp_seconds") > stamp
        good = scrape_when(f"{url}/metrics", lambda p: value(p, "connmon_up", endpoint="new") == 1, proc)
        good_stamp = value(good, "connmon_config_last_reload_success_timestamp_seconds")

        config.write_text(broken_text(), encoding="utf-8")
        status, _, body = request(f"{url}/-/reload", "POST")
        assert status == 500
        assert body.startswith("failed to reload config: ")
        assert f"{config}:8:" in body and "unknown key 'hots'; did you mean 'host'?" in body
        failed = samples(request(f"{url}/metrics")[2])
        assert value(failed, "connmon_config_last_reload_successful") == 0
        assert value(failed, "connmon_config_last_reload_success_timestamp_seconds") == good_stamp
        assert endpoints(failed) == {"keep", "relabel", "new"}
        sent = value(failed, "connmon_icmp_packets_sent_total", endpoint="relabel")
        scrape_when(f"{url}/metrics",  # the running config goes on probing
                    lambda p: value(p, "connmon_icmp_packets_sent_total", endpoint="relabel") > sent, proc)

        config.write_text(config_text(FIRST), encoding="utf-8")
        assert request(f"{url}/-/reload", "PUT")[0] == 200
        back = samples(request(f"{url}/metrics")[2])
        assert endpoints(back) == {"keep", "gone", "relabel"}
        assert value(back, "connmon_config_last_reload_successful") == 1
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "reload failed (POST /-/reload)" in stderr and f"{config}:8:" in stderr


def test_file_watcher_reloads_on_change_once_per_content(lab: Lab, tmp_path: Path) -> None:
    """--config.watch reloads a changed file (also one renamed over it), reports a broken one once, and
    without --web.enable-lifecycle POST /-/reload is refused with 403 (GET: 405)."""
    config = tmp_path / "watched.yaml"
    config.write_text(config_text(FIRST), encoding="utf-8")
    url = f"http://{lab.prober_v4}:9102"
    with running_daemon(lab, config, 9102, "--config.watch", "--config.watch-interval", "200ms") as proc:
        scrape_when(f"{url}/metrics", lambda p: len(p.get("connmon_up", {})) == 3, proc)
        assert request(f"{url}/-/reload", "POST")[:3:2] == (403, "Lifecycle API is not enabled.\n")
        assert request(f"{url}/-/reload", "GET")[0] == 405

        staged = tmp_path / "watched.yaml.new"  # as an editor or a ConfigMap swap: a new file renamed over
        staged.write_text(config_text(SECOND), encoding="utf-8")
        os.replace(staged, config)
        changed = scrape_when(f"{url}/metrics", lambda p: endpoints(p) == {"keep", "relabel", "new"}, proc)
        stamp = value(changed, "connmon_config_last_reload_success_timestamp_seconds")

        config.write_text(broken_text(), encoding="utf-8")
        failed = scrape_when(f"{url}/metrics", lambda p: value(p, "connmon_config_last_reload_successful") == 0,
                             proc)
        assert value(failed, "connmon_config_last_reload_success_timestamp_seconds") == stamp
        assert endpoints(failed) == {"keep", "relabel", "new"}
        time.sleep(1.5)  # several polls of the same broken content: none may reload it again
        config.touch()  # a new mtime, same content: still no reload

        config.write_text(config_text(FIRST), encoding="utf-8")
        scrape_when(f"{url}/metrics", lambda p: value(p, "connmon_config_last_reload_successful") == 1
                    and endpoints(p) == {"keep", "gone", "relabel"}, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    reloads = [line for line in stderr.splitlines() if "reloaded" in line or "reload failed" in line]
    assert len(reloads) == 3, reloads
    assert all("(file change)" in line for line in reloads), reloads
    assert "reload failed (file change)" in reloads[1] and f"{config}:8:" in reloads[1]


# ----------------------------------------------------------------------------- in-process, without a lab

def test_concurrent_reloads_are_serialised_and_each_reports(tmp_path: Path) -> None:
    """Reloads asked at once (signal, HTTP, watcher) run one after the other, never two parses at a time."""
    import asyncio
    import threading

    from monitor.reload import Loaded, Reloader, load

    config = tmp_path / "c.yaml"
    config.write_text(config_text(FIRST), encoding="utf-8")
    applied: list[int] = []
    reports: list[bool] = []
    initial = load(str(config))
    assert len(initial.targets) == 3
    active, most = 0, 0
    guard = threading.Lock()

    def slow_build(path: str) -> Loaded:
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        time.sleep(0.05)  # long enough for the others to pile up if the lock did not hold them
        try:
            return load(path)
        finally:
            with guard:
                active -= 1

    reloader = Reloader(str(config), lambda _config, targets: applied.append(len(targets)), reports.append,
                        initial.digest, loader=slow_build)

    async def scenario() -> list[bool]:
        outcomes = await asyncio.gather(*(reloader.reload(f"caller {i}") for i in range(5)))
        reloader.close()
        late = await reloader.reload("after close")
        return [o.ok for o in outcomes] + [late.ok]

    assert asyncio.run(scenario()) == [True] * 5 + [False]
    assert most == 1 and applied == [3] * 5 and reports == [True] * 5


def test_watcher_skips_unchanged_and_already_tried_content(tmp_path: Path) -> None:
    """The watcher reloads on new content only: not on a touch, not again for content already tried."""
    import asyncio

    from monitor.reload import ConfigWatcher, Reloader, load

    config = tmp_path / "c.yaml"
    config.write_text(config_text(FIRST), encoding="utf-8")
    reports: list[bool] = []
    reloader = Reloader(str(config), lambda _config, _targets: None, reports.append, load(str(config)).digest)

    async def scenario() -> None:
        task = asyncio.ensure_future(ConfigWatcher(reloader, 0.02).run())

        async def settle(expected: int) -> None:
            for _ in range(250):  # bounded: 5 s of polls at most
                if reloader.reloads == expected:
                    await asyncio.sleep(0.1)  # a few more polls: no further reload may follow
                    return
                await asyncio.sleep(0.02)

        config.touch()
        await settle(0)
        config.write_text(broken_text(), encoding="utf-8")
        await settle(1)
        os.utime(config, ns=(1, 1))  # a new stat, same broken content
        await settle(1)
        config.write_text(config_text(SECOND), encoding="utf-8")
        await settle(2)
        task.cancel()

    asyncio.run(scenario())
    assert reports == [False, True]
