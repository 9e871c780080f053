"""What reached a lab site, counted by the kernel: iptables rules that match and go on, read back later.

"Never probed" is then the site's own count staying at 0, not the absence of a log line.
"""

from __future__ import annotations

from tests.netlab import Site


def count_arrivals(site: Site) -> None:
    """Counting rules without a target (they match and go on): every ICMP packet, every IPv4 packet."""
    site.exec("iptables", "-A", "INPUT", "-p", "icmp")
    site.exec("iptables", "-A", "INPUT")
    site.exec("ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request")


def arrivals(site: Site) -> tuple[int, int, int]:
    """(ICMP packets, all IPv4 packets, IPv6 echo requests) that reached the site so far."""
    counts = []
    for tool in ("iptables", "ip6tables"):
        lines = site.exec(tool, "-L", "INPUT", "-v", "-x", "-n").stdout.splitlines()[2:]
        counts += [int(line.split()[0]) for line in lines if line.strip()]
    assert len(counts) == 3, counts
    return counts[0], counts[1], counts[2]
