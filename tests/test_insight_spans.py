"""OpenTelemetry spans per statement, checked with the SDK's in-memory exporter on
PostgreSQL, SQLite and MariaDB."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import String, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager
from dbkeel.insight.spans import sanitize
from tests.conftest import CreateTables, make_settings

EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
# The global provider can be set once per process; this module is its only user.
trace.set_tracer_provider(_PROVIDER)
TRACER = trace.get_tracer("test")


class Base(DeclarativeBase):
    pass


class Widget(Base):
    __tablename__ = "span_widgets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


@asynccontextmanager
async def _traced(
    db_url: str, create_tables: CreateTables, spans: InMemorySpanExporter, **settings: bool
) -> AsyncIterator[DatabaseManager]:
    """A manager with *settings* and the tables made; the spans of making them dropped."""
    async with DatabaseManager(make_settings(db_url, **settings)) as manager:
        await create_tables(manager, Base.metadata)
        spans.clear()
        yield manager


@pytest.fixture
async def sdb(
    db_url: str, create_tables: CreateTables, spans: InMemorySpanExporter
) -> AsyncIterator[DatabaseManager]:
    async with _traced(db_url, create_tables, spans, query_spans=True) as manager:
        yield manager


@pytest.fixture
async def tdb(
    db_url: str, create_tables: CreateTables, spans: InMemorySpanExporter
) -> AsyncIterator[DatabaseManager]:
    settings = {"query_spans": True, "query_transaction_spans": True}
    async with _traced(db_url, create_tables, spans, **settings) as manager:
        yield manager


async def test_a_span_per_statement_with_semantic_attributes(
    sdb: DatabaseManager, spans: InMemorySpanExporter, backend: str
) -> None:
    with TRACER.start_as_current_span("GET /widgets") as parent:
        async with sdb.get_session() as session:
            await session.execute(insert(Widget).values(id=1, name="secret-name"))
            await session.scalars(select(Widget).where(Widget.name == "x"))
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert "INSERT span_widgets" in finished, list(finished)
    assert "SELECT span_widgets" in finished, list(finished)
    span = finished["SELECT span_widgets"]
    attrs = dict(span.attributes or {})
    system = {"postgresql": "postgresql", "sqlite": "sqlite", "mariadb": "mariadb"}[backend]
    assert attrs["db.system.name"] == system
    assert attrs["db.operation.name"] == "SELECT"
    assert attrs["db.collection.name"] == "span_widgets"
    assert "db.namespace" in attrs
    if backend != "sqlite":
        assert attrs["server.address"] == "127.0.0.1"
        assert isinstance(attrs["server.port"], int)
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    for s in spans.get_finished_spans():
        assert "secret-name" not in str(s.attributes)


async def test_a_failing_statement_records_the_error(
    sdb: DatabaseManager, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(DBAPIError):
        async with sdb.get_session() as session:
            await session.execute(text("SELECT * FROM no_such_table_for_spans"))
    failed = [s for s in spans.get_finished_spans() if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    assert failed[0].events and failed[0].events[0].name == "exception"


def test_sanitize_drops_literals() -> None:
    assert sanitize("SELECT * FROM t WHERE a = 'x''y' AND b = 42 AND c = $1") == (
        "SELECT * FROM t WHERE a = ? AND b = ? AND c = $1"
    )


async def test_a_transaction_span_holds_its_statements(
    tdb: DatabaseManager, spans: InMemorySpanExporter, backend: str
) -> None:
    with TRACER.start_as_current_span("POST /widgets") as parent:
        async with tdb.get_session() as session:
            await session.execute(insert(Widget).values(id=1, name="a"))
            await session.commit()
            # a second transaction of the same session
            await session.scalars(select(Widget))
            await session.rollback()
    finished = spans.get_finished_spans()
    transactions = [s for s in finished if s.name == "transaction"]
    assert [dict(s.attributes or {})["dbkeel.transaction.outcome"] for s in transactions] == [
        "commit",
        "rollback",
    ]
    request_id = parent.get_span_context().span_id
    for span in transactions:
        assert span.parent is not None
        assert span.parent.span_id == request_id
        system = {"postgresql": "postgresql", "sqlite": "sqlite", "mariadb": "mariadb"}[backend]
        assert dict(span.attributes or {})["db.system.name"] == system
    by_name = {s.name: s for s in finished}
    insert_span, select_span = by_name["INSERT span_widgets"], by_name["SELECT span_widgets"]
    assert insert_span.parent is not None
    assert insert_span.parent.span_id == transactions[0].context.span_id
    assert select_span.parent is not None
    assert select_span.parent.span_id == transactions[1].context.span_id


async def test_a_failed_transaction_span_ends_with_its_rollback(
    tdb: DatabaseManager, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(DBAPIError):
        async with tdb.get_session() as session:
            await session.execute(text("SELECT * FROM no_such_table_for_spans"))
    transactions = [s for s in spans.get_finished_spans() if s.name == "transaction"]
    assert len(transactions) == 1
    assert dict(transactions[0].attributes or {})["dbkeel.transaction.outcome"] == "rollback"
    failed = [s for s in spans.get_finished_spans() if s.status.status_code is StatusCode.ERROR]
    assert failed[0].parent is not None
    assert failed[0].parent.span_id == transactions[0].context.span_id


async def test_transaction_spans_alone_emit_no_statement_spans(
    db_url: str, spans: InMemorySpanExporter
) -> None:
    settings = make_settings(db_url, query_transaction_spans=True)
    async with DatabaseManager(settings) as manager:
        spans.clear()
        async with manager.get_session() as session:
            await session.execute(text("SELECT 1"))
    assert [s.name for s in spans.get_finished_spans()] == ["transaction"]


async def test_query_text_has_no_comment_tags(db_url: str, spans: InMemorySpanExporter) -> None:
    settings = make_settings(db_url, query_spans=True, query_comment=True)
    async with DatabaseManager(settings) as manager:
        spans.clear()
        for _ in range(2):  # the second execution comes from the span attributes' cache
            async with manager.get_session() as session:
                await session.execute(text("SELECT 42"))
    texts = [dict(s.attributes or {})["db.query.text"] for s in spans.get_finished_spans()]
    # SQLite's profile sends its own BEGIN, with the comment as well
    assert [t for t in texts if t.startswith("SELECT")] == ["SELECT ?", "SELECT ?"]
    assert not any("/*" in t for t in texts), texts
