"""The same small app built on FastAPI and on Litestar, for the integration tests.

Both serve identical endpoints over the ``web_items`` table (a versioned row with a
unique name), so one test body checks that the two integrations answer alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from litestar import Litestar, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from sqlalchemy import String, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager, DatabaseSettings
from dbkeel.integrations.fastapi import ReadSession, Session, install
from dbkeel.integrations.litestar import DbkeelPlugin
from dbkeel.mixins import VersionMixin

FRAMEWORKS = ("fastapi", "litestar")
DEFERRED = "web_deferred"


class Base(DeclarativeBase):
    pass


class WebItem(VersionMixin, Base):
    __tablename__ = "web_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    qty: Mapped[int] = mapped_column(default=0)


# -- the endpoints, framework-free ---------------------------------------------------


async def add_item(session: AsyncSession, item_id: int, name: str) -> dict[str, Any]:
    session.add(WebItem(id=item_id, name=name))
    await session.flush()  # a duplicate name fails here, inside the handler
    return {"id": item_id}


async def set_qty(session: AsyncSession, item_id: int, qty: int, flush: bool) -> dict[str, Any]:
    row = await session.get(WebItem, item_id)
    assert row is not None
    # someone else's write, as the database sees it: the version moves on under the ORM
    await session.execute(
        text("UPDATE web_items SET version = version + 1 WHERE id = :id"), {"id": item_id}
    )
    row.qty = qty
    if flush:
        await session.flush()  # the conflict is raised in the handler
    return {"qty": qty}  # else at the commit, after the handler returned


async def add_deferred(session: AsyncSession, value: int) -> dict[str, Any]:
    # the unique constraint is DEFERRED: the INSERT succeeds, the COMMIT fails
    await session.execute(text(f"INSERT INTO {DEFERRED} (v) VALUES (:v)"), {"v": value})
    return {"added": value}


async def count_items(session: AsyncSession) -> dict[str, Any]:
    return {"count": await session.scalar(text("SELECT count(*) FROM web_items"))}


async def write_in_read_session(session: AsyncSession) -> dict[str, Any]:
    await session.execute(text("UPDATE web_items SET qty = qty + 1"))
    return {"wrote": True}


async def select_one(session: AsyncSession) -> dict[str, Any]:
    return {"v": await session.scalar(text("SELECT 1"))}


# -- FastAPI --------------------------------------------------------------------------


def fastapi_app(settings: DatabaseSettings, events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    app = FastAPI(lifespan=own_lifespan)
    install(app, DatabaseManager(settings))

    @app.post("/items/{item_id}/{name}")
    async def add(item_id: int, name: str, session: Session) -> dict[str, Any]:
        return await add_item(session, item_id, name)

    @app.put("/items/{item_id}/qty/{qty}")
    async def qty(item_id: int, qty: int, session: Session, flush: bool = False) -> dict[str, Any]:
        return await set_qty(session, item_id, qty, flush)

    @app.post("/deferred/{value}")
    async def deferred(value: int, session: Session) -> dict[str, Any]:
        return await add_deferred(session, value)

    @app.get("/items/count")
    async def count(session: ReadSession) -> dict[str, Any]:
        return await count_items(session)

    @app.post("/read-only-write")
    async def read_only_write(session: ReadSession) -> dict[str, Any]:
        return await write_in_read_session(session)

    @app.get("/one")
    async def one(session: Session) -> dict[str, Any]:
        return await select_one(session)

    return app


# -- Litestar -------------------------------------------------------------------------


@post("/items/{item_id:int}/{name:str}", status_code=200)
async def ls_add(
    item_id: FromPath[int], name: FromPath[str], db_session: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    return await add_item(db_session, item_id, name)


@put("/items/{item_id:int}/qty/{qty:int}")
async def ls_qty(
    item_id: FromPath[int],
    qty: FromPath[int],
    db_session: NamedDependency[AsyncSession],
    flush: FromQuery[bool] = False,
) -> dict[str, Any]:
    return await set_qty(db_session, item_id, qty, flush)


@post("/deferred/{value:int}", status_code=200)
async def ls_deferred(
    value: FromPath[int], db_session: NamedDependency[AsyncSession]
) -> dict[str, Any]:
    return await add_deferred(db_session, value)


@get("/items/count")
async def ls_count(db_read_session: NamedDependency[AsyncSession]) -> dict[str, Any]:
    return await count_items(db_read_session)


@post("/read-only-write", status_code=200)
async def ls_read_only_write(db_read_session: NamedDependency[AsyncSession]) -> dict[str, Any]:
    return await write_in_read_session(db_read_session)


@get("/one")
async def ls_one(db_session: NamedDependency[AsyncSession]) -> dict[str, Any]:
    return await select_one(db_session)


def litestar_app(settings: DatabaseSettings, events: list[str]) -> Litestar:
    @asynccontextmanager
    async def own_lifespan(app: Litestar) -> AsyncIterator[None]:
        events.append("app startup")
        yield
        events.append("app shutdown")

    return Litestar(
        [ls_add, ls_qty, ls_deferred, ls_count, ls_read_only_write, ls_one],
        lifespan=[own_lifespan],
        plugins=[DbkeelPlugin(DatabaseManager(settings))],
    )


# -- both -----------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[DatabaseSettings, list[str]], Any]] = {
    "fastapi": fastapi_app,
    "litestar": litestar_app,
}


def manager_of(app: Any) -> DatabaseManager:
    """The manager the integration attached to *app*."""
    manager: DatabaseManager = app.state.dbkeel
    return manager


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run *app*'s lifespan and yield a client talking to it in-process."""
    lifespan = app.lifespan() if isinstance(app, Litestar) else app.router.lifespan_context(app)
    async with lifespan:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def create_items_table(db: DatabaseManager) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
