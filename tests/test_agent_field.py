"""An agent in the field, end to end as CI can run it (issue 18): the package, two commands, a site behind NAT.

What a technician does at a school, with nothing edited by hand: the agent's Debian package is built
by scripts/build-agent-deb and installed with apt into a fresh Debian 12 root (tests/debian_root.py);
the centre's operator runs ``connmon agent-invite``; at the site, inside a namespace behind a
MASQUERADE router the centre cannot reach, the root's own ``connmon agent enrol --centre URL --code
CODE`` writes the config and the token; the agent then runs as its unit would (the system user, only
CAP_NET_RAW, the config in /etc/connmon-agent). systemd is not PID 1 in a chroot, so enrol is given
``--no-start`` there; the start step itself is checked with a stand-in ``systemctl`` that records what
it was asked, since no systemd can run in this test.

The lab is this module's own (the namespaces ``h18g…``, 10.218.0.0/16, port 19640)::

    host ──h18g…h 10.218.255.1/30── centre ns ──10.218.1.0/30── router ns ──10.218.129.0/30── site ns
                                    (connmon run,                (MASQUERADE,                  (the root's
                                     10.218.255.2:19640)          no route inward)              agent)

An ``unreachable`` route for 10.218.0.0/16 goes into the host and the centre's namespace before any
site exists, and the router has no default route: nothing the site sends leaves the lab.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.agent.centre.enrolment import WRONG_CODE, is_code
from monitor.history.store_url import opener as store_opener
from tests.conftest import need
from tests.debian_root import DebianRoot, build_deb, can_build_roots, deb_fields, installed_root
from tests.netlab import can_make_namespaces
from tests.running import Samples, one, request, samples, stop_process

PREFIX = "h18g"
NET = "10.218.0.0/16"
HOST_V4, CENTRE_V4 = "10.218.255.1", "10.218.255.2"
PORT = 19640  # this module's range is 19640-19659
SITE = "field-school"
INTERVAL_SECONDS = 2.0
COUNT = 3
UPGRADE = "+field1"  # a version above pyproject's, for the upgrade over itself
AS_THE_UNIT = ("setpriv", "--reuid=connmon-agent", "--regid=connmon-agent", "--init-groups",
               "--inh-caps=+net_raw", "--ambient-caps=+net_raw", "--")  # the unit's User= and AmbientCapabilities=
KEPT = ("/etc/connmon-agent/agent.yaml", "/etc/connmon-agent/token")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
    return result


@dataclass(frozen=True)
class FieldLab:
    """The three namespaces: the centre's, the site's router's (NAT) and the site's."""

    centre: str
    router: str
    site: str
    host_if: str

    def in_ns(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def router_sh(self, *argv: str) -> None:
        sh(*self.in_ns(self.router, *argv))

    CUT = (("-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"), ("-j", "REJECT"))

    def cut(self) -> None:
        """The site's uplink refuses everything at the router (a TCP reset: the agent's uploads fail at once,
        and its stop does not wait for an upload's timeout)."""
        for n, rule in enumerate(self.CUT, 1):
            self.router_sh("iptables", "-I", "FORWARD", str(n), "-m", "comment", "--comment", "cut", *rule)

    def restore(self) -> None:
        for rule in self.CUT:
            self.router_sh("iptables", "-D", "FORWARD", "-m", "comment", "--comment", "cut", *rule)


def _remove_leftovers() -> None:
    """Namespaces and host links of this prefix left by a crashed run (the prefix is this module's alone)."""
    for line in sh("ip", "netns", "list").stdout.splitlines():
        name = line.split(" ")[0]
        if name.startswith(PREFIX):
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show").stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            sh("ip", "link", "del", name, check=False)


