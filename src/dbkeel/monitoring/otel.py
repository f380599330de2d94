"""OpenTelemetry export of :class:`PoolMonitor` figures (extra ``dbkeel[otel]``).

Instruments follow the database-client semantic conventions for connection pools
(``db.client.connection.*``, experimental in semconv 1.26+), with the attribute
``db.client.connection.pool.name`` = ``"<app_name>/<pool_name>"`` (a replica's pool:
``"<app_name>/<pool_name>/<node>"``, so every pool's name is unique), ``dbkeel.node``
(``primary``, ``replica-1``...) and ``dbkeel.node.address`` (``host:port``, never
credentials); ``count`` also has ``db.client.connection.state`` = ``idle`` or ``used``:

=============================================  ======================  ==============
``db.client.connection.count``                 UpDownCounter (obs.)    ``{connection}``, by state
``db.client.connection.max``                   UpDownCounter (obs.)    ``{connection}``
``db.client.connection.idle.max``              UpDownCounter (obs.)    ``{connection}``
``db.client.connection.pending_requests``      UpDownCounter (obs.)    ``{request}``
``db.client.connection.timeouts``              Counter                 ``{timeout}``
``db.client.connection.create_time``           Histogram               ``s``
``db.client.connection.wait_time``             Histogram               ``s``
``db.client.connection.use_time``              Histogram               ``s``
=============================================  ======================  ==============

Example::

    from dbkeel.monitoring import enable_otel

    enable_otel(db.monitor)                    # the global MeterProvider
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dbkeel.exceptions import MissingDependencyError

if TYPE_CHECKING:
    from dbkeel.monitoring.pool import PoolMonitor

__all__ = ["OtelSink", "enable_otel"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
NODE = "dbkeel.node"
ADDRESS = "dbkeel.node.address"


def _metrics() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError:
        raise MissingDependencyError("OpenTelemetry metrics", "otel", "opentelemetry-api") from None
    return metrics


class OtelSink:
    """The instruments for one monitor; created by :func:`enable_otel`."""

    def __init__(self, monitor: PoolMonitor, meter: Any) -> None:
        metrics = _metrics()
        self.monitor = monitor
        o = monitor.options
        name = f"{o.app_name}/{o.pool_name}" + ("" if o.node == "primary" else f"/{o.node}")
        self.attributes = {POOL_NAME: name, NODE: o.node, ADDRESS: o.address}
        self._observation = metrics.Observation
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._count],
            unit="{connection}",
            description="The number of connections that are currently in state described "
            "by the state attribute.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._max],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            callbacks=[self._idle_max],
            unit="{connection}",
            description="The maximum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._pending],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        self._timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to "
            "obtain a connection from the pool.",
        )
        self._create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection.",
        )
        self._wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
        )
        self._use_time = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
        )

    # -- MetricSink: called by the monitor as things happen ------------------------------

    def checkout_wait(self, seconds: float) -> None:
        self._wait_time.record(seconds, self.attributes)

    def connect_time(self, seconds: float) -> None:
        self._create_time.record(seconds, self.attributes)

    def use_time(self, seconds: float) -> None:
        self._use_time.record(seconds, self.attributes)

    def checkout_timeout(self) -> None:
        self._timeouts.add(1, self.attributes)

    # -- observable callbacks: read when the exporter collects --------------------------

    def _count(self, options: Any) -> Iterable[Any]:
        status = self.monitor.status()
        yield self._observation(status["checked_in"], {**self.attributes, STATE: "idle"})
        yield self._observation(status["checked_out"] or 0, {**self.attributes, STATE: "used"})

    def _max(self, options: Any) -> Iterable[Any]:
        status = self.monitor.status()
        if status["max"] is not None:
            yield self._observation(status["max"], self.attributes)

    def _idle_max(self, options: Any) -> Iterable[Any]:
        yield self._observation(self.monitor.status()["size"], self.attributes)

    def _pending(self, options: Any) -> Iterable[Any]:
        yield self._observation(self.monitor.waiting, self.attributes)


def enable_otel(monitor: PoolMonitor, meter_provider: Any = None) -> OtelSink:
    """Report *monitor* through OpenTelemetry; returns the instruments' holder.

    *meter_provider* defaults to the global one (``opentelemetry.metrics``). Calling it
    again for the same monitor returns the first sink. Raises
    :class:`~dbkeel.MissingDependencyError` without ``dbkeel[otel]``.
    """
    metrics = _metrics()
    for sink in monitor.sinks:
        if isinstance(sink, OtelSink):
            return sink
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("dbkeel")
    sink = OtelSink(monitor, meter)
    monitor.sinks.append(sink)
    return sink
