"""Litestar plugin specifics: lifespan order with the app's own hooks, DbkeelConfig (names,
paths, error overrides), handlers the app registers itself. The behaviour shared with
FastAPI is tested in test_integrations_responses.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dbkeel import DatabaseManager
from dbkeel.integrations.litestar import DbkeelConfig, DbkeelPlugin, ErrorResponse
from tests.conftest import make_settings
from tests.web_apps import WebItem, create_items_table, running


async def test_app_lifespan_and_hooks_use_the_database_at_both_ends(db_url: str) -> None:
    events: list[str] = []

    async def reachable(app: Litestar) -> bool:
        db: DatabaseManager = app.state.dbkeel
        return bool((await db.health())["reachable"])

    @asynccontextmanager
    async def own_lifespan(app: Litestar) -> AsyncIterator[None]:
        events.append(f"lifespan start, reachable={await reachable(app)}")
        yield
        events.append(f"lifespan end, reachable={await reachable(app)}")

    async def on_startup(app: Litestar) -> None:
        events.append(f"startup hook, reachable={await reachable(app)}")

    async def on_shutdown(app: Litestar) -> None:
        events.append(f"shutdown hook, reachable={await reachable(app)}")

    db = DatabaseManager(make_settings(db_url))
    app = Litestar(
        [],
        lifespan=[own_lifespan],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        plugins=[DbkeelPlugin(db)],
    )
    async with running(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
    assert events == [
        "lifespan start, reachable=True",
        "startup hook, reachable=True",
        "lifespan end, reachable=True",
        "shutdown hook, reachable=True",
    ]
    assert not db.is_initialized


@post("/named/{item_id:int}", status_code=200)
async def add_named(item_id: FromPath[int], tx: NamedDependency[AsyncSession]) -> dict[str, Any]:
    tx.add(WebItem(id=item_id, name="same"))
    await tx.flush()
    return {"id": item_id}


@post("/manager", status_code=200)
async def manager_route(database: NamedDependency[DatabaseManager]) -> dict[str, Any]:
    return {"initialized": database.is_initialized}


async def test_config_names_paths_and_error_overrides(db: DatabaseManager, db_url: str) -> None:
    await create_items_table(db)
    config = DbkeelConfig(
        session_key="tx",
        manager_key="database",
        live_path="/livez",
        ready_path=None,
        metrics_path=None,
        errors={IntegrityError: ErrorResponse(422, "taken", "That name is taken.")},
    )
    plugin = DbkeelPlugin(DatabaseManager(make_settings(db_url)), config)
    app = Litestar([add_named, manager_route], plugins=[plugin])
    async with running(app) as client:
        assert (await client.get("/livez")).json() == {"status": "ok"}
        assert (await client.get("/health/live")).status_code == 404
        assert (await client.get("/health/ready")).status_code == 404
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.post("/manager")).json() == {"initialized": True}
        assert (await client.post("/named/1")).status_code == 200
        taken = await client.post("/named/2")
        assert taken.status_code == 422, taken.text
        assert taken.json() == {"error": "taken", "message": "That name is taken."}


async def test_the_apps_own_exception_handler_is_kept(db: DatabaseManager, db_url: str) -> None:
    await create_items_table(db)

    def own(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        return Response({"mine": True}, status_code=418)

    app = Litestar(
        [add_named],
        exception_handlers={IntegrityError: own},
        plugins=[DbkeelPlugin(DatabaseManager(make_settings(db_url)), DbkeelConfig("tx"))],
    )
    async with running(app) as client:
        assert (await client.post("/named/1")).status_code == 200
        mine = await client.post("/named/2")
        assert mine.status_code == 418 and mine.json() == {"mine": True}
