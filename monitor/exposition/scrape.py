"""Scrape-time renderers: the small parts of ``/metrics`` rendered at every scrape, after the cached body.

Why handed in (issue 23): what they show belongs to other rooms (the ICMP engine's counters, the
history store's health, the site agents' liveness), and the exposition imports none of them. The
daemon builds one :class:`ScrapeRenderer` per source, each living beside what it renders
(:class:`monitor.history.exposition.StoreExposition`,
:class:`monitor.agent.centre.exposition.AgentExposition`), and hands them to
:class:`~monitor.exposition.sink.MetricsSink` at construction. The two that know nothing but
numbers and the process are here: :class:`EngineExposition` and :class:`ProcessExposition`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, cast

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from monitor.exposition.families import ShardLabels


class Labelled(Protocol):
    """An endpoint as a renderer sees it: its escaped label pairs, ready to paste (shard included)."""

    @property
    def labels(self) -> str: ...


class ScrapeRenderer(Protocol):
    """Renders a few families per scrape, labelled as the sink labels its own series."""

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        """The families' text (HELP, TYPE and samples), or b"" when there is nothing to show.

        Args:
            shard: the shard label every series carries, as ``shard.braces(pairs)``.
            endpoints: the configured endpoints by name, for series about one endpoint.
        """
        ...


class EngineExposition:
    """The ICMP engine's counters (``connmon_icmp_<name>_total``), from a name → count snapshot::

        connmon_icmp_replies_matched_total 2000
    """

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        out = []
        braces = shard.braces()
        for name, value in self._stats().items():
            metric = f"connmon_icmp_{name}_total"
            out.append(f"# HELP {metric} ICMP engine counter: {name.replace('_', ' ')}.\n"
                       f"# TYPE {metric} counter\n{metric}{braces} {value}\n")
        return "".join(out).encode("utf-8")


class _Collectable(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _LabelledRegistry:
    """prometheus-client's registry as seen through extra labels on every sample (the shard)."""

    def __init__(self, registry: _Collectable, labels: Mapping[str, str]) -> None:
        self._registry, self._labels = registry, labels

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():  # copies: some collectors hand out the same object each time
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [s._replace(labels={**s.labels, **self._labels}) for s in family.samples]
            yield labelled


class ProcessExposition:
    """prometheus-client's process and platform collectors (CPU, memory, fds): small, current per scrape.

    The shard label is given at construction: prometheus-client adds it to each sample, seen through
    a registry view.
    """

    def __init__(self, shard: ShardLabels) -> None:
        self._registry: _Collectable = _LabelledRegistry(REGISTRY, dict(shard.pairs)) if shard.pairs else REGISTRY

    def render(self, shard: ShardLabels, endpoints: Mapping[str, Labelled]) -> bytes:
        return generate_latest(cast(CollectorRegistry, self._registry))
