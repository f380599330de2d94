"""What a sandbox sends to the server, and how it keeps that to the test's own work.

Two things, installed on the test database's engine by :class:`~.sandbox.Sandbox`:

- **Savepoint names by depth.** SQLAlchemy names savepoints ``sa_savepoint_<n>`` with
  *n* counting up for the life of the connection, and a sandbox keeps its connection from
  test to test: every SAVEPOINT, RELEASE and ROLLBACK TO would be a statement text never
  seen before, which asyncpg prepares (one more round trip each, four per simple test,
  measured) and which pushes the application's statements out of the prepared-statement
  and compiled caches. ``dbkeel_sp_<depth>`` repeats from test to test; PostgreSQL,
  MariaDB and SQLite all resolve a repeated name to its most recent savepoint, the one
  SQLAlchemy means. Connections outside a sandbox keep SQLAlchemy's names.

- **Held-back statements (asyncpg).** On a connection kept from test to test, the
  finished test's ``ROLLBACK`` and a new ``BEGIN`` wait in a list on the connection; so
  do a SAVEPOINT and a read-only session's ``SET TRANSACTION READ ONLY`` until the
  session's begin is complete. A sandboxed session sends the list as it begins, as one
  simple-protocol query: one round trip where the same work outside a sandbox spends
  one on its ``BEGIN``. A SAVEPOINT opened on the bare connection (no session) waits for
  the next statement, and is never sent if it ends first. A rollback of the
  connection's transaction drops the list; a commit sends it first.

  What this changes: between two tests, the previous test's rows and locks live on in
  the kept connection's transaction (invisible to other connections, as uncommitted
  rows are) until the next statement on it, for at most :data:`HOLD_LIMIT` seconds. So
  that nothing waits on those locks even that long, the held-back rollback is sent at
  once when the same engine hands out another connection (a test marked
  ``transaction=False``, a fixture that truncates through the base manager), and the
  pytest plugin holds it back only when the next test goes straight into a sandbox
  (``TestDatabase.settle`` otherwise). Code that writes the previous test's rows
  through a connection of its own in that window waits up to HOLD_LIMIT (a timer sends
  the rollback); code that blocks the event loop while it waits would wait for good.

A test that inserts through one session and reads through a read-only one sends 6
requests with or without the sandbox (9 before statements were held back); RELEASE and
ROLLBACK TO go out as plain strings too, past SQLAlchemy's compile-and-execute path.
``python -m benchmarks.instructions testing`` counts the client's instructions for 200
such tests: the sandbox's are 0.98 of the same work's without it (1.111 before).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import await_only

__all__ = [
    "HELD_KEY",
    "HOLD_LIMIT",
    "held",
    "hold_rollback",
    "install",
    "send_held",
    "send_held_in_statement",
]

HELD_KEY = "dbkeel.sandbox_held"
_TIMER_KEY = "dbkeel.sandbox_held_timer"  # True while a HOLD_LIMIT timer is set
#: seconds a finished test's rollback may wait for the next statement on its connection
HOLD_LIMIT = 0.1
logger = logging.getLogger(__name__)
# the timers' sends in flight (a task nobody awaits must be referenced to finish)
_late: set[asyncio.Task[None]] = set()
# per engine, the pooled connections that may hold a finished test's rollback back
_holders: weakref.WeakKeyDictionary[Engine, set[PoolProxiedConnection]] = (
    weakref.WeakKeyDictionary()
)


class _Savepoints(Protocol):
    _savepoints: list[str]  # SQLAlchemy's names of the open savepoints, outermost first
    _held: list[str] | None

    def _savepoint_sent(self) -> None:
        """Called once a savepoint's RELEASE / ROLLBACK TO is done (sent or not)."""


def held(connection: Connection) -> list[str] | None:
    """The held-back statements of *connection* (kept in its ``info``, so from test to
    test), or None where statements are sent as they come (drivers other than asyncpg,
    whose simple protocol is what runs several statements in one request)."""
    if connection.dialect.driver != "asyncpg":
        return None
    statements: list[str] = connection.info.setdefault(HELD_KEY, [])
    return statements


