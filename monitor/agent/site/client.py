"""The agent's HTTP client for the centre: one connection pool, the site's token, and every failure named.

Every exchange is timed on the monotonic clock: the longest of the last few round trips bounds the centre's
measurement of this machine's clock (issue 18, :mod:`monitor.agent.clock`). No HTTP answer at all is
:class:`CentreUnreachable`; when TLS is to blame it is :class:`CentreTlsFailure`, which names its cause and
the fix (issue 25): an expired or untrusted certificate is a setting to change, not an outage to wait out.
What an answer means is the caller's: the uploader (:mod:`monitor.agent.site.upload`), the slot's request,
the settings' fetch.
"""

from __future__ import annotations

import collections
import email.utils
import enum
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from monitor import __version__
from monitor.agent.site.config import AgentConfig

_MAX_ERROR_TEXT = 500
ROUND_TRIPS_KEPT = 4  # issue 18: the round trip reported is the longest of the last few, so it bounds the next one


class CentreUnreachable(Exception):
    """No HTTP answer from the centre (connection refused, no route, timeout, TLS failure)."""


class TlsCause(enum.StrEnum):
    """Why TLS with the centre failed (closed set): each is a different fix, so the log names it (issue 25)."""

    EXPIRED = "expired"  # the centre's certificate (or its CA's) has expired, or this machine's clock is ahead
    NOT_YET_VALID = "not_yet_valid"  # not valid yet: usually this machine's clock is behind
    UNTRUSTED_CA = "untrusted_ca"  # signed by a CA the agent does not trust: ca_file missing or wrong
    NAME_MISMATCH = "name_mismatch"  # the certificate is not for the host or address in `centre`
    REVOKED = "revoked"
    VERIFY_FAILED = "verify_failed"  # any other reason OpenSSL gives for not trusting the certificate
    HANDSHAKE = "handshake"  # no certificate problem: no common protocol, a plain-HTTP port, a client cert wanted


class CentreTlsFailure(CentreUnreachable):
    """No HTTP answer because TLS with the centre failed; ``cause`` says why, the message what to do."""

    def __init__(self, message: str, cause: TlsCause) -> None:
        super().__init__(message)
        self.cause = cause


# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) → cause, and what to do about it
_VERIFY_CAUSES: dict[int, tuple[TlsCause, str]] = {
    10: (TlsCause.EXPIRED, "renew the centre's certificate (or check this machine's clock)"),
    9: (TlsCause.NOT_YET_VALID, "check this machine's clock (NTP), or wait until the certificate is valid"),
    2: (TlsCause.UNTRUSTED_CA, "set ca_file to the PEM file of the CA that signed the centre's certificate"),
    18: (TlsCause.UNTRUSTED_CA, "the centre's certificate is self-signed: give it as ca_file, or use a CA"),
    19: (TlsCause.UNTRUSTED_CA, "set ca_file to the PEM file of the CA that signed the centre's certificate"),
    20: (TlsCause.UNTRUSTED_CA, "set ca_file to the PEM file of the CA that signed the centre's certificate"),
    21: (TlsCause.UNTRUSTED_CA, "set ca_file to the PEM file of the CA that signed the centre's certificate"),
    62: (TlsCause.NAME_MISMATCH, "use the name the certificate is for in `centre`, or add it to the certificate"),
    64: (TlsCause.NAME_MISMATCH, "use the address the certificate is for in `centre`, or add it to the certificate"),
    23: (TlsCause.REVOKED, "the centre needs a new certificate"),
}
_HANDSHAKE_HINTS = {
    "WRONG_VERSION_NUMBER": "the centre does not speak TLS on this port: is `centre` https:// where it should be "
                            "http://?",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the centre's web config asks for client certificates, which agents do not "
                                         "have: use VerifyClientCertIfGiven",
    "UNSUPPORTED_PROTOCOL": "the centre and this agent have no TLS version in common (min_version/max_version)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the centre and this agent have no TLS version in common "
                                    "(min_version/max_version)",
}


