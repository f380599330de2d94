"""Per-context statement figures and sqlcommenter tags, on PostgreSQL, SQLite and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from dbkeel import DatabaseManager
from dbkeel.insight import current_context, format_comment, track
from dbkeel.insight.context import MAX_SHAPES, OTHER_SHAPES, InsightContext
from tests.conftest import make_settings

SECRET = "s3cret-param-value"


async def test_query_stats_counts_the_block(db: DatabaseManager) -> None:
    async with db.get_session() as session:
        await session.execute(text("SELECT 1"))  # outside: not counted
    with db.query_stats("GET /x") as q:
        async with db.get_session() as session:
            for _ in range(3):
                await session.execute(text("SELECT 1"))
            await session.execute(text("SELECT 2"))
    assert q.statements >= 4
    assert q.shapes["SELECT 1"].statements == 3
    assert q.shapes["SELECT 2"].statements == 1
    assert 0 < q.max_s <= q.total_s
    assert q.summary()["operation"] == "GET /x"
    assert current_context() is None


async def test_concurrent_tasks_keep_separate_figures(pg_db: DatabaseManager) -> None:
    async def request(n: int) -> int:
        with pg_db.query_stats() as q:
            for _ in range(n):
                async with pg_db.get_session() as session:
                    await session.execute(text("SELECT pg_sleep(0.001)"))
        return q.shapes["SELECT pg_sleep(0.001)"].statements

    assert await asyncio.gather(request(2), request(5), request(7)) == [2, 5, 7]


def test_shapes_are_bounded_for_100k_statements() -> None:
    ctx = InsightContext()
    for i in range(100_000):
        ctx.record(f"SELECT {i}", 0.0001, 1)
    assert ctx.statements == 100_000
    assert len(ctx.shapes) == MAX_SHAPES + 1
    assert ctx.shapes[OTHER_SHAPES].statements == 100_000 - MAX_SHAPES


def test_comment_format_follows_sqlcommenter() -> None:
    # Keys sorted, values URL-encoded (quote, star and slash too), single-quoted.
    comment = format_comment({"route": "GET /o'x*/", "application": "my app"})
    assert comment == "/*application='my%20app',route='GET%20%2Fo%27x%2A%2F'*/"


@pytest.fixture
async def tagged(db_url: str) -> AsyncIterator[DatabaseManager]:
    async with DatabaseManager(make_settings(db_url, query_comment=True)) as manager:
        yield manager


async def test_comment_is_seen_by_the_server_without_parameters(
    tagged: DatabaseManager, backend: str
) -> None:
    if backend == "sqlite":
        query = "SELECT :v || ''"  # SQLite has no process list: the statement text is checked
    elif backend == "postgresql":
        query = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() AND :v <> ''"
    else:
        query = (
            "SELECT info FROM information_schema.processlist "
            "WHERE id = CONNECTION_ID() AND :v <> ''"
        )
    with track("GET /orders/{id}") as q:
        async with tagged.get_session() as session:
            seen = await session.scalar(text(query), {"v": SECRET})
    expected = "/*application='dbkeel-tests',route='GET%20%2Forders%2F%7Bid%7D'*/"
    # format-paramstyle drivers (asyncmy) get "%%", which they turn into "%".
    statements = [s.replace("%%", "%") for s in q.shapes]
    assert any(s.endswith(expected) for s in statements), statements
    assert all(SECRET not in s for s in statements)
    if backend != "sqlite":
        assert isinstance(seen, str)
        assert seen.endswith(expected), seen
        # asyncmy interpolates parameters client-side into the statement body; the
        # comment itself never holds one.
        assert SECRET not in seen[seen.rindex("/*") :]


@pytest.mark.parametrize(
    ("server", "query"),
    [
        ("postgresql", "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"),
        ("mariadb", "SELECT info FROM information_schema.processlist WHERE id = CONNECTION_ID()"),
    ],
)
async def test_comment_without_parameters_reaches_the_server_unchanged(
    server: str, query: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url" if server == "postgresql" else "mariadb_url")
    async with DatabaseManager(make_settings(url, query_comment=True)) as manager:
        with track("GET /orders/{id}"):
            async with manager.get_session() as session:
                seen = await session.scalar(text(query))
    assert seen.endswith("/*application='dbkeel-tests',route='GET%20%2Forders%2F%7Bid%7D'*/")


async def test_comment_text_is_stable_across_requests(tagged: DatabaseManager) -> None:
    texts: list[set[str]] = []
    for value in ("one", "two"):
        with track("GET /a") as q:
            async with tagged.get_session() as session:
                await session.execute(text("SELECT :v"), {"v": value})
        texts.append(set(q.shapes))
    assert texts[0] == texts[1]  # one prepared statement, whatever the request


async def test_comment_tags_work_through_pgbouncer_transaction_mode(pgbouncer_url: str) -> None:
    # Prepared statements under PgBouncer mode: the tagged text is prepared and reused
    # across requests and routes without "prepared statement does not exist" errors.
    # Its own app_name: PgBouncer keeps the server connection open after the test, and
    # other tests count the backends named "dbkeel-tests".
    settings = make_settings(
        pgbouncer_url,
        environment="production",
        pgbouncer=True,
        query_comment=True,
        app_name="insight-pgb",
    )
    async with DatabaseManager(settings) as manager:
        for route in ("GET /a", "GET /b", "GET /a", "GET /b"):
            with track(route) as q:
                async with manager.get_session() as session:
                    assert (
                        await session.scalar(text("SELECT CAST(:v AS text)"), {"v": route}) == route
                    )
            assert any("route='GET%20%2F" in s for s in q.shapes)
