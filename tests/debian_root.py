"""A fresh Debian 12 (bookworm) root for the agent's Debian package (issue 18), and the package itself.

``debootstrap --variant=minbase`` makes the root once per machine into ``CACHE`` (about 200 MB,
half a minute); every test then works on its own copy, so a test that purges or upgrades never
spoils another's. The root is entered with ``chroot`` and ``/proc`` mounted (unmounted after).
It shares this machine's network: apt inside it reaches the Debian mirror this machine uses
(read from its apt sources, or ``CONNMON_DEBIAN_MIRROR``) and nothing else; a program run inside
it reaches a test's servers on the loopback.

For the end-to-end tests (an agent in a site namespace, enrolled by a running centre), use
:func:`installed_root`: a root with ``connmon-agent`` installed, ready in a few seconds, whose
:meth:`DebianRoot.command` gives the argv to run anything inside it (prefix it with
``ip netns exec NS`` to put it in a site namespace: chroot keeps the caller's namespace).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CONNMON_TEST_CACHE", "/var/cache/connmon-test"))
SUITE = "bookworm"
_ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
             "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}


def can_build_roots() -> tuple[bool, str]:
    """Whether this machine can make and enter a Debian root (root, debootstrap, dpkg-deb, chroot)."""
    if os.geteuid() != 0:
        return False, "needs root (debootstrap, chroot, mount)"
    missing = [tool for tool in ("debootstrap", "dpkg-deb", "chroot", "mount") if shutil.which(tool) is None]
    if missing:
        return False, f"missing {', '.join(missing)} (scripts/install --test installs them)"
    return True, ""


def mirror() -> str:
    """The Debian mirror this machine's apt uses (``CONNMON_DEBIAN_MIRROR`` overrides it)."""
    chosen = os.environ.get("CONNMON_DEBIAN_MIRROR")
    if chosen:
        return chosen
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822: URIs: ... beside Suites: bookworm ...
            for stanza in re.split(r"\n\s*\n", text):
                uris = re.search(r"(?m)^URIs:\s*(\S+)", stanza)
                suites = re.search(r"(?m)^Suites:\s*(.+)$", stanza)
                if uris and suites and SUITE in suites.group(1).split() and "security" not in uris.group(1):
                    return uris.group(1)
        for match in re.finditer(rf"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", text):
            if "security" not in match.group(1):
                return match.group(1)
    raise RuntimeError(f"no Debian {SUITE} mirror in this machine's apt sources; set CONNMON_DEBIAN_MIRROR")


def pristine_root() -> Path:
    """The cached minbase root (made by debootstrap the first time; a lock keeps two runs from racing)."""
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()
    target = CACHE / f"{SUITE}-minbase-{arch}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".connmon-complete").exists():
            return target
        scratch = CACHE / f".{target.name}.partial"
        _remove_tree(scratch)
        result = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(scratch), mirror()],
                                capture_output=True, text=True)
        if result.returncode != 0:
            _remove_tree(scratch)
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}"
                               f"{result.stderr[-3000:]}")
        (scratch / ".connmon-complete").touch()
        _remove_tree(target)
        scratch.rename(target)
        return target


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    return [p for p in points if p.startswith(prefix) or p == prefix.rstrip("/")]


def _remove_tree(path: Path) -> None:
    """rm -rf, refused while anything is mounted under ``path`` (a mounted /proc must never be emptied)."""
    if not path.exists():
        return
    mounted = _mounts_under(path)
    if mounted:
        raise RuntimeError(f"not removing {path}: still mounted: {mounted}")
    shutil.rmtree(path)


class DebianRoot:
    """A Debian root in a directory of its own, entered with chroot while :meth:`mounted`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def command(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` inside the root (with a clean environment)."""
        env = [f"{k}={v}" for k, v in _ROOT_ENV.items()]
        return ["chroot", str(self.path), "/usr/bin/env", "-i", *env, *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Runs ``argv`` inside the root; a failure raises with its output."""
        result = subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode} in {self.path}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, check=check)

    def file(self, inside: str) -> Path:
        """The path on this machine of ``inside`` (an absolute path in the root)."""
        return self.path / inside.lstrip("/")

    def install(self, deb: Path) -> subprocess.CompletedProcess[str]:
        """``apt-get install ./the.deb`` inside the root: its dependencies come from the Debian mirror."""
        inside = f"/tmp/{deb.name}"
        shutil.copy2(deb, self.file(inside))
        return self.run("apt-get", "install", "-y", "-q", "--no-install-recommends", inside)

    @contextlib.contextmanager
    def mounted(self) -> Iterator[DebianRoot]:
        """/proc mounted in the root (and the machine's resolver copied in), unmounted on the way out."""
        shutil.copy2("/etc/resolv.conf", self.file("/etc/resolv.conf"), follow_symlinks=True)
        proc = self.file("/proc")
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
        try:
            yield self
        finally:
            subprocess.run(["umount", "--lazy", str(proc)], check=False)


@contextlib.contextmanager
def fresh_root(where: Path) -> Iterator[DebianRoot]:
    """A copy of the pristine root at ``where``, mounted, with apt's lists fetched; removed after."""
    source = pristine_root()
    subprocess.run(["cp", "-a", str(source), str(where)], check=True)
    root = DebianRoot(where)
    try:
        with root.mounted():
            root.run("apt-get", "update", "-q")
            yield root
    finally:
        _remove_tree(where)


@contextlib.contextmanager
def installed_root(where: Path, deb: Path) -> Iterator[DebianRoot]:
    """A fresh root with the package ``deb`` installed by apt-get (the way a technician installs it)."""
    with fresh_root(where) as root:
        root.install(deb)
        yield root


def build_deb(out_dir: Path, version: str | None = None) -> Path:
    """Runs scripts/build-agent-deb (the repository's own build) and returns the .deb it made."""
    argv = [str(ROOT / "scripts" / "build-agent-deb"), "--output-dir", str(out_dir)]
    if version is not None:
        argv += ["--version", version]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"scripts/build-agent-deb failed:\n{result.stdout}\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def deb_fields(deb: Path) -> dict[str, str]:
    """The control fields of a .deb (dpkg-deb --field)."""
    text = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True).stdout
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line[:1].isspace() and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def deb_files(deb: Path) -> list[str]:
    """The paths a .deb holds (dpkg-deb --contents), as absolute paths."""
    text = subprocess.run(["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True, text=True).stdout
    return [line.split(None, 5)[5].removeprefix(".").split(" -> ")[0] for line in text.splitlines()]


def split_depends(value: str) -> list[str]:
    """Package names of a Depends: field (alternatives flattened, versions dropped)."""
    return [re.split(r"[\s(]", alt.strip())[0] for part in value.split(",") for alt in part.split("|") if alt.strip()]
