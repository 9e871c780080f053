"""Timed HTTP transfers for the ``http`` throughput method, with aiohttp as the HTTP client.

Two measurements, both receiver-side like iperf3's:

* **fetch** (GET ``url``): connmon receives, so bytes are counted as the body arrives. This is
  the site's *upload*.
* **send** (POST/PUT ``upload_url`` with a generated body): the site receives. Counting what
  connmon wrote would count the socket's send buffer too (megabytes at a few Mbit/s, so a 2
  Mbit/s link would look faster than it is); instead the kernel is asked how many bytes the site
  has *acknowledged* (``TCP_INFO.tcpi_bytes_acked``), and ``TCP_NOTSENT_LOWAT`` keeps the unsent
  queue short so the transfer stops soon after the measurement does. This is the site's *download*.

Both skip the first ``omit_seconds`` (TCP slow start), then measure for ``duration_seconds`` or
until ``max_bytes`` have moved, whichever comes first. The host in the URL is resolved by the
caller and pinned, so the connection goes where the probe's resolver said, with the URL's own
host name in ``Host`` and TLS.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl as ssl_module
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from monitor.errors import ProbeErrorReason

CHUNK_BYTES = 64 * 1024
MIN_MEASURED_SECONDS = 0.25
_NOTSENT_LOWAT_BYTES = 128 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
# struct tcp_info (linux/tcp.h): tcpi_total_retrans is a u32 at offset 100, tcpi_bytes_acked a u64 at 120.
_TCP_INFO_LENGTH = 136
_RETRANS = struct.Struct("=I")
_ACKED = struct.Struct("=Q")
_BLOB = os.urandom(CHUNK_BYTES)  # incompressible, so no middlebox can shrink it


@dataclass(frozen=True, slots=True)
class Transfer:
    """The outcome of one timed transfer."""

    moved_bytes: int = 0  # everything that crossed, warm-up included
    measured_bytes: int = 0
    measured_seconds: float = 0.0
    retransmits: int | None = None
    error: ProbeErrorReason | None = None
    error_detail: str = ""

    @property
    def bits_per_second(self) -> float | None:
        if self.error is not None or self.measured_seconds <= 0:
            return None
        return self.measured_bytes * 8 / self.measured_seconds


@dataclass(frozen=True, slots=True)
class Limits:
    omit_seconds: float
    duration_seconds: float
    max_bytes: int | None
    timeout_seconds: float  # for connecting, for each read, and for the answer after an upload


class _PinnedResolver(AbstractResolver):
    """Answers every look-up with the address the probe already resolved (with its own timeout)."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        fam = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        return [ResolveResult(hostname=host, host=self.address, port=port, family=fam, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


