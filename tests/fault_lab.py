"""The "where is the fault" lab of issue 21: a centre, a chain of two routers, sites behind them.

Built on :mod:`tests.netlab`: the centre is a :class:`~tests.netlab.Lab`'s prober namespace (so
``lab.connmon_argv``, ``lab.get``, ``lab.prober_v4`` and the lab's hosts file work as elsewhere),
and every other namespace is named ``{lab.base}-...``, so ``Lab.close`` removes it too.

Topology (IPv4 addresses inside 10.77.240.0/21, which netlab's own sites, NAT LANs and host links
do not use; every router and site has an IPv6 address too, ``.v6``, inside fd77:f0::/32 to
fd77:f2::/32; the uplink checks are IPv4 only)::

    host ─(netlab host link)─ centre ──wan-isp 10.77.240.1/30── isp ──10.77.240.5/30── agg
                                │                       .2 (isp's address)      .6 (agg's address)
                                │                        │                      ├─ agg-1  10.77.242.2
                                │                        ├─ isp-1 10.77.243.2   ├─ agg-2  10.77.242.6
                                │                        └─ isp-2 10.77.243.6   └─ agg-3  10.77.242.10
                                ├──wan-bes 10.77.240.13/30── beside 10.77.240.14
                                └──wan-up  10.77.240.9/30─── uplink: gateway 10.77.240.10,
                                                                     beyond-1 10.77.241.1, beyond-2 10.77.241.2

* ``isp`` and ``agg`` forward (``net.ipv4.ip_forward=1``, ``net.ipv6.conf.all.forwarding=1``) with
  ``net.ipv4.icmp_ratelimit=0`` and ``net.ipv6.icmp.ratelimit=0``, so every TTL-limited echo gets
  its Time Exceeded, from the router's address toward the centre (:attr:`Router.v4`,
  :attr:`Router.v6`): a trace to ``agg-1`` reads isp (10.77.240.2), agg (10.77.240.6), agg-1.
* The uplink namespace holds the centre's uplink checks (``monitor.uplink``): its gateway and two
  addresses "beyond its ISP", on a branch of their own.
* Safety, as in netlab: the host and the centre have ``unreachable`` routes for the whole test
  prefix before anything exists, and no namespace has a default route: nothing leaves the machine.

Faults (each marked with an iptables comment, in iptables and ip6tables alike, so undoing one leaves
the others in place; each is idempotent):

* :meth:`FaultLab.cut_router` / :meth:`FaultLab.restore_router`: a dead router, DROP on INPUT,
  FORWARD and OUTPUT in its namespace (it answers neither echoes nor traces; a router dropping only
  INPUT and FORWARD would still send Time Exceeded).
* :meth:`FaultLab.cut_site` / :meth:`FaultLab.restore_site`: a dead site, DROP on INPUT and OUTPUT
  in its namespace; its router still answers, so its trace ends at the router.
* :meth:`FaultLab.cut_centre` / :meth:`FaultLab.restore_centre`: the centre's way out, DROP in the
  centre of everything arriving on its lab links (every site, router and uplink check); the host
  link (``/metrics``, the API) and loopback stay open.
* :meth:`FaultLab.restore_all`: every fault undone.

Use::

    with FaultLab(tag="tr").open() as fl:
        config = write_config(tmp_path, fl.config_yaml(upstreams=False))
        proc = subprocess.Popen(fl.lab.connmon_argv("run", "--config", str(config), ...), env=child_env())
        fl.cut_router("agg")      # agg-1..3 silent; the trace to them ends at fl.routers["isp"].v4
        ...
        fl.restore_router("agg")
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

from tests.netlab import Lab, Site, _tbf, sh

ROUTERS = ("isp", "agg")
"""The router namespaces, from the centre outward: ``isp`` is the parent of ``agg``."""
SITES_BEHIND: dict[str, tuple[str, ...]] = {"agg": ("agg-1", "agg-2", "agg-3"), "isp": ("isp-1", "isp-2")}
"""The sites hanging directly off each router (``isp``'s list leaves out those behind ``agg``)."""
BESIDE = "beside"
"""The site directly off the centre, behind neither router."""
SITE_NAMES: tuple[str, ...] = (*SITES_BEHIND["agg"], *SITES_BEHIND["isp"], BESIDE)
UPLINK_CHECKS: tuple[tuple[str, str], ...] = (
    ("gateway", "10.77.240.10"), ("beyond-1", "10.77.241.1"), ("beyond-2", "10.77.241.2"))
"""``(name, address)`` of the centre's uplink checks, all in the uplink namespace."""

LAB_RANGE = "10.77.240.0/21"
LAB_RANGE_V6 = "fd77::/16"  # netlab's whole IPv6 test prefix: the lab's links are fd77:f0::/32 .. fd77:f2::/32
CUT_ROUTER = "fault-lab-cut-router"
CUT_SITE = "fault-lab-cut-site"
CUT_CENTRE = "fault-lab-cut-centre"
_CENTRE_LINKS = ("wan-isp", "wan-bes", "wan-up")  # the centre's lab links (the host link is netlab's up0)


@dataclass
class Router:
    """A forwarding namespace: ``isp`` or ``agg``."""

    name: str
    ns: str
    v4: str  # its address on the interface toward the centre: the one Time Exceeded comes from
    parent: str | None  # the router toward the centre (None: linked to the centre directly)
    v6: str = ""  # the same for IPv6 (Hop Limit Exceeded comes from it)

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *args, check=check)


