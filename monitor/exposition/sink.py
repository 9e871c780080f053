"""The metrics sink: Prometheus text exposition derived from results, rendered when they change.

Why hand-rendered: prometheus-client's ``generate_latest`` re-renders every series on every
scrape (2.5 s at 10,000 endpoints on this machine). Here each endpoint keeps its rendered lines
per metric family; a finished cycle re-renders only its endpoints' fragments and joins the body
once; scrapes are served the cached bytes. Labels are escaped once, when a target is added, so
any UTF-8 site name (``№12 мектеп``, quotes, backslashes, newlines) survives intact.

prometheus-client still provides the process and platform collectors (CPU, memory, fds), which
are small and rendered per scrape so they stay current. Sample lines::

    connmon_up{endpoint="school-001",kind="school",district="Aktobe",link="fibre"} 1
    connmon_icmp_rtt_seconds_bucket{endpoint="school-001",kind="school",district="Aktobe",link="fibre",le="0.01"} 42

The sink feeds and publishes; the work is elsewhere in this package: the family table and label
escaping (:mod:`~monitor.exposition.families`), an endpoint's state and lines
(:mod:`~monitor.exposition.endpoint`), pages of endpoints (:mod:`~monitor.exposition.pages`), the
compressed body (:mod:`~monitor.exposition.body`), the monitor-wide series
(:mod:`~monitor.exposition.monitor_wide`) and the per-scrape parts (:mod:`~monitor.exposition.scrape`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from monitor.errors import ProbeErrorReason
from monitor.exposition.body import ChunkedBody
from monitor.exposition.compression import gzip_member
from monitor.exposition.endpoint import ALL_FAMILIES, EndpointState, Page
from monitor.exposition.families import HEADERS, ShardLabels, label_pairs
from monitor.exposition.monitor_wide import MonitorWide
from monitor.exposition.pages import Pages
from monitor.exposition.scrape import ProcessExposition, ScrapeRenderer
from monitor.results import Cycle, Result, ThroughputResult
from monitor.site_states import MaintenanceWatch
from monitor.targets import Target

if TYPE_CHECKING:
    from monitor.maintenance import MaintenanceBook

# A large cycle is absorbed in event-loop turns of about SLICE_SECONDS, SLICE_RESULTS at a time
# (~1.5 ms each): scrapes are served in between. A scrape needs ~6 turns, so the turn's length, not
# the results' count, bounds its latency, on a fast machine or a busy one (issue 9: p99 ≤ 100 ms).
SLICE_SECONDS = 0.005
SLICE_RESULTS = 25
AT_ONCE_RESULTS = 250  # a cycle this small is absorbed at once (~15 ms): no stale body for a turn


class MetricsSink:
    """Owns all exposition state; fed by the result pipeline, read by the web server.

    The body is kept as chunks: one header per family, and one block per (page, family) holding
    the lines of a page of :data:`~monitor.exposition.pages.PAGE_ENDPOINTS` endpoints of one group.
    A finished cycle re-renders its endpoints and re-joins only their pages' blocks (issue 9: at
    10,000 endpoints re-joining the whole 40 MB body per cycle was the cost that grew with the
    fleet; issue 10: an agent's post changes one site, and re-joins one page); a scrape lists the
    current chunks without copying them. Chunks rest compressed (:mod:`monitor.exposition.body`).

    What is rendered per scrape besides the process collectors (engine counters, the store's
    health, the agents' liveness) is handed in as ``scrape`` renderers, in exposition order
    (issue 23: the exposition imports none of the rooms they show).

    With ``shard`` set (``--shard I/N``), every series, the monitor-wide ones included, carries
    ``shard="I"`` so that the instances' series never clash where they are aggregated::

        connmon_up{endpoint="school-001",kind="school",district="Aktobe",link="fibre",shard="2"} 1
        connmon_build_info{version="0.1.0",python_version="3.11.7",shard="2"} 1
    """

    def __init__(self, *, scrape: Sequence[ScrapeRenderer] = (), clock: Callable[[], float] = time.time,
                 shard: str | None = None, tools: Mapping[str, bool] | None = None,
                 maintenance: MaintenanceBook | None = None) -> None:
        self._shard = ShardLabels.of(shard)
        self._clock = clock
        # which sites have a window open (issue 21), asked per minute; the daemon's book has the API's windows too
        self._maintenance = MaintenanceWatch(maintenance)
        self._scrape = (*scrape, ProcessExposition(self._shard))
        self._endpoints: dict[str, EndpointState] = {}
        self._pages = Pages()
        self._body = ChunkedBody(HEADERS)  # keys 0 … len-1 are the family headers
        self._monitor = MonitorWide(self._shard, clock, tools or {})
        self._tail = -1
        self._slices: collections.deque[tuple[Sequence[Result], int]] = collections.deque()  # (results, next)
        self._slice_pages: set[Page] = set()

    # ------------------------------------------------------------------ inputs
    def set_targets(self, targets: Sequence[Target]) -> None:
        """Start (or, at a reload, change) the set of endpoints; unchanged ones keep their state.

        Series of endpoints and groups no longer configured disappear from the exposition.
        """
        endpoints: dict[str, EndpointState] = {}
        for target in targets:
            old = self._endpoints.get(target.name)
            labels = label_pairs((("endpoint", target.name), ("kind", target.kind),
                                  ("district", target.district), ("link", target.link), *self._shard.pairs))
            if old is not None and old.labels == labels:
                old.target = target
                state = old
            else:
                state = EndpointState(target, labels)
            if target.mode == "agent":  # the centre's own reason for an agent site that went quiet
                state.errors.setdefault(ProbeErrorReason.AGENT_SILENT.value, 0)
            state.dirty = ALL_FAMILIES  # its target may have changed: every line is rendered again
            endpoints[target.name] = state
        self._endpoints = endpoints
        self._maintenance.watch(t for t in targets if t.probed)  # their windows may have changed too
        if self._maintenance.watching:
            self._maintenance.update(self._clock())
        for state in endpoints.values():
            state.window = self._maintenance.window(state.target.name)
            state.reassess()
        self._pages.arrange(endpoints.values(), self._body)
        self._monitor.set_targets(targets)
        self._rebuild()

    def config_loaded(self, success: bool) -> None:
        self._monitor.config_loaded(success)
        self._rebuild(())

    def consume(self, cycle: Cycle) -> None:
        """Take a finished cycle; a large one is absorbed in slices between other event-loop work.

        Absorbing and rendering 10,000 results takes ~0.2 s of CPU; done in one go on the event
        loop, every scrape that arrived meanwhile waited for it (issue 9: scrape p99 ≤ 100 ms). In
        slices of :data:`SLICE_RESULTS`, scrapes are served between slices, and each page of
        :data:`~monitor.exposition.pages.PAGE_ENDPOINTS` replaces its old text whole once all its
        results are in: a scrape sees every endpoint's series from one cycle. Without a running loop
        (tools, tests) or for a small cycle, it is absorbed at once.
        """
        self._monitor.count_cycle(cycle)
        reassessed = self._reassess(cycle)
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (len(cycle.results) <= AT_ONCE_RESULTS and not self._slices):
            self._rebuild(self._absorb_some(cycle.results) | reassessed)
            return
        self._slice_pages |= reassessed  # re-joined between slices as the pages they fill: never one half absorbed
        self._slices.append((cycle.results, 0))
        if len(self._slices) == 1:
            loop.call_soon(self._absorb_slice, loop)

    def _reassess(self, cycle: Cycle) -> set[Page]:
        """The states a cycle changes besides its results' (issue 21); the pages to re-join.

        A maintenance window that opened or closed since the last cycle (any group's: a site without
        results, such as a silent agent site, goes into maintenance too, within a cycle of a window's
        start), and an agent site's silence that was classified.
        """
        pages: set[Page] = set()
        endpoints = self._endpoints
        for name in self._maintenance.update(self._clock()) if self._maintenance.watching else ():
            state = endpoints.get(name)
            if state is not None:
                state.window = self._maintenance.window(name)
                if state.reassess():
                    pages.add(state.page)
        for gap in cycle.gaps:
            state = endpoints.get(gap.target.name)
            if state is not None and state.gap_cause != gap.cause:
                state.gap_cause = gap.cause
                if state.reassess():
                    pages.add(state.page)
        return pages

    def _absorb_slice(self, loop: asyncio.AbstractEventLoop) -> None:
        results, end = self._slices[0]
        until = time.perf_counter() + SLICE_SECONDS
        published = False
        while end < len(results):
            start, end = end, min(end + SLICE_RESULTS, len(results))
            pages = self._absorb_some(results[start:end])
            # Results come in config order, page after page: a page the last slices touched and this
            # one did not is whole, and is rendered now, inside this turn's time (a page is 200 sites,
            # ~2 ms). Re-joining every page in the last slice held the loop for ~90 ms at 10,000 sites.
            whole = self._slice_pages - pages
            self._slice_pages = (self._slice_pages - whole) | pages
            if whole:
                self._pages.rebuild(whole, self._body)
                published = True
            if time.perf_counter() >= until:
                break
        if end < len(results):
            self._slices[0] = (results, end)
        else:
            self._slices.popleft()
            self._pages.rebuild(self._slice_pages, self._body)  # the cycle is whole: its last pages change now
            self._slice_pages = set()
            published = True
        if published:
            self._publish()
        if self._slices:
            loop.call_soon(self._absorb_slice, loop)

    def _absorb_some(self, results: Sequence[Result]) -> set[Page]:
        """Absorb and render ``results``; return the pages whose blocks must be re-joined."""
        changed: set[Page] = set()
        for result in results:
            state = self._endpoints.get(result.target.name)
            if state is None:  # removed by a reload while its cycle ran
                continue
            state.absorb(result)
            changed.add(state.page)
        return changed

    def restore(self, results: Iterable[ThroughputResult], missed_in_a_row: Mapping[str, int] | None = None,
                verdicts: Mapping[str, bool] | None = None) -> None:
        """At start-up: show each site's last measured test from the history, with its original time.

        ``missed_in_a_row`` gives back ``connmon_target_missed_consecutive_tests``, so a restart does
        not silence the below-target alert that counts tests; ``verdicts`` the last verdict as it was
        given (against the target of the day, even when the last measured test gave none).
        """
        changed: set[Page] = set()
        for result in results:
            name = result.target.name
            state = self._endpoints.get(name)
            missed = None if missed_in_a_row is None else missed_in_a_row.get(name)
            verdict = None if verdicts is None else verdicts.get(name)
            if state is not None and state.restore(result, missed, verdict):
                changed.add(state.page)
        self._rebuild(changed)

    def cycle_skipped(self, probe: str, group: str) -> None:
        if self._monitor.cycle_skipped(probe, group):
            self._rebuild(())

    # ------------------------------------------------------------------ output
    def _rebuild(self, pages: Iterable[Page] | None = None) -> None:
        """Re-join the blocks of ``pages`` (all when None, none for ``()``) and publish the body."""
        self._pages.rebuild(pages, self._body)
        self._publish()

    def _publish(self) -> None:
        """Render the monitor-wide tail and make the current blocks the body scrapes are served."""
        self._body.forget(self._tail)
        self._tail = self._body.add(self._monitor.render().encode("utf-8"))
        self._body.publish((*self._pages.order(), self._tail))

    @property
    def version(self) -> int:
        """Increases with every change of the cached body (a cycle, a reload, a skipped cycle)."""
        return self._body.version

    def exposition(self) -> list[bytes]:
        """The body to serve, as chunks: the cached probe series, then small per-scrape parts.

        Compressed chunks are inflated here, on the caller's thread: for tools and tests; the web
        server uses :meth:`plain_exposition`.
        """
        return [*self._body.chunks(), self._render_per_scrape()]

    async def plain_exposition(self) -> list[bytes]:
        """:meth:`exposition` for a scrape without gzip: the resting segments are inflated once per
        version in the worker thread, shared by that version's plain scrapers."""
        chunks = await self._body.plain_chunks()
        return [*chunks, self._render_per_scrape()]

    async def gzip_exposition(self) -> list[bytes]:
        """The same body as one gzip member, as chunks; the cached part is compressed once per change.

        The compression runs in a worker thread (zlib releases the GIL), so probing goes on while
        it runs; a scrape never waits on one, except the first
        (:meth:`~monitor.exposition.body.ChunkedBody.compressed_for_scrape`).
        """
        body = await self._body.compressed_for_scrape()
        return gzip_member(body, self._render_per_scrape())

    def _render_per_scrape(self) -> bytes:
        """The handed-in renderers, then the process collectors: small, and current at every scrape."""
        shard, endpoints = self._shard, self._endpoints
        return b"".join([renderer.render(shard, endpoints) for renderer in self._scrape])
