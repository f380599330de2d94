"""dbkeel.testing's Sandbox used directly: what it sends to the server from test to test.

(The plugin's behaviour as users see it is tested through pytester in
test_testing_plugin.py; these tests look at the statements on the wire.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import String, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager, ReadOnlyTransactionError
from dbkeel.bulk import bulk_insert
from dbkeel.testing import Sandbox, TestDatabase
from tests.conftest import make_settings


class Base(DeclarativeBase):
    pass


class SandboxNote(Base):
    __tablename__ = "sandbox_wire_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(String(40))


@pytest.fixture
async def provisioned(
    db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[TestDatabase, DatabaseManager]]:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        target = f"sqlite+aiosqlite:///{tmp_path / 'sandbox_wire_test.sqlite3'}"
    else:
        name = f"dbkeel_sbxwire_{os.getpid()}_test"
        target = url.set(database=name).render_as_string(hide_password=False)
    database = await asyncio.to_thread(
        TestDatabase.provision,
        url=target,
        metadata=Base.metadata,
        settings=make_settings(target),
    )
    base = await database.manager()
    try:
        yield database, base
    finally:
        await database.release(base)
        await base.close()
        await asyncio.to_thread(database.drop)


async def _one_test(database: TestDatabase, base: DatabaseManager, label: str) -> list[str]:
    """A test whose session nests two more: one committed, one rolled back."""
    async with database.isolated(base) as db:
        async with db.get_session() as outer:
            outer.add(SandboxNote(text=f"{label} outer"))
            await outer.flush()
            async with db.get_session() as kept:
                kept.add(SandboxNote(text=f"{label} kept"))
            with pytest.raises(RuntimeError):
                async with db.get_session() as undone:
                    undone.add(SandboxNote(text=f"{label} undone"))
                    await undone.flush()
                    raise RuntimeError("the application's error")
            async with db.get_session() as again:  # the freed depth is reused
                again.add(SandboxNote(text=f"{label} again"))
        async with db.get_session(read_only=True) as session:
            texts = sorted(await session.scalars(select(SandboxNote.text)))
    return texts


class Wire:
    """Every request this process sends to PostgreSQL through asyncpg, in order: a
    simple query (``Connection.execute``: transaction control and the sandbox's
    held-back statements) or a prepared statement run (``PreparedStatement.fetch``: the
    adapter's path for every SQLAlchemy statement). Each is one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[str] = []
        real_execute = asyncpg.Connection.execute
        real_fetch = asyncpg.prepared_stmt.PreparedStatement.fetch

        async def execute(conn: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
            self.requests.append(query)
            return await real_execute(conn, query, *args, **kw)

        async def fetch(stmt: Any, *args: Any, **kw: Any) -> Any:
            self.requests.append(stmt.get_query())
            return await real_fetch(stmt, *args, **kw)

        monkeypatch.setattr(asyncpg.Connection, "execute", execute)
        monkeypatch.setattr(asyncpg.prepared_stmt.PreparedStatement, "fetch", fetch)

    def statements(self) -> list[str]:
        """The statements sent, one per element (a held-back group split up)."""
        return [part.strip() for r in self.requests for part in r.split(";") if part.strip()]


def _savepoint_statements(backend: str, engine: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A function returning (and forgetting) the savepoint statements sent so far: read
    on the wire under asyncpg, which sends some of them held back in a simple query;
    from SQLAlchemy's cursor events elsewhere."""
    if backend == "postgresql":
        wire = Wire(monkeypatch)

        def taken() -> list[str]:
            sent = [s for s in wire.statements() if "SAVEPOINT" in s.upper()]
            wire.requests.clear()
            return sent

        return taken
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "SAVEPOINT" in statement.upper():
            sent.append(statement.strip())

    event.listen(engine, "before_cursor_execute", record)

    def taken_cursor() -> list[str]:
        out = list(sent)
        sent.clear()
        return out

    return taken_cursor


async def test_savepoints_repeat_their_names_from_test_to_test(
    backend: str,
    provisioned: tuple[TestDatabase, DatabaseManager],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database, base = provisioned
    taken = _savepoint_statements(backend, base.engine.sync_engine, monkeypatch)
    per_test: list[list[str]] = []
    for label in ("first", "second", "third"):
        texts = await _one_test(database, base, label)
        # the application's commits and rollbacks kept their meaning
        assert texts == sorted(f"{label} {k}" for k in ("outer", "kept", "again"))
        per_test.append(taken())

    names = {s.split()[-1] for s in per_test[0]}
    assert names == {"dbkeel_sp_1", "dbkeel_sp_2"}, per_test[0]
    # the same statement texts in every test: nothing new to prepare or compile
    assert per_test[1] == per_test[0] and per_test[2] == per_test[0]
    assert per_test[0][:3] == ["SAVEPOINT dbkeel_sp_1", "SAVEPOINT dbkeel_sp_2",
                               "RELEASE SAVEPOINT dbkeel_sp_2"]  # fmt: skip
    await database.settle(base)  # the last test's rollback, held back on asyncpg
    async with base.get_session() as session:  # every test rolled back
        assert list(await session.scalars(select(SandboxNote.text))) == []


async def _insert_and_read(db: DatabaseManager) -> None:
    """The benchmark's simulated test: a write committed, then a read-only read."""
    async with db.get_session() as session:
        session.add_all(SandboxNote(text=f"row {i}") for i in range(3))
    async with db.get_session(read_only=True) as session:
        assert len(list(await session.scalars(select(SandboxNote.id)))) >= 3


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_sandboxed_test_costs_no_round_trip_over_its_work_alone(
    provisioned: tuple[TestDatabase, DatabaseManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 15's goal (sandbox >= 20x cheaper than TRUNCATE) leaves no room for a round
    # trip of its own: the SAVEPOINT replaces the work's BEGIN, SET TRANSACTION READ ONLY
    # rides with its SAVEPOINT, and the test's rollback with the next test's first one.
    database, base = provisioned
    for _ in range(2):  # warm-up: statements prepared, the kept connection begun
        await _insert_and_read(base)
        async with database.isolated(base) as db:
            await _insert_and_read(db)
    wire = Wire(monkeypatch)
    async with database.isolated(base) as db:
        await _insert_and_read(db)
    sandboxed = list(wire.requests)
    await database.settle(base)
    wire.requests.clear()
    await _insert_and_read(base)
    alone = list(wire.requests)

    assert len(sandboxed) <= len(alone), (alone, sandboxed)
    control = [r for r in sandboxed if not r.startswith(("INSERT", "SELECT"))]
    assert control == [
        "ROLLBACK; BEGIN; SAVEPOINT dbkeel_sp_1",
        "RELEASE SAVEPOINT dbkeel_sp_1",
        "SAVEPOINT dbkeel_sp_1; SET TRANSACTION READ ONLY",
        "ROLLBACK TO SAVEPOINT dbkeel_sp_1",
    ]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_savepoint_on_the_bare_connection_that_nothing_needs_is_not_sent(
    provisioned: tuple[TestDatabase, DatabaseManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, base = provisioned
    async with database.isolated(base) as db:
        await _insert_and_read(db)
    wire = Wire(monkeypatch)
    sandbox = await Sandbox.open(base, connection=await database._connection(base))
    try:
        unused = await sandbox.connection.begin_nested()
        await unused.rollback()
        used = await sandbox.connection.begin_nested()
        assert await sandbox.connection.scalar(text("SELECT 1")) == 1
        await used.commit()
    finally:
        await sandbox.close()
    assert wire.statements() == [
        "ROLLBACK",
        "BEGIN",
        "SAVEPOINT dbkeel_sp_1",
        "SELECT 1",
        "RELEASE SAVEPOINT dbkeel_sp_1",
    ]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_bulk_copy_runs_inside_the_session_savepoint(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    # COPY goes through asyncpg's own connection, past SQLAlchemy: the session's
    # SAVEPOINT (and the previous test's rollback) must be on the server before it.
    database, base = provisioned
    rows = [{"text": f"copied {i}"} for i in range(5)]
    for _ in range(2):
        async with database.isolated(base) as db:
            with pytest.raises(RuntimeError):
                async with db.get_session() as session:
                    await bulk_insert(session, SandboxNote, rows, method="copy")
                    raise RuntimeError("the application's error")
            async with db.get_session() as session:
                await bulk_insert(session, SandboxNote, rows[:2], method="copy")
            async with db.get_session(read_only=True) as session:
                texts = sorted(await session.scalars(select(SandboxNote.text)))
            assert texts == ["copied 0", "copied 1"]
    await database.settle(base)
    async with base.get_session(read_only=True) as session:
        assert list(await session.scalars(select(SandboxNote.text))) == []


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_no_statement_is_prepared_again_after_the_first_test(
    provisioned: tuple[TestDatabase, DatabaseManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A statement text asyncpg has not seen on the connection costs a Parse round trip
    # (and evicts one of the application's cached statements): none after warm-up.
    database, base = provisioned
    prepared: list[str] = []
    real_prepare = asyncpg.Connection.prepare

    async def spy(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        prepared.append(query)  # calls through: the real statement is prepared
        return await real_prepare(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "prepare", spy)
    await _one_test(database, base, "warm-up")
    prepared.clear()
    for label in ("second", "third", "fourth"):
        await _one_test(database, base, label)
    assert prepared == []


# -- the rollback held back on asyncpg: what must not change for the tests ---------------


async def _pg_admin(base: DatabaseManager) -> asyncpg.Connection:
    """A connection to the test database that is not the base engine's (a tool of the
    test's own, or another process)."""
    url = base.engine.url
    return await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        database=url.database,
    )  # fmt: skip


async def _previous_test_wrote_row_1(database: TestDatabase, base: DatabaseManager) -> None:
    """A sandboxed test that leaves row 1 (and its lock) in the held-back transaction."""
    async with database.isolated(base) as db:
        async with db.get_session() as session:
            session.add(SandboxNote(id=1, text="previous test"))


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("next_test", ["transaction=False", "TRUNCATE through the base engine"])
async def test_the_next_writer_does_not_wait_on_the_previous_test(
    provisioned: tuple[TestDatabase, DatabaseManager], next_test: str
) -> None:
    # The previous test's row (and its lock) lives on in the kept connection's open
    # transaction; whatever the next test writes through another connection of the
    # engine must not wait for it. A 2 s lock timeout turns a wait into a failure.
    database, base = provisioned
    await _previous_test_wrote_row_1(database, base)
    if next_test == "transaction=False":
        async with database.isolated(base, transaction=False) as db:
            async with db.get_session() as session:
                await session.execute(text("SET LOCAL lock_timeout = '2s'"))
                session.add(SandboxNote(id=1, text="committed for real"))
    else:
        async with base.engine.begin() as conn:
            await conn.execute(text("SET LOCAL lock_timeout = '2s'"))
            await conn.execute(text(f"TRUNCATE {SandboxNote.__tablename__}"))
    async with database.isolated(base) as db:  # and the sandbox goes on after it
        async with db.get_session() as session:
            assert list(await session.scalars(select(SandboxNote.text))) == []


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_each_test_begins_with_the_configured_isolation_level(
    db_url: str,
) -> None:
    name = f"dbkeel_sbxiso_{os.getpid()}_test"
    target = make_url(db_url).set(database=name).render_as_string(hide_password=False)
    settings = make_settings(target, isolation_level="REPEATABLE READ")
    database = await asyncio.to_thread(
        TestDatabase.provision, url=target, metadata=Base.metadata, settings=settings
    )
    base = await database.manager()
    try:
        seen = []
        for _ in range(3):  # the first test's BEGIN is the adapter's, then the held ones
            async with database.isolated(base) as db:
                async with db.get_session() as session:
                    seen.append(await session.scalar(text("SHOW transaction_isolation")))
                    session.add(SandboxNote(text="x"))
        assert seen == ["repeatable read"] * 3
    finally:
        await database.release(base)
        await base.close()
        await asyncio.to_thread(database.drop)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_connection_closed_between_tests_is_replaced(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    # e.g. idle_in_transaction_session_timeout, or a server restart between two tests
    database, base = provisioned
    async with database.isolated(base) as db:
        async with db.get_session() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
            session.add(SandboxNote(text="before the kill"))
    admin = await _pg_admin(base)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    for _ in range(50):  # the driver sees the close once the loop reads the socket
        await asyncio.sleep(0.01)
        conn = database._kept[base]
        if conn.sync_connection.connection.driver_connection.is_closed():  # type: ignore[union-attr]
            break
    async with database.isolated(base) as db:
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) != pid
            assert list(await session.scalars(select(SandboxNote.text))) == []


async def test_a_session_left_open_does_not_reach_the_next_test(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    database, base = provisioned
    async with database.isolated(base) as db:
        leaked = db.session_factory()  # never closed by the test
        leaked.add(SandboxNote(text="left open"))
        await leaked.flush()
    for label in ("next", "after"):
        async with database.isolated(base) as db:
            async with db.get_session() as session:
                assert list(await session.scalars(select(SandboxNote.text))) == []
                session.add(SandboxNote(text=label))


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_read_only_first_session_is_read_only_on_the_server(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    # its SET TRANSACTION READ ONLY rides with the previous test's held rollback
    database, base = provisioned
    for _ in range(2):
        async with database.isolated(base) as db:
            with pytest.raises(ReadOnlyTransactionError):
                async with db.get_session(read_only=True) as session:
                    await session.execute(
                        text(f"INSERT INTO {SandboxNote.__tablename__} (text) VALUES ('no')")
                    )
            async with db.get_session() as session:  # read-only did not outlive it
                session.add(SandboxNote(text="writable"))
            async with db.get_session(read_only=True) as session:
                assert list(await session.scalars(select(SandboxNote.text))) == ["writable"]


async def _holding_session(db: DatabaseManager) -> AsyncSession:
    """A session of the calling task that holds the test's connection (its SAVEPOINT
    open until it commits or rolls back)."""
    holder = db.session_factory()
    holder.add(SandboxNote(text="holder"))
    await holder.flush()
    return holder


async def _write(db: DatabaseManager, label: str) -> None:
    async with db.get_session() as session:
        session.add(SandboxNote(text=label))


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_task_cancelled_while_waiting_for_the_connection_is_skipped(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    database, base = provisioned
    async with database.isolated(base) as db:
        holder = await _holding_session(db)
        cancelled = asyncio.create_task(_write(db, "cancelled"))
        waiting = asyncio.create_task(_write(db, "waiting"))
        await asyncio.sleep(0.05)  # both wait for the connection now
        cancelled.cancel()
        await asyncio.sleep(0.05)
        await holder.commit()  # the connection goes to the task still waiting
        await holder.close()
        await asyncio.wait_for(waiting, 5)
        assert cancelled.cancelled()
        async with db.get_session(read_only=True) as session:
            texts = sorted(await session.scalars(select(SandboxNote.text)))
        assert texts == ["holder", "waiting"]


_SLOW = {
    "postgresql": "SELECT pg_sleep(5)",
    "mariadb": "SELECT SLEEP(5)",
    # about a second of work in the aiosqlite thread, which cancellation does not stop
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 3000000) SELECT count(*) FROM c",
}


async def test_a_task_cancelled_mid_statement_leaves_the_sandbox_usable(
    backend: str,
    provisioned: tuple[TestDatabase, DatabaseManager],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A request the client abandoned, a timeout: production rolls the cancelled work
    # back and goes on; so does the test, on the drivers that can resume a connection.
    database, base = provisioned
    for _ in range(2):  # the second test starts on the connection the first one used
        async with database.isolated(base) as db:

            async def slow() -> None:
                async with db.get_session() as session:
                    session.add(SandboxNote(text="cancelled"))
                    await session.flush()
                    await session.execute(text(_SLOW[backend]))

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.3)  # inside the slow statement now
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            if backend == "mariadb":
                # asyncmy cannot resume the connection: the test is told why it failed
                assert "cannot resume a connection" in caplog.text
                with pytest.raises(PendingRollbackError):
                    async with db.get_session() as session:
                        await session.execute(select(SandboxNote.text))
                continue
            async with db.get_session() as session:
                session.add(SandboxNote(text="after"))
            async with db.get_session(read_only=True) as session:
                assert list(await session.scalars(select(SandboxNote.text))) == ["after"]
    async with database.isolated(base) as db:  # and nothing of it outlived the tests
        async with db.get_session(read_only=True) as session:
            assert list(await session.scalars(select(SandboxNote.text))) == []


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_held_rollback_is_sent_within_its_time_limit(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    # Code the sandbox cannot see (a connection of the test's own, not the engine's)
    # writes the previous test's row before anything runs on the kept connection: the
    # held rollback goes out after wire.HOLD_LIMIT and the write proceeds.
    database, base = provisioned
    await _previous_test_wrote_row_1(database, base)
    own = await _pg_admin(base)
    try:
        await own.execute("SET lock_timeout = '3s'")
        transaction = own.transaction()
        await transaction.start()
        await own.execute(f"INSERT INTO {SandboxNote.__tablename__} VALUES (1, 'own')")
        await transaction.rollback()
    finally:
        await own.close()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_waiters_cancelled_together_leave_the_connection_to_the_next(
    provisioned: tuple[TestDatabase, DatabaseManager],
) -> None:
    # e.g. a TaskGroup cancelling its tasks while they wait for the test's connection
    database, base = provisioned
    async with database.isolated(base) as db:
        holder = await _holding_session(db)
        doomed = [asyncio.create_task(_write(db, f"doomed {i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        last = asyncio.create_task(_write(db, "last"))
        await asyncio.sleep(0.05)
        await holder.commit()  # hands over to doomed[0] ...
        for task in doomed:  # ... which is cancelled with the others before it runs
            task.cancel()
        await holder.close()
        results = await asyncio.gather(*doomed, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        await asyncio.wait_for(last, 5)
        async with db.get_session(read_only=True) as session:
            texts = sorted(await session.scalars(select(SandboxNote.text)))
        assert texts == ["holder", "last"]


def test_the_driver_internals_the_sandbox_uses_are_there() -> None:
    # dbkeel.testing.wire talks to SQLAlchemy's asyncpg adapter below its public API
    # (to send held-back statements in one request): an upgrade that moves these must
    # fail here, not as a hang or a wrong rollback in a user's test run.
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
    from sqlalchemy.engine import Connection

    for name in ("_start_transaction", "_handle_exception"):  # also replicas/readonly.py
        assert callable(getattr(AsyncAdapt_asyncpg_connection, name)), name
    slots = {
        s for cls in AsyncAdapt_asyncpg_connection.__mro__ for s in getattr(cls, "__slots__", ())
    }
    assert {"_execute_mutex", "_transaction", "_connection", "isolation_level"} <= slots
    assert {"readonly", "deferrable"} <= slots
    assert callable(Connection._handle_dbapi_exception)
