"""Errors under faults: what the caller of get_session() sees when the database fails.

Regression tests for issue 17: a statement or COMMIT timeout used to arrive as a bare,
empty ``TimeoutError``; a lost connection as whatever the driver raised; an ordinary
cancellation was logged as a server or network fault. Each test runs against the real
PostgreSQL test server; nothing here stops or stalls that server (only this run's own
backends are cancelled or terminated).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool

from dbkeel import (
    CommitOutcomeUnknownError,
    DatabaseManager,
    DatabaseUnavailableError,
    PoolExhaustedError,
    StatementTimeoutError,
)
from tests import conftest
from tests.conftest import CreateTables, make_settings
from tests.tcp_proxy import TcpProxy

POOL_LOGGER = "dbkeel.monitoring.pool"


async def _terminate(url: object, app_name: str) -> int:
    admin = create_async_engine(url, poolclass=StaticPool)  # type: ignore[arg-type]
    try:
        async with admin.connect() as conn:
            return int(
                await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name = :app"
                    ),
                    {"app": app_name},
                )
                or 0
            )
    finally:
        await admin.dispose()


async def _server_sessions(url: object, app_name: str) -> dict[str, int]:
    admin = create_async_engine(url, poolclass=StaticPool)  # type: ignore[arg-type]
    try:
        async with admin.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT state, count(*) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND application_name = :app GROUP BY state"
                ),
                {"app": app_name},
            )
            return {str(state): int(n) for state, n in rows}
    finally:
        await admin.dispose()


async def test_client_command_timeout_is_a_statement_timeout_naming_the_setting(
    pg_url: str,
) -> None:
    settings = make_settings(pg_url, environment="production", command_timeout=0.2)
    async with DatabaseManager(settings) as db:
        with pytest.raises(StatementTimeoutError) as info:
            async with db.get_session() as session:
                await session.execute(text("SELECT pg_sleep(3)"))
        assert info.value.setting == "DATABASE_COMMAND_TIMEOUT"
        assert info.value.timeout == 0.2
        assert "DATABASE_COMMAND_TIMEOUT=0.2 s" in str(info.value)
        assert isinstance(info.value, TimeoutError)  # old `except TimeoutError` still works
        assert isinstance(info.value.__cause__, TimeoutError)
        # and the pool is usable again at once
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.fixture(params=["postgresql", "mariadb"])  # SQLite has no server-side limit
def server_url(request: pytest.FixtureRequest, test_databases: conftest.TestDatabases) -> str:
    return test_databases.url(str(request.param))


async def test_server_statement_timeout_is_a_statement_timeout(server_url: str) -> None:
    settings = make_settings(server_url, statement_timeout=0.2)
    slow = "SELECT pg_sleep(3)"
    if make_url(server_url).get_backend_name() != "postgresql":
        # MariaDB's SLEEP() is interrupted without an error; a real scan is stopped.
        slow = (
            "SELECT count(*) FROM information_schema.columns a, information_schema.columns b, "
            "information_schema.columns c"
        )
    async with DatabaseManager(settings) as manager:
        with pytest.raises(StatementTimeoutError) as info:
            async with manager.get_session() as session:
                await session.execute(text(slow))
    assert info.value.setting == "DATABASE_STATEMENT_TIMEOUT"
    assert info.value.timeout == 0.2
    assert "0.2 s" in str(info.value)


async def test_own_asyncio_timeout_stays_a_plain_timeout_error(pg_db: DatabaseManager) -> None:
    with pytest.raises(TimeoutError) as info:
        async with pg_db.get_session() as session:
            async with asyncio.timeout(0.2):
                await session.execute(text("SELECT pg_sleep(3)"))
    assert not isinstance(info.value, StatementTimeoutError)
    with pytest.raises(TimeoutError) as outer:
        async with asyncio.timeout(0.2):
            async with pg_db.get_session() as session:
                await session.execute(text("SELECT pg_sleep(3)"))
    assert not isinstance(outer.value, StatementTimeoutError)


async def test_terminated_backend_is_database_unavailable_and_nothing_is_half_written(
    pg_url: str, create_tables: CreateTables
) -> None:
    app = f"dbkeel-faults-{uuid.uuid4().hex[:6]}"
    settings = make_settings(pg_url, environment="production", app_name=app)
    metadata = MetaData()
    items = Table("fault_items", metadata, Column("id", Integer, primary_key=True),
                  Column("note", String(20)))  # fmt: skip
    async with DatabaseManager(settings) as db:
        await create_tables(db, metadata)
        with pytest.raises(DatabaseUnavailableError) as info:
            async with db.get_session() as session:
                await session.execute(items.insert().values(id=1, note="half"))
                assert await _terminate(db.engine.url, app) == 1
                await session.execute(items.insert().values(id=2, note="half"))
        assert "SELECT" not in str(info.value) and "half" not in str(info.value)
        assert isinstance(info.value, ConnectionError)
        async with db.get_session() as session:  # the pool recovered
            assert (await session.execute(select(items))).all() == []


@pytest.fixture
async def proxied_pg(pg_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of this run's PostgreSQL database, and the URL through it."""
    url = make_url(pg_url)
    proxy = await TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    try:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        await proxy.close()


