"""TimestampMixin: aware UTC from the database clock, readable after commit, trigger."""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from dbkeel import DatabaseManager
from dbkeel.mixins import TimestampMixin
from tests.conftest import CreateTables


class Base(MappedAsDataclass, DeclarativeBase):
    pass


class Note(TimestampMixin, Base):
    __tablename__ = "ts_notes"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    body: Mapped[str] = mapped_column(String(100))


class TriggerBase(DeclarativeBase):
    pass


class Audited(TimestampMixin, TriggerBase, updated_at_trigger=True):
    __tablename__ = "ts_audited"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))


def _is_aware_utc(value: dt.datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)


async def test_timestamps_are_aware_utc_and_near_now(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    async with db.get_session() as s:
        note = Note(body="hi")
        s.add(note)
    # readable after commit with no lazy load (expire_on_commit=False + eager_defaults)
    assert _is_aware_utc(note.created_at) and _is_aware_utc(note.updated_at)
    assert abs(note.created_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    async with db.get_session() as s:
        loaded = (await s.scalars(select(Note))).one()
        assert _is_aware_utc(loaded.created_at)


async def test_updated_at_advances_and_is_readable_after_commit(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    async with db.get_session() as s:
        note = Note(body="v1")
        s.add(note)
    first = note.updated_at
    await asyncio.sleep(0.02)
    async with db.get_session() as s:
        s.add(note)
        note.body = "v2"
        await s.flush()
        # Without eager_defaults the attribute would be expired here and this access
        # would lazy-load outside a greenlet: MissingGreenlet.
        assert note.updated_at > first
    assert note.updated_at > first  # and still loaded after commit
    assert note.created_at <= first


async def test_trigger_bumps_updated_at_on_raw_sql_update(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, TriggerBase.metadata)
    async with db.get_session() as s:
        s.add(Audited(id=1, body="v1"))
    async with db.get_session() as s:
        before = (await s.scalars(select(Audited))).one().updated_at
    await asyncio.sleep(0.02)
    async with db.engine.begin() as conn:  # another program's raw SQL
        await conn.execute(text("UPDATE ts_audited SET body = 'raw' WHERE id = 1"))
    async with db.get_session() as s:
        after = (await s.scalars(select(Audited))).one()
    assert after.body == "raw" and after.updated_at > before and _is_aware_utc(after.updated_at)


async def test_without_trigger_raw_sql_does_not_bump_updated_at(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    async with db.get_session() as s:
        note = Note(body="v1")
        s.add(note)
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE ts_notes SET body = 'raw'"))
    async with db.get_session() as s:
        assert (await s.scalars(select(Note))).one().updated_at == note.updated_at


async def test_a_timestamp_read_back_finds_its_row(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    """Regression (issue 17): on SQLite the database clock stored 3 decimals while
    UTCDateTime binds 6, so ``created_at == value_read_back`` found nothing."""
    await create_tables(db, Base.metadata)
    async with db.get_session() as session:
        session.add(Note(body="one"))
    async with db.get_session() as session:
        created = (await session.execute(select(Note.created_at))).scalar_one()
        equal = await session.scalars(select(Note.body).where(Note.created_at == created))
        assert equal.all() == ["one"]
        since = await session.scalars(select(Note.body).where(Note.created_at >= created))
        assert since.all() == ["one"]
        after = await session.scalars(select(Note.body).where(Note.created_at > created))
        assert after.all() == []
