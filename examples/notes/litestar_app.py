"""The notes example on Litestar: the models and schemas of ``app.py``, Litestar's style.

Run it::

    DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/test \\
        uvicorn examples.notes.litestar_app:app

Everything database-related is the ``DbkeelPlugin`` line and the ``db_session`` /
``db_read_session`` parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from examples.notes.app import Base, Note, NoteIn, NoteOut, _out
from litestar import Litestar, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dbkeel import DatabaseManager
from dbkeel.integrations.litestar import DbkeelPlugin

Session = NamedDependency[AsyncSession]


@post("/notes", status_code=201)
async def create_note(data: NoteIn, db_session: Session) -> NoteOut:
    row = Note(slug=data.slug, body=data.body, tags=data.tags)
    db_session.add(row)
    await db_session.flush()
    return _out(row)


@get("/notes/{note_id:uuid}")
async def get_note(note_id: FromPath[uuid.UUID], db_read_session: Session) -> NoteOut:
    row = await db_read_session.get(Note, note_id)
    if row is None:
        raise NotFoundException(f"no note {note_id}")
    return _out(row)


@get("/notes")
async def list_notes(db_read_session: Session) -> list[NoteOut]:
    query = select(Note).order_by(Note.id).limit(50)
    return [_out(n) for n in await db_read_session.scalars(query)]


@delete("/notes/{note_id:uuid}", status_code=204)
async def delete_note(note_id: FromPath[uuid.UUID], db_session: Session) -> None:
    row = await db_session.get(Note, note_id)
    if row is None:
        raise NotFoundException(f"no note {note_id}")
    row.soft_delete()


@post("/notes/{note_id:uuid}/slow-touch", status_code=200)
async def slow_touch(
    note_id: FromPath[uuid.UUID], db_session: Session, seconds: FromQuery[float] = 1.0
) -> NoteOut:
    """Update, then hold the transaction open (to show cancellation is safe)."""
    row = await db_session.get(Note, note_id)
    if row is None:
        raise NotFoundException(f"no note {note_id}")
    row.body = row.body + "."
    await db_session.flush()
    postgres = db_session.get_bind().dialect.name == "postgresql"
    await db_session.execute(select(func.pg_sleep(seconds)) if postgres else text("SELECT 1"))
    return _out(row)


@asynccontextmanager
async def create_tables(app: Litestar) -> AsyncIterator[None]:
    # a real service runs `dbkeel migrate` instead; the example creates its table
    db: DatabaseManager = app.state.dbkeel
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield


app = Litestar(
    [create_note, get_note, list_notes, delete_note, slow_touch],
    lifespan=[create_tables],
    plugins=[DbkeelPlugin(DatabaseManager())],
)
