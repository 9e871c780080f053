"""Builds ``connmon-agent_<version>_all.deb`` from the source tree (issue 18); run by ``scripts/build-agent-deb``.

The package is pure Python and ``Architecture: all`` (Debian 12 and Raspberry Pi OS, amd64, arm64,
armhf): no compiler and no PyPI at install time. Of the agent's dependencies (``[project]
dependencies`` in pyproject.toml, followed through their own requirements), those Debian 12 has in
a version that serves come from Debian (``DEBIAN`` below, as ``Depends:``); the others are bundled
into ``/usr/lib/connmon-agent`` beside connmon itself, copied from the distributions installed in
the interpreter that runs this script (the project's ``.venv``, so the versions the tests ran
with), less their compiled accelerators: each bundled library falls back to its pure-Python
implementation when its extension module is missing (aiohttp, multidict, yarl, frozenlist,
propcache). Why each is bundled:

* icmplib: Debian has 2.1.1; the ICMP engine uses 3.0's packet builder (``_create_packet``).
* aiohttp: Debian has 3.8.4; the probes use ``aiohttp.abc.ResolveResult`` (3.10) to pin the
  address of an HTTP test. Bundling aiohttp pulls in its newer multidict, yarl, propcache,
  frozenlist, aiosignal and aiohappyeyeballs, which Debian 12 has too old or not at all.

The tree is laid out in a temporary directory and packed with ``dpkg-deb --root-owner-group``.
Nothing here imports connmon: the builder reads the source tree and the interpreter's metadata.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a centre-only .venv (scripts/install without --test) may lack it; pip always has its own
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LIB = "usr/lib/connmon-agent"
DOC = "usr/share/doc/connmon-agent"

# distribution (normalised name) -> Debian 12 package and the lowest version that serves.
DEBIAN = {
    "pyyaml": ("python3-yaml", "6.0"),  # the pin is >=6.0; Debian 12 has 6.0
    # Debian 12 has 0.16; the agent uses only REGISTRY and the *MetricFamily classes (monitor/probes/last_good.py),
    # unchanged since 0.4. The centre's pin (>=0.20) is for its exposition.
    "prometheus-client": ("python3-prometheus-client", "0.16"),
    "attrs": ("python3-attr", "17.3"),  # aiohttp: >=17.3.0
    "idna": ("python3-idna", "2.0"),  # yarl: >=2.0
    "typing-extensions": ("python3-typing-extensions", "4.4"),  # aiohttp: >=4.4 on Python < 3.13
}
OTHER_DEPENDS = ("python3 (>= 3.11)", "adduser", "init-system-helpers (>= 1.54~)")
COMPILED = re.compile(r"\.(so|pyd|c|h|pyx|pxd|pxi|pyi)$|(^|/)__pycache__/")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that ``requirements`` need, theirs followed too (no extras)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = normalise(req.name)
        if name in found:
            continue
        dist = metadata.distribution(req.name)
        if not req.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"build-agent-deb: {req} is wanted, {dist.version} is installed: run scripts/install")
        found[name] = dist
        todo.extend(Requirement(r) for r in dist.requires or ())
    return sorted(found.values(), key=lambda d: normalise(d.metadata["Name"]))


def bundle(dist: metadata.Distribution, lib: Path, licences: Path) -> None:
    """Copies a distribution's Python files (no compiled extension) into ``lib``, its licence into ``licences``."""
    name = normalise(dist.metadata["Name"])
    for file in dist.files or ():
        text = file.as_posix()
        if text.startswith("..") or COMPILED.search(text):
            continue
        source = Path(str(dist.locate_file(file)))
        if ".dist-info/" in text:
            if re.search(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", text, re.I) and source.is_file():
                target = licences / name / Path(text).name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
            continue
        target = lib / text
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def systemd_unit() -> str:
    """deploy/connmon-agent.service, pointed at the package's command and waiting for its config."""
    text = (ROOT / "deploy" / "connmon-agent.service").read_text(encoding="utf-8")
    header = ("# /lib/systemd/system/connmon-agent.service, from the connmon-agent package (made from\n"
              "# deploy/connmon-agent.service by scripts/build-agent-deb). Starts once /etc/connmon-agent/agent.yaml\n"
              "# exists (see /usr/share/doc/connmon-agent/agent.example.yaml).\n")
    body = text[text.index("[Unit]"):]
    changes = [
        (r"(?m)^Documentation=.*$", "Documentation=file:///usr/share/doc/connmon-agent/README.md"),
        (r"(?m)^ExecStart=\S+/connmon agent ", "ExecStart=/usr/bin/connmon agent "),
        (r"(?m)^(Wants=network-online\.target)$", "\\1\nConditionPathExists=/etc/connmon-agent/agent.yaml"),
    ]
    for pattern, replacement in changes:
        body, count = re.subn(pattern, replacement, body)
        if count != 1:
            sys.exit(f"build-agent-deb: deploy/connmon-agent.service: no single line matches {pattern!r}")
    return header + body


def build(version: str, out_dir: Path) -> Path:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = closure(project["dependencies"])
    bundled = [d for d in needed if normalise(d.metadata["Name"]) not in DEBIAN]
    from_debian = [DEBIAN[normalise(d.metadata["Name"])] for d in needed if normalise(d.metadata["Name"]) in DEBIAN]
    with tempfile.TemporaryDirectory(prefix="connmon-agent-deb.") as scratch:
        tree = Path(scratch) / "tree"
        lib, doc = tree / LIB, tree / DOC
        shutil.copytree(ROOT / "monitor", lib / "monitor", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for dist in bundled:
            bundle(dist, lib, doc / "licences")
        compiled = [p for p in tree.rglob("*") if p.suffix in (".so", ".pyd")]
        if compiled:
            sys.exit(f"build-agent-deb: compiled files would make the package architecture-bound: {compiled}")
        (tree / "usr/bin").mkdir(parents=True)
        shutil.copy2(HERE / "connmon", tree / "usr/bin/connmon")
        (tree / "usr/bin/connmon").chmod(0o755)
        unit = tree / "lib/systemd/system/connmon-agent.service"
        unit.parent.mkdir(parents=True)
        unit.write_text(systemd_unit(), encoding="utf-8")
        shutil.copy2(ROOT / "config" / "agent.example.yaml", doc / "agent.example.yaml")
        shutil.copy2(ROOT / "docs" / "agents-in-the-field.md", doc / "README.md")
        (doc / "copyright").write_text(_copyright(bundled), encoding="utf-8")
        for path in tree.rglob("*"):
            path.chmod(0o755 if path.is_dir() or path.name == "connmon" and path.parent.name == "bin" else 0o644)
        control = tree / "DEBIAN"
        control.mkdir(mode=0o755)
        size_kib = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()) // 1024 + 1
        depends = [f"{package} (>= {lowest})" for package, lowest in from_debian] + list(OTHER_DEPENDS)
        fields = {"@VERSION@": version, "@INSTALLED_SIZE@": str(size_kib), "@DEPENDS@": ", ".join(depends),
                  "@BUNDLED@": ", ".join(f"{d.metadata['Name']} {d.version}" for d in bundled)}
        text = (HERE / "control.in").read_text(encoding="utf-8")
        for key, value in fields.items():
            text = text.replace(key, value)
        (control / "control").write_text(text, encoding="utf-8")
        for script in ("postinst", "prerm", "postrm"):
            shutil.copy2(HERE / script, control / script)
            (control / script).chmod(0o755)
        out_dir.mkdir(parents=True, exist_ok=True)
        deb = out_dir / f"connmon-agent_{version}_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(deb)], check=True,
                       stdout=subprocess.DEVNULL)
    return deb


