"""Sends that leave late: a real ICMP socket whose every fifth ``sendto`` starts 20 ms after the clock was read.

The ICMP engine's tests run this in the test process (raw sockets) and in a child in a fresh network
namespace (unprivileged datagram sockets), which imports it from here and prints what it found as JSON.
"""

from __future__ import annotations

import time

from monitor.icmp.engine import EchoJob, IcmpEngine
from tests.factories import loopback


class LateSocket:
    """A real socket whose every fifth ``sendto`` starts 20 ms late, as when the process is preempted
    (or waits for the GIL) between reading the clock and sending: the echo leaves 20 ms after the
    Python clock says."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.sends = 0
        self.late = 0

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sends += 1
        if self.sends % 5 == 0:
            self.late += 1
            time.sleep(0.02)
        return self.real.sendto(data, address)  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


async def late_send_rtts(mode: str, batched: bool = True) -> dict[str, object]:
    """Ping 40 loopback sites × 3 through a :class:`LateSocket`; what a test checks, as JSON-able data.

    ``batched=False`` reads the error queue one ``recvmsg`` at a time, as where libc has no recvmmsg."""
    engine = IcmpEngine.open(mode)
    fs = engine._sockets[2]  # AF_INET
    assert fs.error_batch is not None  # glibc has recvmmsg: the batched reader is the one in use
    if not batched:
        fs.error_batch = None
    late = LateSocket(fs.sock)
    fs.sock = late  # type: ignore[assignment]
    try:
        outcomes = await engine.ping([EchoJob(a, 3, 0.05, 2.0) for a in loopback(40, 3)])
    finally:
        fs.sock = late.real  # type: ignore[assignment]
        engine.close()
    return {"rtts": [r for o in outcomes for r in o.rtts_seconds], "late": late.late,
            "sent": engine.stats.echoes_sent, "kernel_stamps": engine.stats.kernel_send_stamps}
