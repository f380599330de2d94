"""FastAPI and Litestar answer alike (one error map, dbkeel.integrations.responses), on
PostgreSQL, SQLite and MariaDB: health, metrics, sessions, errors mapped to statuses."""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import text

from dbkeel import DatabaseManager
from tests import conftest
from tests.conftest import make_settings
from tests.web_apps import BUILDERS, DEFERRED, FRAMEWORKS, create_items_table, manager_of, running


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_health_routes(framework: str, db_url: str, backend: str) -> None:
    app = BUILDERS[framework](make_settings(db_url), [])
    async with running(app) as client:
        live = await client.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["reachable"] is True
        assert body["backend"] == ("mysql" if backend == "mariadb" else backend)
        assert "root@" not in ready.text and "postgres@" not in ready.text
        assert "dbkeel_t_" not in ready.text  # not even the database name


async def test_metrics_route_exports_pool_metrics(framework: str, db_url: str) -> None:
    settings = make_settings(
        db_url, environment="production", monitoring=True, pool_size=3, max_overflow=0
    )
    app = BUILDERS[framework](settings, [])
    async with running(app) as client:
        assert (await client.get("/one")).json() == {"v": 1}
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        capacity = re.search(r"^dbkeel_pool_capacity\{[^}]*\} (\S+)$", metrics.text, re.M)
        assert capacity is not None, metrics.text
        assert float(capacity.group(1)) == 3.0
        connects = re.search(r"^dbkeel_pool_connects_total\{[^}]*\} (\S+)$", metrics.text, re.M)
        assert connects is not None and float(connects.group(1)) >= 1.0, metrics.text


async def test_duplicate_is_409_without_sql_or_values(
    framework: str, db: DatabaseManager, db_url: str
) -> None:
    await create_items_table(db)
    app = BUILDERS[framework](make_settings(db_url), [])
    async with running(app) as client:
        assert (await client.post("/items/1/secret-name")).status_code == 200
        duplicate = await client.post("/items/2/secret-name")
        assert duplicate.status_code == 409, duplicate.text
        assert duplicate.json() == {
            "error": "conflict",
            "message": "The request conflicts with existing data (a unique or reference rule).",
        }
        assert "secret-name" not in duplicate.text and "INSERT" not in duplicate.text
        assert (await client.get("/items/count")).json() == {"count": 1}
        assert (await manager_of(app).health())["pool"]["checked_out"] in (0, None)


@pytest.mark.parametrize("where", ["in the handler", "at the commit"])
async def test_version_conflict_is_409(
    framework: str, db: DatabaseManager, db_url: str, where: str
) -> None:
    await create_items_table(db)
    app = BUILDERS[framework](make_settings(db_url), [])
    async with running(app) as client:
        assert (await client.post("/items/1/a")).status_code == 200
        flush = "true" if where == "in the handler" else "false"
        conflict = await client.put("/items/1/qty/5", params={"flush": flush})
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"] == "concurrent_update"
        assert "web_items" not in conflict.text
    async with db.get_session() as session:
        # rolled back: neither the other write nor this one is kept
        row = (await session.execute(text("SELECT qty, version FROM web_items"))).one()
        assert tuple(row) == (0, 1)


async def test_read_session_reads_and_refuses_writes(
    framework: str, db: DatabaseManager, db_url: str
) -> None:
    await create_items_table(db)
    app = BUILDERS[framework](make_settings(db_url), [])
    async with running(app) as client:
        assert (await client.post("/items/1/a")).status_code == 200
        assert (await client.get("/items/count")).json() == {"count": 1}
        refused = await client.post("/read-only-write")
        assert refused.status_code == 500, refused.text
    async with db.get_session() as session:
        assert await session.scalar(text("SELECT qty FROM web_items")) == 0


async def test_failed_commit_is_an_error_status_not_a_200(
    framework: str, pg_db: DatabaseManager, pg_url: str
) -> None:
    async with pg_db.get_session() as s:
        await s.execute(text(f"DROP TABLE IF EXISTS {DEFERRED}"))
        await s.execute(
            text(
                f"CREATE TABLE {DEFERRED} (v int, CONSTRAINT {DEFERRED}_v UNIQUE (v) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    events: list[str] = []
    app = BUILDERS[framework](make_settings(pg_url), events)
    async with running(app) as client:
        assert events == ["app startup"]
        assert manager_of(app).is_initialized
        first = await client.post("/deferred/1")
        assert first.status_code == 200, first.text
        second = await client.post("/deferred/1")  # the COMMIT fails, after the handler
        assert second.status_code == 409, second.text
        assert second.json()["error"] == "conflict"
        assert "INSERT" not in second.text and DEFERRED not in second.text
    assert events == ["app startup", "app shutdown"]
    assert not manager_of(app).is_initialized
    async with pg_db.get_session() as s:
        assert await s.scalar(text(f"SELECT count(*) FROM {DEFERRED}")) == 1


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
async def test_pool_exhausted_is_503_with_retry_after_and_ready_says_so(
    framework: str, server: str, test_databases: conftest.TestDatabases
) -> None:
    settings = make_settings(
        test_databases.url(server),
        environment="production",
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
    )
    app = BUILDERS[framework](settings, [])
    async with running(app) as client:
        assert (await client.get("/one")).json() == {"v": 1}
        async with manager_of(app).engine.connect() as held:
            await held.execute(text("SELECT 1"))  # the pool's only connection
            busy = await client.get("/one")
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"] == "1"
            assert busy.json()["error"] == "database_busy"
            loop = asyncio.get_running_loop()
            started = loop.time()
            ready = await client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["pool_exhausted"] is True
            assert loop.time() - started < 0.5  # no wait for the pool
        assert (await client.get("/health/ready")).status_code == 200
