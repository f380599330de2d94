"""PoolMonitor on real databases: status per pool class, counts, leaks, invalidations."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, Pool, QueuePool, SingletonThreadPool, StaticPool

import dbkeel.engine
from dbkeel import ConfigurationError, DatabaseManager, PoolExhaustedError, PoolMonitor
from dbkeel.monitoring import MonitorOptions
from tests.conftest import make_settings

POOL_LOGGER = "dbkeel.monitoring.pool"


@pytest.fixture
async def pg_pool(pg_url: str) -> AsyncIterator[DatabaseManager]:
    """A production-profile manager on PostgreSQL: a real 3 + 2 queue pool, monitored."""
    settings = make_settings(pg_url, environment="production", pool_size=3, max_overflow=2)
    async with DatabaseManager(settings) as manager:
        yield manager


async def _hold(engine: AsyncEngine, held: list[int], release: asyncio.Event) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        held.append(1)
        await release.wait()


async def _until(predicate: Any) -> None:
    # Polling: the conditions are pool states with no event to wait on.
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


# -- status -------------------------------------------------------------------------------


async def test_status_of_a_queue_pool_under_concurrent_checkouts(
    pg_pool: DatabaseManager,
) -> None:
    engine = pg_pool.engine
    release = asyncio.Event()
    held: list[int] = []
    # 5 connections fit (3 + 2 overflow); 2 more callers must wait.
    tasks = [asyncio.create_task(_hold(engine, held, release)) for _ in range(7)]
    await _until(lambda: len(held) == 5 and PoolMonitor.get_pool_status(engine)["waiting"] == 2)
    status = PoolMonitor.get_pool_status(engine)
    assert status == {
        "pool_class": "AsyncAdaptedQueuePool",
        "size": 3,
        "checked_out": 5,
        "checked_in": 0,
        "overflow": 2,
        "total": 5,
        "max": 5,
        "waiting": 2,
    }
    release.set()
    await asyncio.gather(*tasks)
    status = PoolMonitor.get_pool_status(engine)
    assert (status["checked_out"], status["waiting"], status["overflow"]) == (0, 0, 0)
    assert status["checked_in"] == 3  # the overflow connections were closed on return


async def test_status_of_a_null_pool_counts_what_the_monitor_sees(pg_db: DatabaseManager) -> None:
    engine = pg_db.engine  # test profile: NullPool, not monitored by default
    unmonitored = PoolMonitor.get_pool_status(engine)
    assert unmonitored["pool_class"] == "NullPool"
    assert (unmonitored["checked_out"], unmonitored["waiting"], unmonitored["max"]) == (
        None,
        None,
        None,
    )
    PoolMonitor.setup_listeners(engine)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        status = PoolMonitor.get_pool_status(engine)
    assert status["checked_out"] == 1
    assert status["total"] == 1
    assert PoolMonitor.get_pool_status(engine)["checked_out"] == 0


async def test_status_of_a_static_pool() -> None:
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=StaticPool)
    try:
        assert PoolMonitor.get_pool_status(engine)["total"] == 0
        PoolMonitor.setup_listeners(engine)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            inside = PoolMonitor.get_pool_status(engine)
        after = PoolMonitor.get_pool_status(engine)
    finally:
        await engine.dispose()
    assert inside["pool_class"] == "StaticPool"
    assert (inside["size"], inside["checked_out"], inside["checked_in"], inside["max"]) == (
        1,
        1,
        0,
        1,
    )
    assert (after["checked_out"], after["checked_in"], after["total"]) == (0, 1, 1)


def test_setup_listeners_takes_a_sync_engine_and_is_idempotent() -> None:
    engine = create_sync_engine("sqlite://")
    try:
        monitor = PoolMonitor.setup_listeners(engine, pool_name="sync")
        assert PoolMonitor.setup_listeners(engine, pool_name="sync") is monitor
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        # one set of listeners: one checkout counted, not two
        assert monitor.counters.checkouts == 1
        assert monitor.counters.checkout_wait.count == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("pool_class", [QueuePool, NullPool, StaticPool, SingletonThreadPool])
def test_each_checkout_counted_once_and_held_until_checkin(pool_class: type[Pool]) -> None:
    """A QueuePool or NullPool is monitored from the checkout timer, the other pools
    (which can hand out a connection already checked out) from a checkout listener:
    the same counts and the same held set either way."""
    engine = create_sync_engine("sqlite://", poolclass=pool_class)
    try:
        monitor = PoolMonitor.setup_listeners(engine, leak_threshold=0.001)
        for n in range(1, 4):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                time.sleep(0.005)
                assert monitor.check_leaks() == 1  # held, past the threshold
            assert monitor.counters.checkouts == n
            assert monitor.counters.checkout_wait.count == n
            assert monitor.check_leaks() == 0  # returned
        assert monitor.counters.leaks == 3
    finally:
        PoolMonitor.remove_listeners(engine)
        engine.dispose()


def test_setup_listeners_refuses_different_options_and_bad_values() -> None:
    engine = create_sync_engine("sqlite://")
    PoolMonitor.setup_listeners(engine, leak_threshold=10)
    with pytest.raises(ConfigurationError, match="already monitored"):
        PoolMonitor.setup_listeners(engine, leak_threshold=20)
    with pytest.raises(ConfigurationError, match=r"leak_threshold=0 is invalid"):
        MonitorOptions(leak_threshold=0)
    with pytest.raises(ConfigurationError, match="unknown options"):
        PoolMonitor.setup_listeners(engine, leak_treshold=20)
    PoolMonitor.remove_listeners(engine)
    assert PoolMonitor.setup_listeners(engine, leak_threshold=20).options.leak_threshold == 20
    engine.dispose()


async def test_manager_monitors_in_production_only_by_default(
    pg_pool: DatabaseManager, pg_db: DatabaseManager
) -> None:
    assert pg_pool.monitor is PoolMonitor.for_engine(pg_pool.engine) is not None
    assert pg_pool.monitor.counters.connects >= 1  # initialize()'s own connection counted
    assert pg_db.monitor is None


async def test_checkouts_are_still_timed_after_dispose(pg_pool: DatabaseManager) -> None:
    monitor = pg_pool.monitor
    assert monitor is not None
    await pg_pool.engine.dispose()
    before = monitor.counters.checkout_wait.count
    async with pg_pool.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    assert monitor.counters.checkout_wait.count == before + 1


# -- warnings ------------------------------------------------------------------------------


async def _leaky_handler(engine: AsyncEngine, release: asyncio.Event) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await release.wait()


async def test_leak_warning_shows_where_the_connection_was_checked_out(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        pg_url, environment="production", pool_size=1, max_overflow=0,
        leak_threshold=0.2, capture_checkout_stack=True,
    )  # fmt: skip
    caplog.set_level(logging.WARNING, POOL_LOGGER)
    async with DatabaseManager(settings) as db:
        release = asyncio.Event()
        task = asyncio.create_task(_leaky_handler(db.engine, release))
        # the manager's background watch reports it while it is still held
        await _until(lambda: "possible connection leak" in caplog.text)
        release.set()
        await task
    (record,) = [r for r in caplog.records if "possible connection leak" in r.message]
    assert "still checked out" in record.message
    assert "in _leaky_handler" in record.message
    assert "async with engine.connect() as conn:" in record.message
    assert record.app_name == "dbkeel-tests"  # type: ignore[attr-defined]
    assert record.held_s > 0.2  # type: ignore[attr-defined]


async def test_leak_warning_without_stack_capture_says_how_to_get_it(
    pg_pool: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    PoolMonitor.remove_listeners(pg_pool.engine)
    monitor = PoolMonitor.setup_listeners(pg_pool.engine, leak_threshold=0.05)
    caplog.set_level(logging.WARNING, POOL_LOGGER)
    async with pg_pool.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await asyncio.sleep(0.1)
        assert monitor.check_leaks() == 1
        assert monitor.check_leaks() == 1  # still over, but reported once
    assert caplog.text.count("possible connection leak") == 1
    assert "DATABASE_CAPTURE_CHECKOUT_STACK=1" in caplog.text


async def test_long_lived_connection_warns_once(
    pg_pool: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    PoolMonitor.remove_listeners(pg_pool.engine)
    monitor = PoolMonitor.setup_listeners(pg_pool.engine, long_lived_threshold=0.1)
    caplog.set_level(logging.WARNING, POOL_LOGGER)
    for _ in range(3):
        async with pg_pool.engine.connect() as conn:  # LIFO: the same connection each time
            await conn.execute(text("SELECT 1"))
        await asyncio.sleep(0.15)
    assert caplog.text.count("long-lived connection") == 1
    assert monitor.counters.long_lived == 1


async def test_invalidated_connection_coming_back_is_logged(
    pg_pool: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = pg_pool.monitor
    assert monitor is not None
    caplog.set_level(logging.INFO, POOL_LOGGER)
    async with pg_pool.engine.connect() as conn:
        await conn.invalidate()
    assert monitor.counters.hard_invalidations == 1
    assert "an invalidated connection was returned to the pool" in caplog.text


# -- failures ------------------------------------------------------------------------------


async def test_terminated_backends_are_invalidations_and_pre_ping_recovers(
    pg_pool: DatabaseManager,
) -> None:
    monitor = pg_pool.monitor
    assert monitor is not None
    engine = pg_pool.engine
    release = asyncio.Event()
    held: list[int] = []
    tasks = [asyncio.create_task(_hold(engine, held, release)) for _ in range(3)]
    await _until(lambda: len(held) == 3)
    release.set()
    await asyncio.gather(*tasks)
    connects = monitor.counters.connects
    admin = create_async_engine(engine.url, poolclass=StaticPool)
    try:
        async with admin.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = 'dbkeel-tests'"
                )
            )
    finally:
        await admin.dispose()
    assert killed == 3
    # past the window in which a connection just returned is trusted without a ping
    await asyncio.sleep(dbkeel.engine.PING_IDLE_AFTER + 0.1)

    async def request() -> int:
        async with pg_pool.get_session() as session:
            return int(await session.scalar(text("SELECT 1")) or 0)

    assert await asyncio.gather(*(request() for _ in range(6))) == [1] * 6
    assert monitor.counters.hard_invalidations >= 1
    assert monitor.counters.connects >= connects + 1


async def test_checkout_timeout_is_counted(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(
        pg_url, environment="production", pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    caplog.set_level(logging.WARNING, POOL_LOGGER)
    async with DatabaseManager(settings) as db:
        monitor = db.monitor
        assert monitor is not None
        async with db.engine.connect():
            with pytest.raises(PoolExhaustedError):
                async with db.get_session() as session:
                    await session.execute(text("SELECT 1"))
        assert monitor.counters.checkout_timeouts == 1
        assert monitor.waiting == 0
    assert "checkout timed out" in caplog.text


async def test_thousand_concurrent_tasks_on_a_20_plus_10_pool(pg_url: str) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=20, max_overflow=10)
    async with DatabaseManager(settings) as db:
        monitor = db.monitor
        assert monitor is not None
        peak = 0

        async def request(i: int) -> int:
            nonlocal peak
            async with db.get_session() as session:
                value = int(await session.scalar(text("SELECT CAST(:i AS INTEGER)"), {"i": i}) or 0)
                peak = max(peak, PoolMonitor.get_pool_status(db.engine)["checked_out"] or 0)
                return value

        results = await asyncio.gather(*(request(i) for i in range(1000)), return_exceptions=True)
        assert results == list(range(1000))
        status = PoolMonitor.get_pool_status(db.engine)
        assert (status["checked_out"], status["waiting"], status["max"]) == (0, 0, 30)
        assert 20 < peak <= 30
        assert monitor.counters.checkout_timeouts == 0
        assert monitor.counters.checkout_wait.count >= 1000


# -- settings ------------------------------------------------------------------------------


def test_monitoring_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_LEAK_THRESHOLD", "15")
    monkeypatch.setenv("DATABASE_CAPTURE_CHECKOUT_STACK", "1")
    settings = make_settings("sqlite+aiosqlite://")
    options = PoolMonitor.options_from_settings(settings)
    assert (options.leak_threshold, options.capture_stack) == (15, True)
    assert settings.effective_monitoring is False  # test profile
    assert make_settings("sqlite+aiosqlite://", environment="production").effective_monitoring
    monkeypatch.setenv("DATABASE_LEAK_THRESHOLD", "0")
    with pytest.raises(ConfigurationError, match=r"DATABASE_LEAK_THRESHOLD = '0' is invalid"):
        make_settings("sqlite+aiosqlite://")


async def test_close_stops_the_leak_watch(pg_pool: DatabaseManager) -> None:
    watch = pg_pool._leak_watch
    assert watch is not None and not watch.done()
    await pg_pool.close()
    assert watch.cancelled()


async def test_design_call_on_a_monitored_manager_returns_its_monitor(pg_url: str) -> None:
    """``PoolMonitor.setup_listeners(db.engine)``, the design's own call, on a production
    manager (monitoring on) used to raise "already monitored with different options"."""
    settings = make_settings(pg_url, environment="production", app_name="billing")
    async with DatabaseManager(settings) as db:
        assert db.monitor is not None
        assert PoolMonitor.setup_listeners(db.engine) is db.monitor
        with pytest.raises(ConfigurationError, match="already monitored"):
            PoolMonitor.setup_listeners(db.engine, app_name="other")
