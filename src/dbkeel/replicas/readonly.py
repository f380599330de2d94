"""Sessions that run ``SET TRANSACTION READ ONLY`` wherever they land.

PostgreSQL (asyncpg): the session opens its transaction as it begins, with the adapted
connection's ``readonly`` flag set for that one ``BEGIN``: ``BEGIN READ ONLY``, no extra
round trip. (Another PostgreSQL
driver: SQLAlchemy's ``postgresql_readonly`` execution option.) MariaDB:
``SET TRANSACTION READ ONLY`` before the (implicit) transaction's first statement.
SQLite: ``PRAGMA query_only``, switched off again when the connection returns to the pool.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import await_only

from dbkeel.mixins.session import DbkeelSession

__all__ = ["read_only_factory", "session_factory"]

_QUERY_ONLY = "dbkeel_query_only"


class _PGReadOnlySession(DbkeelSession):
    """A session whose transactions asyncpg opens with BEGIN READ ONLY (PostgreSQL)."""


class _MySQLReadOnlySession(DbkeelSession):
    """A session whose transactions start with SET TRANSACTION READ ONLY (MariaDB)."""


class _SQLiteReadOnlySession(DbkeelSession):
    """A session whose connection refuses writes (SQLite PRAGMA query_only)."""


@event.listens_for(_PGReadOnlySession, "after_begin")
def _pg_read_only(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    # asyncpg's adapter opens its transaction lazily, with its readonly flag. Opened
    # here, with the flag set for that one BEGIN, it is BEGIN READ ONLY: the same single
    # round trip, and the flag never outlives it. (It used to stay set until the pool's
    # checkin cleared it; a read-write session once found it still set, in CI. Through
    # SQLAlchemy's postgresql_readonly option it costs several times as much per
    # session: an option engine and connection characteristics.)
    adapted = connection.connection.dbapi_connection
    if adapted._transaction is not None:
        return  # begun already: a nested session's SAVEPOINT
    try:
        await_only(_begin_read_only(adapted))
    except Exception as error:
        # SQLAlchemy's own error path: the driver error wrapped, a lost connection
        # invalidated
        connection._handle_dbapi_exception(error, "BEGIN READ ONLY", None, None, None)


async def _begin_read_only(adapted: Any) -> None:
    async with adapted._execute_mutex:  # the adapter's guard around its connection
        if adapted._transaction is not None:
            return
        adapted.readonly = True
        try:
            await adapted._start_transaction()
        finally:
            adapted.readonly = False


@event.listens_for(_MySQLReadOnlySession, "after_begin")
def _mysql_read_only(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    connection.exec_driver_sql("SET TRANSACTION READ ONLY")


@event.listens_for(_SQLiteReadOnlySession, "after_begin")
def _sqlite_read_only(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    connection.exec_driver_sql("PRAGMA query_only = ON")
    connection.connection.info[_QUERY_ONLY] = True


def _sqlite_reset(dbapi_connection: Any, record: Any, *args: Any) -> None:
    # A pooled SQLite connection must not stay read-only for the next, read-write user.
    if record.info.pop(_QUERY_ONLY, False):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA query_only = OFF")
        finally:
            cursor.close()


def session_factory(
    engine: AsyncEngine, sync_session_class: type[Session] = DbkeelSession
) -> async_sessionmaker[AsyncSession]:
    """The session factory dbkeel uses for *engine* (see DatabaseManager.session_factory)."""
    return async_sessionmaker(
        bind=engine,
        expire_on_commit=False,
        autoflush=True,
        # soft-deleted rows hidden from get(), stale rows named in errors
        sync_session_class=sync_session_class,
    )


def read_only_factory(
    engine: AsyncEngine, extend: type[Session] | None = None
) -> async_sessionmaker[AsyncSession]:
    """A session factory on *engine* whose transactions are read-only.

    *extend*: a session class to mix in first (the router's replica-node behaviour).
    """
    backend = engine.dialect.name
    base: type[Session] = DbkeelSession
    if backend == "postgresql" and engine.dialect.driver == "asyncpg":
        base = _PGReadOnlySession
    elif backend == "postgresql":
        engine = engine.execution_options(postgresql_readonly=True)
    elif backend in ("mysql", "mariadb"):
        base = _MySQLReadOnlySession
    elif backend == "sqlite":
        if not event.contains(engine.sync_engine.pool, "checkin", _sqlite_reset):
            event.listen(engine.sync_engine.pool, "checkin", _sqlite_reset)
        base = _SQLiteReadOnlySession
    if extend is not None:
        base = type(extend.__name__, (extend, base), {})
    return session_factory(engine, base)
