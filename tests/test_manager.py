"""DatabaseManager: lifecycle, get_session semantics, startup retries, pool exhaustion and
cancellation - on the real databases."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import sqlalchemy.exc
from sqlalchemy import Integer, String, event, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, SessionTransaction, mapped_column

from dbkeel import (
    ConfigurationError,
    DatabaseManager,
    DatabaseUnavailableError,
    DbkeelError,
    ManagerStateError,
    PoolExhaustedError,
)
from tests.conftest import CreateTables, make_settings

SECRET = "n0t-the-real-Pa55"


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "manager_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    body: Mapped[str] = mapped_column(String(50))


class Boom(Exception):
    pass


async def count_notes(db: DatabaseManager) -> int:
    async with db.get_session() as session:
        return int(await session.scalar(select(func.count()).select_from(Note)) or 0)


# -- lifecycle -------------------------------------------------------------------------


async def test_initialize_builds_engine_and_session_factory(db: DatabaseManager) -> None:
    assert db.is_initialized
    factory = db.session_factory
    assert factory.kw["expire_on_commit"] is False
    assert factory.kw["autoflush"] is True
    async with db.engine.connect() as conn:
        assert await conn.scalar(text("SELECT 1")) == 1


async def test_use_before_initialize_and_after_close_is_a_clear_error(db_url: str) -> None:
    db = DatabaseManager(make_settings(db_url))
    with pytest.raises(ManagerStateError, match="before initialize"):
        _ = db.engine
    with pytest.raises(ManagerStateError, match="before initialize"):
        async with db.get_session():
            pass
    await db.initialize()
    await db.initialize()  # a second call on a ready manager does nothing
    await db.close()
    await db.close()  # idempotent
    with pytest.raises(ManagerStateError, match="after close"):
        _ = db.session_factory
    with pytest.raises(ManagerStateError, match="cannot be reopened"):
        await db.initialize()


async def test_async_with_initializes_and_closes(db_url: str) -> None:
    async with DatabaseManager(make_settings(db_url)) as db:
        assert db.is_initialized
    assert not db.is_initialized
    with pytest.raises(ManagerStateError):
        _ = db.engine


# -- get_session -----------------------------------------------------------------------


async def test_get_session_commits_on_success(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    async with db.get_session() as session:
        session.add(Note(body="kept"))
    assert await count_notes(db) == 1


async def test_get_session_rolls_back_and_reraises_unchanged(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    error = Boom("from user code")
    with pytest.raises(Boom) as info:
        async with db.get_session() as session:
            session.add(Note(body="discarded"))
            await session.flush()
            raise error
    assert info.value is error
    assert await count_notes(db) == 0


async def test_get_session_failed_commit_leaves_no_partial_data(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        async with db.get_session() as session:
            session.add(Note(body="fine"))
            session.add(Note(body="x" * 200))  # longer than String(50): rejected by PG/MariaDB
            if db.engine.dialect.name == "sqlite":
                await session.execute(text("SELECT * FROM no_such_table"))
    assert await count_notes(db) == 0


async def test_get_session_always_returns_its_connection(
    backend: str, test_databases: object, db_url: str
) -> None:
    settings = make_settings(db_url, environment="production", pool_size=2, max_overflow=0)
    async with DatabaseManager(settings) as db:
        pool = db.engine.pool
        async with db.get_session() as session:
            await session.execute(text("SELECT 1"))
            assert pool.checkedout() == 1  # type: ignore[attr-defined]
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        with pytest.raises(Boom):
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
                raise Boom
        assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_get_session_returns_a_connection_taken_by_a_hook_after_commit(
    backend: str, test_databases: object, db_url: str
) -> None:
    # A committed session is closed without the shielded task only when it holds no
    # transaction; a hook that starts new work once COMMIT is done (after_transaction_end
    # may emit SQL, after_commit may not) must still give its connection back.
    settings = make_settings(db_url, environment="production", pool_size=2, max_overflow=0)
    async with DatabaseManager(settings) as db:
        pool = db.engine.pool
        ran: list[int] = []

        def after_end(sync_session: Session, transaction: SessionTransaction) -> None:
            if transaction.parent is None:  # the outermost transaction: COMMIT is done
                ran.append(sync_session.connection().execute(text("SELECT 1")).scalar_one())

        async with db.get_session() as session:
            await session.execute(text("SELECT 1"))
            event.listen(session.sync_session, "after_transaction_end", after_end, once=True)
        assert ran == [1]
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT 2")) == 2
        assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_concurrent_sessions_each_get_their_own_connection(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)

    async def add(i: int) -> None:
        async with db.get_session() as session:
            session.add(Note(body=f"task {i}"))

    await asyncio.gather(*(add(i) for i in range(8)))
    assert await count_notes(db) == 8


# -- startup ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:1/appdb",
        f"mysql+asyncmy://root:{SECRET}@127.0.0.1:1/appdb",
    ],
)
async def test_unreachable_server_gives_up_within_the_budget(url: str) -> None:
    db = DatabaseManager(make_settings(url, initialize_timeout=1.0))
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        await db.initialize()
    elapsed = time.monotonic() - start
    message = str(info.value)
    # It stops early rather than overrun: once the next backoff would not fit in the
    # budget, it gives up (so anything from ~0.4 s up to the budget is right).
    assert elapsed < 1.0 + 2.0  # slack for a loaded machine
    assert "127.0.0.1:1" in message and "'appdb'" in message
    assert ("asyncpg" in message) or ("asyncmy" in message)
    assert SECRET not in message
    attempts = int(message.split(" attempts")[0].rsplit(" ", 1)[1])
    assert attempts >= 2  # it did retry
    assert not db.is_initialized


def test_default_startup_budget_is_about_ten_seconds() -> None:
    assert make_settings("sqlite+aiosqlite://").initialize_timeout == 10.0


async def test_unknown_database_fails_at_once_without_retrying(pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(database="dbkeel_no_such_db").render_as_string(False)
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="not retried"):
        await DatabaseManager(make_settings(url)).initialize()
    assert time.monotonic() - start < 2.0


@asynccontextmanager
async def late_server(pg_url: str, delay: float) -> AsyncIterator[str]:
    """A TCP proxy that refuses connections for *delay* s, then forwards to PostgreSQL."""
    from sqlalchemy.engine import make_url

    target = make_url(pg_url)
    accepting = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not accepting.is_set():
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(target.host, target.port or 5432)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    asyncio.get_running_loop().call_later(delay, accepting.set)
    try:
        yield target.set(port=port).render_as_string(hide_password=False)
    finally:
        server.close()


async def test_server_that_comes_up_late_is_waited_for(pg_url: str) -> None:
    async with late_server(pg_url, 0.6) as url:
        async with DatabaseManager(make_settings(url, initialize_timeout=5)) as db:
            async with db.engine.connect() as conn:
                assert await conn.scalar(text("SELECT 1")) == 1


async def test_close_during_initialize_disposes_the_new_engine(pg_url: str) -> None:
    async with late_server(pg_url, 0.8) as url:
        db = DatabaseManager(make_settings(url, initialize_timeout=5))
        starting = asyncio.create_task(db.initialize())
        await asyncio.sleep(0.2)
        await db.close()  # shutdown arrives while startup still retries
        with pytest.raises(ManagerStateError, match="while initialize"):
            await starting
    assert not db.is_initialized
    with pytest.raises(ManagerStateError, match="after close"):
        _ = db.engine


async def test_cancelled_initialize_leaves_nothing_behind(pg_url: str) -> None:
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/test"
    db = DatabaseManager(
        make_settings(url, environment="production", initialize_timeout=5, monitoring=True)
    )
    before = asyncio.all_tasks()
    starting = asyncio.create_task(db.initialize())
    await asyncio.sleep(0.3)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not db.is_initialized
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()  # no leak watcher
    # a cancelled startup can be tried again
    db2 = DatabaseManager(make_settings(pg_url))
    await db2.initialize()
    await db2.close()


async def test_cancelled_close_still_disposes_the_pool(pg_url: str) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=2, max_overflow=0)
    db = await DatabaseManager(settings).initialize()
    pool = db.engine.pool
    async with db.get_session() as session:
        await session.execute(text("SELECT 1"))
    assert pool.checkedin() == 1  # type: ignore[attr-defined]
    closing = asyncio.create_task(db.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.sleep(0.3)
    assert pool.checkedin() == 0  # type: ignore[attr-defined]


async def test_driver_refusing_its_arguments_is_a_configuration_error() -> None:
    url = "mysql+asyncmy://root@127.0.0.1:3306/test?ssl=true"
    start = time.monotonic()
    with pytest.raises(ConfigurationError, match="refused the connection settings"):
        await DatabaseManager(make_settings(url)).initialize()
    assert time.monotonic() - start < 2.0  # not retried for the whole budget


async def test_password_never_reaches_a_log_line(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.engine import make_url

    caplog.set_level(logging.DEBUG)
    # trust auth accepts any password: a real session, with SQL echo on
    url = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    async with DatabaseManager(make_settings(url, echo=True)) as db, db.get_session() as s:
        await s.execute(text("SELECT 1"))
    dead = f"postgresql+asyncpg://app:{SECRET}@127.0.0.1:1/appdb"
    with pytest.raises(DatabaseUnavailableError):
        await DatabaseManager(make_settings(dead, initialize_timeout=0.5)).initialize()
    assert caplog.records  # echo and the retry warnings did log
    assert all(SECRET not in record.getMessage() for record in caplog.records)


# -- pool exhaustion and cancellation (PostgreSQL) -------------------------------------


async def test_pool_exhausted_error_explains_the_numbers(pg_url: str) -> None:
    settings = make_settings(
        pg_url, environment="production", pool_size=1, max_overflow=0, pool_timeout=0.3
    )
    async with DatabaseManager(settings) as db, db.get_session() as holder:
        await holder.execute(text("SELECT 1"))
        with pytest.raises(PoolExhaustedError) as info:
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
    err = info.value
    assert isinstance(err, sqlalchemy.exc.TimeoutError) and isinstance(err, DbkeelError)
    assert isinstance(err.__cause__, sqlalchemy.exc.TimeoutError)
    assert (err.pool_size, err.max_overflow, err.checked_out, err.timeout) == (1, 0, 1, 0.3)
    for fragment in ("0.3 s", "pool_size=1", "max_overflow=0", "DATABASE_POOL_SIZE"):
        assert fragment in str(err)


async def test_task_cancelled_while_waiting_for_a_connection_leaves_none_checked_out(
    pg_url: str,
) -> None:
    settings = make_settings(
        pg_url, environment="production", pool_size=1, max_overflow=0, pool_timeout=10
    )
    async with DatabaseManager(settings) as db:
        pool = db.engine.pool
        waiting = asyncio.Event()
        # Keep the sessions referenced, as request state often does: garbage collection
        # must not be what returns the connection.
        keep = []

        async def waiter() -> None:
            async with db.get_session() as session:
                keep.append(session)
                waiting.set()
                await session.execute(text("SELECT 1"))  # blocks: the only connection is held

        async with db.get_session() as holder:
            await holder.execute(text("SELECT 1"))
            task = asyncio.create_task(waiter())
            await waiting.wait()
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        async with db.get_session() as session:  # and the pool still works
            assert await session.scalar(text("SELECT 1")) == 1
        assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_task_cancelled_inside_get_session_rolls_back_and_returns_connection(
    pg_url: str, create_tables: CreateTables
) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=2, max_overflow=0)
    async with DatabaseManager(settings) as db:
        await create_tables(db, Base.metadata)
        pool = db.engine.pool
        inside = asyncio.Event()
        keep = []  # referenced, so garbage collection cannot return the connection for us

        async def worker() -> None:
            async with db.get_session() as session:
                keep.append(session)
                session.add(Note(body="never committed"))
                await session.flush()
                inside.set()
                await session.execute(text("SELECT pg_sleep(5)"))

        task = asyncio.create_task(worker())
        await inside.wait()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await count_notes(db) == 0


async def test_task_cancelled_while_idle_in_transaction_rolls_back(
    pg_url: str, create_tables: CreateTables
) -> None:
    """Cancelled while awaiting something else (an HTTP call, say) mid-transaction."""
    settings = make_settings(pg_url, environment="production", pool_size=2, max_overflow=0)
    async with DatabaseManager(settings) as db:
        await create_tables(db, Base.metadata)
        inside = asyncio.Event()
        keep = []

        async def worker() -> None:
            async with db.get_session() as session:
                keep.append(session)
                session.add(Note(body="never committed"))
                await session.flush()
                inside.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(worker())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await count_notes(db) == 0


async def test_many_cancellations_under_load_leak_nothing(pg_url: str) -> None:
    settings = make_settings(
        pg_url, environment="production", pool_size=3, max_overflow=2, pool_timeout=10
    )
    async with DatabaseManager(settings) as db:
        keep = []

        async def work(i: int) -> None:
            async with db.get_session() as session:
                keep.append(session)
                await session.execute(text("SELECT pg_sleep(:s)"), {"s": 0.01 * (i % 5)})

        tasks = [asyncio.create_task(work(i)) for i in range(60)]
        await asyncio.sleep(0.05)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
