"""A small network lab for tests: a prober namespace and site namespaces joined by veth pairs.

Layout (one lab per test module; names carry the pytest process id so labs never collide)::

    host ──veth 10.77.255.x/30── prober ns ──veth 10.77.N.0/30── site ns N   (N = 1..250)
                                  (runs connmon)                 fd77:0:N::/64 too

Safety first (the network rule): before any site exists, ``unreachable`` routes for the whole
test prefixes go into the host and the prober namespace, and the prober has no default route,
so a probe to a site that failed to come up dies locally instead of leaving the machine. Name
look-ups inside the prober use the lab's own ``hosts`` file and a ``resolv.conf`` pointing at
127.0.0.1 inside the prober, where nothing listens: a name meant to fail fails locally.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

TEST_PREFIX_V4 = "10.77.0.0/16"
TEST_PREFIX_V6 = "fd77::/16"

HTTP_SITE = Path(__file__).resolve().parent / "http_site.py"

# tbf shapes what the qdisc sees: whole Ethernet frames (14 B header, no FCS). A full-size IPv4 TCP
# segment with timestamps is 1514 B on the wire for 1448 B of payload, so ``shape`` raises the
# tbf rate by this factor to make the *payload* rate (what iperf3 and any client report) equal
# the nominal one. IPv6 has 20 B more headers: its goodput comes out about 1.4% under nominal.
TCP_V4_WIRE_PER_PAYLOAD = 1514 / 1448


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), returning its output; raise with stderr on failure."""
    proc = subprocess.run(args, capture_output=True, text=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def can_make_namespaces() -> tuple[bool, str]:
    """Whether this process can build the lab (root, ip, iptables); the reason when not."""
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces"
    for tool in ("ip", "iptables", "setpriv"):
        if shutil.which(tool) is None:
            return False, f"needs the '{tool}' command"
    return True, ""


def can_measure_throughput() -> tuple[bool, str]:
    """Whether the throughput tests can run here (tc with tbf, the iperf3 binary); the reason when not."""
    ok, reason = can_make_namespaces()
    if not ok:
        return ok, reason
    for tool in ("tc", "iperf3", "ss"):
        if shutil.which(tool) is None:
            return False, f"needs the '{tool}' command"
    return True, ""


def _died(proc: subprocess.Popen[bytes], log: IO[bytes], what: str) -> RuntimeError:
    log.seek(0)
    return RuntimeError(f"{what} exited {proc.returncode}: {log.read().decode(errors='replace').strip()}")


def _wait_listening(ns: str, port: int, proc: subprocess.Popen[bytes], log: IO[bytes], what: str,
                    timeout: float = 10.0) -> None:
    """Return once something listens on TCP ``port`` in ``ns``; raise with the server's stderr if it died.

    Polls ``ss`` in the namespace rather than connecting: a probe connection would be a client
    of its own (iperf3 would log it, a silent server would keep it) and could skew a test.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise _died(proc, log, what)
        out = sh("ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:g}s")


def _tbf(mbit: float, burst: int = 16 * 1024, latency_ms: int = 100,
         factor: float = TCP_V4_WIRE_PER_PAYLOAD) -> list[str]:
    """tc arguments (after ``root``) for a tbf whose IPv4 TCP payload rate is ``mbit`` Mbit/s.

    Measured with iperf3 (10 s, -O 1) at 1 to 10 Mbit/s, receiver side within about +-2%:

    * rate: nominal times ``TCP_V4_WIRE_PER_PAYLOAD``; without it every figure is 3.5-4.5% low.
    * burst 16 KiB: smaller than a GSO/TSO super-packet (up to 64 KiB on a veth, and there is no
      ethtool here to turn offloads off), so tbf splits those into MTU segments itself and
      queues and drops per segment. A 64 KiB burst lets whole super-packets through instead: a
      queue holds only one or two of them, a drop loses 44 segments at once, and retransmits
      rose twentyfold with rates up to 2.4% high. 4 KiB was no better than 16 KiB. The burst also
      bounds the overshoot after an idle gap: 16 KiB is 65 ms at 2 Mbit/s, inside any omit.
    * latency 100 ms (the queue limit is rate x latency + burst): long enough that TCP keeps the
      queue busy (50 ms gave +2.6% at 10 Mbit/s in one run, from bursty losses), short enough
      that ping RTTs during a test stay bounded. 400 ms added nothing but retransmits at 2 Mbit/s.
    """
    rate = round(mbit * 1_000_000 * factor)
    return ["tbf", "rate", f"{rate}bit", "burst", str(burst), "latency", f"{latency_ms}ms"]


# Accepts every connection and keeps it open without reading or writing: the client's own
# timeout is the only way out. Used for the "server that never speaks" fault.
_SILENT_SERVER = """
import socket, sys, time
server = socket.create_server(("", int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
held = []
while True:
    held.append(server.accept()[0])
"""


@dataclass
class Site:
    """One test host: its namespace and addresses."""

    lab: Lab
    index: int
    ns: str
    v4: str
    v6: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    _logs: dict[int, IO[bytes]] = field(default_factory=dict, repr=False)  # stderr of procs, by pid

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check)

    @property
    def prober_if(self) -> str:
        """This site's veth end in the prober namespace (its ``eth0`` is the other end)."""
        return f"s{self.index}"

    # ------------------------------------------------------------------ shaping
    def shape(self, download_mbit: float, upload_mbit: float) -> None:
        """Limit the link with tc tbf in both directions, named from the site's point of view.

        *download* (traffic to the site) is shaped on the egress of the prober's ``sN``,
        *upload* (traffic from the site) on the egress of the site's ``eth0``: each direction at
        its sender, where tbf's backlog pushes back on the sending TCP socket instead of dropping
        at an ingress policer. Replaces any shaping already in place. See ``_tbf`` for the numbers.
        """
        self.lab.pr("tc", "qdisc", "replace", "dev", self.prober_if, "root", *_tbf(download_mbit))
        self.exec("tc", "qdisc", "replace", "dev", "eth0", "root", *_tbf(upload_mbit))

    def unshape(self) -> None:
        """Back to the veth's own unlimited rate in both directions."""
        self.lab.pr("tc", "qdisc", "del", "dev", self.prober_if, "root", check=False)
        self.exec("tc", "qdisc", "del", "dev", "eth0", "root", check=False)

    # ------------------------------------------------------------------ servers
    def _spawn(self, argv: list[str], port: int, what: str, ns: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in this site's namespace (or ``ns``), tracked so ``stop_servers`` ends it."""
        log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process; read on failure
        # stdout to /dev/null: iperf3 -s prints every interval, and an unread pipe would stall it.
        proc = subprocess.Popen(["ip", "netns", "exec", ns or self.ns, *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log, env=child_env())
        self.procs.append(proc)
        self._logs[proc.pid] = log
        if port:
            _wait_listening(self.ns, port, proc, log, what)
        return proc

    def start_iperf3(self, port: int = 5201) -> subprocess.Popen[bytes]:
        """A stock, persistent ``iperf3 -s`` in the site (serves one test at a time, then the next)."""
        return self._spawn(["iperf3", "-s", "-p", str(port)], port, "iperf3 -s")

    def start_http(self, port: int = 8080) -> subprocess.Popen[bytes]:
        """``tests/http_site.py`` (aiohttp) in the site: /blob, /upload, /status/CODE, /hang."""
        return self._spawn([sys.executable, str(HTTP_SITE), "--port", str(port)], port, "http_site.py")

    def start_silent(self, port: int) -> subprocess.Popen[bytes]:
        """A server that accepts every TCP connection (IPv4 and IPv6) and never sends or reads a byte."""
        return self._spawn([sys.executable, "-c", _SILENT_SERVER, str(port)], port, "silent server")

    def make_iperf3_busy(self, port: int = 5201, seconds: int = 60, bitrate: str = "100K") -> subprocess.Popen[bytes]:
        """Occupy this site's iperf3 server with a long test from the prober; return that client.

        Any other client then gets iperf3's "the server is busy running a test". The occupying
        client sends only ``bitrate`` so it holds the server without eating the shaped link.
        Returns once the server-side test is running (its data connection is established).
        """
        proc = self._spawn(["iperf3", "-c", self.v4, "-p", str(port), "-t", str(seconds), "-b", bitrate],
                           0, "busy iperf3 client", ns=self.lab.prober)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise _died(proc, self._logs[proc.pid], "busy iperf3 client")
            out = self.exec("ss", "-Htn", "state", "established", f"sport = :{port}", check=False).stdout
            if len(out.strip().splitlines()) >= 2:  # control connection + data stream
                time.sleep(0.2)  # the server starts its test right after the data stream connects
                return proc
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"iperf3 on {self.v4}:{port} did not start the occupying test within 10s")

    def stop_servers(self) -> None:
        """Kill every process this site started (servers and occupying clients) and reap them."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            self._logs.pop(proc.pid).close()
        self.procs.clear()

    def drop_icmp(self, probability: float | None = None) -> None:
        """Drop incoming echo requests (all, or at random with ``probability``) in both families."""
        stat = [] if probability is None else ["-m", "statistic", "--mode", "random",
                                               "--probability", str(probability)]
        self.exec("iptables", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", *stat, "-j", "DROP")
        self.exec("ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", *stat,
                  "-j", "DROP", check=False)

    def serve_prefix(self, prefix: str) -> list[str]:
        """Make this site answer for every address of ``prefix`` (inside the test prefix), routed from
        the prober through this site's link: thousands of cheap addresses (``local`` route on lo).

        Returns the usable addresses (network and broadcast addresses left out).
        """
        network = ipaddress.ip_network(prefix)
        if not network.subnet_of(ipaddress.ip_network(TEST_PREFIX_V4)):  # type: ignore[arg-type]
            raise ValueError(f"{prefix} is outside the lab's {TEST_PREFIX_V4}")
        if any(ipaddress.ip_network(f"10.77.{site.index}.0/30").overlaps(network) for site in self.lab.sites):
            raise ValueError(f"{prefix} overlaps a site link")
        self.exec("ip", "route", "add", "local", prefix, "dev", "lo")
        self.lab.pr("ip", "route", "add", prefix, "via", self.v4)
        return [str(a) for a in network.hosts()]

    def drop_echoes_to(self, addresses: list[str]) -> None:
        """Drop echo requests to exactly these addresses (one iptables rule each, loaded at once)."""
        rules = [f"-A INPUT -p icmp --icmp-type echo-request -d {a}/32 -j DROP" for a in addresses]
        self.exec_input("iptables-restore", "--noflush", text="*filter\n" + "\n".join(rules) + "\nCOMMIT\n")

    def exec_input(self, *args: str, text: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, input=text)

    def dropped_echoes(self) -> int:
        """Packets the IPv4 DROP rules of this site have dropped so far (the kernel's own count)."""
        out = self.exec("iptables", "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines()
        return sum(int(line.split()[0]) for line in out[2:] if "DROP" in line)


@dataclass
class NattedSite:
    """A site behind carrier-grade NAT (issue 10): its own namespace on a private LAN behind a router.

    The router is an ordinary lab site (so ``router.shape`` shapes the path and ``router.exec``
    runs iptables there) that forwards and MASQUERADEs what the site sends towards the prober.
    Nothing routes from the prober to the site's LAN: the lab's ``unreachable`` route covers it,
    so the centre cannot ping the site or open a connection to it, exactly as with CG-NAT. The
    site's default route ends at the router, which has none: nothing leaves the lab.
    """

    router: Site
    ns: str
    v4: str  # the site's private address
    gateway: str  # the router's address on the site's LAN

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check)

    def spawn(self, argv: list[str], env: dict[str, str] | None = None,
              stdout: int | IO[bytes] = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the site (stderr kept, see :meth:`stderr_of`); killed when the lab closes."""
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the router's stop_servers
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=log, env=env or child_env())
        self.router.procs.append(proc)
        self.router._logs[proc.pid] = log
        return proc

    def stderr_of(self, proc: subprocess.Popen[bytes]) -> str:
        """What a process started with :meth:`spawn` wrote to stderr so far."""
        log = self.router._logs[proc.pid]
        log.seek(0)
        return log.read().decode("utf-8", errors="replace")

    def cut(self) -> None:
        """Cut the uplink at the router: nothing passes either way until :meth:`restore`."""
        self.router.exec("iptables", "-I", "FORWARD", "1", "-m", "comment", "--comment", "cut", "-j", "DROP")

    def restore(self) -> None:
        self.router.exec("iptables", "-D", "FORWARD", "-m", "comment", "--comment", "cut", "-j", "DROP")

    def drop_echoes(self, probability: float) -> None:
        """Drop the site's echo requests on the way out, at random with ``probability`` (the path's loss)."""
        echo = ("-p", "icmp", "--icmp-type", "echo-request")
        self.router.exec("iptables", "-A", "FORWARD", *echo, "-m", "comment", "--comment", "echo-count")
        self.router.exec("iptables", "-A", "FORWARD", *echo, "-m", "statistic", "--mode", "random",
                         "--probability", str(probability), "-j", "DROP")

    def forwarded_echoes(self) -> int:
        """Echo requests that reached the router's FORWARD chain (dropped or not), counted by the kernel
        (a rule without a target, ahead of the drop; only once :meth:`drop_echoes` has put it there)."""
        out = self.router.exec("iptables", "-L", "FORWARD", "-v", "-x", "-n").stdout.splitlines()
        return sum(int(line.split()[0]) for line in out[2:] if "echo-count" in line)


@dataclass
class Lab:
    """Prober namespace plus sites; ``close`` removes everything it made."""

    tag: str
    sites: list[Site] = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = f"cm{os.getpid() % 100000}{self.tag}"
        self.prober = f"{self.base}-pr"
        self.etc = Path("/etc/netns") / self.prober
        self.host_if = f"{self.base}h"[:15]
        self.host_v4 = self.prober_v4 = ""

    # ------------------------------------------------------------------ set-up
    def open(self) -> Lab:
        # Safety routes before anything else: a missing site must be unreachable, not routed away.
        sh("ip", "route", "replace", "unreachable", TEST_PREFIX_V4)
        sh("ip", "-6", "route", "replace", "unreachable", TEST_PREFIX_V6, check=False)
        self.close()  # leftovers of a crashed run with the same pid
        sh("ip", "netns", "add", self.prober)
        self.pr("ip", "link", "set", "lo", "up")
        self.pr("ip", "route", "add", "unreachable", TEST_PREFIX_V4)
        self.pr("ip", "-6", "route", "add", "unreachable", TEST_PREFIX_V6, check=False)
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        # Only the lab's hosts file and its dead-end resolver: no nss module (systemd-resolved,
        # mdns) that could carry a look-up out of the namespace through a unix socket.
        (self.etc / "nsswitch.conf").write_text("hosts: files dns\n")
        self._write_hosts()
        # The host end needs a /30 no other lab (another pytest run, a helper) is using right now.
        with open("/run/connmon-test-lab.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            in_use = sh("ip", "-o", "-4", "addr", "show").stdout
            slot = next(k for k in range(1, 64) if f" 10.77.255.{4 * k + 1}/" not in in_use)
            self.host_v4, self.prober_v4 = f"10.77.255.{4 * slot + 1}", f"10.77.255.{4 * slot + 2}"
            sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "up0", "netns", self.prober)
            sh("ip", "addr", "add", f"{self.host_v4}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        self.pr("ip", "addr", "add", f"{self.prober_v4}/30", "dev", "up0")
        self.pr("ip", "link", "set", "up0", "up")
        return self

    def add_site(self, name: str) -> Site:
        index = len(self.sites) + 1
        ns = f"{self.base}-s{index}"
        site = Site(self, index, ns, f"10.77.{index}.2", f"fd77:0:{index}::2")
        sh("ip", "netns", "add", ns)
        site.exec("ip", "link", "set", "lo", "up")
        sh("ip", "-n", self.prober, "link", "add", f"s{index}", "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        self.pr("ip", "addr", "add", f"10.77.{index}.1/30", "dev", f"s{index}")
        self.pr("ip", "addr", "add", f"fd77:0:{index}::1/64", "dev", f"s{index}", "nodad")
        self.pr("ip", "link", "set", f"s{index}", "up")
        site.exec("ip", "addr", "add", f"{site.v4}/30", "dev", "eth0")
        site.exec("ip", "addr", "add", f"{site.v6}/64", "dev", "eth0", "nodad")
        site.exec("ip", "link", "set", "eth0", "up")
        self.sites.append(site)
        self.hosts[f"{name}.lab.test"] = site.v4
        self._write_hosts()
        return site

    def add_natted_site(self, name: str) -> NattedSite:
        """A site behind a MASQUERADE router (see :class:`NattedSite`); the router is a site of its own."""
        router = self.add_site(f"{name}-router")
        index = router.index
        lan = f"10.77.{128 + index}"
        ns = f"{self.base}-n{index}"
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "-n", router.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", ns)
        router.exec("ip", "addr", "add", f"{lan}.1/30", "dev", "lan0")
        router.exec("ip", "link", "set", "lan0", "up")
        router.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        router.exec("ip", "route", "add", f"{self.prober_v4}/32", "via", f"10.77.{index}.1")
        router.exec("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{lan}.2/30", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", f"{lan}.1")
        return NattedSite(router, ns, f"{lan}.2", f"{lan}.1")

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{address} {name}" for name, address in self.hosts.items()]
        (self.etc / "hosts").write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        # Processes first: a namespace with a live process in it outlives ``ip netns del``.
        for site in self.sites:
            site.stop_servers()
        for ns in sh("ip", "netns", "list").stdout.split("\n"):
            name = ns.split(" ")[0]
            if name.startswith(f"{self.base}-"):
                if name != self.prober:
                    # Site servers not tracked above (a crashed run's, or started by hand): nothing in
                    # a site outlives its lab. The prober's processes are the tests' own business.
                    for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), 9)
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", self.host_if, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)
        self.sites.clear()

    # ------------------------------------------------------------------ use
    def pr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the prober namespace."""
        return sh("ip", "netns", "exec", self.prober, *args, check=check)

    def connmon_argv(self, *args: str, no_net_raw: bool = False) -> list[str]:
        """argv that runs ``python -m monitor ARGS`` inside the prober.

        ``no_net_raw`` removes CAP_NET_RAW from the bounding set, so even root cannot open raw
        sockets: the process is left with unprivileged ICMP, if the namespace's
        ``net.ipv4.ping_group_range`` allows it, or nothing.
        """
        drop = ["setpriv", "--bounding-set=-net_raw"] if no_net_raw else []
        return ["ip", "netns", "exec", self.prober, *drop, sys.executable, "-m", "monitor", *args]

    def connmon(self, *args: str, no_net_raw: bool = False,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.connmon_argv(*args, no_net_raw=no_net_raw), capture_output=True,
                              text=True, timeout=timeout, check=False, env=child_env())

    def allow_unprivileged_icmp(self, allow: bool) -> None:
        """Set the prober namespace's own net.ipv4.ping_group_range (it is per namespace)."""
        self.pr("sysctl", "-qw", f"net.ipv4.ping_group_range={'0 2147483647' if allow else '1 0'}")

    def probe_json(self, config: Path, *extra: str, no_net_raw: bool = False) -> tuple[int, dict[str, dict]]:
        """Run ``connmon probe --json`` in the prober; return exit code and results by endpoint."""
        proc = self.connmon("probe", "--config", str(config), "--json", *extra, no_net_raw=no_net_raw)
        if proc.returncode not in (0, 1):
            raise AssertionError(f"connmon probe exited {proc.returncode}: {proc.stderr}")
        results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        return proc.returncode, {r["endpoint"]: r for r in results}

    def get(self, port: int, path: str) -> tuple[int, str]:
        """HTTP GET from the host to a server in the prober namespace (no proxies)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{self.prober_v4}:{port}{path}", timeout=10) as response:
                return response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8")


def child_env() -> dict[str, str]:
    """The environment of a connmon child: this checkout's code, and a history of its own.

    Every daemon gets a fresh, empty state dir unless its test passes ``--state-dir``: the history
    restores figures at start-up, and one test's sites must not appear in another's metrics.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    env["CONNMON_STATE_DIR"] = tempfile.mkdtemp(prefix="connmon-test-state-")
    return env

