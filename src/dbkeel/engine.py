"""Engine profiles: turn :class:`DatabaseSettings` into a configured ``AsyncEngine``.

One profile per environment, one set of connect arguments per driver::

    production   AsyncAdaptedQueuePool with every pool knob of the settings
    development  the same pool, kept small (5 + 2 unless set explicitly), echo optional
    test         NullPool: no connection outlives its checkout, so per-test event loops
                 never meet a connection opened on another loop

The driver-specific part matters because ``connect_args`` are passed verbatim to the
driver: asyncpg's ``server_settings`` crash psycopg and aiosqlite, and vice versa.

    from dbkeel.engine import create_engine
    engine = create_engine(DatabaseSettings(environment="production", database_url=...))
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool, StaticPool

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

    from dbkeel.settings import DatabaseSettings

__all__ = ["EngineOptions", "build_engine_options", "create_engine"]

logger = logging.getLogger(__name__)

#: sql_mode for MariaDB/MySQL sessions: reject bad data instead of truncating it.
STRICT_SQL_MODE = "TRADITIONAL,NO_ENGINE_SUBSTITUTION"
_DEV_POOL_SIZE = 5
_DEV_MAX_OVERFLOW = 2
#: asyncpg pre-ping: a connection back in the pool for less than this is not pinged.
PING_IDLE_AFTER = 0.5
_RETURNED_AT = "dbkeel_returned_at"


@dataclass(frozen=True)
class EngineOptions:
    """Everything ``create_async_engine`` receives, computed from settings.

    ``kwargs`` never holds the password (it stays inside ``url``), so this object is safe
    to log; ``sqlite_pragmas`` and ``session_sql`` are run on every new connection.
    """

    url: URL
    kwargs: dict[str, Any]
    sqlite_pragmas: tuple[str, ...] = ()
    session_sql: tuple[str, ...] = ()
    mysql_statement_timeout: float | None = None
    #: pre-ping done by dbkeel's checkout hook instead of SQLAlchemy's (asyncpg)
    checkout_ping: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def poolclass(self) -> type[Pool]:
        poolclass: type[Pool] = self.kwargs.get("poolclass", AsyncAdaptedQueuePool)
        return poolclass


def build_engine_options(settings: DatabaseSettings) -> EngineOptions:
    """Compute engine arguments for *settings* without creating anything.

    Example::

        options = build_engine_options(DatabaseSettings(environment="test"))
        assert options.poolclass is NullPool
    """
    url = settings.url
    backend = url.get_backend_name()
    driver = url.get_driver_name()
    kwargs: dict[str, Any] = {"echo": settings.echo}
    if settings.environment == "production":
        # Bound parameters (user data, tokens) stay out of logs and exception messages.
        kwargs["hide_parameters"] = True
    notes: list[str] = []
    if settings.isolation_level is not None:
        kwargs["isolation_level"] = settings.isolation_level
    if settings.pgbouncer and settings.statement_timeout is not None:
        notes.append(
            "DATABASE_STATEMENT_TIMEOUT is not sent with DATABASE_PGBOUNCER=1: PgBouncer "
            "rejects unknown startup parameters and forgets session SETs between "
            "transactions. Set it on the server instead: ALTER ROLE <app> SET "
            "statement_timeout = '30s'"
        )

    kwargs.update(_pool_options(settings, url))
    connect_args: dict[str, Any] = {}
    statement_timeout: float | None = None
    pragmas: tuple[str, ...] = ()
    session_sql: tuple[str, ...] = ()

    checkout_ping = False
    if driver == "asyncpg":
        connect_args, url = _asyncpg_args(settings, url, kwargs)
        # SQLAlchemy's asyncpg ping is BEGIN; ";"; ROLLBACK - three round trips on every
        # checkout, as many as the request's own work. See _install_checkout_ping.
        checkout_ping = bool(kwargs.get("pool_pre_ping"))
        if checkout_ping:
            kwargs["pool_pre_ping"] = False
    elif driver == "psycopg":
        connect_args = _psycopg_args(settings)
    elif driver == "aiosqlite":
        connect_args = {"timeout": settings.connect_timeout}
        pragmas = (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={int(settings.connect_timeout * 1000)}",
        )
    elif driver == "asyncmy":
        connect_args = {
            "connect_timeout": max(1, round(settings.connect_timeout)),
            "charset": "utf8mb4",
            "program_name": settings.app_name,
        }
        session_sql = (
            # Not asyncmy's sql_mode= argument: it sends the value unquoted, a syntax error.
            f"SET SESSION sql_mode = '{STRICT_SQL_MODE}'",
            # UTC sessions, so CURRENT_TIMESTAMP / NOW() defaults agree with Python's UTC.
            "SET SESSION time_zone = '+00:00'",
        )
        statement_timeout = settings.statement_timeout
    else:
        notes.append(
            f"driver {backend}+{driver} has no dbkeel profile: connect arguments "
            f"(timeouts, application_name) are not set; pool settings still apply"
        )
    if connect_args:
        kwargs["connect_args"] = connect_args
    return EngineOptions(
        url=url,
        kwargs=kwargs,
        sqlite_pragmas=pragmas,
        session_sql=session_sql,
        mysql_statement_timeout=statement_timeout,
        checkout_ping=checkout_ping,
        notes=notes,
    )


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """Create the ``AsyncEngine`` for *settings* (no connection is opened yet).

    Example::

        engine = create_engine(DatabaseSettings())   # embedded SQLite, development profile
    """
    options = build_engine_options(settings)
    for note in options.notes:
        logger.warning("dbkeel: %s", note, extra={"app_name": settings.app_name})
    engine = create_async_engine(options.url, **options.kwargs)
    if options.sqlite_pragmas:
        autocommit = settings.isolation_level == "AUTOCOMMIT"
        _install_sqlite_hooks(engine, options.sqlite_pragmas, autocommit_default=autocommit)
    if options.session_sql:
        _install_session_sql(engine, options.session_sql, options.mysql_statement_timeout)
    if options.checkout_ping:
        _install_checkout_ping(engine)
    return engine


def _pool_options(settings: DatabaseSettings, url: URL) -> dict[str, Any]:
    memory_sqlite = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if memory_sqlite:
        # Every new connection to :memory: is a new, empty database: share one.
        return {"poolclass": StaticPool}
    if settings.environment == "test" or settings.pgbouncer:
        # test: connections never cross event loops. pgbouncer: it is the pool.
        return {"poolclass": NullPool}
    pool_size = settings.pool_size
    max_overflow = settings.effective_max_overflow
    if settings.environment == "development":
        explicit = settings.model_fields_set
        if "pool_size" not in explicit:
            pool_size = min(pool_size, _DEV_POOL_SIZE)
        if "max_overflow" not in explicit:
            max_overflow = min(max_overflow, _DEV_MAX_OVERFLOW)
    return {
        "poolclass": AsyncAdaptedQueuePool,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
        "pool_pre_ping": settings.effective_pre_ping,
        "pool_use_lifo": settings.pool_use_lifo,
    }


def _asyncpg_args(
    settings: DatabaseSettings, url: URL, kwargs: dict[str, Any]
) -> tuple[dict[str, Any], URL]:
    server_settings = {"application_name": settings.app_name}
    args: dict[str, Any] = {"timeout": settings.connect_timeout}
    if settings.command_timeout is not None:
        args["command_timeout"] = settings.command_timeout
    if settings.pgbouncer:
        # PgBouncer (transaction mode) cannot keep named prepared statements across
        # transactions, and rejects unknown startup parameters such as jit unless its
        # ignore_startup_parameters lists them. See the asyncpg dialect docs, "Prepared
        # Statement Name with PGBouncer", and sqlalchemy #6467.
        args["statement_cache_size"] = 0
        args["prepared_statement_name_func"] = _unique_statement_name
        url = url.update_query_dict({"prepared_statement_cache_size": "0"})
    else:
        # jit=off: JIT compilation makes first queries with ENUMs slow (asyncpg #727).
        server_settings["jit"] = "off"
        if settings.statement_timeout is not None:
            server_settings["statement_timeout"] = str(int(settings.statement_timeout * 1000))
    args["server_settings"] = server_settings
    return args, url


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


def _psycopg_args(settings: DatabaseSettings) -> dict[str, Any]:
    options = []
    if not settings.pgbouncer:
        options.append("-c jit=off")
        if settings.statement_timeout is not None:
            options.append(f"-c statement_timeout={int(settings.statement_timeout * 1000)}")
    args: dict[str, Any] = {
        "application_name": settings.app_name,
        "connect_timeout": max(1, round(settings.connect_timeout)),
    }
    if options:
        args["options"] = " ".join(options)
    if settings.pgbouncer:
        # psycopg prepares a statement after 5 runs; PgBouncer (transaction mode) then
        # routes the EXECUTE to a server that never saw the PREPARE.
        args["prepare_threshold"] = None
    return args


def _install_sqlite_hooks(
    engine: AsyncEngine, pragmas: tuple[str, ...], *, autocommit_default: bool
) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin: the
        # module's legacy behaviour breaks SAVEPOINT and transactional DDL (see the
        # SQLAlchemy aiosqlite dialect docs, "Serializable isolation / Savepoints").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Not conn.get_isolation_level(): it asks SQLite (an extra PRAGMA per transaction)
        # and never answers AUTOCOMMIT. The execution option, else the engine default.
        level = conn.get_execution_options().get("isolation_level")
        if level is None and autocommit_default:
            return
        if level != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN")


def _install_session_sql(
    engine: AsyncEngine, statements: tuple[str, ...], statement_timeout: float | None
) -> None:
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        todo = list(statements)
        if statement_timeout is not None:
            # SQLAlchemy initializes the dialect on the first connect before this runs,
            # so is_mariadb reflects the server, whatever the URL said.
            if getattr(dialect, "is_mariadb", False):
                todo.append(f"SET SESSION max_statement_time = {statement_timeout:g}")
            else:  # MySQL: milliseconds, and it limits SELECT statements only
                todo.append(f"SET SESSION max_execution_time = {int(statement_timeout * 1000)}")
        cursor = dbapi_connection.cursor()
        try:
            for statement in todo:
                cursor.execute(statement)
        finally:
            cursor.close()


def _install_checkout_ping(engine: AsyncEngine) -> None:
    """Pre-ping for asyncpg at the price of a method call on a busy pool.

    A connection the server closed (restart, failover, ``pg_terminate_backend``,
    ``idle_session_timeout``) is already known closed to asyncpg when the event loop saw
    the socket's EOF: that check is free and made at every checkout. A connection idle
    for :data:`PING_IDLE_AFTER` seconds or more is also pinged, as ``pool_pre_ping``
    does, for what only a round trip shows (a dropped network path). A connection used
    a moment ago is handed out as is, as HikariCP does (``aliveBypassWindowMs``, 500 ms):
    a server that kills it in that window fails one statement, which invalidates the
    pool. A failed check raises ``InvalidatePoolError``, as
    SQLAlchemy's failed pre-ping does: the pool replaces the connection, marks the older
    ones for replacement, and checks out again.
    """
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine.pool, "checkin")
    def _returned(dbapi_connection: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(sync_engine.pool, "checkout")
    def _check(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None and driver.is_closed():
            # like a failed pre-ping: the pool's older connections are suspect too
            raise InvalidatePoolError("the server closed this pooled connection")
        returned = record.info.get(_RETURNED_AT)  # None: a new connection, just proven
        if returned is None or time.monotonic() - returned < PING_IDLE_AFTER:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):  # type: ignore[arg-type]
                raise InvalidatePoolError(f"pre-ping failed: {exc}") from exc
            raise