@contextlib.contextmanager
def field_lab() -> Iterator[FieldLab]:
    tag = f"{PREFIX}{os.getpid() % 10000}"
    lab = FieldLab(f"{tag}c", f"{tag}r", f"{tag}s", f"{tag}h")
    sh("ip", "route", "replace", "unreachable", NET)  # safety first: nothing for 10.218/16 leaves the host
    _remove_leftovers()
    try:
        for ns in (lab.centre, lab.router, lab.site):
            sh("ip", "netns", "add", ns)
            sh(*lab.in_ns(ns, "ip", "link", "set", "lo", "up"))
        c, r, s = (lambda *a: sh(*lab.in_ns(lab.centre, *a))), lab.router_sh, (lambda *a: sh(*lab.in_ns(lab.site, *a)))
        c("ip", "route", "add", "unreachable", NET)  # before any site exists
        sh("ip", "link", "add", lab.host_if, "type", "veth", "peer", "name", "h18gup", "netns", lab.centre)
        sh("ip", "addr", "add", f"{HOST_V4}/30", "dev", lab.host_if)
        sh("ip", "link", "set", lab.host_if, "up")
        c("ip", "addr", "add", f"{CENTRE_V4}/30", "dev", "h18gup")
        c("ip", "link", "set", "h18gup", "up")
        c("ip", "link", "add", "h18gc0", "type", "veth", "peer", "name", "h18gr0", "netns", lab.router)
        c("ip", "addr", "add", "10.218.1.1/30", "dev", "h18gc0")
        c("ip", "link", "set", "h18gc0", "up")
        r("ip", "addr", "add", "10.218.1.2/30", "dev", "h18gr0")
        r("ip", "link", "set", "h18gr0", "up")
        r("ip", "route", "add", f"{CENTRE_V4}/32", "via", "10.218.1.1")
        r("ip", "link", "add", "h18gr1", "type", "veth", "peer", "name", "h18gs0", "netns", lab.site)
        r("ip", "addr", "add", "10.218.129.1/30", "dev", "h18gr1")
        r("ip", "link", "set", "h18gr1", "up")
        r("sysctl", "-qw", "net.ipv4.ip_forward=1")
        r("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "h18gr0", "-j", "MASQUERADE")
        s("ip", "addr", "add", "10.218.129.2/30", "dev", "h18gs0")
        s("ip", "link", "set", "h18gs0", "up")
        s("ip", "route", "add", "default", "via", "10.218.129.1")
        yield lab
    finally:
        _remove_leftovers()


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ok, reason = can_build_roots()
    need(ok, reason)
    out = tmp_path_factory.mktemp("debs")
    first = build_deb(out)
    return {"first": first, "upgrade": build_deb(out, deb_fields(first)["Version"] + UPGRADE)}


@pytest.fixture(scope="module")
def root(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    with installed_root(tmp_path_factory.mktemp("field") / "root", debs["first"]) as the_root:
        yield the_root


@pytest.fixture(scope="module")
def lab() -> Iterator[FieldLab]:
    ok, reason = can_make_namespaces()
    need(ok, reason)
    with field_lab() as the_lab:
        yield the_lab


@dataclass(frozen=True)
class Centre:
    """``connmon run`` in the centre's namespace, and the operator's commands beside it (same config and store)."""

    proc: subprocess.Popen[str]
    config: Path
    state: Path
    log: Path

    def connmon(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "monitor", *args, "--state-dir", str(self.state)],
                              capture_output=True, text=True, timeout=120, check=False)

    def invite(self) -> str:
        done = self.connmon("agent-invite", SITE, "--config", str(self.config))
        assert done.returncode == 0 and is_code(done.stdout.strip()), done.stderr
        return done.stdout.strip()

    def metrics(self) -> Samples:
        status, _, text = request(f"http://{CENTRE_V4}:{PORT}/metrics")
        assert status == 200, text[:500]
        return samples(text)

    def cycles(self, start: float = 0.0, end: float | None = None) -> list[Any]:
        store = store_opener(None, str(self.state), read_only=True)()
        try:
            return list(store.icmp_cycles(SITE, start, end if end is not None else time.time() + 3600))
        finally:
            store.close()


@pytest.fixture(scope="module")
def centre(lab: FieldLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    """The centre holds the site's settings (interval 2 s, 3 echoes); the site has no token in the YAML."""
    tmp = tmp_path_factory.mktemp("centre")
    config = tmp / "connmon.yaml"
    config.write_text(f"""
defaults:
  icmp: {{interval: {INTERVAL_SECONDS:g}s, count: {COUNT}, spacing: 50ms, timeout: 500ms}}
groups:
  - name: field
    kind: school
    district: Shalkar
    link: satellite
    mode: agent
    endpoints:
      - {{name: {SITE}}}
""", encoding="utf-8")
    log = tmp / "centre.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PYTHONUNBUFFERED": "1"}
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(["ip", "netns", "exec", lab.centre, sys.executable, "-m", "monitor", "run",
                                 "--config", str(config), "--listen", f"{CENTRE_V4}:{PORT}",
                                 "--state-dir", str(tmp / "state")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
    the_centre = Centre(proc, config, tmp / "state", log)
    try:
        until(lambda: "connmon started" in log.read_text() or proc.poll() is not None, "the centre's start-up")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield the_centre
    finally:
        stop_process(proc)


def until(check: Callable[[], Any], what: str, attempts: int = 240) -> Any:
    """Poll ``check()`` until it returns something true (bounded: quarter-second tries)."""
    last = None
    for _ in range(attempts):
        with contextlib.suppress(AssertionError, OSError):
            last = check()
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within the bound (last: {last!r})")


def enrol(lab: FieldLab, root: DebianRoot, code: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The technician's second command, run by the root's own connmon inside the site's namespace."""
    return subprocess.run(lab.in_ns(lab.site, *root.command("connmon", "agent", "enrol", "--centre",
                                                            f"http://{CENTRE_V4}:{PORT}", "--code", code, *extra)),
                          capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def agent_as_the_unit(lab: FieldLab, root: DebianRoot, log: Path) -> Iterator[subprocess.Popen[str]]:
    """The packaged agent in the site's namespace as connmon-agent.service runs it (its user, CAP_NET_RAW)."""
    with log.open("a", encoding="utf-8") as err:
        proc = subprocess.Popen(lab.in_ns(lab.site, *root.command(*AS_THE_UNIT, "connmon", "agent", "--config",
                                                                  "/etc/connmon-agent/agent.yaml")),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        yield proc
    finally:
        stop_process(proc)


def sent(centre: Centre) -> float:
    return one(centre.metrics(), "connmon_icmp_packets_sent_total", endpoint=SITE) or 0.0


def kept_files(root: DebianRoot) -> dict[str, tuple[str, str]]:
    """Digest, owner and mode of the config, the token and every spool file."""
    spool = sorted(str(p.relative_to(root.path)) for p in root.file("/var/lib/connmon-agent").iterdir())
    return {path: (hashlib.sha256(root.file(path).read_bytes()).hexdigest(),
                   root.run("stat", "-c", "%U %G %a", "/" + path.lstrip("/")).stdout.strip())
            for path in (*KEPT, *("/" + p for p in spool))}


def test_two_commands_make_a_natted_site_report_and_it_survives_an_upgrade_until_its_token_is_revoked(
        lab: FieldLab, root: DebianRoot, centre: Centre, debs: dict[str, Path], tmp_path: Path) -> None:
    """apt-installed package + ``connmon agent enrol`` with the operator's code, inside a site behind NAT: the
    agent, run as its unit, gets its settings from the centre and its results reach /metrics and the history within
    two intervals; the code's second use is refused; an upgrade over itself keeps config, token and spool (results
    measured while the link was cut are delivered after it); a revoke makes the next upload 401, said by the agent
    and counted by the centre."""
    started = time.monotonic()
    code = centre.invite()
    done = enrol(lab, root, code, "--no-start")
    assert done.returncode == 0, done.stderr
    assert f"enrolled site {SITE}" in done.stdout and "not starting the agent (--no-start)" in done.stdout
    assert "systemctl enable --now connmon-agent" in done.stdout
    # the package's paths and owners, nothing else given on the command line
    assert root.run("stat", "-c", "%U %G %a", "/etc/connmon-agent/token").stdout.split() == \
        ["connmon-agent", "connmon-agent", "600"]
    written = root.file("/etc/connmon-agent/agent.yaml").read_text()
    assert f'site: "{SITE}"' in written and 'state_dir: "/var/lib/connmon-agent"' in written
    assert 'token_file: "/etc/connmon-agent/token"' in written
    assert "interval" not in written  # what to measure is the centre's word

    log = tmp_path / "agent.log"
    with agent_as_the_unit(lab, root, log) as agent:
        launched = time.monotonic()
        first = until(lambda: sent(centre) or agent.poll() is not None, "the site's first results in /metrics")
        seen = time.monotonic() - launched
        assert agent.poll() is None, log.read_text()[-3000:]
        assert f"from the centre: every {INTERVAL_SECONDS:g}s: {COUNT} echoes" in log.read_text()  # its settings
        # the first upload came after the first cycle and soon after: a few cycles' echoes at most when the site
        # first shows (a loaded machine may delay the upload by a cycle or two)
        assert COUNT <= first <= 4 * COUNT, first
        parsed = centre.metrics()
        assert one(parsed, "connmon_up", endpoint=SITE, kind="school", district="Shalkar", link="satellite") == 1
        assert one(parsed, "connmon_agent_enrolments_total") == 1
        cycles = until(lambda: centre.cycles(), "the site's results in the history")
        assert all(c.sent == COUNT and c.error is None for c in cycles), cycles

        # the code is single-use: a second enrol with it is refused with the one answer, and writes nothing
        before = kept_files(root)
        again = enrol(lab, root, code, "--no-start")
        assert again.returncode == 1 and WRONG_CODE in again.stderr and "HTTP 403" in again.stderr
        assert {k: v for k, v in kept_files(root).items() if k in KEPT} == {k: before[k] for k in KEPT}

        # the link is cut: what the agent measures now stays in its spool
        lab.cut()
        cut_at = time.time()
        time.sleep(3 * INTERVAL_SECONDS)  # a few cycles into the spool (how many is counted below, not assumed)
    stopped_at = time.time()
    assert agent.returncode == 0, log.read_text()[-3000:]
    spool_rows = int(root.run("python3", "-c", "import sqlite3; print(sqlite3.connect("
                              "'/var/lib/connmon-agent/spool.sqlite3').execute('select count(*) from results')"
                              ".fetchone()[0])").stdout)
    assert spool_rows >= 2

    # the upgrade over itself (what apt does with a newer package): config, token and spool as they were
    before = kept_files(root)
    root.install(debs["upgrade"])
    assert root.run("dpkg-query", "-W", "-f", "${Version}", "connmon-agent").stdout.endswith(UPGRADE)
    assert kept_files(root) == before

    lab.restore()
    with agent_as_the_unit(lab, root, log) as agent:
        # what was measured during the cut arrives after the upgrade, at the times it was measured
        during = until(lambda: [c for c in centre.cycles(cut_at + 0.5, stopped_at)], "the spooled results",
                       attempts=240)
        assert all(c.sent == COUNT and c.received == 0 for c in during), during  # the cut: every echo refused
        after_upgrade = sent(centre)
        until(lambda: sent(centre) > after_upgrade, "new results after the upgrade")
        assert agent.poll() is None, log.read_text()[-3000:]

        # the operator revokes the token: the next upload is 401, the agent says so, the centre counts it
        revoked = centre.connmon("agent-revoke", SITE)
        assert revoked.returncode == 0 and "token revoked" in revoked.stdout, revoked.stderr
        until(lambda: (one(centre.metrics(), "connmon_agent_requests_rejected_total", code="401") or 0) >= 1,
              "the revoked token's upload refused", attempts=120)
        said = until(lambda: [line for line in log.read_text().splitlines()
                              if "refuses this agent's token" in line], "the agent's log of the 401")
        assert "(HTTP 401" in said[0], said
        assert agent.poll() is None  # it keeps its results and waits for a token
    print(f"\nfield scenario: first results in /metrics {seen:.1f} s after the agent started "
          f"(interval {INTERVAL_SECONDS:g} s); {spool_rows} results spooled across the upgrade; "
          f"whole scenario {time.monotonic() - started:.1f} s")


def test_enrol_starts_the_unit_where_systemd_runs_and_says_what_to_run_where_it_does_not(
        lab: FieldLab, root: DebianRoot, centre: Centre) -> None:
    """Without --no-start: in a chroot (no systemd) enrol writes the files, names the command to run and exits 0;
    where systemd runs (its /run/systemd/system, a stand-in systemctl recording its calls) it enables and restarts
    connmon-agent.service itself; a systemctl that fails makes enrol exit 1 with systemd's words."""
    done = enrol(lab, root, centre.invite())
    assert done.returncode == 0, done.stderr
    assert "systemd is not running here" in done.stdout
    assert "systemctl enable --now connmon-agent" in done.stdout

    calls = root.file("/tmp/systemctl-calls")
    stand_in = root.file("/usr/local/sbin/systemctl")
    root.file("/run/systemd/system").mkdir(parents=True)
    try:
        stand_in.write_text("#!/bin/sh\necho \"$*\" >> /tmp/systemctl-calls\n"
                            "[ -e /tmp/systemctl-fails ] && { echo 'Unit failed to start' >&2; exit 1; }\nexit 0\n")
        stand_in.chmod(0o755)
        done = enrol(lab, root, centre.invite())
        assert done.returncode == 0, done.stderr
        assert calls.read_text().splitlines() == ["enable --quiet connmon-agent.service",
                                                  "restart connmon-agent.service"]
        assert "started connmon-agent.service" in done.stdout
        root.file("/tmp/systemctl-fails").touch()
        failed = enrol(lab, root, centre.invite())
        assert failed.returncode == 1 and "Unit failed to start" in failed.stderr
        assert "journalctl -u connmon-agent.service" in failed.stderr
        assert f"enrolled site {SITE}" in failed.stdout  # the token is written: only the start is left to do
    finally:
        for path in (stand_in, calls, root.file("/tmp/systemctl-fails")):
            path.unlink(missing_ok=True)
        root.file("/run/systemd/system").rmdir()


def test_the_field_page_shows_the_programs_own_words() -> None:
    """docs/agents-in-the-field.md quotes the centre's one 403 text and enrol's start messages as the code says them."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "agents-in-the-field.md").read_text(encoding="utf-8")
    assert WRONG_CODE in page
    assert "started connmon-agent.service (enabled at boot)" in page
    assert "sudo apt install ./connmon-agent_" in page and "sudo connmon agent enrol --centre" in page
    assert "--no-start" in page
