"""The one place where driver and SQLAlchemy errors become dbkeel errors.

Used by the manager's ``get_session()``, the retry helper and bulk writes, so that a
given failure is reported the same way whichever path it took.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from sqlalchemy.orm.exc import StaleDataError

from dbkeel import _sql
from dbkeel.exceptions import (
    CommitOutcomeUnknownError,
    ConcurrentUpdateError,
    DatabaseUnavailableError,
    DbkeelError,
    InvalidValueError,
    PoolExhaustedError,
    ReadOnlyTransactionError,
    StatementTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.pool import Pool

    from dbkeel.settings import DatabaseSettings

__all__ = [
    "ErrorTranslation",
    "commit",
    "concurrent_update_error",
    "driver_error",
    "failover_reason",
    "is_disconnect",
    "mysql_errno",
    "read_only_error",
    "retryable_reason",
    "sqlstate",
    "translate_errors",
]

_STALE_TABLE = re.compile(r"on table '([^']+)'")


def translate_errors(
    pool: Pool | None = None,
    *,
    pool_timeout: float = 0.0,
    settings: DatabaseSettings | None = None,
) -> ErrorTranslation:
    """Re-raise database failures as dbkeel errors; everything else passes unchanged.

    - a pool timeout -> :class:`PoolExhaustedError`;
    - a stale version -> :class:`ConcurrentUpdateError`;
    - a statement stopped by a timeout (asyncpg's bare ``TimeoutError`` for
      ``command_timeout``, PostgreSQL's 57014/55P03, MariaDB's 1969, MySQL's 3024) ->
      :class:`StatementTimeoutError` naming the setting and its value (*settings*);
    - a refused, reset or lost connection -> :class:`DatabaseUnavailableError`;
    - a column type's ``InvalidValueError`` inside a ``StatementError`` (whose message
      would also print every bound parameter) -> raised as itself.

    ``CancelledError`` and the ``TimeoutError`` of the caller's own ``asyncio.timeout()``
    are never touched. The original is ``__cause__``, except for a refused value. Costs
    nothing unless an exception passes through. Example::

        with translate_errors(engine.pool, pool_timeout=30.0, settings=settings):
            await session.execute(statement)
    """
    return ErrorTranslation(pool, pool_timeout, settings)


class ErrorTranslation:
    """The context manager of :func:`translate_errors`.

    A class rather than a ``@contextmanager`` generator: it wraps every
    ``get_session()``, and entering it must cost no generator frame (request-path goal
    of issue 17). :meth:`raise_translated` serves callers that hold the exception already
    (``get_session()``'s ``__aexit__``).
    """

    __slots__ = ("pool", "pool_timeout", "settings")

    def __init__(
        self, pool: Pool | None, pool_timeout: float, settings: DatabaseSettings | None
    ) -> None:
        self.pool = pool
        self.pool_timeout = pool_timeout
        self.settings = settings

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.raise_translated(exc)

    def raise_translated(self, exc: BaseException) -> None:
        """Raise the dbkeel error for *exc*; return if *exc* is to pass unchanged."""
        # The order of the checks matters: PoolExhaustedError is a sqlalchemy TimeoutError
        # and StatementTimeoutError a builtin one.
        if isinstance(exc, sqlalchemy.exc.TimeoutError):
            if isinstance(exc, DbkeelError):
                return
            raise _pool_exhausted(self.pool, self.pool_timeout) from exc
        if isinstance(exc, sqlalchemy.exc.StatementError):
            if isinstance(exc.orig, InvalidValueError):
                # from None: the StatementError's text lists every bound parameter of the
                # statement (other columns' values, tokens...), which must not reach a log.
                raise exc.orig from None
            translated = read_only_error(exc) or _translate_database_error(exc, self.settings)
            if translated is not None:
                raise translated from exc
            return
        if isinstance(exc, StaleDataError):
            raise concurrent_update_error(exc) from exc
        if isinstance(exc, (TimeoutError, OSError)):  # ConnectionError is an OSError
            if isinstance(exc, DbkeelError) or not _raised_by_database_code(exc):
                return
            if isinstance(exc, TimeoutError) and not _while_connecting(exc):
                raise _client_timeout(self.settings) from exc
            raise _connection_lost(exc, self.settings) from exc


async def commit(session: AsyncSession, settings: DatabaseSettings | None = None) -> None:
    """``await session.commit()``, with a failure of unknown outcome said as such.

    A COMMIT whose connection dropped, or that got no answer in time, may or may not have
    been applied by the server: :class:`CommitOutcomeUnknownError`, never retried. Other
    failures (a deferred constraint, a serialization failure) are raised as they are:
    the server rolled the transaction back.
    """
    try:
        await session.commit()
    except Exception as exc:
        if retryable_reason(exc) is None and is_disconnect(exc):
            raise _commit_outcome_unknown(exc, settings) from exc
        raise


def _commit_outcome_unknown(
    exc: BaseException, settings: DatabaseSettings | None
) -> CommitOutcomeUnknownError:
    if isinstance(exc, TimeoutError):
        what = "COMMIT got no answer within " + _command_timeout_text(settings)
    else:
        what = f"the connection was lost while COMMIT was in flight ({type(exc).__name__})"
    return CommitOutcomeUnknownError(
        f"The outcome of the transaction is unknown: {what}. The server may or may not "
        f"have committed it, so it is not retried: check whether its changes are in the "
        f"database, then decide."
    )


# SQLSTATE / MySQL errno of a statement the server stopped for running too long.
_SERVER_TIMEOUTS = {
    "57014": ("DATABASE_STATEMENT_TIMEOUT", "statement timeout"),
    "55P03": ("lock_timeout", "lock timeout"),
}
_MYSQL_TIMEOUTS = {1969: "max_statement_time", 3024: "max_execution_time"}
# The server shutting down, crashed, or still starting (PostgreSQL class 57P0x; class 08
# is a connection exception), and MariaDB's "can't connect", "gone away", "lost
# connection", "server shutdown in progress".
_SERVER_GOING_AWAY = {"57P01", "57P02", "57P03"}
_MYSQL_CONNECTION_ERRNOS = {1053, 2002, 2003, 2006, 2013}
_DRIVER_PACKAGES = ("asyncpg", "asyncmy", "aiosqlite", "psycopg", "sqlalchemy")


def _translate_database_error(
    exc: sqlalchemy.exc.StatementError, settings: DatabaseSettings | None
) -> DbkeelError | None:
    state = sqlstate(exc)
    if state in _SERVER_TIMEOUTS and (
        state != "57014" or "statement timeout" in str(exc.orig)  # not a pg_cancel_backend()
    ):
        setting, what = _SERVER_TIMEOUTS[state]
        value = settings.statement_timeout if settings and state == "57014" else None
        shown = f"{setting}={value:g} s" if value is not None else setting
        return StatementTimeoutError(
            f"The server stopped the statement: it ran past its {what} ({shown}). Make the "
            f"statement faster (an index, a smaller batch) or raise {setting}.",
            setting=setting,
            timeout=value,
        )
    errno = mysql_errno(exc)
    if errno in _MYSQL_TIMEOUTS:
        value = settings.statement_timeout if settings else None
        shown = f"{value:g} s" if value is not None else "the server's limit"
        return StatementTimeoutError(
            f"The server stopped the statement: it ran past {_MYSQL_TIMEOUTS[errno]} "
            f"({shown}, from DATABASE_STATEMENT_TIMEOUT). Make the statement faster or "
            f"raise DATABASE_STATEMENT_TIMEOUT.",
            setting="DATABASE_STATEMENT_TIMEOUT",
            timeout=value,
        )
    if (state is not None and (state.startswith("08") or state in _SERVER_GOING_AWAY)) or (
        errno in _MYSQL_CONNECTION_ERRNOS
    ):
        return _connection_lost(exc, settings)
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and (
        exc.connection_invalidated
        or (isinstance(exc, sqlalchemy.exc.InterfaceError) and "closed" in str(exc.orig))
        or isinstance(exc.orig, OSError)
    ):
        return _connection_lost(exc, settings)
    return None


def _raised_by_database_code(exc: BaseException) -> bool:
    """True if *exc* was raised inside a driver or SQLAlchemy, not by the caller's code.

    Tells asyncpg's ``command_timeout`` (a bare ``TimeoutError`` raised in asyncpg) from
    the caller's own ``asyncio.timeout()`` (raised in the caller's ``async with``), and a
    refused connection from an ``OSError`` of the application's own I/O.
    """
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if any(f"{pkg}/" in filename or f"{pkg}\\" in filename for pkg in _DRIVER_PACKAGES):
            return True
        if filename.endswith(".pyx"):  # asyncpg's protocol is Cython
            return True
        tb = tb.tb_next
    return False


def _while_connecting(exc: BaseException) -> bool:
    """True if *exc* was raised while the pool opened or pinged a connection."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if "sqlalchemy/pool/" in code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def _command_timeout_text(settings: DatabaseSettings | None) -> str:
    value = settings.command_timeout if settings else None
    return f"DATABASE_COMMAND_TIMEOUT={value:g} s" if value else "DATABASE_COMMAND_TIMEOUT"