@dataclass
class LabSite(Site):
    """A :class:`~tests.netlab.Site` of this lab: servers, ``drop_icmp`` and friends work as in netlab.

    ``router`` is the namespace its link hangs from (a router's, or the centre's for ``beside``),
    ``router_if`` the link's end there; shaping happens there and on the site's ``eth0``.
    """

    name: str = ""
    router: str = ""  # "isp", "agg" or "" (the centre)
    router_ns: str = ""
    router_if: str = ""

    @property
    def prober_if(self) -> str:
        return self.router_if

    def shape(self, download_mbit: float, upload_mbit: float) -> None:
        """Limit the site's own link with tc tbf in both directions (see ``netlab.Site.shape``)."""
        sh("ip", "netns", "exec", self.router_ns, "tc", "qdisc", "replace", "dev", self.router_if, "root",
           *_tbf(download_mbit))
        self.exec("tc", "qdisc", "replace", "dev", "eth0", "root", *_tbf(upload_mbit))

    def unshape(self) -> None:
        sh("ip", "netns", "exec", self.router_ns, "tc", "qdisc", "del", "dev", self.router_if, "root",
           check=False)
        self.exec("tc", "qdisc", "del", "dev", "eth0", "root", check=False)


def _drop(ns: str, chain: str, comment: str, *match: str, insert: bool) -> None:
    """Insert (once) or delete a commented DROP rule in ``ns``'s filter ``chain``, for IPv4 and IPv6 alike."""
    rule = [chain, *match, "-m", "comment", "--comment", comment, "-j", "DROP"]
    for tool in ("iptables", "ip6tables"):
        present = sh("ip", "netns", "exec", ns, tool, "-C", *rule, check=False).returncode == 0
        if insert and not present:
            sh("ip", "netns", "exec", ns, tool, "-I", chain, "1", *rule[1:])
        elif not insert and present:
            sh("ip", "netns", "exec", ns, tool, "-D", *rule)


