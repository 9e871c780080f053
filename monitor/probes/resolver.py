"""Name resolution for probes: a DNS name becomes one IP address, every cycle, with a time bound.

Names are looked up at each cycle (not cached across cycles) so that a site whose record
changes is followed. When a look-up fails, the ICMP probe's batch look-up (:func:`resolve_all`)
falls back on the name's last good address for a configured number of intervals
(:mod:`monitor.probes.last_good`, issue 22), and says so in :attr:`Resolution.from_cache`.
The system resolver (``getaddrinfo``) is used so that ``/etc/hosts``,
``resolv.conf`` and nsswitch behave as ops staff expect. It blocks, so it runs on a thread pool
of its own (not the loop's default one, which other work shares), and the timeout is measured
from when a look-up *starts*: a look-up that waited in the queue behind others is not failed
for time it never had.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.config import AddressFamilyChoice
from monitor.config.hosts import normalize_ip
from monitor.errors import ProbeErrorReason
from monitor.probes.last_good import LastGoodAddresses

_FAMILY = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="connmon-dns")
_QUEUE_ALLOWANCE_SECONDS = 30.0  # how long a look-up may wait for a thread before it is given up

AddrInfo = list[tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int]]]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The address to probe, or why there is none."""

    address: str | None
    error: ProbeErrorReason | None = None
    detail: str = ""
    from_cache: bool = False  # the look-up failed; ``address`` is the name's last good one (``detail`` says why)


@dataclass(frozen=True, slots=True)
class Fallback:
    """How long a name's last good address may stand in when its look-up fails: ``intervals`` × ``interval_seconds``."""

    interval_seconds: float
    intervals: int


def _timed_lookup(host: str, family: int) -> tuple[AddrInfo | None, BaseException | None, float]:
    """Runs in a pool thread: the answer (or error) and how long the look-up itself took."""
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as err:
        return None, err, time.monotonic() - started
    return infos, None, time.monotonic() - started  # type: ignore[return-value]


async def resolve(host: str, family: AddressFamilyChoice, usable: frozenset[int],
                  timeout_seconds: float) -> Resolution:
    """Return the first address of ``host`` in the wanted family that connmon has a socket for.

    Args:
        host: an IP literal (returned as is, canonical) or a DNS name.
        family: which family the config asks for (``any`` follows the resolver's order).
        usable: address families the ICMP engine has sockets for.
        timeout_seconds: an answer that took longer than this is a failure (reason ``dns``).
    """
    literal = normalize_ip(host)
    if literal is not None:
        return Resolution(literal)
    loop = asyncio.get_running_loop()
    try:
        infos, error, took = await asyncio.wait_for(
            loop.run_in_executor(_POOL, _timed_lookup, host, _FAMILY[family]),
            timeout_seconds + _QUEUE_ALLOWANCE_SECONDS)
    except TimeoutError:
        return Resolution(None, ProbeErrorReason.DNS, f"no answer for {host!r}")
    if error is not None:
        detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return Resolution(None, ProbeErrorReason.DNS, f"{host!r}: {detail}")
    if took > timeout_seconds:
        return Resolution(None, ProbeErrorReason.DNS, f"no answer for {host!r} within {timeout_seconds:g}s")
    for info_family, _type, _proto, _name, sockaddr in infos or ():
        if info_family in usable:
            address = str(sockaddr[0])
            return Resolution(address.split("%", 1)[0] if info_family == socket.AF_INET6 else address)
    return Resolution(None, ProbeErrorReason.UNSUPPORTED_FAMILY,
                      f"{host!r} has no address of a family connmon can probe here")


async def resolve_all(requests: Sequence[tuple[str, AddressFamilyChoice, float]],
                      usable: frozenset[int], book: LastGoodAddresses | None = None, now: float = 0.0,
                      fallbacks: Sequence[Fallback] = ()) -> list[Resolution]:
    """Resolve many (host, family, timeout) requests at once, each distinct (host, family) once.

    Args:
        book: the last good addresses (None: no fallback, nothing remembered).
        now: Unix time of the look-ups, for the book.
        fallbacks: one per request (empty: none): how long a failed name may use its last good
            address; a name asked for by several requests gets the longest allowance.
    """
    distinct = {(host, family): timeout for host, family, timeout in requests}
    answers = await asyncio.gather(*(resolve(host, family, usable, timeout)
                                     for (host, family), timeout in distinct.items()))
    by_key = dict(zip(distinct, answers, strict=True))
    if book is not None:
        allowance: dict[tuple[str, str], Fallback] = {}
        for (host, family, _), fallback in zip(requests, fallbacks, strict=True) if fallbacks else ():
            held = allowance.get((host, family))
            if held is None or fallback.intervals * fallback.interval_seconds > held.intervals * held.interval_seconds:
                allowance[(host, family)] = fallback
        for key, answer in by_key.items():
            by_key[key] = _with_last_good(book, key, answer, now, allowance.get(key, Fallback(60.0, 0)))
    return [by_key[(host, family)] for host, family, _ in requests]


def _with_last_good(book: LastGoodAddresses, key: tuple[str, str], answer: Resolution, now: float,
                    fallback: Fallback) -> Resolution:
    """``answer`` as it stands, remembered when good; a failed one replaced by the last good address if allowed.

    Only a failure of the look-up itself (``dns``) falls back: an answer with no usable family is
    the name's own record, not a hiccup.
    """
    if answer.address is not None:
        book.resolved(key, answer.address, now, fallback.interval_seconds, fallback.intervals)
        return answer
    if answer.error is not ProbeErrorReason.DNS:
        return answer
    address = book.failed(key, now, fallback.interval_seconds, fallback.intervals)
    if address is None:
        return answer
    return Resolution(address, None, f"look-up failed ({answer.detail}); probed the last good address", True)


def close_pool(timeout_seconds: float) -> bool:
    """At shutdown: stop the look-up threads, waiting at most ``timeout_seconds``; True if all ended.

    A ``getaddrinfo`` blocked on a dead DNS server cannot be interrupted (it can take
    timeout × attempts × servers from resolv.conf, 30 s and more), and Python joins pool threads
    at exit, so the caller must be able to learn that some are stuck and exit without them.
    """
    _POOL.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + timeout_seconds
    threads = list(_POOL._threads)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)
