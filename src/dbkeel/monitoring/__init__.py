"""Pool monitoring and observability: counts, timings, leaks, metrics, slow queries, health.

:class:`PoolMonitor` watches a pool; the exporters (:func:`register_prometheus`,
:func:`enable_otel`) and :func:`~dbkeel.monitoring.prometheus.prometheus_text` import their
optional packages only when called. ``DatabaseManager`` attaches a monitor by itself when
``DATABASE_MONITORING`` is on (the default in production)::

    from dbkeel.monitoring import register_prometheus

    async with DatabaseManager() as db:
        register_prometheus(db.monitor)
        report = await db.health()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbkeel.monitoring.health import HealthReport as HealthReport
from dbkeel.monitoring.health import check_health as check_health
from dbkeel.monitoring.options import MetricSink as MetricSink
from dbkeel.monitoring.options import MonitorOptions as MonitorOptions
from dbkeel.monitoring.pool import PoolMonitor as PoolMonitor
from dbkeel.monitoring.slow_queries import SlowQueryLog as SlowQueryLog
from dbkeel.monitoring.stats import Histogram as Histogram
from dbkeel.monitoring.stats import PoolCounters as PoolCounters
from dbkeel.monitoring.status import PoolStatus as PoolStatus

if TYPE_CHECKING:
    from dbkeel.monitoring.otel import OtelSink
    from dbkeel.monitoring.prometheus import PoolCollector

__all__ = [
    "HealthReport",
    "Histogram",
    "MetricSink",
    "MonitorOptions",
    "PoolCounters",
    "PoolMonitor",
    "PoolStatus",
    "SlowQueryLog",
    "check_health",
    "enable_otel",
    "prometheus_text",
    "register_prometheus",
]


def register_prometheus(monitor: PoolMonitor, registry: Any = None) -> PoolCollector:
    """Export *monitor* to Prometheus; see :mod:`dbkeel.monitoring.prometheus`."""
    from dbkeel.monitoring.prometheus import register_prometheus as register

    return register(monitor, registry)


def prometheus_text(*monitors: PoolMonitor) -> str:
    """See :func:`dbkeel.monitoring.prometheus.prometheus_text` (needs ``dbkeel[prometheus]``)."""
    from dbkeel.monitoring.prometheus import prometheus_text as render

    return render(*monitors)


def enable_otel(monitor: PoolMonitor, meter_provider: Any = None) -> OtelSink:
    """See :func:`dbkeel.monitoring.otel.enable_otel` (needs ``dbkeel[otel]``)."""
    from dbkeel.monitoring.otel import enable_otel as enable

    return enable(monitor, meter_provider)
