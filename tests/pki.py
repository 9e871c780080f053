"""Certificates for TLS tests, made with the ``openssl`` command: a CA, server and client certificates (expired too)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import need


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    other_key: Path


def make_pki(directory: Path, server_ip: str) -> Pki:
    """A CA; a server certificate for ``server_ip`` and a client certificate, both signed by it."""
    need(shutil.which("openssl") is not None, "needs the openssl command")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=connmon test CA",
            cwd=directory)
    for name, ext in (("server", f"subjectAltName=IP:{server_ip}"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=connmon {name}",
                "-addext", ext, cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-copy_extensions", "copy", cwd=directory)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "other.key",
            cwd=directory)
    d = directory
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
               d / "other.key")


def server_certificate(pki: Pki, name: str, san: str, days: int) -> tuple[Path, Path]:
    """Another server certificate from ``pki``'s CA, for ``san`` (``IP:127.0.0.1``, ``DNS:x``), valid ``days``
    from now; a negative ``days`` makes one that has already expired (notAfter before now). Returns (cert, key)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=connmon {name}",
            "-addext", f"subjectAltName={san}", cwd=pki.dir)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", str(days), "-copy_extensions", "copy", cwd=pki.dir)
    return pki.dir / f"{name}.crt", pki.dir / f"{name}.key"
