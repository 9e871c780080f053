"""TCP handshake times to a site's test server, to unmask a performance-enhancing proxy (issue 20).

On satellite links a PEP often terminates TCP near the school's provider: it answers the
handshake itself, long before a packet could have reached the site. iperf3's rate and any TCP
figure then describe the proxy, not the path. ICMP is not proxied, so comparing how long a TCP
handshake takes with the idle ICMP round trip of the same site tells the two apart: a handshake
answered in far less than the round trip was answered before the site.

This module only times handshakes (connect, then close at once); the judgement is
:attr:`monitor.results.DirectionResult.pep_suspected`. A bare connection is harmless to the test
servers: a web server sees an idle client leave, and ``iperf3 -s`` logs a client that sent no
cookie and listens again (the iperf3 method retries once if it still refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

HANDSHAKES = 3
HANDSHAKE_TIMEOUT_SECONDS = 3.0  # a geostationary handshake is ~0.6 s; the test itself reports a dead server


async def handshake_seconds(address: str, port: int, count: int = HANDSHAKES,
                            timeout_seconds: float = HANDSHAKE_TIMEOUT_SECONDS) -> tuple[float, ...]:
    """Time up to ``count`` TCP connects to ``address``:``port``, one after another, until one fails.

    A refused or silent server ends the timing at once (the test that follows says why), so a dead
    server costs one timeout, not ``count``.

    The time is from ``connect`` to its completion (the SYN-ACK's arrival, as seen by the event loop):
    a millisecond or two of the loop's own delay at most, against the hundreds a satellite adds.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    out: list[float] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            started = time.perf_counter()
            async with asyncio.timeout(timeout_seconds):
                await loop.sock_connect(sock, (address, port))
            out.append(time.perf_counter() - started)
        except (OSError, TimeoutError):
            break
        finally:
            with contextlib.suppress(OSError):
                sock.close()
    return tuple(out)
