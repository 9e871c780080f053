"""TLS handshakes the centre's web server failed (issue 25): counted by reason, and said once a minute per reason.

asyncio reports a failed server-side handshake only in its debug mode, so without this an agent
that does not trust the centre's certificate (or finds it expired) fails at the site while the
centre says nothing. The hook is the documented :attr:`ssl.SSLContext.sslobject_class`: asyncio
makes each connection's :class:`ssl.SSLObject` through it and calls its ``do_handshake`` until the
handshake ends, so a subclass sees every failure with OpenSSL's reason (the client's alert, such as
``TLSV1_ALERT_UNKNOWN_CA``) and passes it on unchanged. What it cannot see is who: an ``SSLObject``
knows no peer address, so the line names the cause, and the agent's own log names the site
(:mod:`monitor.agent.site.client`). Only failures the server sees are counted: a client that
sends an alert (OpenSSL's command line, curl, browsers, Go's Prometheus) or speaks no TLS. A client
that hangs up without one is not: a TCP health check, and asyncio clients (the agent among them),
whose failed handshake closes the connection before its alert is written. Sample line::

    connmon_tls_handshake_failures_total{reason="unknown_ca"} 3
"""

from __future__ import annotations

import enum
import logging
import ssl
import time
from collections.abc import Callable, Mapping

from monitor.exposition.families import ShardLabels, label_pairs
from monitor.exposition.scrape import Labelled

log = logging.getLogger(__name__)

LOG_SECONDS = 60.0  # a reason is said at most once a minute: a scanner must not fill the journal


class HandshakeFailure(enum.StrEnum):
    """Why a client's handshake failed (closed set: label values)."""

    UNKNOWN_CA = "unknown_ca"  # the client does not trust the CA that signed the centre's certificate
    CERTIFICATE_EXPIRED = "certificate_expired"  # the client refuses the certificate as expired (or its clock is off)
    BAD_CERTIFICATE = "bad_certificate"  # refused for another reason: usually not for the name the client used
    CLIENT_CERTIFICATE = "client_certificate"  # the web config wants a client certificate the client did not give
    PROTOCOL = "protocol"  # no TLS version or cipher in common
    NOT_TLS = "not_tls"  # the client did not speak TLS (plain HTTP to the TLS port)
    OTHER = "other"


_REASONS: dict[str, HandshakeFailure] = {
    "TLSV1_ALERT_UNKNOWN_CA": HandshakeFailure.UNKNOWN_CA,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": HandshakeFailure.CERTIFICATE_EXPIRED,
    "SSLV3_ALERT_BAD_CERTIFICATE": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": HandshakeFailure.BAD_CERTIFICATE,
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": HandshakeFailure.BAD_CERTIFICATE,
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": HandshakeFailure.CLIENT_CERTIFICATE,
    "CERTIFICATE_VERIFY_FAILED": HandshakeFailure.CLIENT_CERTIFICATE,  # on the server: the client's certificate
    "UNSUPPORTED_PROTOCOL": HandshakeFailure.PROTOCOL,
    "TLSV1_ALERT_PROTOCOL_VERSION": HandshakeFailure.PROTOCOL,
    "VERSION_TOO_LOW": HandshakeFailure.PROTOCOL,
    "NO_SHARED_CIPHER": HandshakeFailure.PROTOCOL,
    "NO_PROTOCOLS_AVAILABLE": HandshakeFailure.PROTOCOL,
    "HTTP_REQUEST": HandshakeFailure.NOT_TLS,
    "WRONG_VERSION_NUMBER": HandshakeFailure.NOT_TLS,
    "UNKNOWN_PROTOCOL": HandshakeFailure.NOT_TLS,
}
_SAY = {
    HandshakeFailure.UNKNOWN_CA: "a client does not trust the CA that signed this server's certificate (agents: "
                                 "ca_file; Prometheus: tls_config.ca_file)",
    HandshakeFailure.CERTIFICATE_EXPIRED: "a client refuses this server's certificate as expired; renew it, or check "
                                          "the client's clock",
    HandshakeFailure.BAD_CERTIFICATE: "a client refuses this server's certificate (often: it is not for the name or "
                                      "address the client used)",
    HandshakeFailure.CLIENT_CERTIFICATE: "a client gave no client certificate, or one the client_ca_file does not "
                                         "verify (agents have none)",
    HandshakeFailure.PROTOCOL: "a client has no TLS version or cipher in common with this server (min_version)",
    HandshakeFailure.NOT_TLS: "a client spoke plain HTTP to the TLS port (use https://)",
    HandshakeFailure.OTHER: "a TLS handshake failed",
}


def classify(err: ssl.SSLError) -> HandshakeFailure:
    """The reason of a failed handshake, from OpenSSL's reason code."""
    return _REASONS.get(err.reason or "", HandshakeFailure.OTHER)


class HandshakeWatch:
    """Counts and logs the web server's failed handshakes; :meth:`watch` hooks it into the server's TLS context."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.failures: dict[HandshakeFailure, int] = dict.fromkeys(HandshakeFailure, 0)
        self._said: dict[HandshakeFailure, tuple[float, int]] = {}  # when last said, failures since

    def failed(self, err: ssl.SSLError) -> None:
        """Count one failed handshake; say it unless its reason was said within the last minute."""
        reason = classify(err)
        self.failures[reason] += 1
        now = self.clock()
        said = self._said.get(reason)
        if said is not None and now - said[0] < LOG_SECONDS:
            self._said[reason] = (said[0], said[1] + 1)
            return
        self._said[reason] = (now, 0)
        more = f"; {said[1]} more like it in the last {now - said[0]:.0f}s" if said is not None and said[1] else ""
        log.warning("TLS handshake failed (%s): %s (OpenSSL: %s)%s", reason, _SAY[reason], err.reason or err, more)

    def watch(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """``context``, whose connections now report their failed handshakes here (before it serves any)."""
        context.sslobject_class = _watched(self)
        return context


def _watched(watch: HandshakeWatch) -> type[ssl.SSLObject]:
    class WatchedSSLObject(ssl.SSLObject):
        """An SSLObject that tells ``watch`` of a failed handshake, then raises as before."""

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError):
                raise  # not a failure: more bytes to come (asyncio tries again)
            except ssl.SSLError as err:
                watch.failed(err)
                raise

    return WatchedSSLObject


class HandshakeExposition:
    """Renders ``connmon_tls_handshake_failures_total{reason}``, every reason from start-up (a scrape renderer)."""

    def __init__(self, watch: HandshakeWatch) -> None:
        self._watch = watch

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        out = ["# HELP connmon_tls_handshake_failures_total TLS handshakes the web server failed, by reason.\n"
               "# TYPE connmon_tls_handshake_failures_total counter\n"]
        out.extend(f"connmon_tls_handshake_failures_total{shard.braces(label_pairs((('reason', str(r)),)))} {n}\n"
                   for r, n in self._watch.failures.items())
        return "".join(out).encode("utf-8")
