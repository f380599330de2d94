"""VersionMixin and run_in_transaction: optimistic locking and retrying conflicts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Integer, event, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from dbkeel import (
    CommitOutcomeUnknownError,
    ConcurrentUpdateError,
    DatabaseManager,
    RetryableError,
)
from dbkeel.mixins import VersionMixin
from tests.conftest import CreateTables, make_settings

TASKS, INCREMENTS = 20, 25


class Base(DeclarativeBase):
    pass


class Counter(VersionMixin, Base):
    __tablename__ = "ver_counters"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class PlainCounter(Base):
    __tablename__ = "ver_plain_counters"

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


@pytest.fixture
async def counters(db: DatabaseManager, create_tables: CreateTables) -> DatabaseManager:
    await create_tables(db, Base.metadata)
    async with db.get_session() as s:
        s.add_all([Counter(id=1, value=0), PlainCounter(id=1, value=0)])
    return db


async def test_version_starts_at_one_and_grows_per_update(counters: DatabaseManager) -> None:
    async with counters.get_session() as s:
        c = await s.get(Counter, 1)
        assert c is not None and c.version == 1
        c.value = 5
        await s.flush()
        assert c.version == 2


async def test_stale_update_names_model_and_primary_key(counters: DatabaseManager) -> None:
    async with counters.get_session() as s:
        mine = await s.get(Counter, 1)
    async with counters.get_session() as s:
        theirs = await s.get(Counter, 1)
        assert theirs is not None
        theirs.value = 1
    with pytest.raises(ConcurrentUpdateError) as caught:
        async with counters.get_session() as s:
            assert mine is not None
            s.add(mine)
            mine.value = 2
    err = caught.value
    assert (err.model, err.primary_key) == ("Counter", 1)
    assert "Counter with primary key 1" in str(err)
    assert isinstance(err.__cause__, StaleDataError)


async def test_version_check_rides_on_the_update_statement(counters: DatabaseManager) -> None:
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(counters.engine.sync_engine, "before_cursor_execute", record)
    async with counters.get_session() as s:
        c = await s.get(Counter, 1)
        assert c is not None
        statements.clear()
        c.value += 1
        await s.flush()
    event.remove(counters.engine.sync_engine, "before_cursor_execute", record)
    assert len(statements) == 1 and "version" in statements[0].split("WHERE")[1]


async def _increment_many(
    db: DatabaseManager, model: type[Counter] | type[PlainCounter], retried: list[int]
) -> None:
    async def bump(session: AsyncSession) -> None:
        retried[0] += 1
        row = await session.get(model, 1)
        assert row is not None
        await asyncio.sleep(0)  # let the others read the same value
        row.value += 1

    async def task() -> None:
        for _ in range(INCREMENTS):
            await db.run_in_transaction(bump, retries=1000, backoff=0.01)

    await asyncio.gather(*(task() for _ in range(TASKS)))


@pytest.fixture
async def pooled(
    db_url: str, backend: str, create_tables: CreateTables
) -> AsyncIterator[DatabaseManager]:
    if backend == "sqlite":
        pytest.fail("pooled is for server databases")
    settings = make_settings(db_url, environment="production", pool_size=TASKS, max_overflow=0)
    async with DatabaseManager(settings) as manager:
        await create_tables(manager, Base.metadata)
        async with manager.get_session() as s:
            s.add_all([Counter(id=1, value=0), PlainCounter(id=1, value=0)])
        yield manager


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_no_lost_updates_with_version_mixin_and_retries(
    pooled: DatabaseManager, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = [0]
    with caplog.at_level(logging.INFO, logger="dbkeel.retry"):
        await _increment_many(pooled, Counter, attempts)
    async with pooled.get_session() as s:
        assert await s.scalar(select(Counter.value)) == TASKS * INCREMENTS
    conflicts = attempts[0] - TASKS * INCREMENTS
    print(f"\n{backend}: {TASKS}x{INCREMENTS} increments, {conflicts} conflicts retried")
    assert conflicts > 0


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_without_version_mixin_updates_are_lost(pooled: DatabaseManager) -> None:
    await _increment_many(pooled, PlainCounter, [0])
    async with pooled.get_session() as s:
        assert (await s.scalar(select(PlainCounter.value)) or 0) < TASKS * INCREMENTS


# SQLite has one writer at a time: the competing write inside would wait for the reader.
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
async def test_gives_up_after_retries_with_the_last_error(counters: DatabaseManager) -> None:
    calls = 0

    async def always_stale(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        row = await session.get(Counter, 1)
        assert row is not None
        async with counters.get_session() as other:  # someone else wins every time
            (await other.get(Counter, 1)).value += 1  # type: ignore[union-attr]
        row.value += 1

    with pytest.raises(ConcurrentUpdateError):
        await counters.run_in_transaction(always_stale, retries=2, backoff=0)
    assert calls == 3


async def test_other_errors_are_not_retried(counters: DatabaseManager) -> None:
    calls = 0

    async def broken(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await counters.run_in_transaction(broken)
    assert calls == 1


async def test_bad_arguments_are_refused(counters: DatabaseManager) -> None:
    async def noop(session: AsyncSession) -> None:
        return None

    with pytest.raises(ValueError, match="retries=-1"):
        await counters.run_in_transaction(noop, retries=-1)
    with pytest.raises(ValueError, match="backoff='x'"):
        await counters.run_in_transaction(noop, backoff="x")  # type: ignore[arg-type]


async def test_postgres_serialization_failure_is_retried(
    pg_db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(pg_db, Base.metadata)
    calls = 0

    async def fail_once(session: AsyncSession) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # a real 40001, raised by the server
            await session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
            )
        return calls

    assert await pg_db.run_in_transaction(fail_once, backoff=0) == 2


async def test_postgres_gives_up_as_retryable_error(pg_db: DatabaseManager) -> None:
    async def deadlock(session: AsyncSession) -> None:
        await session.execute(
            text("DO $$ BEGIN RAISE EXCEPTION 'dl' USING ERRCODE = '40P01'; END $$")
        )

    with pytest.raises(RetryableError, match="deadlock") as caught:
        await pg_db.run_in_transaction(deadlock, retries=1, backoff=0)
    assert caught.value.__cause__ is not None


async def test_mariadb_lock_wait_timeout_is_retried(
    mariadb_url: str, create_tables: CreateTables
) -> None:
    async with DatabaseManager(make_settings(mariadb_url)) as db:
        await create_tables(db, Base.metadata)
        async with db.get_session() as s:
            s.add(PlainCounter(id=1, value=0))
        holder = db.session_factory()
        await holder.execute(text("SELECT * FROM ver_plain_counters WHERE id = 1 FOR UPDATE"))
        calls = 0

        async def blocked(session: AsyncSession) -> None:
            nonlocal calls
            calls += 1
            await session.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
            if calls == 2:
                await holder.rollback()  # the lock holder goes away before the retry
            await session.execute(text("UPDATE ver_plain_counters SET value = 7 WHERE id = 1"))

        try:
            await db.run_in_transaction(blocked, backoff=0)
        finally:
            await holder.close()
        assert calls >= 2


async def test_connection_lost_during_commit_is_not_retried(
    pg_db: DatabaseManager, pg_url: str, create_tables: CreateTables
) -> None:
    await create_tables(pg_db, Base.metadata)
    calls = 0

    async def lose_connection_before_commit(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        session.add(PlainCounter(id=99, value=1))
        await session.flush()
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        async with DatabaseManager(make_settings(pg_url)) as killer:
            async with killer.get_session() as k:
                await k.execute(text(f"SELECT pg_terminate_backend({pid})"))

    with pytest.raises(CommitOutcomeUnknownError, match="may or may not"):
        await pg_db.run_in_transaction(lose_connection_before_commit, backoff=0)
    assert calls == 1
