"""A real ``connmon run`` on loopback that serves agent sites only (issue 18's fleet, clock and settings tests).

The centre probes nothing (every site is ``mode: agent``), so the tests send no traffic beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from monitor.agent.site.client import CentreClient
from monitor.agent.site.config import AgentConfig
from monitor.agent.site.main import Agent
from monitor.agent.site.spool import Spool
from monitor.icmp.engine import IcmpEngine
from tests.running import Samples, request, samples, stop_process

HOST = "127.0.0.1"


@dataclass
class LoopbackCentre:
    proc: subprocess.Popen[str]
    config: Path
    state: Path
    stderr: Path
    port: int

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def scrape(self) -> Samples:
        status, _, body = request(self.url("/metrics"))
        assert status == 200, body
        return samples(body)

    def reload(self, config_text: str) -> None:
        """Write ``config_text`` and reload (``POST /-/reload``, which answers once the new config runs)."""
        self.config.write_text(config_text, encoding="utf-8")
        status, _, body = request(self.url("/-/reload"), "POST", timeout=60)
        assert status == 200, body


@contextlib.contextmanager
def running_centre(tmp: Path, config_text: str, port: int, state: Path | None = None) -> Iterator[LoopbackCentre]:
    """``connmon run`` with ``config_text`` on 127.0.0.1:``port``, ready; stopped (SIGTERM) at the end."""
    config = tmp / "centre.yaml"
    config.write_text(config_text, encoding="utf-8")
    state = state if state is not None else tmp / "state"
    stderr = tmp / f"stderr-{port}-{time.monotonic_ns()}.log"
    with stderr.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config", str(config), "--listen",
                                 f"{HOST}:{port}", "--state-dir", str(state), "--web.enable-lifecycle"],
                                stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    centre = LoopbackCentre(proc, config, state, stderr, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, stderr.read_text(encoding="utf-8")
            with contextlib.suppress(OSError):
                if request(centre.url("/-/ready"))[0] == 200:
                    break
            assert time.monotonic() < deadline, stderr.read_text(encoding="utf-8")
            time.sleep(0.1)
        yield centre
    finally:
        stop_process(proc)


def run_agent(tmp: Path, port: int, site: str, token: str, until: Callable[[Agent], bool],
              clock_offset: float = 0.0, interval_seconds: float = 60.0) -> Agent:
    """A real agent for ``site`` (ICMP to 127.0.0.1, its clock ``clock_offset`` off), run until ``until(agent)``
    holds with its spool empty; ``interval_seconds`` is agent.yaml's (the centre's settings win once fetched)."""
    token_file = tmp / f"{site}.token"
    token_file.write_text(token)
    state = tmp / f"agent-{site}"
    state.mkdir(exist_ok=True)
    config = AgentConfig(source="agent.yaml", centre=f"http://{HOST}:{port}", site=site, token_file=token_file,
                         token=token, state_dir=state, interval_seconds=interval_seconds)

    def clock() -> float:
        return time.time() + clock_offset

    async def go() -> Agent:
        engine = IcmpEngine.open("auto")
        spool = Spool.open(state)
        client = CentreClient(config, clock)
        agent = Agent(config, spool, engine, client, clock)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 90
        try:
            while not until(agent) or len(spool):
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
            await client.close()
            spool.close()
            engine.close()
        return agent

    return asyncio.run(go())
