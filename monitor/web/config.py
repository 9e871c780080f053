"""The web config: TLS and basic auth for the HTTP server, in Prometheus exporter-toolkit's format.

Ops already write this file for Prometheus and node_exporter (``--web.config.file``), so connmon
reads the same keys with the same meaning (issue 7) rather than inventing its own::

    tls_server_config:
      cert_file: connmon.crt                 # relative paths are relative to this file, as in exporter-toolkit
      key_file: connmon.key
      client_auth_type: RequireAndVerifyClientCert   # optional, needs client_ca_file
      client_ca_file: clients-ca.crt
      min_version: TLS12                     # TLS10 .. TLS13; TLS12 when not given
    basic_auth_users:
      prometheus: $2y$10$...                 # bcrypt hash of the password

Everything is checked at start-up (files readable, key matching the certificate, hashes that are
bcrypt) and reported as a :class:`~monitor.errors.ConfigError` with file, line and key, so a typo
stops ``connmon run`` with exit 2 instead of serving /metrics unprotected. The file is read with the
site config's walker (:mod:`monitor.config.walker`), so its problems are located the same way. Keys exporter-toolkit
has but connmon does not implement (``cipher_suites``, ``http_server_config``, ...) are refused,
not ignored: a security setting silently dropped is worse than one that stops start-up.

Password checks follow exporter-toolkit's ``web/handler.go``: bcrypt (deliberately slow, ~60 ms at
cost 10) runs one at a time on a thread of its own, so neither the event loop nor a flood of
guesses can be tied up by it; its result is cached under the SHA-256 of (user, hash, password), so
a scraper's request every 15 s costs one dictionary look-up and no password is kept in memory;
an unknown user is checked against a fixed dummy hash so the answer's timing does not tell which
user names exist; bcrypt compares in constant time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
from yaml.nodes import MappingNode, Node, ScalarNode

from monitor.config.walker import TAG, Walker, is_null, parse_document, read_config_text
from monitor.web.certificate import ServedCertificate, served_certificate

_TOP_KEYS = ("tls_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
# exporter-toolkit keys connmon does not implement: refused with this reason instead of "unknown".
_UNSUPPORTED = {
    "http_server_config": "HTTP/2 and extra response headers are not supported by connmon",
    "rate_limit": "rate limiting is not supported by connmon",
    "cert": "inline certificates are not supported by connmon; use cert_file",
    "key": "inline keys are not supported by connmon; use key_file",
    "client_ca": "an inline client CA is not supported by connmon; use client_ca_file",
    "cipher_suites": "connmon uses Python's default cipher suites (no RC4, 3DES or export ciphers); remove the key",
    "curve_preferences": "connmon uses Python's default curves; remove the key",
    "prefer_server_cipher_suites": "not configurable in connmon; remove the key",
    "client_allowed_sans": "not supported by connmon; limit clients with client_ca_file",
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's names → Python's verify modes. Go can *request* a client certificate without
# verifying it (RequestClientCert, RequireAnyClientCert); Python's ssl cannot, so those are refused.
CLIENT_AUTH_TYPES = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                     "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
_BCRYPT_HASH = re.compile(r"\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}")
# bcrypt of "fakepassword", as exporter-toolkit: unknown users cost the same bcrypt as known ones.
_DUMMY_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
_CACHE_ENTRIES = 1024


@dataclass(slots=True)
class WebConfig:
    """A valid web config: the TLS context to serve with (None: plain HTTP) and the users."""

    source: str
    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    client_auth_type: str = "NoClientCert"
    certificate: ServedCertificate | None = None  # the served one, for its expiry (issue 25)

    def describe(self) -> str:
        tls = f"TLS (client certificates: {self.client_auth_type})" if self.ssl_context else "plain HTTP"
        auth = f"basic auth for {len(self.users)} user(s)" if self.users else "no basic auth"
        return f"{tls}, {auth}, from {self.source}"


def _mapping(w: Walker, node: Node, path: str, allowed: tuple[str, ...] | None) -> dict[str, Node]:
    """Key → value node; an empty value is an empty mapping (``basic_auth_users:``), as in exporter-toolkit.

    ``allowed`` None takes any key (user names). Keys exporter-toolkit has and connmon does not are
    refused with their reason (:data:`_UNSUPPORTED`).
    """
    if is_null(node):
        return {}
    if not isinstance(node, MappingNode):
        w.problem(node, path or "(top level)", "must be a mapping")
        return {}
    return w.mapping(node, path, allowed, unsupported=_UNSUPPORTED) or {}


def _text(w: Walker, node: Node, path: str) -> str | None:
    if not isinstance(node, ScalarNode) or node.tag != TAG + "str" or not str(node.value).strip():
        w.problem(node, path, "must be non-empty text (quote it if YAML reads it as something else)")
        return None
    return str(node.value)


def _no_password() -> bytes:
    raise _EncryptedKey


class _EncryptedKey(Exception):
    """Raised from the password callback: the key file is encrypted."""


def _readable(w: Walker, base: Path, node: Node, path: str) -> Path | None:
    text = _text(w, node, path)
    if text is None:
        return None
    file = base / text  # an absolute path stays as it is
    try:
        with open(file, "rb"):
            pass
    except OSError as err:
        w.problem(node, path, f"cannot read {str(file)!r}: {err.strerror or err}")
        return None
    return file


def _tls(w: Walker, node: Node, base: Path) -> tuple[ssl.SSLContext | None, str, ServedCertificate | None]:
    values = _mapping(w, node, "tls_server_config", _TLS_KEYS)
    files: dict[str, Path | None] = {}
    for name in ("cert_file", "key_file", "client_ca_file"):
        if name in values:
            files[name] = _readable(w, base, values[name], f"tls_server_config.{name}")
    for key in ("cert_file", "key_file"):
        if key not in values:
            w.problem(node, "tls_server_config", f"missing required key '{key}'")
    versions: dict[str, ssl.TLSVersion] = {}
    for key in ("min_version", "max_version"):
        if key in values:
            text = _text(w, values[key], f"tls_server_config.{key}")
            if text is not None and text not in TLS_VERSIONS:
                w.problem(values[key], f"tls_server_config.{key}",
                          f"must be one of {', '.join(TLS_VERSIONS)}, got '{text}'")
            elif text is not None:
                versions[key] = TLS_VERSIONS[text]
    if "min_version" in versions and "max_version" in versions and versions["min_version"] > versions["max_version"]:
        w.problem(values["max_version"], "tls_server_config.max_version", "is lower than min_version")
    auth = "NoClientCert"
    if "client_auth_type" in values:
        text = _text(w, values["client_auth_type"], "tls_server_config.client_auth_type")
        if text in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
            w.problem(values["client_auth_type"], "tls_server_config.client_auth_type",
                      f"'{text}' accepts certificates without verifying them, which connmon cannot do; "
                         "use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file")
        elif text is not None and text not in CLIENT_AUTH_TYPES:
            w.problem(values["client_auth_type"], "tls_server_config.client_auth_type",
                      f"must be one of {', '.join(CLIENT_AUTH_TYPES)}, got '{text}'")
        elif text is not None:
            auth = text
    if auth != "NoClientCert" and "client_ca_file" not in values:
        w.problem(values["client_auth_type"], "tls_server_config.client_auth_type",
                  f"{auth} needs client_ca_file (the CA that signs the clients' certificates)")
    if "client_ca_file" in values and auth == "NoClientCert":  # as exporter-toolkit: a CA alone is a mistake
        w.problem(values["client_ca_file"], "tls_server_config.client_ca_file",
                  "a client CA is given without client_auth_type (e.g. RequireAndVerifyClientCert)")
    cert_path, key_path = files.get("cert_file"), files.get("key_file")
    if w.problems or cert_path is None or key_path is None:
        return None, auth, None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = versions.get("min_version", ssl.TLSVersion.TLSv1_2)
    if "max_version" in versions:
        context.maximum_version = versions["max_version"]
    try:  # the certificate alone first, so a bad one is blamed on cert_file and not on the key
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert_path))
    except (ssl.SSLError, ValueError) as err:
        w.problem(values["cert_file"], "tls_server_config.cert_file",
                  f"{str(cert_path)!r} is not a PEM certificate: {getattr(err, 'reason', None) or err}")
        return None, auth, None
    try:
        context.load_cert_chain(str(cert_path), str(key_path), password=_no_password)
    except _EncryptedKey:
        w.problem(values["key_file"], "tls_server_config.key_file",
                  f"{str(key_path)!r} is encrypted; give connmon an unencrypted key readable only by its user")
        return None, auth, None
    except (ssl.SSLError, ValueError) as err:
        reason = getattr(err, "reason", None) or str(err)
        w.problem(values["key_file"], "tls_server_config.key_file",
                  f"{str(key_path)!r} is not a PEM private key matching cert_file ({reason})")
        return None, auth, None
    ca = files.get("client_ca_file")
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, ValueError) as err:
            w.problem(values["client_ca_file"], "tls_server_config.client_ca_file",
                      f"{str(ca)!r} holds no PEM CA certificate: {getattr(err, 'reason', None) or err}")
            return None, auth, None
    context.verify_mode = CLIENT_AUTH_TYPES[auth]
    return context, auth, served_certificate(cert_path)


def _users(w: Walker, node: Node) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, value_node in _mapping(w, node, "basic_auth_users", None).items():
        path = f"basic_auth_users.{user}"
        if ":" in user:
            w.problem(value_node, path, "a user name cannot contain ':' (basic auth splits at the first one)")
            continue
        text = _text(w, value_node, path)
        if text is None:
            continue
        found = _BCRYPT_HASH.fullmatch(text)
        if found is None or not 4 <= int(found.group(1)) <= 31:
            w.problem(value_node, path, "must be a bcrypt hash ($2y$10$... , 60 characters), not the password; "
                         "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'")
            continue
        users[user] = text.encode("ascii")
    return users


def parse_web_config(text: str, source: str) -> WebConfig:
    """Validate a web config's text (named ``source``; relative paths resolve beside it).

    Raises:
        ConfigError: every problem, located at the key it concerns.
    """
    # an empty file: plain HTTP, no auth (as exporter-toolkit)
    return parse_document(text, source, lambda w, root: _walk(w, root, source), empty=lambda: WebConfig(source))


def _walk(w: Walker, root: Node, source: str) -> WebConfig:
    config = WebConfig(source)
    top = _mapping(w, root, "", _TOP_KEYS)
    if "tls_server_config" in top:
        config.ssl_context, config.client_auth_type, config.certificate = _tls(w, top["tls_server_config"],
                                                                               Path(source).parent)
    if "basic_auth_users" in top:
        config.users = _users(w, top["basic_auth_users"])
    return config


def load_web_config(path: str) -> WebConfig:
    """Read and validate the ``--web.config.file``.

    Raises:
        ConfigError: the file is unreadable or invalid.
    """
    return parse_web_config(read_config_text(path), path)


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, with exporter-toolkit's cache."""

    def __init__(self, users: Mapping[str, bytes], cache_entries: int = _CACHE_ENTRIES) -> None:
        self._users = dict(users)
        self._cache: dict[bytes, bool] = {}
        self._cache_entries = cache_entries
        self._lock = asyncio.Lock()  # one bcrypt at a time, as exporter-toolkit's bcryptMtx
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="connmon-bcrypt")
        self.bcrypt_runs = 0  # how many checks missed the cache (tests show the cache works)

    @staticmethod
    def credentials(header: str | None) -> tuple[str, str] | None:
        """(user, password) from an ``Authorization`` header, or None when it is not valid Basic auth."""
        if header is None:
            return None
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    async def check(self, header: str | None) -> bool:
        """True when the header names a configured user with the right password."""
        pair = self.credentials(header)
        if pair is None:
            return False
        user, password = pair
        known = user in self._users
        hashed = self._users.get(user, _DUMMY_HASH)
        key = hashlib.sha256(b"\0".join((user.encode(), hashed, password.encode()))).digest()
        cached = self._cache.get(key)
        if cached is None:
            async with self._lock:
                loop = asyncio.get_running_loop()
                matched = await loop.run_in_executor(self._thread, _bcrypt_matches, password.encode(), hashed)
                self.bcrypt_runs += 1
            cached = known and matched
            if len(self._cache) >= self._cache_entries:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[key] = cached
        return cached and known

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:  # e.g. a password over bcrypt's 72 bytes: never a match
        return False
