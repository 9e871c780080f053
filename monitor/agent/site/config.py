"""The site agent's config (``agent.yaml``): YAML text → validated, frozen :class:`AgentConfig`.

It is a second, small schema read with the same walker as the centre's config
(:class:`monitor.config.walker.Walker`), so an operator at a school gets the same kind of message:
``FILE:LINE:COL: key: message``, every problem at once, and a host is held to the same syntax.
The agent knows only its centre, its site's name and how to prove who it is; *what* the site is
(labels, targets, when to test throughput) stays in the centre's config, so a site cannot describe
itself differently.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml.nodes import Node

from monitor.config.durations import format_duration
from monitor.config.hosts import normalize_ip
from monitor.config.walker import Walker, parse_document, read_config_text

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/connmon-agent"
_TOP_KEYS = ("centre", "site", "token_file", "ca_file", "state_dir", "interval", "icmp", "gateway", "throughput",
             "spool", "upload")
_ICMP_KEYS = ("count", "spacing", "timeout", "payload_bytes", "host")
_MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True, slots=True)
class AgentIcmp:
    """The agent's ICMP cycle, in base units; ``host`` None means the centre URL's host."""

    count: int = 10
    spacing_seconds: float = 0.2
    timeout_seconds: float = 2.0
    payload_bytes: int = 56
    host: str | None = None

    @property
    def cycle_bound_seconds(self) -> float:
        return self.count * self.spacing_seconds + self.timeout_seconds


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A whole, valid ``agent.yaml``, with the token already read from ``token_file``."""

    source: str
    centre: str  # base URL without a trailing slash, e.g. https://connmon.example.net
    site: str
    token_file: Path
    token: str = field(repr=False, default="")
    ca_file: Path | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    interval_seconds: float = 60.0
    icmp: AgentIcmp = field(default_factory=AgentIcmp)
    gateway: str | None = None  # None, "auto" (the default route's gateway) or a canonical IP literal
    throughput_enabled: bool = False
    spool_max_results: int = 100_000
    upload_batch: int = 500
    upload_timeout_seconds: float = 10.0

    @property
    def centre_host(self) -> str:
        """The host part of ``centre`` (an IPv6 literal without brackets)."""
        return urllib.parse.urlsplit(self.centre).hostname or ""

    @property
    def icmp_host(self) -> str:
        return self.icmp.host or self.centre_host

    def url(self, path: str) -> str:
        """``path`` (``/api/v1/...``) under the centre's base URL, which may itself have a path prefix."""
        return self.centre + path