def _client_timeout(settings: DatabaseSettings | None) -> StatementTimeoutError:
    return StatementTimeoutError(
        f"The database did not answer within {_command_timeout_text(settings)} (client-side; "
        f"the driver cancelled the statement and the transaction was rolled back). Make the "
        f"statement faster, or raise DATABASE_COMMAND_TIMEOUT; if the server is overloaded "
        f"or the network stalls, the next attempt may succeed.",
        setting="DATABASE_COMMAND_TIMEOUT",
        timeout=settings.command_timeout if settings else None,
    )


def _connection_lost(
    exc: BaseException, settings: DatabaseSettings | None = None
) -> DatabaseUnavailableError:
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, TimeoutError):
        limit = f"DATABASE_CONNECT_TIMEOUT={settings.connect_timeout:g} s" if settings else "time"
        return DatabaseUnavailableError(
            f"Could not open (or ping) a database connection within {limit}: the server is "
            f"overloaded or unreachable, or the network stalls. Nothing of this transaction "
            f"was committed. Retry once the database answers (a readiness check: await "
            f"db.health())."
        )
    # The driver's own text ("connection was closed in the middle of operation"), never
    # the StatementError's, which lists the statement's parameters.
    detail = str(orig)[:200] or "no detail"
    return DatabaseUnavailableError(
        f"The database connection failed ({type(orig).__name__}: {detail}): the server is down, "
        f"restarting, or unreachable, or it closed this connection. Nothing of this "
        f"transaction was committed; the pool replaces the connection. Retry once the "
        f"database answers (a readiness check: await db.health())."
    )


