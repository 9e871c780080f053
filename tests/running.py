"""Helpers for tests that run a real ``connmon run`` in the lab's prober namespace and talk HTTP(S) to it."""

from __future__ import annotations

import contextlib
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.netlab import Lab, child_env

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def samples(text: str) -> Samples:
    """Sample name → {sorted label pairs: value}, parsed with prometheus-client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(parsed: Samples, name: str, **labels: str) -> float:
    matches = [v for k, v in parsed.get(name, {}).items() if set(labels.items()) <= set(k)]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} series"
    return matches[0]


def one(parsed: Samples, name: str, **labels: str) -> float | None:
    """The first of the series of ``name`` with ``labels``, or None when there is none (yet)."""
    found = [v for k, v in parsed.get(name, {}).items() if set(labels.items()) <= set(k)]
    return found[0] if found else None


def endpoints(parsed: Samples) -> set[str]:
    """Endpoint names that have any series at all."""
    return {dict(k)["endpoint"] for series in parsed.values() for k in series if "endpoint" in dict(k)}


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            context: ssl.SSLContext | None = None, timeout: float = 10) -> tuple[int, dict[str, str], str]:
    """One HTTP(S) request without proxies: (status, headers, body); HTTP errors are answers, not exceptions."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method in ("POST", "PUT")
                                 else None)
    try:
        with opener.open(req, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode("utf-8")


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; waits either way."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scrape(lab: Lab, port: int) -> Samples:
    """The lab's daemon on ``port``, scraped and parsed; empty when nothing answers (yet)."""
    try:
        return samples(lab.get(port, "/metrics")[1])
    except OSError:
        return {}


@contextlib.contextmanager
def running_daemon(lab: Lab, config: Path, port: int, *extra: str,
                   prefix: Sequence[str] = ()) -> Iterator[subprocess.Popen[str]]:
    """``connmon run`` in the prober namespace (``prefix`` goes before python, e.g. setpriv); killed at exit."""
    argv = ["ip", "netns", "exec", lab.prober, *prefix, sys.executable, "-m", "monitor", "run",
            "--config", str(config), "--listen", f"{lab.prober_v4}:{port}", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)


def scrape_when(url: str, ready: Callable[[Samples], bool], proc: subprocess.Popen[str] | None = None,
                attempts: int = 240, context: ssl.SSLContext | None = None,
                headers: dict[str, str] | None = None) -> Samples:
    """Scrape ``url`` until ``ready(parsed)`` holds (bounded: ``attempts`` quarter-second tries)."""
    last = ""
    for _ in range(attempts):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"connmon exited {proc.returncode}: {proc.communicate()[1][-3000:]}")
        try:
            status, _, text = request(url, context=context, headers=headers)
        except OSError as err:
            status, text = 0, str(err)
        if status == 200:
            parsed = samples(text)
            try:
                if ready(parsed):
                    return parsed
            except AssertionError:  # a series the condition asks for is not there yet
                pass
        last = text
        time.sleep(0.25)
    shown = "\n".join(line for line in last.splitlines() if line.startswith(("connmon_up", "connmon_config")))
    raise AssertionError(f"condition not met; last scrape's up/config series:\n{shown or last[:2000]}")
