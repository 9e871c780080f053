"""The centre's own TLS certificate (issue 25): when it expires, said at start-up and daily, and in ``/metrics``.

An expired certificate does not stop connmon from serving TLS: Python loads it, and every client
that verifies it (the agents, Prometheus) refuses the connection with "certificate has expired",
so agents stop uploading while the centre says nothing. So the web config (:mod:`monitor.web.config`)
reads the served certificate's ``notAfter`` when it loads the file (once, at start-up: the file is
served as loaded, and a renewed file is served after a restart), and the daemon warns at start-up
and once a day while it expires within :data:`WARN_DAYS` days or has expired, and exports the time
(:class:`CertificateExposition`)::

    connmon_tls_certificate_expiry_timestamp_seconds 1.7803968e+09

The time is read from the certificate's DER with a reader of the few ASN.1 elements on the way to
``validity`` (RFC 5280, 4.1): Python's :mod:`ssl` decodes only a peer's or a CA store's
certificates, and the ``cryptography`` package is not a dependency. What the centre cannot see is
left to the clients: a client that gives up during the handshake is not reported to the server by
asyncio (only in its debug mode), so the agents log the cause (:mod:`monitor.agent.site.client`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from monitor.exposition.families import ShardLabels, floatToGoString
from monitor.exposition.scrape import Labelled

log = logging.getLogger(__name__)

WARN_DAYS = 14
CHECK_SECONDS = 86400.0  # the warning is said again once a day while it holds
_DAY = 86400.0
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.S)
_SEQUENCE, _INTEGER, _EXPLICIT_0, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0x02, 0xA0, 0x17, 0x18


@dataclass(frozen=True, slots=True)
class ServedCertificate:
    """The certificate the web server serves: its file and the end of its validity (Unix time)."""

    path: Path
    not_after: float

    def warning(self, now: float) -> str | None:
        """What to tell the operator at ``now``: the certificate expired or expires within WARN_DAYS; else None."""
        left = self.not_after - now
        when = dt.datetime.fromtimestamp(self.not_after, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if left <= 0:
            return (f"the web server's TLS certificate {self.path} expired {_days(-left)} ago ({when}): agents and "
                    "scrapers that verify it refuse to connect; renew it and restart connmon")
        if left <= WARN_DAYS * _DAY:
            return (f"the web server's TLS certificate {self.path} expires in {_days(left)} ({when}); renew it and "
                    "restart connmon before then (the file is read at start-up)")
        return None

    def check(self, now: float) -> bool:
        """Log the warning when there is one (the daemon calls this at start-up and daily); True when it did."""
        said = self.warning(now)
        if said is not None:
            log.warning("%s", said)
        return said is not None


def _days(seconds: float) -> str:
    days = seconds / _DAY
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600:.1f} hours"


def read_certificate(path: Path) -> ServedCertificate:
    """The first certificate of the PEM file at ``path`` (the server's own, as OpenSSL takes it) and its expiry.

    Raises:
        OSError: the file cannot be read.
        ValueError: there is no PEM certificate in it that this reader understands.
    """
    found = _PEM.search(path.read_bytes())
    if found is None:
        raise ValueError("no PEM certificate")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except binascii.Error as err:
        raise ValueError(f"the PEM block is not base64: {err}") from None
    return ServedCertificate(path, not_after(der))


def served_certificate(path: Path) -> ServedCertificate | None:
    """:func:`read_certificate`, or None with a warning when its expiry cannot be read (OpenSSL took the file).

    A certificate this reader does not understand is still served: only the warnings and the metric are lost.
    """
    try:
        return read_certificate(path)
    except (OSError, ValueError) as err:
        log.warning("%s: cannot read when the TLS certificate expires (%s); it is served, but connmon cannot warn "
                    "before it expires", path, err)
        return None


def not_after(der: bytes) -> float:
    """The end of a DER certificate's validity, as Unix time.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER,
    signature AlgorithmIdentifier (SEQUENCE), issuer Name (SEQUENCE), validity SEQUENCE { notBefore,
    notAfter }, ... }, ... }

    Raises:
        ValueError: the bytes are not such a certificate.
    """
    try:
        _, body, _ = _element(der, 0, _SEQUENCE)  # Certificate
        _, at, _ = _element(der, body, _SEQUENCE)  # tbsCertificate
        if der[at] == _EXPLICIT_0:
            at = _element(der, at, _EXPLICIT_0)[2]
        at = _element(der, at, _INTEGER)[2]  # serialNumber
        at = _element(der, at, _SEQUENCE)[2]  # signature
        at = _element(der, at, _SEQUENCE)[2]  # issuer
        _, validity, _ = _element(der, at, _SEQUENCE)
        after = _element(der, validity, None)[2]  # past notBefore
        tag, start, end = _element(der, after, None)
        return _time(tag, der[start:end].decode("ascii"))
    except IndexError:
        raise ValueError("the certificate is cut short") from None
    except UnicodeDecodeError:
        raise ValueError("the certificate's notAfter is not ASCII") from None


def _element(der: bytes, at: int, tag: int | None) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``at``, which must have ``tag`` if given."""
    found = der[at]
    if tag is not None and found != tag:
        raise ValueError(f"expected DER tag {tag:#x} at byte {at}, found {found:#x}")
    length = der[at + 1]
    start = at + 2
    if length & 0x80:  # long form: the next (length & 0x7f) bytes hold the length
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError(f"a DER length of {count} bytes at byte {at}")
        length = int.from_bytes(der[start:start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise ValueError("the certificate is cut short")
    return found, start, end


def _time(tag: int, text: str) -> float:
    """UTCTime (YYMMDDHHMMSSZ; years 50-99 are 19xx, RFC 5280) or GeneralizedTime (YYYYMMDDHHMMSSZ)."""
    if tag == _UTC_TIME and len(text) == 13:
        century = "19" if int(text[:2]) >= 50 else "20"
        text = century + text
    elif tag != _GENERALIZED_TIME or len(text) != 15:
        raise ValueError(f"notAfter {text!r} is not a UTCTime or GeneralizedTime in UTC")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()


class CertificateExposition:
    """Renders ``connmon_tls_certificate_expiry_timestamp_seconds`` for the served certificate (a scrape renderer)."""

    def __init__(self, certificate: ServedCertificate) -> None:
        self._certificate = certificate

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        return ("# HELP connmon_tls_certificate_expiry_timestamp_seconds Unix time the web server's TLS certificate "
                "expires (its notAfter).\n# TYPE connmon_tls_certificate_expiry_timestamp_seconds gauge\n"
                f"connmon_tls_certificate_expiry_timestamp_seconds{shard.braces()} "
                f"{floatToGoString(self._certificate.not_after)}\n").encode()