_READ_ONLY_VERB = re.compile(r"cannot execute (\w+(?: \w+)?) in a read-only transaction")
_MYSQL_READ_ONLY_ERRNO = 1792  # "Cannot execute statement in a READ ONLY transaction"


def read_only_error(exc: sqlalchemy.exc.StatementError) -> ReadOnlyTransactionError | None:
    """*exc* as a ReadOnlyTransactionError if a read-only transaction refused a write."""
    if sqlstate(exc) == "25006":
        match = _READ_ONLY_VERB.search(str(exc.orig))
        kind = match.group(1) if match else _verb(exc.statement)
    elif mysql_errno(exc) == _MYSQL_READ_ONLY_ERRNO or (
        # SQLite's PRAGMA query_only refusal (SQLITE_READONLY)
        "attempt to write a readonly database" in str(exc.orig)
        and exc.statement is not None
        and _verb(exc.statement) not in ("PRAGMA",)
    ):
        kind = _verb(exc.statement)
    else:
        return None
    return ReadOnlyTransactionError(
        f"A {kind} statement ran in a read-only session (get_session(read_only=True)): "
        f"read-only sessions may land on a replica, so the database refuses every write "
        f"in them. Use a read-write session, `db.get_session()`, for statements that "
        f"change data.",
        statement_kind=kind,
    )


def _verb(statement: str | None) -> str:
    return _sql.keyword(statement or "") or "write"


def driver_error(
    connection: Any, dialect: Dialect, exc: Exception, statement: str
) -> sqlalchemy.exc.DBAPIError | None:
    """*exc*, raised by asyncpg outside SQLAlchemy (COPY), as SQLAlchemy raises it.

    *connection* is SQLAlchemy's adapted DBAPI connection. Its exception hook maps the
    driver's exception to the DBAPI class (asyncpg's ``UniqueViolationError`` to
    ``IntegrityError``) and notes a closed connection; the result is wrapped like any
    statement's error, so that a caller catches ``sqlalchemy.exc.IntegrityError``
    whichever path wrote the rows. None for anything else (the caller's own exceptions,
    an encoder's ``TypeError``): those are raised as they are.
    """
    if not type(exc).__module__.startswith("asyncpg"):
        return None
    handle = getattr(connection, "_handle_exception", None)  # SQLAlchemy's asyncio adapters
    if handle is None:
        return None
    try:
        handle(exc)
    except Exception as adapted:  # the hook always raises
        dbapi = dialect.loaded_dbapi
        if not isinstance(adapted, dbapi.Error):
            return None
        wrapped = sqlalchemy.exc.DBAPIError.instance(
            statement,
            None,
            adapted,
            dbapi.Error,
            connection_invalidated=dialect.is_disconnect(adapted, connection, None),
            dialect=dialect,
        )
        # always a DBAPIError here: `adapted` is the DBAPI's own Error
        return wrapped if isinstance(wrapped, sqlalchemy.exc.DBAPIError) else None
    return None  # pragma: no cover - the hook returned


