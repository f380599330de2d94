"""The test database: named after the application's, created, marked, built, dropped.

The plugin never writes to a database it did not create. It creates
``<database>_test`` (``_test_gw0`` ... under pytest-xdist) and marks it as its own:
a comment on the database (PostgreSQL, MariaDB) or SQLite's ``application_id``. A
database of that name without the mark is refused unless the configuration says to
use it anyway (``dbkeel_allow_existing``); such a database is then neither recreated
nor dropped.

Example::

    url = url_for_tests(make_url("postgresql+asyncpg://app@db/shop"), worker="gw1")
    # postgresql+asyncpg://app@db/shop_test_gw1
    created = await create_database(url, allow_existing=False)
    await build_schema(url, metadata=Base.metadata)
    ...
    await drop_database(url)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dbkeel._masking import scrub_secrets
from dbkeel.exceptions import ConfigurationError, DatabaseUnavailableError
from dbkeel.settings import DatabaseSettings

__all__ = [
    "MARK",
    "build_schema",
    "create_database",
    "drop_database",
    "url_for_tests",
    "with_suffix",
]

MARK = "dbkeel test database"
_SQLITE_APPLICATION_ID = 0x64626B6C  # "dbkl"


def url_for_tests(app_url: URL, worker: str | None = None) -> URL:
    """The test database's URL for the application's *app_url*: ``<name>_test[_<worker>]``.

    SQLite: the file's name gets the suffix (``app.sqlite3`` -> ``app_test.sqlite3``);
    an in-memory URL gets a file ``dbkeel_test.sqlite3`` in the current directory.
    """
    if not app_url.database and app_url.get_backend_name() != "sqlite":
        raise ConfigurationError(
            f"The database URL {app_url.render_as_string(hide_password=True)} names no "
            f"database, so the test database cannot be named after it. Add one, or set "
            f"dbkeel_url / --dbkeel-url to the test database's URL."
        )
    return with_suffix(app_url, "_test" + (f"_{worker}" if worker else ""))


def with_suffix(url: URL, suffix: str) -> URL:
    """*url* with *suffix* appended to the database name (SQLite: to the file's stem)."""
    name = url.database or ""
    if url.get_backend_name() != "sqlite":
        return url.set(database=name + suffix)
    if name in ("", ":memory:") or name.startswith("file:"):
        name = "dbkeel.sqlite3"
    path = Path(name)
    return url.set(database=str(path.with_name(path.stem + suffix + path.suffix)))


def _admin_engine(url: URL) -> AsyncEngine:
    backend = url.get_backend_name()
    # URL.set(database=None) would keep the name: None means "unchanged" there
    admin = url.set(database="postgres") if backend == "postgresql" else url._replace(database=None)
    return create_async_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def _quote(conn: AsyncConnection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


@asynccontextmanager
async def _reach(engine: AsyncEngine, url: URL) -> AsyncIterator[AsyncConnection]:
    """*engine*'s connection, or DatabaseUnavailableError naming the server."""
    try:
        conn = await engine.connect()
    except (OSError, DBAPIError) as exc:
        port = url.port or "default port"
        where = f"{url.get_backend_name()} server at {url.host or 'localhost'}:{port}"
        detail = scrub_secrets(f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}", [url])
        raise DatabaseUnavailableError(
            f"dbkeel's pytest plugin cannot reach the {where} to create the test "
            f"database {url.database!r} ({detail[:300]}). Start the server, or point "
            f"DATABASE_URL / dbkeel_url / --dbkeel-url at one that runs."
        ) from None
    try:
        yield conn
    finally:
        await conn.close()


async def _mark_of(conn: AsyncConnection, name: str) -> str | None:
    """The comment on database *name* ('' when it has none); None if it does not exist."""
    if conn.dialect.name == "postgresql":
        row = (
            await conn.execute(
                text(
                    "SELECT coalesce(shobj_description(oid, 'pg_database'), '') "
                    "FROM pg_database WHERE datname = :n"
                ),
                {"n": name},
            )
        ).first()
    else:
        row = (
            await conn.execute(
                text(
                    "SELECT coalesce(schema_comment, '') FROM information_schema.schemata "
                    "WHERE schema_name = :n"
                ),
                {"n": name},
            )
        ).first()
    return None if row is None else str(row[0])


async def create_database(url: URL, *, allow_existing: bool = False) -> bool:
    """Create the test database at *url*, marked as dbkeel's; True if it was created.

    A database left by an earlier run (``--dbkeel-keep``, a crash) is recreated. One
    that exists without the mark raises :class:`ConfigurationError`, unless
    *allow_existing*: it is then used as it is, and False is returned.
    """
    if url.get_backend_name() == "sqlite":
        return _create_sqlite(Path(url.database or ""), allow_existing)
    name = url.database or ""
    engine = _admin_engine(url)
    try:
        async with _reach(engine, url) as conn:
            mark = await _mark_of(conn, name)
            if mark is not None and mark != MARK:
                if allow_existing:
                    return False
                raise _not_ours(url, f"database {name!r} exists and")
            quoted = _quote(conn, name)
            if mark is not None:
                await _drop(conn, name)
            if conn.dialect.name == "postgresql":
                await conn.execute(text(f"CREATE DATABASE {quoted}"))
                await conn.execute(text(f"COMMENT ON DATABASE {quoted} IS '{MARK}'"))
            else:
                await conn.execute(
                    text(
                        f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4 "
                        f"COLLATE utf8mb4_unicode_ci COMMENT '{MARK}'"
                    )
                )
    finally:
        await engine.dispose()
    return True


def _create_sqlite(path: Path, allow_existing: bool) -> bool:
    import sqlite3

    if path.exists():
        with sqlite3.connect(path) as conn:
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        conn.close()
        if app_id != _SQLITE_APPLICATION_ID:
            if allow_existing:
                return False
            raise _not_ours_path(path)
        _remove_sqlite(path)
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA application_id = {_SQLITE_APPLICATION_ID}")
        conn.commit()
    finally:
        conn.close()
    return True


def _drop_sqlite(path: Path) -> None:
    import sqlite3

    if not path.exists():
        return
    conn = sqlite3.connect(path)
    try:
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    finally:
        conn.close()
    if app_id == _SQLITE_APPLICATION_ID:
        _remove_sqlite(path)


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


async def _drop(conn: AsyncConnection, name: str) -> None:
    quoted = _quote(conn, name)
    if conn.dialect.name == "postgresql":
        # WITH (FORCE): a test that leaked a connection must not keep the database alive
        await conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    else:
        await conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}"))


async def drop_database(url: URL) -> None:
    """Drop the test database at *url*, if it carries dbkeel's mark (else leave it)."""
    if url.get_backend_name() == "sqlite":
        _drop_sqlite(Path(url.database or ""))
        return
    engine = _admin_engine(url)
    try:
        async with engine.connect() as conn:
            if await _mark_of(conn, url.database or "") == MARK:
                await _drop(conn, url.database or "")
    finally:
        await engine.dispose()


async def build_schema(
    settings: DatabaseSettings,
    *,
    metadata: MetaData | None = None,
    alembic_ini: str | None = None,
) -> None:
    """Create the tables of *metadata*, or run ``alembic upgrade head`` (*alembic_ini*),
    in the database of *settings*.

    Alembic runs on dbkeel's connection to the test database, handed to ``env.py`` as
    ``config.attributes["connection"]`` (what ``dbkeel migrations init`` writes, and
    Alembic's cookbook recipe for sharing a connection, both honour it).
    """
    from dbkeel.engine import create_engine

    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            if alembic_ini is not None:
                await conn.run_sync(_alembic_upgrade, alembic_ini)
            elif metadata is not None:
                await conn.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


def _alembic_upgrade(connection: Any, ini: str) -> None:
    from dbkeel.exceptions import MissingDependencyError

    try:
        from alembic import command
        from alembic.config import Config
    except ImportError as exc:
        raise MissingDependencyError("dbkeel_alembic", "migrations", "alembic") from exc
    if not os.path.exists(ini):
        raise ConfigurationError(
            f"dbkeel_alembic = {ini!r}: no such file (relative to the pytest rootdir). "
            f"Point it at the application's alembic.ini."
        )
    config = Config(ini)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _not_ours(url: URL, what: str) -> ConfigurationError:
    return ConfigurationError(
        f"The test {what} was not created by dbkeel's pytest plugin "
        f"({url.render_as_string(hide_password=True)}): it may be a real database, so the "
        f"tests will not write to it or drop it. Point dbkeel_url / --dbkeel-url at a "
        f"database name that does not exist yet, or, if this one is meant for tests, "
        f"allow it with --dbkeel-allow-existing (or dbkeel_allow_existing = true)."
    )


def _not_ours_path(path: Path) -> ConfigurationError:
    return ConfigurationError(
        f"The SQLite file {str(path)!r} exists and was not created by dbkeel's pytest "
        f"plugin: it may hold real data, so the tests will not write to it or delete it. "
        f"Point dbkeel_url at another file, or allow it with --dbkeel-allow-existing."
    )
