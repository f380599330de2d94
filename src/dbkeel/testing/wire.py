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
  rows are) until the next statement on it. So that nothing waits on those locks, the
  held-back rollback is sent at once when the same engine hands out another connection
  (a test marked ``transaction=False``, a fixture that truncates through the base
  manager), and the pytest plugin holds it back only when the next test is sandboxed
  too (``TestDatabase.settle`` otherwise). What is left: a sandboxed test that, before
  its first statement in the sandbox, writes the previous test's rows through an engine
  of its own waits on them until its lock timeout.

A test that inserts through one session and reads through a read-only one sends 6
requests with or without the sandbox (9 before statements were held back); RELEASE and
ROLLBACK TO go out as plain strings too, past SQLAlchemy's compile-and-execute path.
``python -m benchmarks.instructions testing`` counts the client's instructions for 200
such tests: the sandbox's are 0.976-0.978 of the same work's without it (1.111 before).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import await_only

__all__ = ["HELD_KEY", "held", "hold_rollback", "install", "send_held"]

HELD_KEY = "dbkeel.sandbox_held"
logger = logging.getLogger(__name__)
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
    held: list[str] = connection.info.setdefault(HELD_KEY, [])
    return held


def hold_rollback(connection: Connection, held: list[str]) -> None:
    """End the test on *connection* with its rollback held back: the next statement on
    the connection sends ``ROLLBACK`` and a ``BEGIN`` like the adapter's first. Only
    once every savepoint has ended (nothing else is held then)."""
    pooled = connection.connection
    adapter = pooled.dbapi_connection
    if getattr(adapter, "_transaction", None) is None:
        return  # nothing reached the server since its last BEGIN: nothing to undo
    held[:] = ["ROLLBACK", _begin(adapter)]
    _holders.setdefault(connection.engine, set()).add(pooled)


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


def send_held(pooled: PoolProxiedConnection, held: list[str]) -> None:
    """Send *held* as one query on *pooled* (a pool's connection proxy), in the
    sandbox's greenlet. Driver errors are translated as the adapter translates its own,
    so SQLAlchemy wraps them and sees a broken connection for what it is."""
    statements = "; ".join(held)
    held.clear()
    await_only(_send(pooled.dbapi_connection, statements))


def _send_now(connection: Connection, statement: str) -> None:
    """Send *statement* at once, past SQLAlchemy's compile-and-execute path (a RELEASE
    or ROLLBACK TO through ``Connection.execute`` costs a compilation, an execution
    context and a result each time); a failure is wrapped as ``execute()`` wraps it."""
    try:
        await_only(_send(connection.connection.dbapi_connection, statement))
    except Exception as error:
        connection._handle_dbapi_exception(error, statement, None, None, None)


async def _send(adapter: Any, statements: str) -> None:
    async with adapter._execute_mutex:  # the adapter's own guard around its connection
        if adapter._transaction is None:
            # the connection's first test: the adapter begins (and tracks) the outer
            # transaction, as it would for the statement about to run
            await adapter._start_transaction()
        try:
            await adapter._connection.execute(statements)
        except Exception as error:
            adapter._handle_exception(error)


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

    def do_release_savepoint(connection: Connection, name: str) -> None:
        sandbox: _Savepoints | None = connection.info.get(sandbox_key)
        if sandbox is None:
            return release(connection, name)
        sent = _sent_name(sandbox, name)
        try:
            if sandbox._held is None:
                release(connection, sent)
            elif not _unhold(sandbox._held, sent):
                _send_now(connection, f"RELEASE SAVEPOINT {sent}")
        finally:
            sandbox._savepoint_sent()

    def do_rollback_to_savepoint(connection: Connection, name: str) -> None:
        sandbox: _Savepoints | None = connection.info.get(sandbox_key)
        if sandbox is None:
            return rollback_to(connection, name)
        sent = _sent_name(sandbox, name)
        try:
            if sandbox._held is None:
                rollback_to(connection, sent)
            elif not _unhold(sandbox._held, sent):
                _send_now(connection, f"ROLLBACK TO SAVEPOINT {sent}")
        finally:
            sandbox._savepoint_sent()

    def do_rollback(dbapi_connection: PoolProxiedConnection) -> None:
        held = dbapi_connection.info.get(HELD_KEY)
        if held:  # a ROLLBACK makes whatever was held back moot
            held.clear()
        rollback(dbapi_connection)

    def do_commit(dbapi_connection: PoolProxiedConnection) -> None:
        held = dbapi_connection.info.get(HELD_KEY)
        if held:  # what is committed is the transaction the held statements lead to
            send_held(dbapi_connection, held)
        commit(dbapi_connection)

    def before_checkout(dbapi_connection: Any, record: Any, pooled: Any) -> None:
        holders = _holders.get(engine)
        if holders:
            _send_held_rollbacks(holders, pooled)

    event.listen(engine, "checkout", before_checkout)
    dialect.do_savepoint = do_savepoint  # type: ignore[method-assign]
    dialect.do_release_savepoint = do_release_savepoint  # type: ignore[method-assign]
    dialect.do_rollback_to_savepoint = do_rollback_to_savepoint  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]
    dialect.do_commit = do_commit  # type: ignore[method-assign]


def _send_held_rollbacks(
    holders: set[PoolProxiedConnection], checked_out: PoolProxiedConnection
) -> None:
    """Send the finished tests' rollbacks held back on *holders* before another
    connection of their engine is used: what it runs must not wait on their locks."""
    for pooled in list(holders):
        held = pooled.info.get(HELD_KEY) if pooled.is_valid else None
        if pooled is checked_out or not held:
            continue
        holders.discard(pooled)
        if held[0] != "ROLLBACK":
            continue  # the next test is running on it: its locks are its own
        try:
            send_held(pooled, held)
        except Exception as error:
            # The rollback only has to release the finished test's locks; a connection
            # that cannot take it has lost its transaction with them, and the next
            # sandbox replaces it. The checkout goes on either way.
            logger.warning(
                "The rollback of the previous test could not be sent on its kept "
                "connection (%s: %s); if the server still has that transaction, its "
                "locks may make this connection wait.",
                type(error).__name__,
                error,
            )


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
