"""Name resolution for probes: a DNS name becomes one IP address, every cycle, with a time bound.

Names are looked up at each cycle (not cached across cycles) so that a site whose record
changes is followed. The system resolver (``getaddrinfo``) is used so that ``/etc/hosts``,
``resolv.conf`` and nsswitch behave as ops staff expect; it runs in the loop's thread pool and
is bounded by a timeout because glibc's own retries can take far longer than a cycle.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from monitor.config import AddressFamilyChoice, normalize_ip
from monitor.errors import ProbeErrorReason

_FAMILY = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@dataclass(frozen=True, slots=True)
class Resolution:
    """The address to probe, or why there is none."""

    address: str | None
    error: ProbeErrorReason | None = None
    detail: str = ""


async def resolve(host: str, family: AddressFamilyChoice, usable: frozenset[int],
                  timeout_seconds: float) -> Resolution:
    """Return the first address of ``host`` in the wanted family that connmon has a socket for.

    Args:
        host: an IP literal (returned as is, canonical) or a DNS name.
        family: which family the config asks for (``any`` follows the resolver's order).
        usable: address families the ICMP engine has sockets for.
        timeout_seconds: give up after this long (reason ``dns``).
    """
    literal = normalize_ip(host)
    if literal is not None:
        return Resolution(literal)
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, family=_FAMILY[family], type=socket.SOCK_DGRAM),
            timeout_seconds)
    except TimeoutError:
        return Resolution(None, ProbeErrorReason.DNS, f"no answer for {host!r} within {timeout_seconds:g}s")
    except (socket.gaierror, UnicodeError, OSError) as err:
        detail = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return Resolution(None, ProbeErrorReason.DNS, f"{host!r}: {detail}")
    for info_family, _type, _proto, _name, sockaddr in infos:
        if info_family in usable:
            return Resolution(str(sockaddr[0]).split("%", 1)[0] if info_family == socket.AF_INET6
                              else str(sockaddr[0]))
    return Resolution(None, ProbeErrorReason.DNS, f"{host!r} has no address of a family connmon can probe")
