"""The skeleton shared by dbkeel's prometheus-client collectors (extra ``dbkeel[prometheus]``).

A collector reads its sources (pool monitors, statement metrics) when the registry is
scraped: nothing is updated on the hot path for Prometheus. Sources are held weakly, so an
engine that is gone drops out of the export. A subclass only says which metric families
its sources make, in :meth:`Collector.families`.

Example::

    class PoolCollector(Collector["PoolMonitor"]):
        def families(self, monitors: list[PoolMonitor]) -> Iterator[Any]:
            ...

    PoolCollector.register(monitor)   # one PoolCollector per registry, shared
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from dbkeel.exceptions import MissingDependencyError

if TYPE_CHECKING:
    from dbkeel.monitoring.stats import Histogram

__all__ = ["Collector", "buckets", "prometheus_core"]

S = TypeVar("S")
# registry -> the collector of each class registered on it
_REGISTERED: weakref.WeakKeyDictionary[Any, dict[type, Any]] = weakref.WeakKeyDictionary()


def prometheus_core() -> Any:
    """``prometheus_client.core``; :class:`~dbkeel.MissingDependencyError` without it."""
    try:
        import prometheus_client.core
    except ImportError:
        raise MissingDependencyError(
            "Prometheus metrics", "prometheus", "prometheus_client"
        ) from None
    return prometheus_client.core


def buckets(histogram: Histogram) -> list[tuple[str, int]]:
    """*histogram*'s cumulative buckets as ``HistogramMetricFamily.add_metric`` takes them."""
    return [
        ("+Inf" if bound == float("inf") else repr(bound), count)
        for bound, count in histogram.cumulative()
    ]


class Collector(Generic[S]):
    """A prometheus-client collector over any number of sources of type ``S``."""

    def __init__(self, sources: Iterable[S] | None = None) -> None:
        self.core = prometheus_core()
        self._sources: weakref.WeakSet[S] = weakref.WeakSet(sources or ())

    @classmethod
    def register(cls, source: S, registry: Any = None) -> Self:
        """Export *source* through *registry* (default: prometheus-client's global one),
        with the one collector of this class on that registry (made on first use), so
        that several sources never clash on metric names."""
        core = prometheus_core()
        if registry is None:
            registry = core.REGISTRY
        by_class = _REGISTERED.setdefault(registry, {})
        collector = by_class.get(cls)
        if collector is None:
            collector = by_class[cls] = cls()
            registry.register(collector)
        collector.add(source)
        return collector

    def add(self, source: S) -> None:
        """Export *source* too (a second add is a no-op)."""
        self._sources.add(source)

    def describe(self) -> Iterator[Any]:
        # Names for the registry's duplicate check, without reading any source.
        return self.families([])

    def collect(self) -> Iterator[Any]:
        return self.families(list(self._sources))

    def families(self, sources: list[S]) -> Iterator[Any]:
        """The metric families of *sources* (empty ones for ``[]``)."""
        raise NotImplementedError
