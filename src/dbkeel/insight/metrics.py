"""Statement count and duration per statement kind and operation, for Prometheus
(extra ``dbkeel[prometheus]``) and OpenTelemetry (extra ``dbkeel[otel]``).

Labels are bounded by construction, never raw SQL or parameters:

* ``kind``: the statement's first keyword when it is one of ``KINDS`` (``SELECT``,
  ``INSERT``, ``UPDATE``, ``DELETE``, ...), else ``OTHER``;
* ``operation``: the name the application gave ``track()`` / ``db.query_stats()``
  (a route template such as ``"GET /orders/{id}"``), ``""`` outside one. At most
  ``max_operations`` names are kept (100 by default); later ones are counted as
  ``"<other>"`` and a warning says that the names are probably raw paths.

Prometheus series (read from in-process histograms when the registry is scraped, so a
statement costs a timer and a bucket increment, not a prometheus-client call):

==========================================  =========  ================================
``dbkeel_statements_total``                 counter    statements run, ``app,kind,operation``
``dbkeel_statement_errors_total``           counter    statements that failed
``dbkeel_statement_duration_seconds``       histogram  driver round trip of a statement
==========================================  =========  ================================

OpenTelemetry: the ``db.client.operation.duration`` histogram (seconds) of the database
semantic conventions, with ``db.system.name``, ``db.operation.name`` (the kind),
``dbkeel.operation`` and ``error.type`` on failures.

Example::

    from dbkeel.insight.metrics import statement_metrics

    metrics = statement_metrics(db)      # listeners on db.engine, once per engine
    metrics.register_prometheus()        # prometheus-client's global registry
    metrics.enable_otel()                # the global MeterProvider
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dbkeel import _sql, _timer
from dbkeel.exceptions import MissingDependencyError
from dbkeel.insight.context import current_context
from dbkeel.monitoring._collector import Collector, buckets
from dbkeel.monitoring.stats import Histogram

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine, ExceptionContext, ExecutionContext
    from sqlalchemy.ext.asyncio import AsyncEngine

    from dbkeel.manager import DatabaseManager

__all__ = [
    "KINDS",
    "STATEMENT_BUCKETS",
    "StatementCollector",
    "StatementMetrics",
    "statement_kind",
    "statement_metrics",
]

logger = logging.getLogger("dbkeel.insight")

#: Statement kinds used as label values; any other first keyword is ``OTHER``.
KINDS = frozenset(
    {
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES", "CALL", "COPY",
        "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "SHOW", "PRAGMA",
        "CREATE", "ALTER", "DROP", "TRUNCATE", "LOCK", "EXPLAIN", "ANALYZE", "VACUUM",
    }
)  # fmt: skip
#: Upper bounds (seconds) of the duration buckets: sub-millisecond point reads up to the
#: statements that the slow query log reports.
STATEMENT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
OTHER_OPERATION = "<other>"
_BY_ENGINE: weakref.WeakKeyDictionary[Any, StatementMetrics] = weakref.WeakKeyDictionary()


def statement_kind(statement: str) -> str:
    """The label of *statement*: its first keyword if in ``KINDS``, else ``"OTHER"``.

    Example::

        statement_kind("  select * from t")  # "SELECT"
    """
    keyword = _sql.keyword(statement)
    return keyword if keyword in KINDS else "OTHER"


class _Series:
    """Figures of one ``(kind, operation)`` label pair."""

    __slots__ = ("duration", "errors")

    def __init__(self) -> None:
        self.duration = Histogram(STATEMENT_BUCKETS)
        self.errors = 0


class StatementMetrics:
    """Statement figures of one engine by ``(kind, operation)``; see the module docstring.

    Made by :func:`statement_metrics`, which attaches it to the engine.
    """

    def __init__(self, app_name: str, system: str, *, max_operations: int = 100) -> None:
        self.app_name = app_name
        self.system = system
        self.max_operations = max_operations
        self.series: dict[tuple[str, str], _Series] = {}
        self._operations: set[str] = set()
        self._warned = False
        self._otel: list[tuple[Any, dict[tuple[str, str, str | None], dict[str, str]]]] = []

    # -- engine events ------------------------------------------------------------------

    def attach(self, engine: Engine) -> None:
        _timer.StatementTimer.of(engine).add(self._after, error=self._error)

    def _after(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
        elapsed: float,
    ) -> None:
        self.observe(statement_kind(statement), elapsed)

    def _error(self, exception_context: ExceptionContext, elapsed: float | None) -> None:
        statement = exception_context.statement
        if elapsed is not None and statement is not None:
            error = type(exception_context.original_exception).__name__
            self.observe(statement_kind(statement), elapsed, error=error)

    # -- figures ------------------------------------------------------------------------

    def observe(self, kind: str, seconds: float, *, error: str | None = None) -> None:
        """Count one statement of *kind* in the current operation (the event hooks call it)."""
        ctx = current_context()
        operation = self._label(ctx.operation) if ctx is not None and ctx.operation else ""
        key = (kind, operation)
        series = self.series.get(key)
        if series is None:
            series = self.series.setdefault(key, _Series())
        series.duration.observe(seconds)
        if error is not None:
            series.errors += 1
        for histogram, attributes in self._otel:
            attrs_key = (kind, operation, error)
            attrs = attributes.get(attrs_key)
            if attrs is None:
                attrs = attributes.setdefault(attrs_key, self._attributes(*attrs_key))
            histogram.record(seconds, attrs)

    def _label(self, operation: str) -> str:
        if operation in self._operations:
            return operation
        if len(self._operations) < self.max_operations:
            self._operations.add(operation)
            return operation
        if not self._warned:
            self._warned = True
            logger.warning(
                "Statement metrics of %s: more than %d operation names, later ones are "
                "counted as %r (first one: %r). Name operations after route templates "
                '("GET /orders/{id}"), never raw paths with ids.',
                self.app_name,
                self.max_operations,
                OTHER_OPERATION,
                operation,
            )
        return OTHER_OPERATION

    def _attributes(self, kind: str, operation: str, error: str | None) -> dict[str, str]:
        attributes = {"db.system.name": self.system, "db.operation.name": kind}
        if operation:
            attributes["dbkeel.operation"] = operation
        if error is not None:
            attributes["error.type"] = error
        return attributes

    # -- exporters ----------------------------------------------------------------------

    def register_prometheus(self, registry: Any = None) -> StatementCollector:
        """Export these figures through *registry* (default: prometheus-client's global one).

        All statement metrics registered on one registry share one collector; series with
        the same labels (two engines of one app) are added up. Raises
        :class:`~dbkeel.MissingDependencyError` without ``dbkeel[prometheus]``.
        """
        return StatementCollector.register(self, registry)

    def enable_otel(self, meter_provider: Any = None) -> None:
        """Record each statement in the ``db.client.operation.duration`` histogram of
        *meter_provider* (default: the global one). Raises
        :class:`~dbkeel.MissingDependencyError` without ``dbkeel[otel]``."""
        try:
            from opentelemetry import metrics
        except ImportError:
            raise MissingDependencyError(
                "OpenTelemetry metrics", "otel", "opentelemetry-api"
            ) from None
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        histogram = provider.get_meter("dbkeel.insight").create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=list(STATEMENT_BUCKETS),
        )
        self._otel.append((histogram, {}))


def statement_metrics(db: DatabaseManager | AsyncEngine, *, max_operations: int = 100) -> (
    StatementMetrics
):  # fmt: skip
    """The :class:`StatementMetrics` of *db*'s engine, attached on the first call.

    *db* is an initialized :class:`~dbkeel.DatabaseManager` or an ``AsyncEngine``. Example::

        metrics = statement_metrics(db)
        metrics.register_prometheus(registry)
    """
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(db, AsyncEngine):
        engine, app_name = db, "dbkeel"
    else:
        engine, app_name = db.engine, db.settings.app_name
    sync_engine = engine.sync_engine
    metrics = _BY_ENGINE.get(sync_engine)
    if metrics is None:
        dialect = sync_engine.dialect
        # MariaDB is told apart from MySQL once connected (initialize() has connected).
        system = "mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name
        metrics = StatementMetrics(app_name, system, max_operations=max_operations)
        metrics.attach(sync_engine)
        _BY_ENGINE[sync_engine] = metrics
    return metrics


class StatementCollector(Collector["StatementMetrics"]):
    """A prometheus-client collector over any number of :class:`StatementMetrics`."""

    def families(self, all_metrics: list[StatementMetrics]) -> Iterator[Any]:
        core = self.core
        labels = ["app", "kind", "operation"]
        count = core.CounterMetricFamily(
            "dbkeel_statements", "Statements run, by kind and operation.", labels=labels
        )
        errors = core.CounterMetricFamily(
            "dbkeel_statement_errors", "Statements that failed.", labels=labels
        )
        duration = core.HistogramMetricFamily(
            "dbkeel_statement_duration_seconds",
            "Driver round trip of a statement, by kind and operation.",
            labels=labels,
        )
        merged: dict[tuple[str, str, str], tuple[Histogram, int]] = {}
        for metrics in all_metrics:
            for (kind, operation), series in list(metrics.series.items()):
                key = (metrics.app_name, kind, operation)
                total, failed = merged.get(key, (Histogram(STATEMENT_BUCKETS), 0))
                _add(total, series.duration)
                merged[key] = (total, failed + series.errors)
        for key, (histogram, failed) in sorted(merged.items()):
            labels_ = list(key)
            count.add_metric(labels_, histogram.count)
            errors.add_metric(labels_, failed)
            duration.add_metric(labels_, buckets(histogram), histogram.sum)
        yield from (count, errors, duration)


def _add(total: Histogram, other: Histogram) -> None:
    for i, n in enumerate(other.counts):
        total.counts[i] += n
    total.sum += other.sum
    total.count += other.count
