"""How the names fared at their last look-up, in ``/metrics`` (issue 22): one family, no endpoint label.

A scrape-time renderer (:class:`~monitor.exposition.scrape.ScrapeRenderer`) over the
:class:`~monitor.probes.last_good.LastGoodAddresses` book the daemon hands to the probes' context;
the probes only fill the book and never touch metrics. Sample lines::

    connmon_resolver_names{outcome="resolved"} 480
    connmon_resolver_names{outcome="last_good"} 60
    connmon_resolver_names{outcome="failed"} 0

Every outcome is there from start-up (at 0), so ``ConnmonResolverFailing``'s ratio is defined as
soon as a name has been looked up.
"""

from __future__ import annotations

from collections.abc import Mapping

from monitor.exposition.families import ShardLabels, label_pairs
from monitor.exposition.scrape import Labelled
from monitor.probes.last_good import LastGoodAddresses


class ResolverExposition:
    """Renders ``connmon_resolver_names{outcome}`` from the book of last good addresses."""

    def __init__(self, book: LastGoodAddresses) -> None:
        self._book = book

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        counts = self._book.counts()
        out = ["# HELP connmon_resolver_names DNS names of ICMP-probed sites by how their last look-up went: "
               "resolved, failed but probed at the last good address (last_good), or failed.\n"
               "# TYPE connmon_resolver_names gauge\n"]
        out.extend(f"connmon_resolver_names{shard.braces(label_pairs((('outcome', outcome.value),)))} {count}\n"
                   for outcome, count in counts.items())
        return "".join(out).encode("utf-8")
