"""The http method's edge cases on loopback: tiny bodies, peers that stop reading, early answers."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from monitor.config import ThroughputSettings
from monitor.errors import ProbeErrorReason
from monitor.probes import ProbeContext, http
from monitor.probes.http_transfer import Limits, StreamPool, fetch
from monitor.probes.throughput import measure_site
from monitor.targets import Target
from tests.factories import target


def _target(url: str | None = None, upload_url: str | None = None) -> Target:
    settings = ThroughputSettings(method="http", url=url, upload_url=upload_url, duration_seconds=1.0,
                                  omit_seconds=0.0, timeout_seconds=1.0)
    return target("loop", host="127.0.0.1", address="127.0.0.1", throughput=settings)


async def _small_page_server() -> tuple[web.AppRunner, int]:
    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def test_a_small_page_is_not_a_rate() -> None:
    """A 5-byte page ends before a rate can be measured: reason failed, not 'some Gbit/s'."""
    async def scenario() -> None:
        runner, port = await _small_page_server()
        try:
            transfer = await fetch(f"http://127.0.0.1:{port}/", "127.0.0.1", Limits(0.0, 1.0, None, 1.0))
        finally:
            await runner.cleanup()
        assert transfer.error is ProbeErrorReason.FAILED and transfer.bits_per_second is None
        assert "too soon" in transfer.error_detail

    asyncio.run(scenario())


def test_an_upload_to_a_peer_that_never_reads_ends_as_timeout() -> None:
    """A listener that accepts and never reads cannot hold a test (and its slot) for ever: reason timeout."""
    async def scenario() -> None:
        server = socket.create_server(("127.0.0.1", 0))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        port = server.getsockname()[1]
        target = _target(upload_url=f"http://127.0.0.1:{port}/up")
        ctx = ProbeContext(None, throughput_slots=asyncio.Semaphore(1))
        try:
            result = await measure_site(target, ctx, "http", http.measure, resolve_host=False)
        finally:
            server.close()
        assert result.error is ProbeErrorReason.TIMEOUT, result
        assert ctx.throughput_slots is not None and not ctx.throughput_slots.locked()  # the slot is free again

    asyncio.run(scenario())


def test_parallel_streams_are_counted_together_in_their_pool() -> None:
    """Two streams of one direction measured as one (issue 20): the pool's bytes are both streams', so a cap
    of 6 MB over two 4 MB bodies stops them at 6 MB together (counting one stream, it never would)."""
    chunk = bytes(64 * 1024)

    async def body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 64 * len(chunk)  # 4 MiB
        await response.prepare(request)
        for _ in range(64):
            await response.write(chunk)
            await asyncio.sleep(0.005)  # paced, so the two streams are under way together
        return response

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/", body)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        limits = Limits(0.0, 30.0, 6 * 1024 * 1024, 5.0)
        pool = StreamPool(limits)
        try:
            transfers = await asyncio.gather(*(fetch(f"http://127.0.0.1:{port}/", "127.0.0.1", limits, pool=pool)
                                               for _ in range(2)))
        finally:
            await runner.cleanup()
        figures = pool.figures()
        assert figures is not None
        moved = sum(t.moved_bytes for t in transfers)
        assert figures[0] >= 6 * 1024 * 1024 and moved < 8 * 1024 * 1024  # stopped by the cap, not the bodies' end
        assert abs(figures[0] - moved) <= 2 * len(chunk)  # the pool's count is both streams'

    asyncio.run(scenario())
