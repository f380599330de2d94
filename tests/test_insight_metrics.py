"""Statement count and duration metrics by kind and operation, scraped from a Prometheus
registry and read from an OpenTelemetry in-memory reader, on PostgreSQL, SQLite and MariaDB."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dbkeel import DatabaseManager
from dbkeel.insight import track
from dbkeel.insight.metrics import OTHER_OPERATION, statement_kind, statement_metrics
from tests.conftest import make_settings

SECRET = "s3cret-param-value"
ROUTE = "GET /orders/{id}"


async def _run_requests(db: DatabaseManager) -> None:
    with track(ROUTE):
        async with db.get_session() as session:
            for _ in range(3):
                await session.execute(text("SELECT :v"), {"v": SECRET})
    with pytest.raises(DBAPIError), track(ROUTE):
        async with db.get_session() as session:
            await session.execute(text("SELECT * FROM insight_metrics_no_such_table"))
    async with db.get_session() as session:  # no operation named
        await session.execute(text("SELECT 1"))


async def test_prometheus_scrape_by_kind_and_operation(db: DatabaseManager) -> None:
    registry = CollectorRegistry()
    statement_metrics(db).register_prometheus(registry)
    await _run_requests(db)

    scraped = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    assert {"dbkeel_statements", "dbkeel_statement_errors"} <= set(families)
    assert "dbkeel_statement_duration_seconds" in families
    labels = {"app": "dbkeel-tests", "kind": "SELECT", "operation": ROUTE}
    # three SELECTs and the failing one
    assert registry.get_sample_value("dbkeel_statements_total", labels) == 4
    assert registry.get_sample_value("dbkeel_statement_errors_total", labels) == 1
    assert registry.get_sample_value("dbkeel_statement_duration_seconds_count", labels) == 4
    assert registry.get_sample_value("dbkeel_statement_duration_seconds_sum", labels) > 0
    unnamed = {**labels, "operation": ""}
    assert registry.get_sample_value("dbkeel_statements_total", unnamed) == 1
    # Bounded cardinality: no SQL text and no parameter in any label.
    assert SECRET not in scraped
    assert "insight_metrics_no_such_table" not in scraped
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= {"app", "kind", "operation", "le"}


async def test_metrics_are_attached_once_per_engine(db: DatabaseManager) -> None:
    first = statement_metrics(db)
    assert statement_metrics(db) is first
    assert statement_metrics(db.engine) is first
    registry = CollectorRegistry()
    first.register_prometheus(registry)
    first.register_prometheus(registry)  # a second registration is a no-op
    with track("job"):
        async with db.get_session() as session:
            await session.execute(text("SELECT 1"))
    sample = {"app": "dbkeel-tests", "kind": "SELECT", "operation": "job"}
    assert registry.get_sample_value("dbkeel_statements_total", sample) == 1


async def test_operation_names_are_capped(
    db: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = statement_metrics(db, max_operations=3)
    with caplog.at_level(logging.WARNING, logger="dbkeel.insight"):
        for i in range(6):
            with track(f"GET /orders/{i}"):  # raw paths: the mistake the cap guards against
                async with db.get_session() as session:
                    await session.execute(text("SELECT 1"))
    operations = {operation for _, operation in metrics.series}
    assert operations == {"GET /orders/0", "GET /orders/1", "GET /orders/2", OTHER_OPERATION}
    assert metrics.series[("SELECT", OTHER_OPERATION)].duration.count == 3
    warnings = [r for r in caplog.records if "operation names" in r.getMessage()]
    assert len(warnings) == 1
    assert "route templates" in warnings[0].getMessage()


async def test_otel_histogram_follows_the_semantic_conventions(
    db: DatabaseManager, backend: str
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    statement_metrics(db).enable_otel(provider)
    await _run_requests(db)

    data = reader.get_metrics_data()
    assert data is not None
    points: list[HistogramDataPoint] = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "db.client.operation.duration"
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    ]
    by_attributes = {tuple(sorted((p.attributes or {}).items())): p for p in points}
    system = {"postgresql": "postgresql", "sqlite": "sqlite", "mariadb": "mariadb"}[backend]
    ok = by_attributes[
        (
            ("db.operation.name", "SELECT"),
            ("db.system.name", system),
            ("dbkeel.operation", ROUTE),
        )
    ]
    assert ok.count == 3
    assert ok.sum > 0
    failed = [p for p in points if (p.attributes or {}).get("error.type")]
    assert len(failed) == 1
    assert failed[0].count == 1
    assert SECRET not in str([p.attributes for p in points])
    provider.shutdown()


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("SELECT 1", "SELECT"),
        ("  \n select * from t", "SELECT"),
        ("/* hint */ UPDATE t SET a = 1", "UPDATE"),
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("delete from t", "DELETE"),
        ("SAVEPOINT sa_savepoint_1", "SAVEPOINT"),
        ("GRANT ALL ON t TO bob", "OTHER"),
        ("'; DROP TABLE users", "OTHER"),
        ("", "OTHER"),
    ],
)
def test_statement_kind_is_a_fixed_set(statement: str, kind: str) -> None:
    assert statement_kind(statement) == kind


async def test_statement_features_share_one_timing(caplog: pytest.LogCaptureFixture) -> None:
    """Stats, metrics, spans and the slow query log on one engine: one pair of cursor
    listeners reads the clock, and every feature sees the same duration."""
    settings = make_settings(
        "sqlite+aiosqlite://",
        monitoring=True,
        slow_query_threshold=1e-9,
        query_spans=True,
        app_name="dbkeel-timer",
    )
    caplog.set_level(logging.WARNING, "dbkeel.monitoring.slow_queries")
    async with DatabaseManager(settings) as db:
        registry = CollectorRegistry()
        statement_metrics(db).register_prometheus(registry)
        sync_engine = db.engine.sync_engine
        assert len(sync_engine.dispatch.before_cursor_execute) == 1
        assert len(sync_engine.dispatch.after_cursor_execute) == 1
        caplog.clear()
        with track(ROUTE) as q:
            async with db.engine.connect() as conn:
                await conn.execute(text("SELECT 42"))
    (record,) = [r for r in caplog.records if "SELECT 42" in r.getMessage()]
    seconds = q.shapes["SELECT 42"].total_s  # SQLite's BEGIN is one of its own
    assert record.duration_s == round(seconds, 6)  # type: ignore[attr-defined]
    labels = {"app": "dbkeel-timer", "kind": "SELECT", "operation": ROUTE}
    assert registry.get_sample_value("dbkeel_statement_duration_seconds_sum", labels) == seconds
