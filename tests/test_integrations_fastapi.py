"""FastAPI integration on PostgreSQL: lifespan, health routes, commit before response, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from dbkeel import DatabaseManager
from dbkeel.integrations.fastapi import ReadSession, Session, install
from tests.conftest import make_settings

TABLE = "fastapi_deferred"


def make_app(url: str, events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    app = FastAPI(lifespan=own_lifespan)
    install(app, DatabaseManager(make_settings(url)))

    @app.post("/rows/{value}")
    async def add(value: int, session: Session) -> dict[str, Any]:
        # the unique constraint is DEFERRED: the INSERT succeeds, the COMMIT fails
        await session.execute(text(f"INSERT INTO {TABLE} (v) VALUES (:v)"), {"v": value})
        return {"added": value}

    @app.get("/rows")
    async def count(session: ReadSession) -> dict[str, Any]:
        return {"count": await session.scalar(text(f"SELECT count(*) FROM {TABLE}"))}

    return app


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


async def test_failed_commit_is_an_error_status_not_a_200(
    pg_db: DatabaseManager, pg_url: str
) -> None:
    async with pg_db.get_session() as s:
        await s.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        await s.execute(
            text(
                f"CREATE TABLE {TABLE} (v int, CONSTRAINT {TABLE}_v UNIQUE (v) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    events: list[str] = []
    app = make_app(pg_url, events)
    async with client(app) as c:
        assert events == ["app startup"]
        first = await c.post("/rows/1")
        assert first.status_code == 200, first.text
        second = await c.post("/rows/1")
        assert second.status_code == 409
        assert second.json()["error"] == "conflict"
        assert "INSERT" not in second.text and TABLE not in second.text
        assert (await c.get("/rows")).json() == {"count": 1}
        manager: DatabaseManager = app.state.dbkeel
        assert (await manager.health())["pool"]["checked_out"] in (0, None)
    assert events == ["app startup", "app shutdown"]
    assert not app.state.dbkeel.is_initialized


async def test_health_routes(pg_url: str) -> None:
    app = make_app(pg_url, [])
    async with client(app) as c:
        live = await c.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "ok"}
        ready = await c.get("/health/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["backend"] == "postgresql"
        assert "postgres@" not in ready.text


async def test_pool_exhausted_is_503_with_retry_after_and_ready_says_so(pg_url: str) -> None:
    app = FastAPI()
    settings = make_settings(
        pg_url, environment="production", pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    install(app, DatabaseManager(settings))

    @app.get("/one")
    async def one(session: Session) -> dict[str, Any]:
        return {"v": await session.scalar(text("SELECT 1"))}

    async with client(app) as c:
        assert (await c.get("/one")).json() == {"v": 1}
        manager: DatabaseManager = app.state.dbkeel
        async with manager.engine.connect() as held:
            await held.execute(text("SELECT 1"))  # the pool's only connection
            busy = await c.get("/one")
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"] == "1"
            assert busy.json()["error"] == "database_busy"
            started = asyncio.get_running_loop().time()
            ready = await c.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["pool_exhausted"] is True
            assert asyncio.get_running_loop().time() - started < 0.5  # no wait for the pool
        assert (await c.get("/health/ready")).status_code == 200