async def test_dropped_connections_are_database_unavailable_then_recover(
    proxied_pg: tuple[TcpProxy, str],
) -> None:
    proxy, url = proxied_pg
    settings = make_settings(url, environment="production", app_name="dbkeel-drop")
    async with DatabaseManager(settings) as db:
        with pytest.raises(DatabaseUnavailableError):
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
                await proxy.drop()
                await session.execute(text("SELECT 2"))
        # pre-ping (production) replaces the dead pooled connections: the next request works
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT 3")) == 3
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_refused_connection_is_database_unavailable(
    proxied_pg: tuple[TcpProxy, str],
) -> None:
    proxy, url = proxied_pg
    settings = make_settings(url, environment="production", app_name="dbkeel-refused")
    async with DatabaseManager(settings) as db:
        await proxy.refuse()  # the server "goes away" after startup
        with pytest.raises(DatabaseUnavailableError) as info:
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
        assert isinstance(info.value, ConnectionError)
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_network_stall_ends_within_the_command_timeout(
    proxied_pg: tuple[TcpProxy, str],
) -> None:
    """During a stall every request ends within its own timeouts (0.5 s per statement,
    1 s to open or ping a connection: scaled down from production values, the behaviour
    is the same) with a dbkeel error, and the pool works again once traffic flows."""
    proxy, url = proxied_pg
    settings = make_settings(
        url,
        environment="production",
        app_name="dbkeel-stall",
        command_timeout=0.5,
        connect_timeout=1.0,
    )
    async with DatabaseManager(settings) as db:
        async with db.get_session() as session:  # warm the pool
            await session.execute(text("SELECT 1"))
        proxy.stall()
        loop = asyncio.get_running_loop()

        async def request() -> tuple[str, float]:
            start = loop.time()
            try:
                async with db.get_session() as session:
                    await session.execute(text("SELECT 1"))
                return "ok", loop.time() - start
            except StatementTimeoutError:
                return "statement timeout", loop.time() - start
            except DatabaseUnavailableError:
                return "unavailable", loop.time() - start

        # one request on the pooled connection, four that must open a new one
        outcomes = await asyncio.gather(*(request() for _ in range(5)))
        proxy.resume()
        assert "ok" not in {kind for kind, _ in outcomes}, outcomes
        assert max(took for _, took in outcomes) < 1.0 + 0.5 + 0.5, outcomes
        await asyncio.sleep(0.1)
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT 1")) == 1


async def test_cancellation_storm_leaves_nothing_checked_out_or_open(pg_url: str) -> None:
    """500 tasks cancelled mid-transaction: no connection checked out, none idle in a
    transaction on the server, and cancellations are counted apart from faults."""
    app = f"dbkeel-storm-{uuid.uuid4().hex[:6]}"
    settings = make_settings(
        pg_url, environment="production", app_name=app, pool_size=10, max_overflow=5
    )
    async with DatabaseManager(settings) as db:
        monitor = db.monitor
        assert monitor is not None

        async def request() -> None:
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
                await session.execute(text("SELECT pg_sleep(10)"))

        tasks = [asyncio.create_task(request()) for _ in range(500)]
        await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        sessions = await _server_sessions(db.engine.url, app)
        assert sessions.get("idle in transaction", 0) == 0
        assert sessions.get("active", 0) == 0
        assert monitor.counters.cancellations >= 1
        assert monitor.counters.hard_invalidations == 0
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT 1")) == 1


async def test_cancellation_is_not_logged_as_a_fault(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(pg_url, environment="production", app_name="dbkeel-cancel")
    async with DatabaseManager(settings) as db:
        caplog.set_level(logging.DEBUG, POOL_LOGGER)

        async def request() -> None:
            async with db.get_session() as session:
                await session.execute(text("SELECT pg_sleep(5)"))

        task = asyncio.create_task(request())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert db.monitor is not None
        assert db.monitor.counters.cancellations == 1
        assert db.monitor.counters.hard_invalidations == 0
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [r for r in warnings if "network" in r.getMessage()]


async def test_pool_exhaustion_is_clear_and_recovers(pg_url: str) -> None:
    settings = make_settings(
        pg_url, environment="production", pool_size=2, max_overflow=0, pool_timeout=0.3
    )
    async with DatabaseManager(settings) as db:
        release = asyncio.Event()
        held = asyncio.Semaphore(0)

        async def hold() -> None:
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
                held.release()
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(2)]
        for _ in holders:
            await held.acquire()
        with pytest.raises(PoolExhaustedError, match=r"pool_size=2.*DATABASE_POOL_SIZE"):
            async with db.get_session() as session:
                await session.execute(text("SELECT 1"))
        release.set()
        await asyncio.gather(*holders)
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT 1")) == 1


