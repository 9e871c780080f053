"""Host syntax: IP literals, DNS names, and the one rule for what a site's or an agent's host may be.

Pure text checks, no look-ups: resolving names is the probes' job (:mod:`monitor.probes.resolver`),
reading them from YAML the walker's (:meth:`monitor.config.walker.Walker.host`). The site config and
the agent config ask the same question here, so they cannot drift apart (issue 23: the agent's check
had lost the scoped-IPv6 rule).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@functools.lru_cache(maxsize=65_536)
def normalize_ip(text: str) -> str | None:
    """Return the canonical text of an IP literal (``::0001`` → ``::1``), or None if it is not one.

    IPv4 goes through ``inet_pton`` (strict: no leading zeros, as ``ipaddress``) because
    ``ipaddress`` costs ~30 µs a call and a 10,000-site config asks several times per host.
    """
    if ":" not in text:
        try:
            return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
        except OSError:
            return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def is_host_name(text: str) -> bool:
    """True for a syntactically valid DNS name (RFC 1123; the last label may not be all digits)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_HOST_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def host_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a host to probe (an IP literal or a DNS name), or None when it is fine.

    A scoped IPv6 address (``fe80::1%eth0``) is refused: the ICMP engine matches replies by canonical
    address, and a scoped literal cannot be matched to its replies.
    """
    if "%" in text and normalize_ip(text) is not None:
        return f"'{text}': scoped (link-local) IPv6 addresses are not supported; use a global or unique-local address"
    if normalize_ip(text) is None and not is_host_name(text):
        return f"'{text}' is not an IP address or host name"
    return None


def expand_url(template: str, host: str) -> str:
    """Put the endpoint's host into a URL template (``http://{host}:8080/blob``); IPv6 gets brackets."""
    return template.replace("{host}", f"[{host}]" if ":" in host else host)
