"""``dbkeel migrate``: ``alembic upgrade head`` under a database lock, with timeouts.

Several instances of an application often start at once, each running its migrations:
without a lock two of them run the same migration and one fails half-way. The
migration runs on one connection that first takes a lock the others wait for:
``pg_advisory_lock`` on PostgreSQL, ``GET_LOCK`` on MariaDB/MySQL (SQLite has one writer
anyway). The instance that waited finds the database at head and does nothing.

While the migration runs, ``lock_timeout`` (PostgreSQL; ``lock_wait_timeout`` on
MariaDB) bounds how long one DDL statement waits for a table lock - a waiting ALTER
queues every later query on that table behind it - and ``statement_timeout``
(``max_statement_time``) bounds each statement.

Example::

    await migrate(config, DatabaseSettings(), wait=60, lock_timeout=10, statement_timeout=300)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from dbkeel.engine import create_engine
from dbkeel.exceptions import ConfigurationError, DatabaseError
from dbkeel.settings import DatabaseSettings

__all__ = ["LOCK_NAME", "MigrationLockTimeoutError", "migrate", "on_connection"]

#: the lock's name on MariaDB; on PostgreSQL its advisory-lock key is derived from it
LOCK_NAME = "dbkeel_migrate"
_PG_KEY = 0x6462_6B65_656C  # "dbkeel" as a bigint key


class MigrationLockTimeoutError(DatabaseError):
    """Another ``dbkeel migrate`` held the migration lock longer than ``--wait``."""


async def _lock(conn: AsyncConnection, wait: float) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        await conn.execute(text(f"SET lock_timeout = {int(wait * 1000)}"))
        try:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_KEY})
        except DBAPIError as exc:
            if "lock timeout" not in str(exc):
                raise
            raise _lock_timeout(wait) from exc
    elif dialect in ("mysql", "mariadb"):
        got = await conn.scalar(text("SELECT GET_LOCK(:n, :w)"), {"n": LOCK_NAME, "w": wait})
        if got != 1:
            raise _lock_timeout(wait)
    await conn.commit()  # session-level locks outlive the transaction


def _lock_timeout(wait: float) -> MigrationLockTimeoutError:
    return MigrationLockTimeoutError(
        f"Another `dbkeel migrate` held the migration lock for more than {wait:g} s, so "
        f"these migrations did not run. It may still be migrating: check its output, "
        f"then run again, or raise --wait."
    )


async def _unlock(conn: AsyncConnection) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_KEY})
    elif dialect in ("mysql", "mariadb"):
        await conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": LOCK_NAME})
    await conn.commit()


async def _set_timeouts(conn: AsyncConnection, lock_timeout: float, statement: float) -> None:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        await conn.execute(text(f"SET lock_timeout = {int(lock_timeout * 1000)}"))
        await conn.execute(text(f"SET statement_timeout = {int(statement * 1000)}"))
    elif dialect in ("mysql", "mariadb"):
        # lock_wait_timeout covers metadata locks (what an ALTER waits for), whole seconds
        await conn.execute(text(f"SET SESSION lock_wait_timeout = {max(1, round(lock_timeout))}"))
        await conn.execute(text(f"SET SESSION max_statement_time = {float(statement)}"))
    await conn.commit()


def on_connection(config: Any, command: Any, *args: Any, **kw: Any) -> Any:
    """Return a ``run_sync`` target that runs an Alembic *command* on the connection."""

    def run(connection: Connection) -> Any:
        config.attributes["connection"] = connection
        try:
            return command(config, *args, **kw)
        finally:
            config.attributes.pop("connection", None)

    return run


async def migrate(
    config: Any,
    settings: DatabaseSettings,
    *,
    revision: str = "head",
    wait: float = 60.0,
    lock_timeout: float = 10.0,
    statement_timeout: float = 300.0,
) -> None:
    """Upgrade to *revision* under the migration lock (see the module docstring)."""
    from alembic import command

    for name, value in (
        ("wait", wait),
        ("lock_timeout", lock_timeout),
        ("statement_timeout", statement_timeout),
    ):
        if not value > 0:
            raise ConfigurationError(f"{name}={value!r} must be a number of seconds > 0.")
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await _lock(conn, wait)
            try:
                await _set_timeouts(conn, lock_timeout, statement_timeout)
                await conn.run_sync(on_connection(config, command.upgrade, revision))
                await conn.commit()
            finally:
                # a failed migration must not leave the lock to the next instance's wait
                await conn.rollback()
                await _unlock(conn)
    finally:
        await engine.dispose()
