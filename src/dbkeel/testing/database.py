"""``TestDatabase``: the database one test run (or xdist worker) works in.

It is provisioned once (created, marked as dbkeel's, schema built), hands out a base
:class:`~dbkeel.DatabaseManager` per event loop, and isolates each test: a
:class:`~dbkeel.testing.Sandbox` (rolled back at the end), or for tests marked
``transaction=False`` real commits followed by emptying the tables they wrote to.

Example (what the pytest plugin does; usable without pytest too)::

    database = TestDatabase.provision(metadata=Base.metadata)
    base = await database.manager()
    async with database.isolated(base) as db:
        await create_user(db, "ada")      # rolled back when the block ends
    await database.release(base)
    await base.close()
    database.drop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from dbkeel.manager import DatabaseManager
from dbkeel.settings import DatabaseSettings
from dbkeel.testing.provision import (
    build_schema,
    create_database,
    drop_database,
    url_for_tests,
    with_suffix,
)

if TYPE_CHECKING:
    from sqlalchemy import MetaData

__all__ = ["TestDatabase"]

T = TypeVar("T")


def _run(work: Coroutine[Any, Any, T]) -> T:
    # Its own thread and loop: provisioning runs from a synchronous fixture, whatever
    # event loop pytest-asyncio has (or has not) set up in the main thread.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dbkeel-provision") as ex:
        return ex.submit(asyncio.run, work).result()


class TestDatabase:
    """A database created for tests: its settings, schema source and isolation.

    Use :meth:`provision` to make one; *settings* point at it (the application's
    settings with the URL replaced, replicas off, N+1 loads raising unless
    ``DATABASE_NPLUSONE`` says otherwise).
    """

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        metadata: MetaData | None,
        created: bool,
        lock_timeout: float = 10.0,
    ) -> None:
        self.settings = settings
        self.metadata = metadata
        self.created = created
        self.lock_timeout = lock_timeout
        self._kept: weakref.WeakKeyDictionary[DatabaseManager, AsyncConnection] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def provision(
        cls,
        *,
        url: str | None = None,
        worker: str | None = None,
        metadata: MetaData | None = None,
        alembic_ini: str | None = None,
        allow_existing: bool = False,
        lock_timeout: float = 10.0,
        settings: DatabaseSettings | None = None,
    ) -> TestDatabase:
        """Create the test database and its schema (blocking; call it outside a loop).

        *url*: the test database (a worker id is appended under xdist); default the
        application's ``DATABASE_URL`` (from *settings*, else the environment) with
        ``_test`` appended. *metadata* or *alembic_ini* builds the schema.
        """
        app = settings or DatabaseSettings()
        if url is not None:
            target = make_url(url)
            if worker:
                target = with_suffix(target, f"_{worker}")
        else:
            target = url_for_tests(app.url, worker)
        test_settings = app.model_copy(
            update={
                "database_url": target.render_as_string(hide_password=False),
                "replica_urls": None,
                "nplusone": app.nplusone or "raise",
            }
        )
        created = _run(create_database(target, allow_existing=allow_existing))
        try:
            # also in an existing database the user allowed: create_all skips the
            # tables that exist, and Alembic upgrades from wherever it is
            _run(build_schema(test_settings, metadata=metadata, alembic_ini=alembic_ini))
        except BaseException:
            if created:
                _run(drop_database(target))
            raise
        return cls(test_settings, metadata=metadata, created=created, lock_timeout=lock_timeout)

    def drop(self) -> None:
        """Drop the database if this run created it (blocking)."""
        if self.created:
            _run(drop_database(self.settings.url))

    async def manager(self) -> DatabaseManager:
        """An initialized manager on the test database, for the running event loop."""
        return await DatabaseManager(self.settings, metadata=self.metadata).initialize()

    async def _connection(self, base: DatabaseManager) -> AsyncConnection:
        """*base*'s connection for sandboxes, kept from test to test (no pool checkout,
        no pre-ping, factories built once); replaced if a test broke it or the server
        closed it between tests."""
        conn = self._kept.get(base)
        if conn is not None and _broken(conn):
            # discarded, not returned: there is nothing to roll back on a dead connection
            await asyncio.shield(conn.invalidate())
            await asyncio.shield(conn.close())
            conn = None
        if conn is None:
            conn = await base.engine.connect()
            self._kept[base] = conn
        return conn

    async def settle(self, base: DatabaseManager) -> None:
        """Roll back the transaction of the connection kept for *base* now.

        On asyncpg a sandboxed test's rollback is held back until the next statement on
        its connection (see :mod:`dbkeel.testing.wire`); until then the test's row
        locks are held. Call this before work that reaches the database some other way
        (the pytest plugin does when the next test is not sandboxed)::

            async with database.isolated(base) as db:
                await create_user(db, "ada")
            await database.settle(base)   # no lock of that test is held any more
        """
        conn = self._kept.get(base)
        if conn is not None and not _broken(conn) and conn.in_transaction():
            await asyncio.shield(conn.rollback())

    async def release(self, base: DatabaseManager) -> None:
        """Return the connection kept for *base* (before ``base.close()``)."""
        conn = self._kept.pop(base, None)
        if conn is not None:
            await asyncio.shield(conn.close())

    @asynccontextmanager
    async def isolated(
        self,
        base: DatabaseManager,
        *,
        transaction: bool = True,
        app_manager: DatabaseManager | None = None,
    ) -> AsyncIterator[DatabaseManager]:
        """A manager for one test, isolated from the others; *app_manager* too.

        ``transaction=True``: a :class:`Sandbox` (one transaction, rolled back at the
        end). ``transaction=False``: *base*'s own sessions, which commit; the tables
        the test wrote to are emptied at the end.
        """
        manager = DatabaseManager(self.settings, metadata=self.metadata)
        if transaction:
            from dbkeel.testing.sandbox import Sandbox

            sandbox = await Sandbox.open(
                base, lock_timeout=self.lock_timeout, connection=await self._connection(base)
            )
            try:
                sandbox.attach(manager)
                if app_manager is not None:
                    sandbox.attach(app_manager)
                yield manager
            finally:
                await sandbox.close()
            return
        from dbkeel.testing.cleanup import TouchedTables

        # this test writes through connections of its own: no earlier test's locks
        await self.settle(base)
        touched = TouchedTables(base.engine)
        lent = [manager, *([app_manager] if app_manager is not None else [])]
        read_only = base._serving.read_only_factory
        assert read_only is not None  # base is initialized
        restore = [m._lend(base.engine, base.session_factory, read_only) for m in lent]
        try:
            yield manager
        finally:
            for undo in reversed(restore):
                undo()
            await asyncio.shield(asyncio.ensure_future(touched.empty()))


def _broken(conn: AsyncConnection) -> bool:
    """Whether *conn* can no longer be used: closed or invalidated by SQLAlchemy, or
    closed under it (a server restart or ``pg_terminate_backend`` between tests is
    seen by the driver when the event loop runs, before any statement is sent)."""
    if conn.closed or conn.invalidated:
        return True
    sync = conn.sync_connection
    driver = sync.connection.driver_connection if sync is not None else None
    is_closed = getattr(driver, "is_closed", None)  # asyncpg's; others tell at use
    return bool(is_closed()) if callable(is_closed) else False