def _centre(w: Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    text = text.strip()
    parts = urllib.parse.urlsplit(text)
    try:
        port_ok = (parts.port or 1) > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or any(c.isspace() for c in text):
        w.problem(node, path, f"'{text}' is not an http:// or https:// URL (the centre's address, "
                              "e.g. https://connmon.example.net)")
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        w.problem(node, path, "must be the centre's base URL only: no query, fragment or user name")
        return None
    return text.rstrip("/")


def _gateway(w: Walker, node: Node, path: str) -> str | None:
    text = w.string(node, path)
    if text is None:
        return None
    text = text.strip()
    if text == "auto":
        return text
    address = normalize_ip(text)
    if address is None or "%" in text:
        w.problem(node, path, f"'{text}' must be an IP address, or auto (the default route's gateway)")
        return None
    return address


def _path(w: Walker, node: Node, path: str) -> Path | None:
    text = w.string(node, path)
    return None if text is None else Path(text.strip())


def _readable_file(w: Walker, node: Node, path: str, base: Path) -> Path | None:
    found = _path(w, node, path)
    if found is None:
        return None
    found = base / found if not found.is_absolute() else found
    if not found.is_file():
        w.problem(node, path, f"{found}: no such file")
        return None
    return found


def _ca_file(w: Walker, node: Node, path: str, base: Path) -> Path | None:
    """A readable file that OpenSSL takes as CA certificates: a bad one is a located error, not a crash (issue 25)."""
    found = _readable_file(w, node, path, base)
    if found is None:
        return None
    try:
        ssl.create_default_context(cafile=str(found))
    except ssl.SSLError as err:
        w.problem(node, path, f"{found}: holds no PEM CA certificate that OpenSSL can load ({err.reason or err}); "
                              "give the PEM file (-----BEGIN CERTIFICATE-----) of the CA that signed the centre's "
                              "certificate")
        return None
    except (OSError, ValueError) as err:
        w.problem(node, path, f"{found}: cannot read the CA certificates: {getattr(err, 'strerror', None) or err}")
        return None
    return found


def _read_token(w: Walker, node: Node, path: str, token_file: Path) -> str | None:
    """The token, stripped of surrounding whitespace as the centre hashes it; a warning if others may read it."""
    try:
        data = token_file.read_bytes()[:_MAX_TOKEN_BYTES + 1]
        mode = token_file.stat().st_mode
    except OSError as err:
        w.problem(node, path, f"{token_file}: cannot read the token: {err.strerror or err}")
        return None
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        w.problem(node, path, f"{token_file}: the token is not UTF-8 text")
        return None
    if not token or len(data) > _MAX_TOKEN_BYTES or any(c.isspace() for c in token):
        w.problem(node, path, f"{token_file}: must hold one token on one line (`connmon agent-token` makes one)")
        return None
    if mode & (stat.S_IRWXO | stat.S_IWGRP):
        log.warning("%s: the token file may be read or changed by other users (mode %o); chmod 600 it",
                    token_file, stat.S_IMODE(mode))
    return token


def parse_agent_config(text: str, source: str, base: Path | None = None) -> AgentConfig:
    """Validate ``agent.yaml`` text (named ``source``); relative files are relative to ``base``.

    Raises:
        ConfigError: every problem, each with file, line, column and key.
    """
    where = base if base is not None else Path(source).resolve().parent
    return parse_document(text, source, lambda w, root: _walk(w, root, source, where),
                          empty="the file is empty; it needs centre, site and token_file")


def _walk(w: Walker, root: Node, source: str, base: Path) -> AgentConfig | None:
    top = w.mapping(root, "", _TOP_KEYS, required=("centre", "site", "token_file"))
    if top is None:
        return None
    read: dict[str, Any] = w.fields(top, "", {
        "centre": lambda n, p: _centre(w, n, p),
        "site": w.string,
        "token_file": lambda n, p: _readable_file(w, n, p, base),
        "ca_file": lambda n, p: _ca_file(w, n, p, base),
        "state_dir": lambda n, p: _path(w, n, p),
        "interval": lambda n, p: w.duration(n, p, 1.0, 86400.0),
        "gateway": lambda n, p: _gateway(w, n, p),
    })
    icmp = AgentIcmp()
    if "icmp" in top:
        values = w.mapping(top["icmp"], "icmp", _ICMP_KEYS) or {}
        got = w.fields(values, "icmp", {
            "count": lambda n, p: w.number(n, p, 1, 10_000, integer=True),
            "spacing": lambda n, p: w.duration(n, p, 0.001, 60.0),
            "timeout": lambda n, p: w.duration(n, p, 0.001, 60.0),
            "payload_bytes": lambda n, p: w.number(n, p, 16, 1400, integer=True),
            "host": w.host,
        })
        icmp = AgentIcmp(count=got.get("count", icmp.count), spacing_seconds=got.get("spacing", icmp.spacing_seconds),
                         timeout_seconds=got.get("timeout", icmp.timeout_seconds),
                         payload_bytes=got.get("payload_bytes", icmp.payload_bytes), host=got.get("host"))
    throughput_enabled = False
    if "throughput" in top:
        values = w.mapping(top["throughput"], "throughput", ("enabled",)) or {}
        got = w.fields(values, "throughput", {"enabled": w.boolean})
        throughput_enabled = bool(got.get("enabled", False))
    spool_max = 100_000
    if "spool" in top:
        values = w.mapping(top["spool"], "spool", ("max_results",)) or {}
        got = w.fields(values, "spool", {"max_results": lambda n, p: w.number(n, p, 10, 100_000_000, integer=True)})
        spool_max = int(got.get("max_results", spool_max))
    batch, upload_timeout = 500, 10.0
    if "upload" in top:
        values = w.mapping(top["upload"], "upload", ("batch", "timeout")) or {}
        got = w.fields(values, "upload", {
            # the centre refuses more than agent_protocol.MAX_RESULTS_PER_BATCH in one post
            "batch": lambda n, p: w.number(n, p, 1, 1000, integer=True),
            "timeout": lambda n, p: w.duration(n, p, 1.0, 600.0),
        })
        batch, upload_timeout = int(got.get("batch", batch)), float(got.get("timeout", upload_timeout))
    token = None
    if "token_file" in read:
        token = _read_token(w, top["token_file"], "token_file", read["token_file"])
    interval = float(read.get("interval", 60.0))
    if icmp.cycle_bound_seconds > interval:
        where = top.get("icmp") or top.get("interval") or root
        w.problem(where, "icmp" if "icmp" in top else "interval",
                  f"count × spacing + timeout = {icmp.cycle_bound_seconds:g}s does not fit in interval "
                  f"{format_duration(interval)}; lower count, spacing or timeout, or raise interval")
    if w.problems or not {"centre", "site", "token_file"} <= set(read) or token is None:
        return None
    centre = read["centre"]
    if read.get("ca_file") is not None and not centre.startswith("https://"):
        w.problem(top["ca_file"], "ca_file", "is only used with an https:// centre")
    return AgentConfig(source=source, centre=centre, site=read["site"].strip(), token_file=read["token_file"],
                       token=token, ca_file=read.get("ca_file"),
                       state_dir=read.get("state_dir", Path(DEFAULT_STATE_DIR)), interval_seconds=interval,
                       icmp=icmp, gateway=read.get("gateway"), throughput_enabled=throughput_enabled,
                       spool_max_results=spool_max, upload_batch=batch, upload_timeout_seconds=upload_timeout)


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate the agent's config file at ``path`` (relative files relative to its directory).

    Raises:
        ConfigError: the file cannot be read or is invalid (every problem listed).
    """
    return parse_agent_config(read_config_text(path), str(path), Path(path).resolve().parent)


def default_gateway(route_table: str = "/proc/net/route") -> str | None:
    """The IPv4 default route's gateway from the kernel's table, or None when there is no default route.

    Read at every cycle, not once: a DHCP renewal or a failover to a backup link changes it.
    """
    try:
        lines = Path(route_table).read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        destination, gateway, flags, metric, mask = fields[1], fields[2], int(fields[3], 16), int(fields[6]), fields[7]
        if destination != "00000000" or mask != "00000000" or not flags & 0x2 or not flags & 0x1:  # RTF_UP|RTF_GATEWAY
            continue
        address = str(ipaddress.IPv4Address(int(gateway, 16).to_bytes(4, "little")))
        if best is None or metric < best[0]:
            best = (metric, address)
    return best[1] if best else None