def concurrent_update_error(exc: StaleDataError) -> ConcurrentUpdateError:
    """A ConcurrentUpdateError naming the model and primary key behind *exc*.

    ``DbkeelSession.flush()`` attaches the versioned objects that were being written as
    ``exc.dbkeel_stale_rows``; without it only the table name is known.
    """
    match = _STALE_TABLE.search(str(exc))
    table = match.group(1) if match else None
    rows = [r for r in getattr(exc, "dbkeel_stale_rows", ()) if table is None or r[1] == table]
    if len(rows) == 1:
        model, _, pk = rows[0]
        what = f"{model} with primary key {pk!r} (table {table!r})"
        return ConcurrentUpdateError(
            f"Another transaction changed or deleted {what} after this one read it "
            f"(stale version): {exc}. Re-read the row and apply the change again; "
            f"DatabaseManager.run_in_transaction() retries the whole unit for you.",
            model=model,
            primary_key=pk,
        )
    candidates = ", ".join(f"{m} {pk!r}" for m, _, pk in rows)
    what = f"a row of {table or 'unknown table'!r}" + (
        f" (one of: {candidates})" if candidates else ""
    )
    return ConcurrentUpdateError(
        f"Another transaction changed or deleted {what} after this one read it "
        f"(stale version): {exc}. Re-read the row and apply the change again; "
        f"DatabaseManager.run_in_transaction() retries the whole unit for you.",
        model=rows[0][0] if rows else table,
    )


#: PostgreSQL SQLSTATEs and MariaDB/MySQL error numbers worth retrying the transaction on.
RETRYABLE_SQLSTATES = {"40001": "serialization failure", "40P01": "deadlock"}
RETRYABLE_MYSQL_ERRNOS = {1213: "deadlock", 1205: "lock wait timeout"}


def retryable_reason(exc: BaseException) -> str | None:
    """Why retrying the whole transaction may cure *exc*, or None if it will not."""
    if isinstance(exc, ConcurrentUpdateError):
        return "stale version"
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return None
    state = sqlstate(exc)
    if state in RETRYABLE_SQLSTATES:
        return f"{RETRYABLE_SQLSTATES[state]} (SQLSTATE {state})"
    errno = mysql_errno(exc)
    if errno in RETRYABLE_MYSQL_ERRNOS:
        return f"{RETRYABLE_MYSQL_ERRNOS[errno]} (error {errno})"
    return None


#: SQLSTATEs of a server going away under a transaction: admin/crash shutdown, cannot
#: connect now (starting up, shutting down), connection failures, and a read-write
#: transaction that reached a standby (a demoted primary during failover).
FAILOVER_SQLSTATES = {"57P01", "57P02", "57P03", "25006"}


def failover_reason(exc: BaseException) -> str | None:
    """Why *exc*, raised BEFORE COMMIT, looks like the primary going away (failover).

    The transaction did not commit, so running it again (on a fresh connection, which
    the pool opens to whichever host now accepts writes) is safe. Never use this for an
    error raised by COMMIT itself: that outcome is unknown.
    """
    state = sqlstate(exc)
    if state is not None and (state in FAILOVER_SQLSTATES or state.startswith("08")):
        return f"the primary went away (SQLSTATE {state})"
    if is_disconnect(exc):
        return f"the connection to the primary was lost ({type(exc).__name__})"
    return None


def is_disconnect(exc: BaseException) -> bool:
    """True when *exc* means the connection was lost (so a COMMIT's outcome is unknown)."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, sqlalchemy.exc.InterfaceError)
    return isinstance(exc, (ConnectionError, OSError, TimeoutError))


def _pool_exhausted(pool: Pool | None, timeout: float) -> PoolExhaustedError:
    size = overflow = checked_out = 0
    if pool is not None:
        size = int(getattr(pool, "size", lambda: 0)())
        overflow = int(getattr(pool, "_max_overflow", 0))
        checked_out = int(getattr(pool, "checkedout", lambda: 0)())
        timeout = float(getattr(pool, "_timeout", timeout))
    return PoolExhaustedError(
        pool_size=size, max_overflow=overflow, checked_out=checked_out, timeout=timeout
    )


def _error_chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc*, then what it wraps: SQLAlchemy's ``.orig``, else ``__cause__``; no cycles."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        nxt = getattr(current, "orig", None)
        current = nxt if isinstance(nxt, BaseException) else current.__cause__


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind *exc* (asyncpg or psycopg), or None.

    Example: ``sqlstate(exc) == "40001"`` for a serialization failure.
    """
    for current in _error_chain(exc):
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def mysql_errno(exc: BaseException) -> int | None:
    """The MariaDB/MySQL error number behind *exc* (asyncmy, aiomysql), or None.

    Example: ``mysql_errno(exc) == 1213`` for a deadlock. An ``OSError``'s errno is not
    a server error number and is never returned.
    """
    for current in _error_chain(exc):
        if isinstance(current, OSError):
            continue
        args = getattr(current, "args", ())
        if args and isinstance(args[0], int) and not isinstance(args[0], bool):
            return args[0]
    return None
