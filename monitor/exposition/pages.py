"""Pages of endpoints and their blocks: how the per-endpoint part of the body is cut into chunks.

The per-endpoint part of the body is one header per family, and one block per (page, family) holding
the lines of a page of :data:`PAGE_ENDPOINTS` endpoints of one group. A result re-renders only its
page, and of that page only the families its endpoints' ``dirty`` masks name (issue 9: at 10,000
endpoints re-joining the whole 40 MB body per cycle was the cost that grew with the fleet; issue 10:
an agent's post changes one site, and re-joins one page).

The endpoints' state and lines are :mod:`monitor.exposition.endpoint`'s; the chunks are kept in a
:class:`~monitor.exposition.body.ChunkedBody`, handed in.
"""

from __future__ import annotations

from collections.abc import Iterable

from monitor.exposition.body import ChunkedBody
from monitor.exposition.endpoint import ALL_FAMILIES, NO_FRAGMENTS, EndpointState, Page
from monitor.exposition.families import FAMILIES

# Endpoints per page: a group's lines are kept in pages of this many endpoints, and a result
# re-renders only its page. An agent's post changes one site (issue 10): with a 10,000-site group
# as one block, each post re-rendered and re-joined 44 MB; a page is 200 sites, ~0.9 MB.
PAGE_ENDPOINTS = 200


class Pages:
    """The endpoints in pages, in exposition order, and each page's chunk key per family."""

    def __init__(self) -> None:
        self._pages: dict[Page, list[EndpointState]] = {}  # in exposition order
        # page → one chunk key per family; a key names one text for ever (new text, new key)
        self._blocks: dict[Page, list[int]] = {}

    def arrange(self, endpoints: Iterable[EndpointState], body: ChunkedBody) -> None:
        """Cut ``endpoints`` (in config order) into pages of their group; every block is built again."""
        groups: dict[str, list[EndpointState]] = {}
        for state in endpoints:
            groups.setdefault(state.target.group, []).append(state)
        pages: dict[Page, list[EndpointState]] = {}
        for group, members in groups.items():
            for number, start in enumerate(range(0, len(members), PAGE_ENDPOINTS)):
                page = pages[(group, number)] = members[start:start + PAGE_ENDPOINTS]
                for state in page:
                    state.page = (group, number)
        self._pages = pages
        for keys in self._blocks.values():
            for key in keys:
                body.forget(key)
        self._blocks = {}

    def rebuild(self, pages: Iterable[Page] | None, body: ChunkedBody) -> None:
        """Re-render and re-join the blocks of ``pages`` (all when None) that changed: of each page only
        the families its endpoints' ``dirty`` masks name; the other blocks keep their key, so their
        compressed segment is reused as it is. Pages never built get every family; pages gone at a
        reload go.

        Cost: the changed families' text of the changed pages.
        """
        wanted = set(self._pages if pages is None else pages)
        wanted.update(page for page in self._pages if page not in self._blocks)  # never built yet
        wanted.update(page for page in self._blocks if page not in self._pages)  # gone at a reload
        families = range(len(FAMILIES))
        for page in wanted:
            old = self._blocks.get(page)
            members = self._pages.get(page)
            if members is None:
                for key in old or ():
                    body.forget(key)
                self._blocks.pop(page, None)
                continue
            mask = ALL_FAMILIES if old is None else 0
            for state in members:
                mask |= state.dirty
            if not mask:
                continue
            rendered: list[list[str]] = []
            for state in members:
                f = list(NO_FRAGMENTS)
                state.render(mask, f)
                state.dirty = 0
                rendered.append(f)
            block = list(old) if old is not None else [-1] * len(FAMILIES)
            for index in families:
                if mask >> index & 1:
                    body.forget(block[index])  # let the old text go before the new one exists
                    block[index] = body.add("".join([f[index] for f in rendered]).encode())
            self._blocks[page] = block

    def order(self) -> list[int]:
        """Chunk keys in exposition order: each family's header (key = its index), then its blocks."""
        order: list[int] = []
        blocks = [self._blocks[page] for page in self._pages]
        for index in range(len(FAMILIES)):
            order.append(index)
            order.extend(block[index] for block in blocks)
        return order
