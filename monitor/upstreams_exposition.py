"""The upstream nodes in ``/metrics`` (issue 21): does each node answer, its state, and how many sites hang from it.

A scrape-time renderer (:class:`~monitor.exposition.scrape.ScrapeRenderer`) over the
:class:`~monitor.upstreams.UpstreamTree` the scheduler feeds: a few hundred nodes at most, so the
text is made at each scrape rather than cached. Sample lines::

    connmon_upstream_up{upstream="agg",kind="router"} 0
    connmon_upstream_state{upstream="agg",kind="router",state="down"} 1
    connmon_upstream_sites{upstream="agg",kind="router"} 3

``connmon_upstream_up`` appears after a node's first run; ``connmon_upstream_state`` has one series
per state for every node, exactly one at 1 (``unknown`` before the first run), like
``connmon_site_state``; ``connmon_upstream_sites`` counts the connected sites behind the node at any
depth, from start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from monitor.exposition.families import ShardLabels, label_pairs
from monitor.exposition.scrape import Labelled
from monitor.upstreams import NODE_STATES, UpstreamTree


class UpstreamExposition:
    """Renders ``connmon_upstream_up``, ``connmon_upstream_state`` and ``connmon_upstream_sites``."""

    def __init__(self, tree: UpstreamTree) -> None:
        self._tree = tree

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        tree = self._tree
        nodes = tree.nodes
        if not nodes:
            return b""
        labels = {n.name: label_pairs((("upstream", n.name), ("kind", n.kind))) for n in nodes}
        last = tree.last
        out = ["# HELP connmon_upstream_up 1 if the upstream node answered at least one echo in its last run.\n"
               "# TYPE connmon_upstream_up gauge\n"]
        out.extend(f"connmon_upstream_up{shard.braces(labels[name])} {int(result.up)}\n"
                   for name, result in last.items())
        out.append("# HELP connmon_upstream_state The upstream node's state: exactly one series per node is 1 "
                   "(down: it does not answer and no node above it is down; upstream_down: a node above it is).\n"
                   "# TYPE connmon_upstream_state gauge\n")
        for n in nodes:
            state = tree.node_state(n.name)
            base = labels[n.name]
            out.extend(f"connmon_upstream_state{shard.braces(base + ',' + label_pairs((('state', s.value),)))} "
                       f"{int(s is state)}\n" for s in NODE_STATES)
        out.append("# HELP connmon_upstream_sites Connected sites behind the upstream node, at any depth.\n"
                   "# TYPE connmon_upstream_sites gauge\n")
        out.extend(f"connmon_upstream_sites{shard.braces(labels[n.name])} {tree.sites_behind(n.name)}\n"
                   for n in nodes)
        return "".join(out).encode("utf-8")
