"""Query-count assertions (dbkeel.testing.QueryLog, the plugin's ``dbkeel_queries``).

Written on dbkeel's own pytest plugin: each test runs in its own rolled-back transaction,
once per backend.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager
from dbkeel.testing import QueryLog, assert_max_queries
from tests.conftest import PLUGIN_METADATA


class Base(DeclarativeBase):
    metadata = PLUGIN_METADATA


class Counted(Base):
    __tablename__ = "queries_counted"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))


async def _add_and_read(db: DatabaseManager) -> list[str]:
    async with db.get_session() as session:
        session.add(Counted(id=1, name="one"))
    async with db.get_session(read_only=True) as session:
        return list(await session.scalars(select(Counted.name)))


async def test_only_the_applications_statements_are_counted(
    dbkeel_db: DatabaseManager, dbkeel_queries: QueryLog
) -> None:
    # the sandbox sends SAVEPOINT/RELEASE around both sessions and SET TRANSACTION READ
    # ONLY on PostgreSQL: none of that is the application's doing
    with dbkeel_queries.assert_count(2) as block:
        assert await _add_and_read(dbkeel_db) == ["one"]
    assert [s.split()[0].upper() for s in block.statements] == ["INSERT", "SELECT"]
    assert len(dbkeel_queries) == 2  # the whole test's log has them too


async def test_one_query_too_many_fails_listing_the_sql_without_parameters(
    dbkeel_db: DatabaseManager, dbkeel_queries: QueryLog
) -> None:
    async with dbkeel_db.get_session() as session:
        session.add(Counted(id=1, name="one"))
    dbkeel_queries.clear()
    with pytest.raises(AssertionError) as info:
        with dbkeel_queries.assert_max(2):
            async with dbkeel_db.get_session() as session:
                for name in ("secret-name-1", "secret-name-2", "secret-name-3"):
                    await session.scalar(select(Counted.id).where(Counted.name == name))
    message = str(info.value)
    assert message.startswith("expected at most 2 queries, 3 were sent:\n  1. SELECT ")
    assert message.count("FROM queries_counted WHERE queries_counted.name = ") == 3
    assert "secret-name" not in message  # bound values are never shown


async def test_statements_of_tasks_the_test_starts_count(
    dbkeel_db: DatabaseManager, dbkeel_queries: QueryLog
) -> None:
    async def read(i: int) -> None:
        async with dbkeel_db.get_session(read_only=True) as session:
            await session.scalar(select(Counted.id).where(Counted.id == i))

    with dbkeel_queries.assert_count(3):
        await asyncio.gather(read(1), read(2), read(3))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
async def test_a_bad_bound_is_refused(dbkeel_db: DatabaseManager, bad: object) -> None:
    with pytest.raises(ValueError, match=r"int >= 0, got"):
        with assert_max_queries(bad, dbkeel_db):  # type: ignore[arg-type]
            pass


async def test_assert_max_queries_works_on_any_manager(db: DatabaseManager) -> None:
    # without the plugin's sandbox: a manager of the application, committing for real
    with assert_max_queries(1, db) as log:
        async with db.get_session(read_only=True) as session:
            await session.execute(select(1))
    assert len(log) == 1
    with pytest.raises(AssertionError, match="expected at most 0 queries, 1 were sent"):
        with assert_max_queries(0, db):
            async with db.get_session(read_only=True) as session:
                await session.execute(select(1))
    # the log stops with the block: later statements are not recorded
    async with db.get_session(read_only=True) as session:
        await session.execute(select(1))
    assert len(log) == 1