def tls_failure(err: BaseException, url: str) -> CentreTlsFailure | None:
    """The TLS failure behind ``err`` (an aiohttp or OS error), named by cause; None when TLS is not to blame.

    aiohttp wraps OpenSSL's error (``raise ... from``), so the chain is followed to the innermost one:
    the :class:`ssl.SSLCertVerificationError` that holds OpenSSL's verify code.
    """
    found: ssl.SSLError | None = None
    current: BaseException | None = err
    for _ in range(8):  # aiohttp's wrappers are ssl.SSLError subclasses too: the innermost is OpenSSL's own
        if current is None:
            break
        if isinstance(current, ssl.SSLError):
            found = current
        current = current.__cause__ or current.__context__
    if found is None or isinstance(found, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)):
        return None  # the connection was cut (a restarting centre, a dropped link): an outage, not a setting
    if isinstance(found, ssl.SSLCertVerificationError):
        code = getattr(found, "verify_code", None)
        detail = getattr(found, "verify_message", None) or str(found)
        cause, fix = _VERIFY_CAUSES.get(code if isinstance(code, int) else -1, (TlsCause.VERIFY_FAILED, (
            "check the centre's certificate chain and ca_file")))
        return CentreTlsFailure(f"{url}: TLS failure: certificate verify failed ({cause}): {detail}; {fix}", cause)
    reason = found.reason or ""
    hint = next((text for key, text in _HANDSHAKE_HINTS.items() if key in reason or key in str(found)),
                "see the centre's web config (tls_server_config)")
    return CentreTlsFailure(f"{url}: TLS failure: handshake failed ({reason or found}); {hint}", TlsCause.HANDSHAKE)


@dataclass(frozen=True, slots=True)
class Answer:
    """The centre's HTTP answer: status, body (parsed JSON when it is JSON, else text), Retry-After seconds."""

    status: int
    body: Any
    retry_after_seconds: float | None = None

    def describe(self) -> str:
        """The centre's explanation on one line, for the log."""
        text = self.body if isinstance(self.body, str) else json.dumps(self.body, ensure_ascii=False)
        return f"HTTP {self.status}: {' '.join(text.split())[:_MAX_ERROR_TEXT]}"


def tls_context(config: AgentConfig) -> ssl.SSLContext | bool:
    """True (the system's CAs) unless ``ca_file`` names the centre's private CA."""
    if config.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(config.ca_file))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``Retry-After`` (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class CentreClient:
    """Posts JSON to the centre with the site's token; one connection pool for the agent's life."""

    def __init__(self, config: AgentConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.tls = tls_context(config)
        self._session: aiohttp.ClientSession | None = None
        # issue 18: how long the last exchanges took, request to answer (monotonic: immune to clock steps)
        self._round_trips: collections.deque[float] = collections.deque(maxlen=ROUND_TRIPS_KEPT)

    @property
    def round_trip_seconds(self) -> float | None:
        """The longest of the last few exchanges' round trips: what bounds the centre's clock measurement."""
        return max(self._round_trips) if self._round_trips else None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.token}"}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.config.upload_timeout_seconds)
            # trust_env off: a proxy taken from the environment would be a path nobody configured
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.tls), timeout=timeout, trust_env=False,
                headers={"User-Agent": f"connmon-agent/{__version__}"})
        return self._session

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        """POST ``body`` as JSON to ``path`` under the centre's URL, with ``headers`` besides the token's.

        Raises:
            CentreUnreachable: no HTTP answer came.
        """
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return await self._request("POST", path, data, {**(headers or {}), "Content-Type": "application/json"})

    async def get(self, path: str) -> Answer:
        """GET ``path`` under the centre's URL with the token (the settings, issue 18).

        Raises:
            CentreUnreachable: no HTTP answer came.
        """
        return await self._request("GET", path, None, {})

    async def _request(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Answer:
        url = self.config.url(path)
        started = time.monotonic()
        try:
            async with self._open().request(method, url, data=data, headers={**self.headers, **headers},
                                            allow_redirects=False) as resp:
                raw = await resp.read()
                self._round_trips.append(time.monotonic() - started)
                text = raw.decode("utf-8", errors="replace")
                parsed: Any = text
                if resp.content_type == "application/json":
                    try:
                        parsed = json.loads(text)
                    except ValueError:
                        parsed = text
                return Answer(resp.status, parsed, parse_retry_after(resp.headers.get("Retry-After"), self.clock()))
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            tls = tls_failure(err, url)
            if tls is not None:  # not an outage: a certificate or setting to fix (issue 25)
                raise tls from err
            detail = str(err) or type(err).__name__
            raise CentreUnreachable(f"{url}: {detail}") from err

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
