"""The example notes app written by hand (no dbkeel integration): the load benchmark's peer.

Same model, same endpoints, same commit-before-response dependency, with the engine,
session factory, lifespan and dependency written the way a user writes them today.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from examples.notes.app import Base, Note, NoteIn, NoteOut, _out
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

engine = create_async_engine(
    os.environ["DATABASE_URL"],
    pool_size=int(os.environ.get("DATABASE_POOL_SIZE", "10")),
    max_overflow=0,
    connect_args={"server_settings": {"application_name": os.environ.get("APP_NAME", "hand")}},
)
factory = async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


async def get_session() -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
app = FastAPI(lifespan=lifespan)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/health/ready")
async def ready() -> dict[str, object]:
    pool = engine.pool
    return {"pool": {"checked_out": pool.checkedout()}}  # type: ignore[attr-defined]


@app.post("/notes", status_code=201)
async def create_note(note: NoteIn, session: SessionDep) -> NoteOut:
    row = Note(slug=note.slug, body=note.body, tags=note.tags)
    session.add(row)
    await session.flush()
    return _out(row)


@app.get("/notes/{note_id}")
async def get_note(note_id: uuid.UUID, session: SessionDep) -> NoteOut:
    row = await session.get(Note, note_id)
    if row is None:
        raise HTTPException(404, f"no note {note_id}")
    return _out(row)