class _Meter:
    """Marks the end of the warm-up and the measured span; decides when to stop."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.start = time.monotonic()
        self.mark_time: float | None = None
        self.mark_count = 0
        self.last_time = self.start
        self.last_count = 0

    def update(self, count: int) -> bool:
        """Record ``count`` (bytes so far) now; return True when the test should stop."""
        now = time.monotonic()
        self.last_time, self.last_count = now, count
        if self.mark_time is None and now - self.start >= self.limits.omit_seconds:
            self.mark_time, self.mark_count = now, count
        if self.limits.max_bytes is not None and count >= self.limits.max_bytes:
            return True
        return self.mark_time is not None and now - self.mark_time >= self.limits.duration_seconds

    def figures(self) -> tuple[int, float] | None:
        """Measured bytes and seconds; None when the transfer ended too soon to give a true rate.

        A body that ends inside the warm-up, or after less than :data:`MIN_MEASURED_SECONDS` of
        measuring, would turn a small page into "some Gbit/s" and a met target.
        """
        if self.mark_time is None and self.limits.max_bytes is not None and self.last_count >= self.limits.max_bytes:
            self.mark_time, self.mark_count = self.start, 0  # the cap came first: measure the whole transfer
        if self.mark_time is None or self.last_time - self.mark_time < MIN_MEASURED_SECONDS:
            return None
        return self.last_count - self.mark_count, self.last_time - self.mark_time


class StreamPool:
    """Several transfers of one direction measured as one (issue 20: parallel streams load a deep queue).

    One meter over the sum of the streams' byte counts: the warm-up and the measured span are the
    pool's, every stream stops when the pool's measurement ends, and the rate is the total over that
    span. Adding up each stream's own rate instead counted twice the spans where one stream had
    stopped and the others had the link to themselves (+34% at 2 Mbit/s with four streams). Every
    stream's count is read afresh at each update: a sending stream is only woken once per 64 KiB
    chunk (a second at 0.5 Mbit/s), so the counts it last gave are stale (-12% when they were used).
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.meter: _Meter | None = None
        self.counters: dict[object, Callable[[], int]] = {}  # by stream (a key object each stream holds)

    def start(self) -> None:
        """The first stream to move data starts the pool's clock."""
        if self.meter is None:
            self.meter = _Meter(self.limits)

    def update(self, stream: object, count: Callable[[], int]) -> bool:
        """A stream moved data; ``count`` tells its bytes so far at any moment. True when every stream should stop."""
        self.start()
        assert self.meter is not None
        self.counters[stream] = count
        return self.meter.update(sum(counter() for counter in self.counters.values()))

    def figures(self) -> tuple[int, float] | None:
        """Measured bytes and seconds of all streams together (see :meth:`_Meter.figures`)."""
        return None if self.meter is None else self.meter.figures()


def _session(address: str, limits: Limits, sockets: list[socket.socket],
             tls: ssl_module.SSLContext | bool = True) -> aiohttp.ClientSession:
    def make_socket(addr_info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _name, _sockaddr = addr_info
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        return sock

    connector = aiohttp.TCPConnector(resolver=_PinnedResolver(address), force_close=True, limit=1,
                                     socket_factory=make_socket, ssl=tls)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.timeout_seconds,
                                    sock_read=limits.timeout_seconds)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False, trust_env=False,
                                 headers={"User-Agent": "connmon throughput test", "Accept-Encoding": "identity"})


def _tcp_info(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes acknowledged by the peer, retransmitted segments), or None if the kernel cannot tell."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
    except OSError:
        return None
    if len(info) < 128:
        return None
    return _ACKED.unpack_from(info, 120)[0], _RETRANS.unpack_from(info, 100)[0]


def _error(err: BaseException, url: str) -> tuple[ProbeErrorReason, str]:
    """Map aiohttp's and the OS's exceptions to a reason and a line for the operator."""
    if isinstance(err, aiohttp.ClientResponseError):
        return ProbeErrorReason.HTTP_STATUS, f"{url}: HTTP {err.status} {err.message}"
    if isinstance(err, TimeoutError | aiohttp.ServerTimeoutError):
        return ProbeErrorReason.TIMEOUT, f"{url}: no data within the timeout"
    os_error = getattr(err, "os_error", None) or (err if isinstance(err, OSError) else None)
    code = getattr(os_error, "errno", None)
    if code == errno.ECONNREFUSED:
        return ProbeErrorReason.REFUSED, f"{url}: connection refused"
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return ProbeErrorReason.NO_ROUTE, f"{url}: {os.strerror(code)}"
    if code == errno.ETIMEDOUT:
        return ProbeErrorReason.TIMEOUT, f"{url}: connection timed out"
    return ProbeErrorReason.FAILED, f"{url}: {type(err).__name__}: {err}"