def hold_rollback(connection: Connection, held: list[str]) -> None:
    """End the test on *connection* with its rollback held back: the next statement on
    the connection sends ``ROLLBACK`` and a ``BEGIN`` like the adapter's first, or a
    timer after :data:`HOLD_LIMIT` seconds, whichever comes first. Only once every
    savepoint has ended (nothing else is held then)."""
    pooled = connection.connection
    adapter = pooled.dbapi_connection
    if getattr(adapter, "_transaction", None) is None:
        return  # nothing reached the server since its last BEGIN: nothing to undo
    held[:] = ["ROLLBACK", _begin(adapter)]
    _holders.setdefault(connection.engine, set()).add(pooled)
    # The bound on how long the finished test's locks can outlive it, whatever runs
    # next: code that waits on them (a fixture writing through an engine of its own)
    # awaits, so the loop runs this timer and the wait ends. One timer at a time per
    # connection: one set for an earlier test fires sooner, which bounds this one too.
    info = pooled.info
    if not info.get(_TIMER_KEY):
        info[_TIMER_KEY] = True
        asyncio.get_running_loop().call_later(HOLD_LIMIT, _send_late, adapter, held, info)


def _begin(adapter: Any) -> str:
    """The BEGIN the asyncpg adapter would send for a new transaction now."""
    statement = "BEGIN"
    isolation = adapter.isolation_level
    if isolation and isolation != "autocommit":
        statement += " ISOLATION LEVEL " + isolation.replace("_", " ").upper()
    if adapter.readonly:
        statement += " READ ONLY"
    if adapter.deferrable:
        statement += " DEFERRABLE"
    return statement


def send_held(connection: Connection, statements: list[str]) -> None:
    """Send *statements* (the held ones, or one RELEASE / ROLLBACK TO) on *connection*
    now, as one query, from the sandbox's greenlet: past SQLAlchemy's compile-and-execute
    path, which costs a compilation, an execution context and a result per statement.
    SQLAlchemy's own error path handles a failure: the driver error wrapped,
    handle_error listeners (dbkeel's translation) run, a lost connection invalidated."""
    query = "; ".join(statements)  # for the error: _send empties the list
    try:
        await_only(_send(connection.connection.dbapi_connection, statements))
    except Exception as error:
        connection._handle_dbapi_exception(error, query, None, None, None)


def send_held_in_statement(pooled: PoolProxiedConnection, held: list[str]) -> None:
    """:func:`send_held` from inside a statement's execution (before_cursor_execute),
    whose own error handling wraps a failure."""
    await_only(_send(pooled.dbapi_connection, held))


async def _send(adapter: Any, statements: list[str]) -> None:
    """Send and empty *statements* (a connection's held list is shared by the test's
    tasks) under the adapter's own guard around its connection. Taken from the list
    only once the guard is held: a sender cancelled while waiting for it leaves them
    for the next one, and two senders never send them twice."""
    async with adapter._execute_mutex:
        if not statements:
            return  # another sender took them while this one waited
        query = "; ".join(statements)
        statements.clear()
        if adapter._transaction is None:
            # the connection's first test: the adapter begins (and tracks) the outer
            # transaction, as it would for the statement about to run
            await adapter._start_transaction()
        try:
            await adapter._connection.execute(query)
        except Exception as error:
            adapter._handle_exception(error)


def _send_late(adapter: Any, held: list[str], info: dict[Any, Any]) -> None:
    info[_TIMER_KEY] = False
    if held and held[0] == "ROLLBACK":  # still the finished test's, nothing sent since
        task = asyncio.ensure_future(_send_logged(adapter, held))
        _late.add(task)
        task.add_done_callback(_late.discard)


async def _send_logged(adapter: Any, held: list[str]) -> None:
    try:
        await _send(adapter, held)
    except Exception as error:
        _log_unsent(error)


def _log_unsent(error: Exception) -> None:
    # The rollback only has to release the finished test's locks; a connection that
    # cannot take it has lost its transaction with them, and the next sandbox replaces
    # it (TestDatabase checks its kept connection before each test).
    logger.warning(
        "The rollback of the previous test could not be sent on its kept connection "
        "(%s: %s); if the server still has that transaction, its locks may make other "
        "connections wait.",
        type(error).__name__,
        error,
    )


