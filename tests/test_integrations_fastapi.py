"""FastAPI specifics: install() options (paths, error overrides) and the app's own handlers.
The behaviour shared with Litestar (health, metrics, sessions, commit before the response,
errors to statuses) is tested on the three databases in test_integrations_responses.py."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from dbkeel import DatabaseManager
from dbkeel.integrations.fastapi import ErrorResponse, Session, install
from tests.conftest import make_settings
from tests.web_apps import WebItem, create_items_table, running


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/named/{item_id}")
    async def add(item_id: int, session: Session) -> dict[str, Any]:
        session.add(WebItem(id=item_id, name="same"))
        await session.flush()
        return {"id": item_id}

    return app


async def test_install_paths_and_error_overrides(db: DatabaseManager, db_url: str) -> None:
    await create_items_table(db)
    app = _app()
    install(
        app,
        DatabaseManager(make_settings(db_url)),
        errors={IntegrityError: ErrorResponse(422, "taken", "That name is taken.")},
        live_path="/livez",
        ready_path=None,
        metrics_path=None,
    )
    async with running(app) as client:
        assert (await client.get("/livez")).json() == {"status": "ok"}
        assert (await client.get("/health/live")).status_code == 404
        assert (await client.get("/health/ready")).status_code == 404
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.post("/named/1")).status_code == 200
        taken = await client.post("/named/2")
        assert taken.status_code == 422, taken.text
        assert taken.json() == {"error": "taken", "message": "That name is taken."}


async def test_the_apps_own_exception_handler_is_kept(db: DatabaseManager, db_url: str) -> None:
    await create_items_table(db)
    app = _app()

    @app.exception_handler(IntegrityError)
    async def own(request: Request, exc: IntegrityError) -> JSONResponse:
        return JSONResponse({"mine": True}, status_code=418)

    install(app, DatabaseManager(make_settings(db_url)))
    async with running(app) as client:
        assert (await client.post("/named/1")).status_code == 200
        mine = await client.post("/named/2")
        assert mine.status_code == 418 and mine.json() == {"mine": True}
