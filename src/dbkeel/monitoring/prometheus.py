"""Prometheus export of :class:`PoolMonitor` figures (extra ``dbkeel[prometheus]``).

A custom collector: nothing is updated on the hot path for Prometheus, the figures are
read from the monitors when the registry is scraped. Every series carries the labels
``app``, ``pool``, ``node`` (``primary``, ``replica-1``...) and ``address`` (the node's
``host:port``, never credentials). Series (``dbkeel_pool_`` prefix):

================================  =========  ==========================================
``connections{state}``            gauge      open connections, ``state`` idle or used
``capacity``                      gauge      the most the pool opens (size + max_overflow)
``size``                          gauge      connections kept open (pool_size)
``overflow_in_use``               gauge      connections open beyond size
``waiting``                       gauge      callers waiting for a connection
``checkout_wait_seconds``         histogram  time to obtain a connection
``checkout_timeouts_total``       counter    checkouts that gave up (PoolExhaustedError)
``invalidations_total{kind}``     counter    ``kind`` hard or soft
``cancellations_total``           counter    connections discarded by a cancelled task
``connects_total``                counter    connections opened
``connect_seconds``               histogram  time to open a connection
``leaks_total``                   counter    connections reported held too long
================================  =========  ==========================================

Example::

    from dbkeel.monitoring import register_prometheus

    register_prometheus(db.monitor)     # the default registry, served by start_http_server
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dbkeel.monitoring._collector import Collector, buckets, prometheus_core

if TYPE_CHECKING:
    from dbkeel.monitoring.pool import PoolMonitor

__all__ = ["PoolCollector", "prometheus_text", "register_prometheus"]

PREFIX = "dbkeel_pool_"


class PoolCollector(Collector["PoolMonitor"]):
    """A prometheus-client collector over any number of monitors (one registry each).

    Example::

        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry()
        registry.register(PoolCollector([monitor]))
    """

    def families(self, monitors: list[PoolMonitor]) -> Iterator[Any]:
        core = self.core
        labels = ["app", "pool", "node", "address"]
        gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
        connections = gauge(PREFIX + "connections", "Open connections by state.", labels=[
            *labels, "state"])  # fmt: skip
        capacity = gauge(PREFIX + "capacity", "Most connections the pool opens.", labels=labels)
        size = gauge(PREFIX + "size", "Connections the pool keeps open.", labels=labels)
        overflow = gauge(
            PREFIX + "overflow_in_use", "Connections open beyond the pool size.", labels=labels
        )
        waiting = gauge(PREFIX + "waiting", "Callers waiting for a connection.", labels=labels)
        wait = core.HistogramMetricFamily(
            PREFIX + "checkout_wait_seconds", "Time to obtain a connection.", labels=labels
        )
        timeouts = counter(PREFIX + "checkout_timeouts", "Checkouts that timed out.", labels=labels)
        invalidations = counter(
            PREFIX + "invalidations", "Connections invalidated.", labels=[*labels, "kind"]
        )
        cancellations = counter(
            PREFIX + "cancellations",
            "Connections discarded because their task was cancelled (not a fault).",
            labels=labels,
        )
        connects = counter(PREFIX + "connects", "Connections opened.", labels=labels)
        connect_time = core.HistogramMetricFamily(
            PREFIX + "connect_seconds", "Time to open a connection.", labels=labels
        )
        leaks = counter(PREFIX + "leaks", "Connections held past the leak threshold.",
                        labels=labels)  # fmt: skip
        for monitor in monitors:
            o = monitor.options
            key = [o.app_name, o.pool_name, o.node, o.address]
            c = monitor.counters
            try:
                status = monitor.status()
            except Exception:  # the engine is gone: export nothing for it
                continue
            used = status["checked_out"] or 0
            connections.add_metric([*key, "idle"], status["checked_in"])
            connections.add_metric([*key, "used"], used)
            if status["max"] is not None:
                capacity.add_metric(key, status["max"])
            size.add_metric(key, status["size"])
            overflow.add_metric(key, status["overflow"])
            waiting.add_metric(key, status["waiting"] or 0)
            wait.add_metric(key, buckets(c.checkout_wait), c.checkout_wait.sum)
            timeouts.add_metric(key, c.checkout_timeouts)
            invalidations.add_metric([*key, "hard"], c.hard_invalidations)
            invalidations.add_metric([*key, "soft"], c.soft_invalidations)
            cancellations.add_metric(key, c.cancellations)
            connects.add_metric(key, c.connects)
            connect_time.add_metric(key, buckets(c.connect_time), c.connect_time.sum)
            leaks.add_metric(key, c.leaks)
        yield from (connections, capacity, size, overflow, waiting, wait, timeouts)
        yield from (invalidations, cancellations, connects, connect_time, leaks)


def register_prometheus(monitor: PoolMonitor, registry: Any = None) -> PoolCollector:
    """Export *monitor* through *registry* (default: prometheus-client's global one).

    All monitors registered on one registry share one collector, so several pools (or
    apps, or nodes) never clash on metric names; their ``app``, ``pool`` and ``node``
    labels tell them apart. With replicas, register each of ``db.monitors``.
    Raises :class:`~dbkeel.MissingDependencyError` without ``dbkeel[prometheus]``.
    """
    return PoolCollector.register(monitor, registry)


def prometheus_text(*monitors: PoolMonitor) -> str:
    """The Prometheus text exposition of *monitors* alone (handy for a debug endpoint)."""
    core = prometheus_core()
    from prometheus_client import generate_latest

    registry = core.CollectorRegistry(auto_describe=True)
    registry.register(PoolCollector(list(monitors)))
    return bytes(generate_latest(registry)).decode()
