"""The cached ``/metrics`` body: keyed chunks in order, resting compressed, served plain or as gzip.

Chunks rest compressed (issue 9: resident memory). A changed chunk is plain text until, a second
later or at the next gzip scrape, a worker thread deflates it (see
:mod:`monitor.exposition.compression`); then its text is let go: 44 MB of text at 10,000 endpoints
rests as 1.5 MB. Gzip scrapers (Prometheus always asks for gzip) are served the segments; concurrent
ones share one compression. A plain scrape inflates the body once per version in the worker, shared
by the plain scrapers of that version and let go when the next version comes.

It knows nothing about metrics: :mod:`monitor.exposition.pages` and the sink add and forget chunks
and publish their order; the small per-scrape part is the sink's, added by the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
from collections.abc import Sequence

from monitor.exposition.compression import CompressedBody, Segment, compress_chunks, inflate

log = logging.getLogger(__name__)

# How long a changed chunk's plain text waits before it is compressed and let go (a burst of agent
# posts changes one group many times a second: compress it once, not per post).
COMPRESS_AFTER_SECONDS = 1.0


class ChunkedBody:
    """Chunks by key (a key names one text for ever: new text, new key), the order they are served
    in, and their compressed form; :attr:`version` increases with every published order."""

    def __init__(self, fixed: Sequence[bytes]) -> None:
        """``fixed``: chunks that never change (the family headers), keys ``0 … len(fixed) - 1``."""
        self._fixed = len(fixed)
        self._keys = itertools.count(len(fixed))
        self._version = 0
        self._order: tuple[int, ...] = ()  # chunk keys in exposition order
        self._plain: dict[int, bytes] = dict(enumerate(fixed))  # chunks not compressed yet
        self._segments: dict[int, Segment] = {}  # chunks compressed; their text was let go
        self._compressed: CompressedBody | None = None
        self._compressing: tuple[int, asyncio.Future[CompressedBody]] | None = None
        self._compress_timer: asyncio.TimerHandle | None = None
        self._compressing_in_background = False  # scrapers meanwhile get the last body, not wait
        self._inflated: tuple[int, asyncio.Future[list[bytes]]] | None = None  # plain body of a version
        self._compressor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def version(self) -> int:
        return self._version

    def add(self, data: bytes) -> int:
        """Keep ``data`` as a new chunk (plain until compressed); returns its key."""
        key = next(self._keys)
        self._plain[key] = data
        return key

    def forget(self, key: int) -> None:
        self._plain.pop(key, None)
        self._segments.pop(key, None)

    def publish(self, order: tuple[int, ...]) -> None:
        """Make ``order`` the body scrapes are served; compress its new chunks soon."""
        self._order = order
        self._version += 1
        self._inflated = None  # a plain body of the last version: let it go
        self._compress_soon()

    def chunks(self) -> list[bytes]:
        """The body as plain chunks; compressed ones are inflated here, on the caller's thread."""
        plain, segments = self._plain, self._segments
        return [plain[key] if key in plain else inflate(segments[key]) for key in self._order]

    async def plain_chunks(self) -> list[bytes]:
        """:meth:`chunks` for a scrape: the resting segments are inflated once per version in the
        worker thread, shared by that version's plain scrapers."""
        if not self._segments:
            return self.chunks()
        if self._inflated is None or self._inflated[0] != self._version:
            plain, segments = self._plain, self._segments
            items = [plain[key] if key in plain else segments[key] for key in self._order]
            self._inflated = (self._version, asyncio.get_running_loop().run_in_executor(
                self._worker(), _inflate_all, items))
        return await asyncio.shield(self._inflated[1])

    async def compressed_for_scrape(self) -> CompressedBody:
        """The body for a gzip scrape: the current version's, or while that one is being compressed
        (or waits to be, for up to :data:`COMPRESS_AFTER_SECONDS`) the last one compressed, a moment
        older: a scrape never waits on a compression, except the first (issue 9: scrape p99 ≤ 100 ms;
        the scrapes that came during a 10,000-site cycle waited 0.3–0.6 s for its compression)."""
        body = self._compressed
        under_way = self._compress_timer is not None or self._compressing_in_background
        if body is None or body.version == self._version or not under_way:
            body = await self._compressed_body()  # (nothing under way: no loop ran at the change)
        return body

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._compressor is None:
            self._compressor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="connmon-gzip")
        return self._compressor

    def _compress_soon(self) -> None:
        """Within :data:`COMPRESS_AFTER_SECONDS`, compress what changed and let its text go.

        Without a running loop (tools, tests) chunks stay plain: nothing would run the worker.
        """
        if self._compress_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._compress_timer = loop.call_later(COMPRESS_AFTER_SECONDS, self._compress_now)

    def _compress_now(self) -> None:
        self._compress_timer = None
        self._compressing_in_background = True
        task = asyncio.ensure_future(self._compressed_body())
        task.add_done_callback(self._compressed_in_background)

    def _compressed_in_background(self, task: asyncio.Future[CompressedBody]) -> None:
        self._compressing_in_background = False
        if not task.cancelled() and task.exception() is not None:
            log.error("metrics: compressing the exposition failed", exc_info=task.exception())
        elif self._plain_outside_headers():
            self._compress_soon()  # the body changed while it was compressed

    def _plain_outside_headers(self) -> bool:
        return any(key >= self._fixed and data for key, data in self._plain.items())

    async def _compressed_body(self) -> CompressedBody:
        """The current version's compressed body; concurrent callers share one compression.

        If the body changes while it is compressed, the callers get the version they waited for:
        consistent, and a moment old.
        """
        body = self._compressed
        if body is not None and body.version == self._version:
            return body
        if self._compressing is None or self._compressing[0] != self._version:
            segments, plain = self._segments, self._plain
            items = [(key, segments.get(key) or plain[key]) for key in self._order]
            future = asyncio.get_running_loop().run_in_executor(
                self._worker(), compress_chunks, self._version, items)
            self._compressing = (self._version, future)
        version, future = self._compressing
        body = await asyncio.shield(future)
        if self._compressing is not None and self._compressing[0] == version:
            self._compressing = None
            self._rest(body)
            if self._compressed is None or body.version > self._compressed.version:
                self._compressed = body
        return body

    def _rest(self, body: CompressedBody) -> None:
        """Keep the segments of chunks still current, and let their plain text go."""
        plain, segments = self._plain, self._segments
        for key, segment in body.by_key.items():
            if key in plain:  # still part of the body (a key is never reused)
                segments[key] = segment
                del plain[key]


def _inflate_all(items: Sequence[bytes | Segment]) -> list[bytes]:
    return [item if isinstance(item, bytes) else inflate(item) for item in items]