def _copyright(bundled: list[metadata.Distribution]) -> str:
    lines = ["Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
             "Upstream-Name: connmon", "", "Files: usr/lib/connmon-agent/monitor/*", "License: Apache-2.0", ""]
    for dist in bundled:
        named = (dist.metadata.get_all("License-Expression") or []) + (dist.metadata.get_all("License") or [])
        licence = next((n for n in named if n.strip()), "see licences/")
        tops = sorted({f.parts[0] for f in dist.files or () if f.parts[0] != ".." and ".dist-info" not in f.parts[0]
                       and not COMPILED.search(f.as_posix())})
        files = " ".join(f"{LIB}/{top}" if top.endswith(".py") else f"{LIB}/{top}/*" for top in tops)
        lines += [f"Files: {files}", f"Comment: {dist.metadata['Name']} {dist.version}, bundled",
                  f"License: {licence.splitlines()[0]}",
                  f" Its licence text: /{DOC}/licences/{normalise(dist.metadata['Name'])}/", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    parser.add_argument("--version", default=default, help=f"the package's version (default {default}, pyproject's)")
    parser.add_argument("--output-dir", default=str(ROOT / "dist"), help="where the .deb goes (default dist/)")
    args = parser.parse_args()
    print(build(args.version, Path(args.output_dir)))


if __name__ == "__main__":
    main()
