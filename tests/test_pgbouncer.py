"""dbkeel behind a real PgBouncer in transaction-pooling mode (started by .ci/services).

In transaction mode PgBouncer hands a server connection to a client for one transaction
only, so statements a client prepared on one backend are missing (or clash) on the next.
DATABASE_PGBOUNCER=true is dbkeel's answer; the doctor detects the pooler by watching
``pg_backend_pid()`` move. Both were first tested on synthetic facts; here they meet
the real thing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy import String, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager, DatabaseUnavailableError, bulk_insert
from dbkeel.doctor import run_doctor
from dbkeel.types import UUIDType, uuid7
from tests.conftest import CreateTables, make_settings
from tests.test_doctor import CPUS, prod


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "pgb_items"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(50))


async def _workload(
    sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]],
    tasks: int = 30,
    rounds: int = 6,
) -> list[BaseException]:
    """Many clients, each running short parameterized transactions: what a web app does."""

    async def client(n: int) -> None:
        for r in range(rounds):
            async with sessions() as session:  # one transaction, committed at the end
                session.add(Item(name=f"c{n}r{r}"))
                await session.flush()
                count = await session.scalar(
                    select(func.count()).select_from(Item).where(Item.name.like(f"c{n}r%"))
                )
                assert count == r + 1

    results = await asyncio.gather(*(client(n) for n in range(tasks)), return_exceptions=True)
    return [r for r in results if isinstance(r, BaseException)]


async def test_pgbouncer_mode_runs_concurrent_transactions_through_transaction_pooling(
    pgbouncer_url: str, create_tables: CreateTables
) -> None:
    settings = make_settings(pgbouncer_url, environment="production", pgbouncer=True)
    async with DatabaseManager(settings) as db:
        await create_tables(db, Base.metadata)
        assert await _workload(db.get_session) == []
        async with db.get_session() as session:
            assert await session.scalar(select(func.count()).select_from(Item)) == 180
            # COPY joins the session's transaction through PgBouncer as well: it is seen
            # inside it, and a rollback takes it back
            rows = [{"name": f"b{i}"} for i in range(2000)]
            assert await bulk_insert(session, Item, rows, method="copy") == 2000
            assert await session.scalar(select(func.count()).select_from(Item)) == 2180
            await session.rollback()
            assert await session.scalar(select(func.count()).select_from(Item)) == 180


async def test_plain_sqlalchemy_engine_breaks_there(
    pgbouncer_url: str, create_tables: CreateTables
) -> None:
    # The control for the test above: the same workload on SQLAlchemy's asyncpg defaults
    # (statement cache on) fails, so the test above passing means the mode works, not
    # that PgBouncer is lenient.
    settings = make_settings(pgbouncer_url, pgbouncer=True)
    async with DatabaseManager(settings) as db:
        await create_tables(db, Base.metadata)
    engine = create_async_engine(pgbouncer_url, pool_size=10)
    try:
        errors = await _workload(async_sessionmaker(engine).begin)
    finally:
        await engine.dispose()
    assert errors, "expected prepared-statement errors through transaction pooling"
    assert any("prepared statement" in str(e) for e in errors), errors


async def test_without_pgbouncer_mode_dbkeel_fails_at_once_saying_what_to_set(
    pgbouncer_url: str,
) -> None:
    # dbkeel sends jit=off (and timeouts) as startup parameters, which PgBouncer refuses:
    # no 10 s of retries, and the error names the setting.
    started = asyncio.get_running_loop().time()
    with pytest.raises(DatabaseUnavailableError) as caught:
        await DatabaseManager(make_settings(pgbouncer_url, environment="production")).initialize()
    assert asyncio.get_running_loop().time() - started < 3
    message = str(caught.value)
    assert "refused the startup parameter 'jit'" in message
    assert "DATABASE_PGBOUNCER=true" in message
    # the doctor cannot connect either, and says the same
    with pytest.raises(DatabaseUnavailableError, match="DATABASE_PGBOUNCER=true"):
        await run_doctor(prod(pgbouncer_url), options=CPUS)


async def test_doctor_detects_the_pooler_in_pgbouncer_mode(pgbouncer_url: str, pg_url: str) -> None:
    report = await run_doctor(prod(pgbouncer_url, pgbouncer=True), options=CPUS)
    (finding,) = report.by_id("pgbouncer.prepared-statements")
    assert (finding.level, finding.what.startswith("transaction-mode pooler detected")) == (
        "ok",
        True,
    )
    # straight to PostgreSQL: no pooler
    report = await run_doctor(prod(pg_url), options=CPUS)
    (finding,) = report.by_id("pgbouncer.prepared-statements")
    assert finding.what == "no transaction-mode pooler detected"


async def test_application_name_reaches_the_server_in_pgbouncer_mode(pgbouncer_url: str) -> None:
    settings = make_settings(pgbouncer_url, pgbouncer=True, app_name="pgb-check")
    async with DatabaseManager(settings) as db, db.get_session() as session:
        name: Any = await session.scalar(text("SHOW application_name"))
    assert name == "pgb-check"