@dataclass
class FaultLab:
    """The issue-21 lab: :attr:`lab` (its prober is the centre), :attr:`routers`, :attr:`sites`.

    ``open()`` builds it and returns it; ``close()`` (or leaving a ``with`` block) removes all of it.
    """

    tag: str = ""
    lab: Lab = field(init=False)
    routers: dict[str, Router] = field(default_factory=dict)
    sites: dict[str, LabSite] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lab = Lab(tag=f"{self.tag}f")

    # ------------------------------------------------------------------ names and addresses
    @property
    def centre(self) -> str:
        """The centre's namespace (the netlab prober): connmon runs here."""
        return self.lab.prober

    @property
    def uplink_ns(self) -> str:
        return f"{self.lab.base}-up"

    def behind(self, router: str) -> list[LabSite]:
        """The sites whose path crosses ``router`` (for ``isp``: its own two and agg's three)."""
        names = SITES_BEHIND["agg"] + SITES_BEHIND["isp"] if router == "isp" else SITES_BEHIND[router]
        return [self.sites[n] for n in names]

    def addresses(self) -> dict[str, str]:
        """Every site's, router's and uplink check's IPv4 address, by name (sites as in the config)."""
        return {**{n: s.v4 for n, s in self.sites.items()}, **{n: r.v4 for n, r in self.routers.items()},
                **dict(UPLINK_CHECKS)}

    def cen(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the centre."""
        return self.lab.pr(*args, check=check)

    # ------------------------------------------------------------------ set-up
    def open(self) -> FaultLab:
        self.lab.open()  # safety routes, the centre namespace, the host link
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> FaultLab:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _ns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def _link(self, ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str, addr_b: str,
              v6: tuple[str, str] | None = None) -> None:
        """A veth pair between two namespaces, a /30 on it (and a /64 with ``v6``), both ends up."""
        sh("ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b)
        for i, (ns, ifname, addr) in enumerate(((ns_a, if_a, addr_a), (ns_b, if_b, addr_b))):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", ifname)
            if v6 is not None:
                sh("ip", "-n", ns, "addr", "add", f"{v6[i]}/64", "dev", ifname, "nodad")
            sh("ip", "-n", ns, "link", "set", ifname, "up")

    def _router(self, name: str, parent: str | None, v4: str, v6: str) -> Router:
        router = Router(name, f"{self.lab.base}-{name}", v4, parent, v6)
        self._ns(router.ns)
        router.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        router.exec("sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
        router.exec("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        router.exec("sysctl", "-qw", "net.ipv6.icmp.ratelimit=0")
        self.routers[name] = router
        return router

    def _site(self, name: str, index: int, router: str, router_ns: str, router_if: str, net: str,
              net6: str) -> LabSite:
        """A site namespace on ``net``.0/30 (router end ``.1``-style first address, site the second) and on
        ``net6``::/64 (router ``::1``, site ``::2``)."""
        prefix, last = net.rsplit(".", 1)
        gw, v4 = f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}"
        site = LabSite(self.lab, 200 + index, f"{self.lab.base}-f{index}", v4, f"{net6}::2",
                       name=name, router=router, router_ns=router_ns, router_if=router_if)
        self._ns(site.ns)
        self._link(router_ns, router_if, gw, site.ns, "eth0", v4, (f"{net6}::1", f"{net6}::2"))
        site.exec("ip", "route", "add", LAB_RANGE, "via", gw)
        site.exec("ip", "-6", "route", "add", LAB_RANGE_V6, "via", f"{net6}::1")
        self.sites[name] = site
        self.lab.hosts[f"{name}.lab.test"] = v4
        return site

    def _build(self) -> None:
        centre, base = self.centre, self.lab.base
        isp = self._router("isp", None, "10.77.240.2", "fd77:f0:1::2")
        agg = self._router("agg", "isp", "10.77.240.6", "fd77:f0:2::2")
        self._link(centre, "wan-isp", "10.77.240.1", isp.ns, "up0", isp.v4, ("fd77:f0:1::1", isp.v6))
        self._link(isp.ns, "d-agg", "10.77.240.5", agg.ns, "up0", agg.v4, ("fd77:f0:2::1", agg.v6))
        for dest in ("10.77.240.4/30", "10.77.242.0/24", "10.77.243.0/24"):
            self.cen("ip", "route", "add", dest, "via", isp.v4)
        for dest in ("fd77:f0:2::/64", "fd77:f1::/32", "fd77:f2::/32"):
            self.cen("ip", "-6", "route", "add", dest, "via", isp.v6)
        isp.exec("ip", "route", "add", LAB_RANGE, "via", "10.77.240.1")
        isp.exec("ip", "route", "add", "10.77.242.0/24", "via", agg.v4)
        isp.exec("ip", "-6", "route", "add", LAB_RANGE_V6, "via", "fd77:f0:1::1")
        isp.exec("ip", "-6", "route", "add", "fd77:f1::/32", "via", agg.v6)
        agg.exec("ip", "route", "add", LAB_RANGE, "via", "10.77.240.5")
        agg.exec("ip", "-6", "route", "add", LAB_RANGE_V6, "via", "fd77:f0:2::1")
        # The uplink checks' namespace: its gateway on the link, two addresses "beyond" on lo.
        self._ns(self.uplink_ns)
        self._link(centre, "wan-up", "10.77.240.9", self.uplink_ns, "eth0", "10.77.240.10")
        for name, address in UPLINK_CHECKS[1:]:
            sh("ip", "-n", self.uplink_ns, "addr", "add", f"{address}/32", "dev", "lo")
            self.lab.hosts[f"{name}.lab.test"] = address
        sh("ip", "-n", self.uplink_ns, "route", "add", LAB_RANGE, "via", "10.77.240.9")
        self.cen("ip", "route", "add", "10.77.241.0/24", "via", "10.77.240.10")
        index = 0
        for router, net, net6 in (("agg", "10.77.242", "fd77:f1"), ("isp", "10.77.243", "fd77:f2")):
            ns = self.routers[router].ns
            for k, name in enumerate(SITES_BEHIND[router]):
                index += 1
                self._site(name, index, router, ns, f"d{k + 1}", f"{net}.{4 * k}", f"{net6}:{k + 1}")
        self._site(BESIDE, index + 1, "", centre, "wan-bes", "10.77.240.12", "fd77:f0:4")
        for name, router in self.routers.items():
            self.lab.hosts[f"{name}.lab.test"] = router.v4
        self.lab._write_hosts()
        assert base  # every namespace above is "{base}-...": Lab.close removes them

    def close(self) -> None:
        """Stop the sites' servers and remove every namespace, link and file of the lab."""
        for site in self.sites.values():
            site.stop_servers()
        self.sites.clear()
        self.routers.clear()
        self.lab.close()

    # ------------------------------------------------------------------ faults
    def cut_router(self, name: str) -> None:
        """Make router ``name`` dead: DROP on INPUT, FORWARD and OUTPUT (no echo, no trace answer)."""
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            _drop(self.routers[name].ns, chain, CUT_ROUTER, insert=True)

    def restore_router(self, name: str) -> None:
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            _drop(self.routers[name].ns, chain, CUT_ROUTER, insert=False)

    def cut_site(self, name: str) -> None:
        """Make site ``name`` dead: DROP on INPUT and OUTPUT in it. Its router still answers traces."""
        for chain in ("INPUT", "OUTPUT"):
            _drop(self.sites[name].ns, chain, CUT_SITE, insert=True)

    def restore_site(self, name: str) -> None:
        for chain in ("INPUT", "OUTPUT"):
            _drop(self.sites[name].ns, chain, CUT_SITE, insert=False)

    def cut_centre(self) -> None:
        """Cut the centre's way out: nothing arriving on its lab links (sites, routers, uplink checks)
        reaches it. Probes leave and time out, as behind a dead uplink; the host link stays open."""
        for ifname in _CENTRE_LINKS:
            _drop(self.centre, "INPUT", CUT_CENTRE, "-i", ifname, insert=True)
            _drop(self.centre, "FORWARD", CUT_CENTRE, "-i", ifname, insert=True)

    def restore_centre(self) -> None:
        for ifname in _CENTRE_LINKS:
            _drop(self.centre, "INPUT", CUT_CENTRE, "-i", ifname, insert=False)
            _drop(self.centre, "FORWARD", CUT_CENTRE, "-i", ifname, insert=False)

    def restore_all(self) -> None:
        """Undo every fault this lab can make."""
        self.restore_centre()
        for name in self.routers:
            self.restore_router(name)
        for name in self.sites:
            self.restore_site(name)

    @contextlib.contextmanager
    def router_cut(self, name: str) -> Iterator[None]:
        """``with fl.router_cut("agg"):`` the router is dead inside the block, restored after it."""
        self.cut_router(name)
        try:
            yield
        finally:
            self.restore_router(name)

    # ------------------------------------------------------------------ config
    def config_yaml(self, *, upstreams: bool = True, uplink: bool = True,
                    icmp: str = "{interval: 2s, count: 3, spacing: 100ms, timeout: 500ms}",
                    monitor_extra: str = "") -> str:
        """A site config for this lab: three groups (``behind-agg``, ``behind-isp``, ``beside``).

        Args:
            upstreams: declare ``isp`` and ``agg`` as upstream nodes (``upstreams:`` and the groups'
                ``upstream:``); False leaves the topology to be learned (``ConnmonCommonFault``).
            uplink: name the uplink checks in ``monitor.uplink``.
            icmp: the ``defaults.icmp`` mapping, as YAML flow text.
            monitor_extra: more keys of the ``monitor:`` block, as YAML lines indented by 2 spaces
                (e.g. ``"  traces_per_minute: 10\\n"``).
        """
        lines = ["defaults:", "  target_mbps: 4", f"  icmp: {icmp}"]
        if uplink or monitor_extra:
            lines.append("monitor:")
            if uplink:
                lines.append("  uplink:")
                lines += [f"    - {{name: {n}, host: {a}}}" for n, a in UPLINK_CHECKS]
            if monitor_extra:
                lines.append(monitor_extra.rstrip("\n"))
        if upstreams:
            lines.append("upstreams:")
            for name, router in self.routers.items():
                parent = f", upstream: {router.parent}" if router.parent else ""
                lines.append(f"  - {{name: {name}, host: {router.v4}, kind: router{parent}}}")
        lines.append("groups:")
        for group, router, names in (("behind-agg", "agg", SITES_BEHIND["agg"]),
                                     ("behind-isp", "isp", SITES_BEHIND["isp"]), ("beside", "", (BESIDE,))):
            lines += [f"  - name: {group}", "    kind: school", "    district: Lab"]
            if upstreams and router:
                lines.append(f"    upstream: {router}")
            lines.append("    endpoints:")
            lines += [f"      - {{name: {n}, host: {self.sites[n].v4}}}" for n in names]
        return "\n".join(lines) + "\n"