async def fetch(url: str, address: str, limits: Limits, headers: dict[str, str] | None = None,
                ssl: ssl_module.SSLContext | bool = True, pool: StreamPool | None = None) -> Transfer:
    """GET ``url`` and measure how fast its body arrives (the site's upload, when connmon is the centre).

    ``headers`` go with the request (a site agent's ``Authorization``); ``ssl`` is aiohttp's: True
    verifies against the system's CAs, a context carries a private CA. With ``pool`` the transfer is
    one stream of several: the pool measures, and the result holds only the bytes moved.
    """
    stream = object()  # this stream's key in the pool, alive as long as the stream (an id() could be reused)
    sockets: list[socket.socket] = []
    meter = _Meter(limits)
    moved = 0
    try:
        # No redirects: the connection is pinned to the site's address, so another host would be measured wrongly.
        async with _session(address, limits, sockets, ssl) as session, \
                session.get(url, allow_redirects=False, headers=headers) as resp:
            if resp.status >= 300:
                return Transfer(error=ProbeErrorReason.HTTP_STATUS, error_detail=f"{url}: HTTP {resp.status}")
            meter = _Meter(limits)  # the clock starts at the first byte, not at connect
            async for chunk in resp.content.iter_any():
                moved += len(chunk)
                # the pool reads ``moved`` when it sums, so the late binding is the point
                if pool.update(stream, lambda: moved) if pool is not None else meter.update(moved):  # noqa: B023
                    break
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        reason, detail = _error(err, url)
        return Transfer(moved, error=reason, error_detail=detail)
    if pool is not None:
        return Transfer(moved)
    figures = meter.figures()
    if figures is None:
        return Transfer(moved, error=ProbeErrorReason.FAILED,
                        error_detail=f"{url}: the body ended after {moved} bytes, too soon to measure a rate")
    return Transfer(moved, *figures)


async def send(url: str, address: str, limits: Limits, method: str = "POST", headers: dict[str, str] | None = None,
               ssl: ssl_module.SSLContext | bool = True, pool: StreamPool | None = None) -> Transfer:
    """POST/PUT a generated body to ``url`` and measure how fast the site acknowledges it (its download).

    ``headers``, ``ssl`` and ``pool`` as for :func:`fetch`.
    """
    stream = object()  # this stream's key in the pool, alive as long as the stream (an id() could be reused)
    sockets: list[socket.socket] = []
    meter = _Meter(limits)
    written = 0
    first_acked: list[int] = []
    finished = False

    def acked() -> tuple[int, int | None]:
        info = _tcp_info(sockets[-1]) if sockets else None
        if info is None:  # no TCP_INFO: fall back to what was written (an overestimate, noted in docs)
            return written, None
        return info[0] - (first_acked[0] if first_acked else 0), info[1]

    async def body() -> AsyncIterator[bytes]:
        nonlocal meter, written, finished
        if sockets:
            sockets[-1].setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, _NOTSENT_LOWAT_BYTES)
            info = _tcp_info(sockets[-1])
            first_acked.append(info[0] if info else 0)  # the request head is acknowledged too; leave it out
        meter = _Meter(limits)
        if pool is not None:
            pool.start()
        cap = limits.max_bytes
        while True:
            done = pool.update(stream, lambda: acked()[0]) if pool is not None else meter.update(acked()[0])
            if done:
                finished = True
                return
            size = CHUNK_BYTES if cap is None else min(CHUNK_BYTES, cap - written)
            if size <= 0:  # everything allowed is written: wait for the acknowledgements to catch up
                finished = True
                return
            written += size
            yield _BLOB[:size]

    retransmits: int | None = None
    try:
        async with _session(address, limits, sockets, ssl) as session, session.request(
                method, url, data=body(),
                headers={**(headers or {}), "Content-Type": "application/octet-stream"}) as resp:
            figures = meter.figures()
            retransmits = acked()[1]
            if resp.status >= 300:
                return Transfer(written, error=ProbeErrorReason.HTTP_STATUS, error_detail=f"{url}: HTTP {resp.status}")
            await resp.read()
            if not finished or (figures is None and pool is None):
                return Transfer(written, error=ProbeErrorReason.FAILED,
                                error_detail=f"{url}: the server answered before the upload could be measured")
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        reason, detail = _error(err, url)
        return Transfer(written, error=reason, error_detail=detail)
    if figures is None:  # one stream of a pool: the pool measured
        return Transfer(written, retransmits=retransmits)
    return Transfer(written, figures[0], figures[1], retransmits)
