"""Agents' request bodies (issue 24): read to their end over slow links, within a size and a time, as strict JSON.

Apart from :mod:`monitor.agent.centre.api` (its routes) because other routes read bodies the same way
(:mod:`monitor.web.maintenance_api`), and so that module stays about its routes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


async def read_body(request: web.Request, limit: int, idle_seconds: float, total_seconds: float) -> bytes:
    """Read ``request``'s body to its end, however it is segmented (see :func:`body_pieces`)."""
    return b"".join([piece async for piece in body_pieces(request, limit, idle_seconds, total_seconds)])


async def body_pieces(request: web.Request, limit: int, idle_seconds: float,
                      total_seconds: float | None) -> AsyncIterator[bytes]:
    """``request``'s body piece by piece as it arrives, to its end.

    ``request.content.read(n)`` returns what has arrived so far, not ``n`` bytes: over VSAT a
    batch came in pieces and was cut at the first one (issue 24).

    Raises:
        Refusal: 413 past ``limit`` bytes (declared or sent), 408 when no byte came for
            ``idle_seconds`` or the whole took over ``total_seconds``, 400 when the client
            broke the body off.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Refusal(413, f"the body is over {limit} bytes", close=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = None if total_seconds is None else started + total_seconds
    size = 0
    while True:
        wait = idle_seconds if deadline is None else min(idle_seconds, deadline - loop.time())
        try:
            async with asyncio.timeout(max(0.0, wait)):
                piece = await request.content.readany()
        except TimeoutError:
            raise Refusal(408, f"the body stopped arriving after {size} bytes ({loop.time() - started:.0f}s); "
                                "the connection is closed", close=True) from None
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, OSError) as err:
            raise Refusal(400, f"the body was broken off after {size} bytes: {type(err).__name__}",
                           close=True) from None
        if not piece:
            return
        size += len(piece)
        if size > limit:
            raise Refusal(413, f"the body is over {limit} bytes", close=True)
        yield piece


class Refusal(Exception):
    """A body that cannot be taken: the status and message to answer with."""

    def __init__(self, status: int, message: str, close: bool = False,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.close, self.headers = status, message, close, headers


def no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: with a duplicate, which one counts would be a guess."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {json.dumps(duplicate)} appears twice in one object")
    return obj
