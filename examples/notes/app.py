"""The dbkeel FastAPI example: notes with UUID ids, tags, timestamps, soft delete, versions.

Run it::

    DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1/test \\
        uvicorn examples.notes.app:app

Everything database-related is the one ``install(app, db)`` line and the ``Session`` /
``ReadSession`` parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager
from dbkeel.integrations.fastapi import ReadSession, Session, install
from dbkeel.mixins import SoftDeleteMixin, TimestampMixin, VersionMixin, soft_delete_unique
from dbkeel.types import StringArray, UUIDType, uuid7


class Base(DeclarativeBase):
    pass


class Note(TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
    __tablename__ = "notes"
    __table_args__ = (soft_delete_unique("slug"),)

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=uuid7)
    slug: Mapped[str] = mapped_column(String(80))
    body: Mapped[str] = mapped_column(String(2000))
    tags: Mapped[list[str]] = mapped_column(StringArray(40), default=list)


class NoteIn(BaseModel):
    slug: str
    body: str
    tags: list[str] = []


class NoteOut(NoteIn):
    id: uuid.UUID
    version: int


def _out(note: Note) -> NoteOut:
    return NoteOut(id=note.id, slug=note.slug, body=note.body, tags=note.tags, version=note.version)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # a real service runs `dbkeel migrate` instead; the example creates its table
    db: DatabaseManager = app.state.dbkeel
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield


app = FastAPI(title="dbkeel notes", lifespan=lifespan)
install(app, DatabaseManager())


@app.post("/notes", status_code=201)
async def create_note(note: NoteIn, session: Session) -> NoteOut:
    row = Note(slug=note.slug, body=note.body, tags=note.tags)
    session.add(row)
    await session.flush()
    return _out(row)


@app.get("/notes/{note_id}")
async def get_note(note_id: uuid.UUID, session: ReadSession) -> NoteOut:
    row = await session.get(Note, note_id)
    if row is None:
        raise HTTPException(404, f"no note {note_id}")
    return _out(row)


@app.get("/notes")
async def list_notes(session: ReadSession) -> list[NoteOut]:
    query = select(Note).order_by(Note.id).limit(50)
    return [_out(n) for n in await session.scalars(query)]


@app.delete("/notes/{note_id}", status_code=204)
async def delete_note(note_id: uuid.UUID, session: Session) -> None:
    row = await session.get(Note, note_id)
    if row is None:
        raise HTTPException(404, f"no note {note_id}")
    row.soft_delete()


@app.post("/notes/{note_id}/slow-touch")
async def slow_touch(note_id: uuid.UUID, session: Session, seconds: float = 1.0) -> NoteOut:
    """Update, then hold the transaction open (to show cancellation is safe)."""
    row = await session.get(Note, note_id)
    if row is None:
        raise HTTPException(404, f"no note {note_id}")
    row.body = row.body + "."
    await session.flush()
    await session.execute(select(func.pg_sleep(seconds)) if _pg(session) else text("SELECT 1"))
    return _out(row)


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