def install(engine: Engine, sandbox_key: str) -> None:
    """Wrap *engine*'s dialect (an instance attribute: this engine's dialect only) so
    that connections with a sandbox under ``info[sandbox_key]`` name savepoints by depth
    and, on asyncpg, hold statements back."""
    dialect = engine.dialect
    savepoint = dialect.do_savepoint
    release = dialect.do_release_savepoint
    rollback_to = dialect.do_rollback_to_savepoint
    rollback = dialect.do_rollback
    commit = dialect.do_commit

    def do_savepoint(connection: Connection, name: str) -> None:
        sandbox: _Savepoints | None = connection.info.get(sandbox_key)
        if sandbox is None:
            return savepoint(connection, name)
        sandbox._savepoints.append(name)
        sent = f"dbkeel_sp_{len(sandbox._savepoints)}"
        if sandbox._held is not None:
            sandbox._held.append(f"SAVEPOINT {sent}")
        else:
            savepoint(connection, sent)

    def ending(plain: Any, verb: str) -> Any:
        """do_release_savepoint / do_rollback_to_savepoint for sandboxed connections."""

        def do_end(connection: Connection, name: str) -> None:
            sandbox: _Savepoints | None = connection.info.get(sandbox_key)
            if sandbox is None:
                plain(connection, name)
                return
            sent = _sent_name(sandbox, name)
            try:
                if sandbox._held is None:
                    plain(connection, sent)
                elif not _unhold(sandbox._held, sent):
                    send_held(connection, [f"{verb} {sent}"])
            finally:
                sandbox._savepoint_sent()

        return do_end

    def do_rollback(dbapi_connection: PoolProxiedConnection) -> None:
        held = dbapi_connection.info.get(HELD_KEY)
        if held:  # a ROLLBACK makes whatever was held back moot
            held.clear()
        rollback(dbapi_connection)

    def do_commit(dbapi_connection: PoolProxiedConnection) -> None:
        held = dbapi_connection.info.get(HELD_KEY)
        if held:  # what is committed is the transaction the held statements lead to
            # (a failure here is wrapped by SQLAlchemy's commit, which calls this)
            await_only(_send(dbapi_connection.dbapi_connection, held))
        commit(dbapi_connection)

    def on_checkout(dbapi_connection: Any, record: Any, pooled: Any) -> None:
        # before the connection just checked out is used for anything
        holders = _holders.get(engine)
        if holders:
            _send_held_rollbacks(holders, pooled)

    event.listen(engine, "checkout", on_checkout)
    dialect.do_savepoint = do_savepoint  # type: ignore[method-assign]
    dialect.do_release_savepoint = ending(release, "RELEASE SAVEPOINT")  # type: ignore[method-assign]
    dialect.do_rollback_to_savepoint = ending(rollback_to, "ROLLBACK TO SAVEPOINT")  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]
    dialect.do_commit = do_commit  # type: ignore[method-assign]


def _send_held_rollbacks(
    holders: set[PoolProxiedConnection], checked_out: PoolProxiedConnection
) -> None:
    """Send the finished tests' rollbacks held back on *holders* before another
    connection of their engine is used: what it runs must not wait on their locks."""
    for pooled in list(holders):
        if pooled is checked_out:
            continue
        holders.discard(pooled)
        held = pooled.info.get(HELD_KEY) if pooled.is_valid else None
        if not held or held[0] != "ROLLBACK":
            continue  # sent already, or the next test runs on it: its locks are its own
        try:
            await_only(_send(pooled.dbapi_connection, held))
        except Exception as error:
            _log_unsent(error)


def _sent_name(sandbox: _Savepoints, name: str) -> str:
    """The name savepoint *name* was sent under. It ends here (released or rolled back
    to: SQLAlchemy never returns to it), and so do those opened after it (the server
    releases them with it), so its depth is free for the next one."""
    if name not in sandbox._savepoints:
        return name
    depth = sandbox._savepoints.index(name) + 1
    del sandbox._savepoints[depth - 1 :]
    return f"dbkeel_sp_{depth}"


def _unhold(held: list[str], sent: str) -> bool:
    """Forget the held-back statements of savepoint *sent*, which is ending; True if
    the savepoint itself was still held (so the server never saw it and there is
    nothing to send). Whatever is held then belongs to it or to deeper savepoints,
    except a held-back rollback of the previous test, which comes before all of them."""
    try:
        index = held.index(f"SAVEPOINT {sent}")
    except ValueError:
        held.clear()  # deeper savepoints, never sent, end with this one
        return False
    del held[index:]
    return True
