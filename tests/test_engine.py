"""Engine profiles and per-driver connect arguments, checked on the real servers."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import text
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, StaticPool

import dbkeel.engine
from dbkeel import DatabaseManager
from dbkeel.engine import build_engine_options, create_engine
from tests.conftest import make_settings


def test_production_profile_uses_every_pool_knob(pg_url: str) -> None:
    s = make_settings(
        pg_url,
        environment="production",
        pool_size=7,
        max_overflow=3,
        pool_timeout=4,
        pool_recycle=120,
        pool_use_lifo=True,
    )
    engine = create_engine(s)
    pool = engine.pool
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert pool.size() == 7
    assert pool._max_overflow == 3
    assert pool._timeout == 4
    assert pool._recycle == 120
    # asyncpg: pre-ping by dbkeel's checkout hook (SQLAlchemy's costs three round trips)
    assert pool._pre_ping is False
    assert build_engine_options(s).checkout_ping is True
    assert pool._pool.use_lifo is True  # type: ignore[attr-defined]


def test_test_profile_is_nullpool_without_autocommit(pg_url: str) -> None:
    options = build_engine_options(make_settings(pg_url))
    assert options.poolclass is NullPool
    assert "isolation_level" not in options.kwargs


def test_autocommit_only_when_asked_for(pg_url: str) -> None:
    options = build_engine_options(make_settings(pg_url, isolation_level="AUTOCOMMIT"))
    assert options.kwargs["isolation_level"] == "AUTOCOMMIT"


def test_development_profile_is_small_unless_set(pg_url: str) -> None:
    small = build_engine_options(make_settings(pg_url, environment="development", pool_size=40))
    assert small.kwargs["pool_size"] == 40  # explicit wins
    default = build_engine_options(make_settings(pg_url, environment="development"))
    assert default.kwargs["pool_size"] <= 5
    assert default.kwargs["max_overflow"] <= 2
    echo = build_engine_options(make_settings(pg_url, environment="development", echo=True))
    assert echo.kwargs["echo"] is True


def test_memory_sqlite_shares_one_connection() -> None:
    options = build_engine_options(make_settings("sqlite+aiosqlite:///:memory:"))
    assert options.poolclass is StaticPool


def test_unknown_driver_passes_through_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    options = build_engine_options(make_settings("mysql+aiomysql://u@h/d"))
    assert "connect_args" not in options.kwargs
    assert options.notes and "aiomysql" in options.notes[0]


def test_psycopg_gets_its_own_connect_args(pg_url: str) -> None:
    s = make_settings(pg_url.replace("asyncpg", "psycopg"), statement_timeout=2.5)
    args = build_engine_options(s).kwargs["connect_args"]
    assert args["application_name"] == "dbkeel-tests"
    assert "-c statement_timeout=2500" in args["options"]
    assert "server_settings" not in args and "command_timeout" not in args


async def test_asyncpg_session_gets_application_name_jit_and_timeouts(pg_url: str) -> None:
    s = make_settings(pg_url, app_name="billing-api", statement_timeout=1.5)
    async with DatabaseManager(s) as db, db.engine.connect() as conn:
        assert await conn.scalar(text("SHOW application_name")) == "billing-api"
        assert await conn.scalar(text("SHOW jit")) == "off"
        assert await conn.scalar(text("SHOW statement_timeout")) == "1500ms"


async def test_statement_timeout_stops_a_slow_query_on_postgres(pg_url: str) -> None:
    s = make_settings(pg_url, statement_timeout=0.2)
    async with DatabaseManager(s) as db, db.engine.connect() as conn:
        with pytest.raises(Exception, match="statement timeout"):
            await conn.execute(text("SELECT pg_sleep(3)"))


def test_pgbouncer_mode_disables_prepared_statement_caches(pg_url: str) -> None:
    options = build_engine_options(make_settings(pg_url, pgbouncer=True, environment="production"))
    args = options.kwargs["connect_args"]
    assert args["statement_cache_size"] == 0
    assert args["prepared_statement_name_func"]() != args["prepared_statement_name_func"]()
    assert options.url.query["prepared_statement_cache_size"] == "0"
    assert "jit" not in args["server_settings"]
    assert options.poolclass is NullPool


async def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/wal.sqlite3"
    async with DatabaseManager(make_settings(url, connect_timeout=3)) as db:
        async with db.engine.connect() as conn:
            assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await conn.scalar(text("PRAGMA foreign_keys")) == 1
            assert await conn.scalar(text("PRAGMA busy_timeout")) == 3000


async def test_sqlite_savepoints_really_roll_back(tmp_path: object) -> None:
    # pysqlite's legacy transaction handling breaks SAVEPOINT unless dbkeel takes over BEGIN.
    url = f"sqlite+aiosqlite:///{tmp_path}/sp.sqlite3"
    async with DatabaseManager(make_settings(url)) as db:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            nested = await conn.begin_nested()
            await conn.execute(text("INSERT INTO t VALUES (2)"))
            await nested.rollback()
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT x FROM t"))).scalars().all() == [1]


async def test_mariadb_session_is_strict_utf8mb4_utc(mariadb_url: str) -> None:
    s = make_settings(mariadb_url, statement_timeout=2, app_name="billing-api")
    async with DatabaseManager(s) as db, db.engine.connect() as conn:
        mode = await conn.scalar(text("SELECT @@SESSION.sql_mode"))
        assert "STRICT_TRANS_TABLES" in mode and "NO_ZERO_DATE" in mode
        assert await conn.scalar(text("SELECT @@character_set_connection")) == "utf8mb4"
        assert await conn.scalar(text("SELECT @@SESSION.time_zone")) == "+00:00"
        assert float(await conn.scalar(text("SELECT @@SESSION.max_statement_time"))) == 2.0


async def test_create_engine_logs_the_unknown_driver_note(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dbkeel")
    # sqlite+pysqlite is a known SQLAlchemy driver without a dbkeel profile; the engine is
    # still created (no connection is opened here).
    from dbkeel.settings import DatabaseSettings

    s = DatabaseSettings.model_construct(
        database_url="sqlite+pysqlite:///:memory:",
        environment="test",
        app_name="t",
        echo=False,
        isolation_level=None,
        pgbouncer=False,
    )
    with pytest.raises(Exception, match="asyncio"):
        create_engine(s)  # pysqlite is not async: SQLAlchemy itself refuses it
    assert any("no dbkeel profile" in r.getMessage() for r in caplog.records)


async def test_sqlite_autocommit_setting_really_autocommits(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/ac.sqlite3"
    async with DatabaseManager(make_settings(url, isolation_level="AUTOCOMMIT")) as db:
        async with db.engine.connect() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            # no commit: under AUTOCOMMIT each statement is already durable
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT x FROM t"))).scalars().all() == [1]


def test_pgbouncer_mode_says_where_statement_timeout_went(pg_url: str) -> None:
    options = build_engine_options(make_settings(pg_url, pgbouncer=True, statement_timeout=5))
    assert "statement_timeout" not in options.kwargs["connect_args"]["server_settings"]
    assert any("ALTER ROLE" in note for note in options.notes)
    psycopg = make_settings(pg_url.replace("asyncpg", "psycopg"), pgbouncer=True)
    assert build_engine_options(psycopg).kwargs["connect_args"]["prepare_threshold"] is None


async def _backend_pid(db: DatabaseManager) -> int:
    async with db.get_session() as session:
        return int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)


async def test_asyncpg_pre_ping_replaces_a_connection_the_server_closed(
    pg_url: str, pg_db: DatabaseManager
) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=1, max_overflow=0)
    async with DatabaseManager(settings) as db:
        pid = await _backend_pid(db)
        async with pg_db.get_session() as admin:
            assert await admin.scalar(text(f"SELECT pg_terminate_backend({pid})")) is True
        await asyncio.sleep(0.2)  # the client reads the server's goodbye
        # used a moment ago, so not pinged: asyncpg already knows the socket is closed
        assert await _backend_pid(db) not in (0, pid)


async def test_asyncpg_pre_ping_pings_only_connections_that_sat_idle(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=1, max_overflow=0)
    async with DatabaseManager(settings) as db:
        dialect = db.engine.sync_engine.dialect
        pings: list[object] = []
        real_ping = dialect.do_ping

        def counting_ping(dbapi_connection: object) -> bool:
            pings.append(dbapi_connection)
            return real_ping(dbapi_connection)  # type: ignore[arg-type]

        monkeypatch.setattr(dialect, "do_ping", counting_ping)
        first = await _backend_pid(db)  # a new connection: proven by connecting
        assert await _backend_pid(db) == first  # back a moment ago: no ping
        assert pings == []
        monkeypatch.setattr(dbkeel.engine, "PING_IDLE_AFTER", 0.05)
        await asyncio.sleep(0.1)
        assert await _backend_pid(db) == first  # idle long enough: pinged, still good
        assert len(pings) == 1