async def test_commit_that_gets_no_answer_has_an_unknown_outcome(
    proxied_pg: tuple[TcpProxy, str], create_tables: CreateTables
) -> None:
    proxy, url = proxied_pg
    settings = make_settings(
        url, environment="production", app_name="dbkeel-commit", command_timeout=0.5
    )
    metadata = MetaData()
    items = Table("commit_items", metadata, Column("id", Integer, primary_key=True))
    async with DatabaseManager(settings) as db:
        await create_tables(db, metadata)
        with pytest.raises(CommitOutcomeUnknownError, match="may or may not") as info:
            async with db.get_session() as session:
                await session.execute(items.insert().values(id=1))
                proxy.stall()  # the COMMIT is sent, its answer never comes back
        proxy.resume()
        assert "DATABASE_COMMAND_TIMEOUT=0.5 s" in str(info.value)
        assert not isinstance(info.value, StatementTimeoutError)  # never "just retry"


class Writers:
    """N tasks inserting rows with unique ids until stopped; records what each caller saw:
    acknowledged commits, commits of unknown outcome, and dbkeel's fault errors (any
    other exception ends the task and surfaces in ``stop()``)."""

    def __init__(self, db: DatabaseManager, rows: Table, count: int = 20) -> None:
        self.acknowledged: list[str] = []
        self.unknown: list[str] = []
        self.errors: list[BaseException] = []
        self._db, self._rows = db, rows
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._write()) for _ in range(count)]

    async def _write(self) -> None:
        while not self._stop.is_set():
            row_id = str(uuid.uuid4())
            try:
                async with self._db.get_session() as session:
                    await session.execute(self._rows.insert().values(id=row_id))
                self.acknowledged.append(row_id)
            except CommitOutcomeUnknownError:
                self.unknown.append(row_id)
            except (DatabaseUnavailableError, StatementTimeoutError) as exc:
                self.errors.append(exc)
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def assert_nothing_lost_or_duplicated(self) -> None:
        async with self._db.get_session() as session:
            stored = [r[0] for r in await session.execute(select(self._rows.c.id))]
        assert self.acknowledged, "no commit went through: the load did not run"
        assert self.errors, "no fault reached a writer: the test did not inject any"
        assert len(stored) == len(set(stored))
        assert set(self.acknowledged) <= set(stored)  # 0 lost
        assert set(stored) <= set(self.acknowledged) | set(self.unknown)  # 0 phantom rows


async def test_faults_under_load_lose_and_duplicate_no_acknowledged_commit(
    proxied_pg: tuple[TcpProxy, str], create_tables: CreateTables
) -> None:
    """20 writers for ~3 s while connections are dropped and backends terminated: every
    acknowledged commit is in the table exactly once, every row in the table was either
    acknowledged or reported as of unknown outcome, and callers only see dbkeel errors."""
    proxy, url = proxied_pg
    app = f"dbkeel-load-{uuid.uuid4().hex[:6]}"
    settings = make_settings(
        url, environment="production", app_name=app, command_timeout=2, connect_timeout=2
    )
    metadata = MetaData()
    rows = Table("load_rows", metadata, Column("id", String(36), primary_key=True))
    async with DatabaseManager(settings) as db:
        await create_tables(db, metadata)
        writers = Writers(db, rows)
        for _ in range(3):
            await asyncio.sleep(0.5)
            await proxy.drop()
            await asyncio.sleep(0.5)
            await _terminate(url, app)
        await asyncio.sleep(0.3)
        await writers.stop()  # a non-dbkeel error would surface here
        await writers.assert_nothing_lost_or_duplicated()


async def test_server_restart_mid_load_loses_and_duplicates_no_acknowledged_commit(
    create_tables: CreateTables,
) -> None:
    """A PostgreSQL restart under 20 writers, on a throwaway cluster of this test's own
    (tests/replica_rig.py, a spare port; never the shared server): writers see only
    dbkeel errors while it is down, every acknowledged commit survives exactly once, and
    writes succeed again after the restart without restarting the application."""
    from tests.replica_rig import ReplicaCluster

    rig = await asyncio.to_thread(ReplicaCluster.build, 0, "dkb")
    try:
        url = rig.primary.url()
        settings = make_settings(
            url, environment="production", app_name="dbkeel-restart",
            command_timeout=2, connect_timeout=2,
        )  # fmt: skip
        metadata = MetaData()
        rows = Table("restart_rows", metadata, Column("id", String(36), primary_key=True))
        async with DatabaseManager(settings) as db:
            await create_tables(db, metadata)
            writers = Writers(db, rows)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(rig.primary.ctl, "restart", "-m", "fast")
            restarted = len(writers.acknowledged)
            await asyncio.sleep(1.5)
            await writers.stop()  # a non-dbkeel error would surface here
            assert len(writers.acknowledged) > restarted, "no write succeeded after the restart"
            await writers.assert_nothing_lost_or_duplicated()
    finally:
        await asyncio.to_thread(rig.drop)
