"""``Sandbox``: one test's transaction, behind every session the application opens.

A sandbox checks out one connection and begins the test's outer transaction on it. The
session factories it lends to a :class:`~dbkeel.DatabaseManager` bind every session to
that connection with ``join_transaction_mode="create_savepoint"`` (SQLAlchemy's
"joining a session into an external transaction" recipe): the application's
``commit()`` releases a SAVEPOINT, its ``rollback()`` rolls back to one, and
:meth:`Sandbox.close` rolls the whole test back.

Tasks that the test starts share the connection the way Ecto's sandbox does in shared
mode: one session at a time holds it, from its SAVEPOINT to the release or rollback of
that SAVEPOINT; others wait (up to *lock_timeout*, then :class:`SandboxError` names the
task holding it). The same task may nest sessions (an endpoint called in-process while
the test's own session is open).

Example::

    sandbox = await Sandbox.open(base_manager)
    sandbox.attach(app.db)             # the application's manager now serves the test
    try:
        await create_user(app.db, "ada")   # its commit is a SAVEPOINT release
    finally:
        await sandbox.close()          # everything rolled back
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, AsyncTransaction
from sqlalchemy.ext.asyncio import async_sessionmaker as AsyncSessionMaker
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import await_only

from dbkeel import _sql
from dbkeel.exceptions import ReadOnlyTransactionError, SandboxError
from dbkeel.manager import DatabaseManager
from dbkeel.testing import wire

__all__ = ["Sandbox"]

logger = logging.getLogger(__name__)
# sandboxes whose connection SQLAlchemy invalidated (its .info is out of reach then)
_invalidated: weakref.WeakKeyDictionary[Connection, Sandbox] = weakref.WeakKeyDictionary()

_INFO_KEY = "dbkeel.sandbox"
_FACTORIES_KEY = "dbkeel.sandbox_factories"
_sandbox_classes: dict[type[Session], tuple[type[Session], type[Session]]] = {}


class Sandbox:
    """The outer transaction of one test, lent to one or more ``DatabaseManager``.

    Create it with :meth:`open` on an initialized manager connected to the test
    database; :meth:`attach` makes a manager serve its sessions from it (the test's
    own, or the application's module-level ``db``); :meth:`close` rolls everything back
    and gives the managers their own sessions again.
    """

    def __init__(
        self,
        base: DatabaseManager,
        connection: AsyncConnection,
        transaction: AsyncTransaction,
        *,
        lock_timeout: float,
        keep_connection: bool = False,
    ) -> None:
        self._base = base
        self._connection = connection
        self._transaction = transaction
        self._lock_timeout = lock_timeout
        self._keep_connection = keep_connection
        # the connection's holder, and the tasks waiting for it in arrival order
        self._owner: asyncio.Task[Any] | None = None
        self._waiters: deque[tuple[asyncio.Task[Any], asyncio.Future[None]]] = deque()
        self._hand_over_due = False
        self._depth = 0
        self._read_only_at = 0  # savepoint depth of the read-only session, 0: none
        self._restore: list[Callable[[], None]] = []
        self._savepoints: list[str] = []  # SQLAlchemy's names of the open savepoints
        self._closed = False
        sync = connection.sync_connection
        assert sync is not None
        self._dialect = sync.dialect.name
        # asyncpg: statements held back until the next one that needs them (wire.py)
        self._held = wire.held(sync)
        self.session_factory, self.read_only_factory = _factories(base, connection)
        # the connection's info, kept: once a connection is invalidated, reading its
        # .info would try to reconnect
        self._info = sync.info
        self._info[_INFO_KEY] = self

    @classmethod
    async def open(
        cls,
        base: DatabaseManager,
        *,
        lock_timeout: float = 10.0,
        connection: AsyncConnection | None = None,
    ) -> Sandbox:
        """Begin the test's transaction on a connection of *base*.

        *connection*: one the caller keeps from test to test (it is rolled back, not
        closed, by :meth:`close`; on asyncpg the rollback goes out with the next
        statement on it, see :mod:`.wire`); default: one checked out now and returned
        at close. *lock_timeout*: how long a task waits for the connection while
        another task's session holds it, before :class:`SandboxError`.
        """
        _install_hooks(base.engine.sync_engine)
        keep = connection is not None
        conn = connection if connection is not None else await base.engine.connect()
        try:
            if keep and conn.in_transaction() and not conn.in_nested_transaction():
                # the previous test's, its rollback held back: this test continues it
                transaction = conn.get_transaction()
                assert transaction is not None
            else:
                transaction = await conn.begin()
            return cls(base, conn, transaction, lock_timeout=lock_timeout, keep_connection=keep)
        except BaseException:
            if not keep:
                await asyncio.shield(conn.close())
            raise

    @property
    def connection(self) -> AsyncConnection:
        """The connection every session of this sandbox runs on."""
        return self._connection

    def attach(self, manager: DatabaseManager) -> DatabaseManager:
        """Make *manager* serve this sandbox's sessions until :meth:`close`; returns it.

        ``get_session()`` (also ``read_only=True``), ``session_factory`` and
        ``run_in_transaction()`` then run inside the test's transaction;
        ``initialize()`` and ``close()`` leave the sandbox alone, so an application's
        lifespan can run in the test unchanged.
        """
        if self._closed:
            raise SandboxError("Sandbox.attach() after close(): the test has ended.")
        self._restore.append(
            manager._lend(self._base.engine, self.session_factory, self.read_only_factory)
        )
        return manager

    async def close(self) -> None:
        """Roll the test's transaction back and return the connection; safe to call twice.

        The rollback runs to completion even if the caller is cancelled. On a
        connection kept from test to test on asyncpg it is held back instead, and goes
        out with the next statement on the connection (see :mod:`.wire`).
        """
        if self._closed:
            return
        self._closed = True
        while self._restore:
            self._restore.pop()()
        sync = self._connection.sync_connection
        if sync is not None and self._held is not None and self._hold_rollback():
            # nothing sent now, so nothing to shield: the next statement sends it
            wire.hold_rollback(sync, self._held)
            self._info.pop(_INFO_KEY, None)
            return
        await asyncio.shield(asyncio.ensure_future(self._rollback()))

    async def _rollback(self) -> None:
        try:
            if self._transaction.is_active:
                await self._transaction.rollback()
        finally:
            self._info.pop(_INFO_KEY, None)
            if not self._keep_connection:
                await self._connection.close()

    def _hold_rollback(self) -> bool:
        """Whether the rollback can wait for the next statement on the connection: a
        kept asyncpg connection whose sessions all ended cleanly (anything else, a
        session left open or a broken connection, is rolled back now)."""
        conn = self._connection
        return (
            self._keep_connection
            and self._depth == 0
            and not self._savepoints
            and self._transaction.is_active
            and not conn.invalidated
            and not conn.in_nested_transaction()
        )

    # -- one session at a time on the shared connection ----------------------------------

    def _on_savepoint(self, conn: Connection, name: str) -> None:
        task = asyncio.current_task()
        if task is None or self._owner is task:
            # Still the owner: also when its last session's end is in flight (ended by
            # get_session()'s helper task) and it begins another, which keeps it.
            self._hand_over_due = False
            self._depth += 1
            return
        if self._owner is None and not self._waiters:
            self._owner = task  # free: taken without a timer or a trip through the loop
        else:
            await_only(self._wait_for_connection(task))
        self._depth = 1

    async def _wait_for_connection(self, task: asyncio.Task[Any]) -> None:
        """Wait until the session holding the connection ends; it hands the connection
        over (first come, first served) by making this task the owner."""
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (task, handed)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self._lock_timeout):
                await handed
        except TimeoutError:
            if self._owner is task:
                return  # handed over just as the time ran out: it is ours
            self._forget(entry)
            holder = self._owner.get_name() if self._owner is not None else "?"
            raise SandboxError(
                f"Task {task.get_name()!r} waited {self._lock_timeout:g} s for the test's "
                f"database connection, which a session of task {holder!r} still holds. "
                f"Tasks of one test share its connection one session at a time: commit or "
                f"close a session before awaiting work that needs another one (or mark the "
                f"test @pytest.mark.dbkeel(transaction=False))."
            ) from None
        except BaseException:  # cancelled while waiting: pass the connection on if ours
            if self._owner is task:
                self._hand_over()
            else:
                self._forget(entry)
            raise

    def _forget(self, entry: tuple[asyncio.Task[Any], asyncio.Future[None]]) -> None:
        # _hand_over may have dropped it already (a cancelled waiter's future is done)
        if entry in self._waiters:
            self._waiters.remove(entry)

    def _hand_over(self) -> None:
        self._owner = None
        while self._waiters:
            task, handed = self._waiters.popleft()
            if not handed.done():  # done: cancelled while waiting, or timed out
                self._owner = task
                handed.set_result(None)
                return

    def _on_savepoint_end(self, conn: Connection, name: str, *, sent: bool = True) -> None:
        # Not checked against the owner task: get_session() rolls back in a shielded
        # helper task. While the connection is held, every SAVEPOINT on it is the
        # holder's (a waiting task has not emitted its own yet).
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth < self._read_only_at:
            self._read_only_at = 0
        if self._depth == 0:
            if sent:
                # Handed over once the RELEASE / ROLLBACK TO has been sent (wire.py calls
                # _savepoint_sent): the next task must not begin its savepoint while
                # this one's end is in flight and SQLAlchemy still counts it as open.
                self._hand_over_due = True
            else:
                self._hand_over()

    def _savepoint_sent(self) -> None:
        if self._hand_over_due and self._depth == 0:
            self._hand_over_due = False
            self._hand_over()

    # -- statements the sandbox refuses ----------------------------------------------------

    def _guard(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        # What a read-only session may not run where the server does not enforce it.
        if self._read_only_at and self._dialect != "postgresql":
            kind = _sql.write_verb(statement)
            if kind is not None:
                raise ReadOnlyTransactionError(
                    f"A {kind} statement ran in a read-only session (get_session("
                    f"read_only=True)): read-only sessions may land on a replica, so "
                    f"every write in them is refused. Use a read-write session, "
                    f"`db.get_session()`, for statements that change data.",
                    statement_kind=kind,
                )
        # MariaDB/MySQL commit the open transaction before (and after) DDL, which would
        # make the test's writes permanent.
        if self._dialect in ("mysql", "mariadb") and _sql.implicit_commit(statement):
            verb = _sql.head(statement)
            raise SandboxError(
                f"{verb!r} inside a test's transaction: MariaDB/MySQL commit the open "
                f"transaction before DDL, so everything the test wrote would stay in the "
                f"database. Create the schema through dbkeel_metadata / dbkeel_alembic, or "
                f"mark the test @pytest.mark.dbkeel(transaction=False)."
            )


def _install_hooks(engine: Engine) -> None:
    """Route *engine*'s savepoint and statement events to the sandbox of the connection
    (once per engine; a connection outside a sandbox costs one dict lookup)."""
    if event.contains(engine, "savepoint", _on_savepoint):
        return
    event.listen(engine, "savepoint", _on_savepoint)
    event.listen(engine, "release_savepoint", _on_release)
    event.listen(engine, "rollback_savepoint", _on_rollback_to)
    event.listen(engine, "before_cursor_execute", _guard)
    event.listen(engine, "handle_error", _on_lost_connection)
    wire.install(engine, _INFO_KEY)


def _on_savepoint(conn: Connection, name: str) -> None:
    sandbox = conn.info.get(_INFO_KEY)
    if sandbox is not None:
        sandbox._on_savepoint(conn, name)


def _on_release(conn: Connection, name: str, context: Any) -> None:
    sandbox = conn.info.get(_INFO_KEY)
    if sandbox is not None:
        sandbox._on_savepoint_end(conn, name)


def _on_rollback_to(conn: Connection, name: str, context: Any) -> None:
    if conn.invalidated:
        # SQLAlchemy sends no ROLLBACK TO on a connection that is gone (and reading its
        # .info would try to reconnect): hand the connection over now, so that waiting
        # tasks fail at once on the lost connection rather than after lock_timeout
        sandbox = _invalidated.get(conn)
        if sandbox is not None:
            sandbox._on_savepoint_end(conn, name, sent=False)
        return
    sandbox = conn.info.get(_INFO_KEY)
    if sandbox is not None:
        sandbox._on_savepoint_end(conn, name)


def _guard(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
    info = conn.info
    held = info.get(wire.HELD_KEY)
    if held:  # what the statement needs sent first, in the same round trip's stead
        wire.send_held_in_statement(conn.connection, held)
    sandbox = info.get(_INFO_KEY)
    if sandbox is not None:
        sandbox._guard(conn, cursor, statement, *args)


# drivers whose connection is usable again after a statement's task is cancelled: asyncpg
# waits for the server to end the cancelled statement before the next operation, and
# aiosqlite's worker thread finishes it; asyncmy leaves the protocol mid-packet
_SURVIVES_CANCEL = frozenset({"asyncpg", "aiosqlite"})


def _on_lost_connection(context: ExceptionContext) -> None:
    """handle_error: what losing the connection means for a sandbox, which has one."""
    conn = context.connection
    if conn is None or not context.is_disconnect or conn.invalidated:
        return
    sandbox = conn.info.get(_INFO_KEY)
    if sandbox is None:
        return
    cancelled = isinstance(context.original_exception, asyncio.CancelledError)
    if cancelled and context.dialect.driver in _SURVIVES_CANCEL:
        # A task of the test cancelled mid-statement (a client that went away, a
        # timeout): SQLAlchemy would invalidate the connection, whose state it cannot
        # know, for the pool to replace. Here it is the whole test's transaction, and
        # the driver recovers it: the cancelled session's rollback to its SAVEPOINT
        # undoes the statement, as production's rollback would.
        context.is_disconnect = False
        return
    _invalidated[conn] = sandbox  # SQLAlchemy invalidates conn once this returns
    if cancelled:
        task = asyncio.current_task()
        logger.warning(
            "Task %r was cancelled in the middle of a statement on the test's "
            "connection. %s cannot resume a connection after that, so SQLAlchemy "
            "discards it and this test's transaction with it: every later statement of "
            "the test fails. To test cancellation on this database, mark the test "
            "@pytest.mark.dbkeel(transaction=False).",
            task.get_name() if task is not None else "?",
            context.dialect.driver,
        )


def _factories(
    base: DatabaseManager, connection: AsyncConnection
) -> tuple[AsyncSessionMaker[AsyncSession], AsyncSessionMaker[AsyncSession]]:
    """The read-write and read-only session factories bound to *connection* (cached on
    it: a connection kept from test to test builds them once)."""
    sync = connection.sync_connection
    assert sync is not None
    cached = sync.info.get(_FACTORIES_KEY)
    if cached is not None and cached[0] is connection and cached[1] is base:
        return cached[2], cached[3]
    factory = base.session_factory
    kw = {**factory.kw, "bind": connection, "join_transaction_mode": "create_savepoint"}
    read_write_class, read_only_class = _session_classes(kw.get("sync_session_class") or Session)
    kw["sync_session_class"] = read_write_class
    read_write: AsyncSessionMaker[AsyncSession] = AsyncSessionMaker(class_=factory.class_, **kw)
    kw["sync_session_class"] = read_only_class
    read_only: AsyncSessionMaker[AsyncSession] = AsyncSessionMaker(class_=factory.class_, **kw)
    sync.info[_FACTORIES_KEY] = (connection, base, read_write, read_only)
    return read_write, read_only


def _session_classes(base: type[Session]) -> tuple[type[Session], type[Session]]:
    """Subclasses of *base* for a sandbox's sessions: read-write, and read-only (whose
    transactions are read-only and never released)."""
    classes = _sandbox_classes.get(base)
    if classes is None:
        read_write = type(f"Sandboxed{base.__name__}", (base,), {})
        event.listen(read_write, "after_begin", _begin)
        read_only = type(f"ReadOnly{base.__name__}", (_ReadOnlySessionMixin, base), {})
        event.listen(read_only, "after_begin", _begin_read_only)
        classes = _sandbox_classes[base] = (read_write, read_only)
    return classes


class _ReadOnlySessionMixin:
    def commit(self) -> None:
        # Flushed first: a pending write must fail here as it would on a replica. Then
        # rolled back, not released: releasing the SAVEPOINT would carry PostgreSQL's
        # SET TRANSACTION READ ONLY into the test's transaction.
        Session.flush(self)  # type: ignore[arg-type]
        Session.rollback(self)  # type: ignore[arg-type]


def _begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    # A session's SAVEPOINT (and whatever was held back before it) goes out as the
    # session begins, not with its first statement: the same one round trip, and the
    # session's connection is then ready for the driver's own calls (bulk COPY).
    held = connection.info.get(wire.HELD_KEY)
    if held:
        wire.send_held(connection, held)


def _begin_read_only(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    sandbox = connection.info.get(_INFO_KEY)
    if sandbox is None:
        return
    sandbox._read_only_at = max(sandbox._depth, 1)
    if sandbox._dialect == "postgresql":
        # allowed in a subtransaction; ROLLBACK TO SAVEPOINT undoes it
        if sandbox._held is not None:  # asyncpg: in the same request as its SAVEPOINT
            sandbox._held.append("SET TRANSACTION READ ONLY")
            wire.send_held(connection, sandbox._held)
        else:
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
