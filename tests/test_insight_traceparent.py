"""The opt-in ``traceparent`` comment tag: what the server sees, on PostgreSQL, SQLite and
MariaDB, and asyncpg's statement cache still hitting (counted by PostgreSQL itself in
``pg_prepared_statements``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span
from sqlalchemy import text

from dbkeel import ConfigurationError, DatabaseManager
from dbkeel.insight import track
from tests.conftest import make_settings

SECRET = "s3cret-param-value"
# Tracers of their own providers: the global provider is left to test_insight_spans.
SAMPLED = TracerProvider().get_tracer("test")
UNSAMPLED = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
PROCESS_QUERY = {
    "postgresql": "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() AND :v <> ''",
    "mariadb": "SELECT info FROM information_schema.processlist "
    "WHERE id = CONNECTION_ID() AND :v <> ''",
    # SQLite has no process list: the statement text is checked
    "sqlite": "SELECT :v || ''",
}


def _parent(span: Span) -> str:
    context = span.get_span_context()
    # flags as the SDK set them: 01 sampled, plus 02 "random trace id" (W3C level 2)
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@pytest.fixture
async def traced(db_url: str) -> AsyncIterator[DatabaseManager]:
    settings = make_settings(db_url, query_comment=True, query_comment_traceparent=True)
    async with DatabaseManager(settings) as manager:
        yield manager


async def test_traceparent_of_a_sampled_span_reaches_the_server(
    traced: DatabaseManager, backend: str
) -> None:
    with SAMPLED.start_as_current_span("GET /orders") as span, track("GET /orders/{id}") as q:
        async with traced.get_session() as session:
            seen = await session.scalar(text(PROCESS_QUERY[backend]), {"v": SECRET})
    expected = (
        "/*application='dbkeel-tests',route='GET%20%2Forders%2F%7Bid%7D',"
        f"traceparent='{_parent(span)}'*/"
    )
    # format-paramstyle drivers (asyncmy) get "%%", which they turn into "%".
    statements = [s.replace("%%", "%") for s in q.shapes]
    assert any(s.endswith(expected) for s in statements), statements
    if backend != "sqlite":
        assert isinstance(seen, str)
        assert seen.endswith(expected), seen
        assert SECRET not in seen[seen.rindex("/*") :]


async def test_unsampled_or_absent_span_keeps_the_static_comment(
    traced: DatabaseManager,
) -> None:
    with UNSAMPLED.start_as_current_span("GET /a"), track() as unsampled:
        async with traced.get_session() as session:
            await session.execute(text("SELECT 1"))
    with track() as outside:
        async with traced.get_session() as session:
            await session.execute(text("SELECT 1"))
    shapes = {s.replace("%%", "%") for s in [*unsampled.shapes, *outside.shapes]}
    assert "SELECT 1 /*application='dbkeel-tests'*/" in shapes
    assert not any("traceparent" in s for s in shapes), shapes


async def test_tracestate_is_escaped() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from dbkeel.insight.comments import CommentTagger

    state = TraceState([("vendor", "a/b"), ("other@tenant", "x")])
    span = NonRecordingSpan(
        SpanContext(
            trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
            span_id=0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=state,
        )
    )
    tagger = CommentTagger("app", "format", traceparent=True)
    with trace.use_span(span):
        statement, _ = tagger.before(None, None, "SELECT 1", {}, None, False)  # type: ignore[arg-type]
    assert statement == (
        "SELECT 1 /*application='app',"
        "traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',"
        # "vendor=a/b,other@tenant=x", URL-encoded, then "%" doubled for the format paramstyle
        "tracestate='vendor%%3Da%%2Fb%%2Cother%%40tenant%%3Dx'*/"
    )


def test_traceparent_needs_the_comment_switched_on() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_QUERY_COMMENT=true"):
        make_settings("sqlite+aiosqlite://", query_comment_traceparent=True)


async def test_statement_cache_still_hits_with_traceparent(pg_url: str) -> None:
    # PostgreSQL counts each prepared statement's executions (generic_plans + custom_plans,
    # one per Bind): a cached statement shows one row executed many times; a cache miss
    # would show a row per execution.
    settings = make_settings(pg_url, query_comment=True, query_comment_traceparent=True)
    marker = "insight_cache_probe"
    probe = text(f"SELECT CAST(:v AS int) + 1 AS {marker}")
    async with DatabaseManager(settings) as db, db.engine.connect() as conn:
        for i in range(5):  # unsampled requests and no span at all share one text
            with UNSAMPLED.start_as_current_span("unsampled"):
                await conn.execute(probe, {"v": i})
        await conn.execute(probe, {"v": 9})
        parents = []
        for _ in range(2):  # sampled requests: one text each, repeated within the request
            with SAMPLED.start_as_current_span("sampled") as span:
                for i in range(3):
                    await conn.execute(probe, {"v": i})
            parents.append(_parent(span))
        rows = (
            await conn.execute(
                # the marker is a parameter, so this query's own text does not match it
                text(
                    "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements "
                    "WHERE strpos(statement, CAST(:marker AS text)) > 0"
                ),
                {"marker": marker},
            )
        ).all()
    executions = {statement.rsplit("/*", 1)[1]: count for statement, count in rows}
    assert executions == {
        "application='dbkeel-tests'*/": 6,
        f"application='dbkeel-tests',traceparent='{parents[0]}'*/": 3,
        f"application='dbkeel-tests',traceparent='{parents[1]}'*/": 3,
    }
