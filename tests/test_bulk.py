"""bulk_insert / bulk_upsert on the real databases (issue 7)."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import gc
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import (
    JSON,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    Uuid,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column
from sqlalchemy.types import TypeDecorator

import dbkeel.bulk.copy
from dbkeel import (
    BulkLoadInterruptedError,
    BulkRowError,
    ConfigurationError,
    DatabaseManager,
    DatabaseUnavailableError,
    bulk_insert,
    bulk_upsert,
)
from dbkeel.mixins import SoftDeleteMixin, TimestampMixin, VersionMixin
from dbkeel.types import EncryptedType, JSONBType, StringArray, UTCDateTime, UUIDType, uuid7
from tests.conftest import CreateTables, make_settings
from tests.encryption_support import forget_test_columns as forget_test_columns  # autouse
from tests.encryption_support import key_settings

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


class Mood(enum.Enum):
    happy = "happy"
    grumpy = "grumpy"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(MappedAsDataclass, DeclarativeBase):
    metadata = MetaData()


class Thing(TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
    """Portable: every dbkeel type, all three mixins, default_factory, enum, numeric."""

    __tablename__ = "bulk_things"

    name: Mapped[str] = mapped_column(String(100))
    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default_factory=uuid7)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONBType, default=None)
    tags: Mapped[list[str]] = mapped_column(StringArray(20), default_factory=list)
    mood: Mapped[Mood] = mapped_column(Enum(Mood), default=Mood.happy)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), default=Decimal("0.00"))
    note: Mapped[str | None] = mapped_column(Text, default=None)
    seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class Note(Base):
    """Python-side timestamps: an insert_default and an onupdate callable."""

    __tablename__ = "bulk_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, init=False, insert_default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, init=False, insert_default=_now, onupdate=_now
    )


class Shouting(TypeDecorator[str]):
    """Refuses anything but text, quoting the value in its own message."""

    impl = String(50)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"not text: {value!r}")
        return value.upper() if value is not None else None


class StandInEncryptedType(Shouting):
    """Named like dbkeel's EncryptedType: its values are never shown."""

    cache_ok = True


class Child(Base):
    """An autoincrement key and a server default, both left to the database."""

    __tablename__ = "bulk_children"

    thing_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("bulk_things.id"))
    label: Mapped[str] = mapped_column(String(50))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, init=False)
    status: Mapped[str] = mapped_column(String(20), server_default="new", init=False)
    slug: Mapped[str] = mapped_column(
        String(60),
        init=False,
        insert_default=lambda ctx: ctx.get_current_parameters()["label"] + "!",
    )
    pin: Mapped[str | None] = mapped_column(StandInEncryptedType, default=None)
    secret: Mapped[str | None] = mapped_column(Shouting, default=None, info={"sensitive": True})


class PgBase(MappedAsDataclass, DeclarativeBase):
    metadata = MetaData()


class PgRich(PgBase):
    """PostgreSQL-only types: ARRAY, JSONB, and a SQL-expression insert default."""

    __tablename__ = "bulk_pg_rich"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default_factory=uuid.uuid4)
    tags: Mapped[list[str]] = mapped_column(postgresql.ARRAY(String(20)), default_factory=list)
    doc: Mapped[dict[str, Any]] = mapped_column(postgresql.JSONB, default_factory=dict)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, init=False, insert_default=func.now())


ROWS: list[dict[str, Any]] = [
    {"name": "plain"},
    {
        "name": "full",
        "payload": {"a": [1, 2, {"b": None}], "ü": "ß"},
        "tags": ["x", "y"],
        "mood": Mood.grumpy,
        "price": Decimal("12.34"),
        "note": "x" * 300,
        "seen_at": T0.astimezone(dt.timezone(dt.timedelta(hours=9))),
    },
    {"name": "explicit nulls", "payload": None, "note": None, "seen_at": None},
]

COMPARED = ("name", "payload", "tags", "mood", "price", "note", "seen_at", "version", "deleted_at")


@pytest.fixture
async def tables(db: DatabaseManager, create_tables: CreateTables) -> DatabaseManager:
    await create_tables(db, Base.metadata)
    return db


def _snapshot(things: list[Thing]) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(getattr(t, c) for c in COMPARED) for t in things),
        key=lambda r: (r[0], str(r)),
    )


async def _all(db: DatabaseManager) -> list[Thing]:
    async with db.get_session() as session:
        return list(await session.scalars(select(Thing)))


async def _count(db: DatabaseManager, model: type[Any] = Thing) -> int:
    async with db.get_session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def pg_tables(pg_db: DatabaseManager, create_tables: CreateTables) -> DatabaseManager:
    await create_tables(pg_db, Base.metadata)
    await create_tables(pg_db, PgBase.metadata)
    return pg_db


def _statements(db: DatabaseManager) -> list[str]:
    seen: list[str] = []

    @event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    return seen


async def test_copy_insert_and_session_add_read_back_identically(
    pg_tables: DatabaseManager,
) -> None:
    db = pg_tables
    async with db.get_session() as session:
        session.add_all([Thing(**row) for row in ROWS])
    added = _snapshot(await _all(db))
    for method in ("copy", "insert"):
        async with db.get_session() as session:
            await session.execute(text("DELETE FROM bulk_things"))
            assert await bulk_insert(session, Thing, ROWS, method=method) == len(ROWS)
        things = await _all(db)
        assert _snapshot(things) == added, method
        for thing in things:
            assert isinstance(thing.id, uuid.UUID)
            assert thing.created_at.tzinfo is dt.UTC
            assert thing.created_at == thing.updated_at or thing.updated_at > thing.created_at


async def test_insert_path_reads_back_like_session_add(tables: DatabaseManager) -> None:
    db = tables
    async with db.get_session() as session:
        session.add_all([Thing(**row) for row in ROWS])
    added = _snapshot(await _all(db))
    async with db.get_session() as session:
        await session.execute(text("DELETE FROM bulk_things"))
        assert await bulk_insert(session, Thing, ROWS) == len(ROWS)
    assert _snapshot(await _all(db)) == added


async def test_insert_path_writes_attributes_whose_column_name_differs(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    # The insert path sends plain models through Core insert(table), keyed by Column.key;
    # an attribute mapped to another column name must still land in its column.
    class RenamedBase(DeclarativeBase):
        metadata = MetaData()

    class Renamed(RenamedBase):
        __tablename__ = "bulk_renamed"

        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        label: Mapped[str] = mapped_column("label_text", String(20))

    await create_tables(db, RenamedBase.metadata)
    async with db.get_session() as session:
        count = await bulk_insert(
            session, Renamed, [{"id": 1, "label": "a"}, {"id": 2, "label": "b"}], method="insert"
        )
    assert count == 2
    async with db.get_session() as session:
        stored = (await session.execute(text("SELECT id, label_text FROM bulk_renamed"))).all()
        labels = list(await session.scalars(select(Renamed.label).order_by(Renamed.id)))
    assert sorted(tuple(r) for r in stored) == [(1, "a"), (2, "b")]
    assert labels == ["a", "b"]


async def test_auto_uses_copy_on_postgresql_and_insert_elsewhere(
    tables: DatabaseManager, backend: str
) -> None:
    statements = _statements(tables)
    async with tables.get_session() as session:
        await bulk_insert(session, Thing, ROWS)
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert bool(inserts) == (backend != "postgresql")
    assert await _count(tables) == len(ROWS)


async def test_copy_leaves_server_defaults_and_autoincrement_to_the_database(
    pg_tables: DatabaseManager,
) -> None:
    async with pg_tables.get_session() as session:
        thing = Thing(name="parent")
        session.add(thing)
        await bulk_insert(
            session,
            Child,
            [{"thing_id": thing.id, "label": f"c{i}"} for i in range(5)],
            method="copy",
        )
    async with pg_tables.get_session() as session:
        children = list(await session.scalars(select(Child).order_by(Child.id)))
    assert [c.id for c in children] == [1, 2, 3, 4, 5]
    assert {c.status for c in children} == {"new"}
    assert [c.slug for c in children] == [f"c{i}!" for i in range(5)]  # context-aware default


async def test_copy_evaluates_a_now_insert_default_in_the_transaction(
    pg_tables: DatabaseManager,
) -> None:
    async with pg_tables.get_session() as session:
        started = await session.scalar(select(func.now()))
        await bulk_insert(session, PgRich, [{"tags": ["a", "b"], "doc": {"k": 1}}, {}])
    async with pg_tables.get_session() as session:
        rows = list(await session.scalars(select(PgRich)))
    assert sorted(r.tags for r in rows) == [[], ["a", "b"]]
    assert sorted(str(r.doc) for r in rows) == ["{'k': 1}", "{}"]
    assert {r.at for r in rows} == {started}


async def test_async_iterable_is_streamed_in_batches_with_progress(
    tables: DatabaseManager,
) -> None:
    async def generate() -> AsyncIterator[dict[str, Any]]:
        for i in range(25):
            yield {"name": f"n{i}", "price": Decimal(i)}

    progress: list[tuple[int, int | None]] = []
    async with tables.get_session() as session:
        count = await bulk_insert(
            session, Thing, generate(), batch_size=10, on_progress=lambda *a: progress.append(a)
        )
    assert count == 25
    assert progress == [(10, None), (20, None), (25, None)]
    assert await _count(tables) == 25


async def test_list_input_reports_its_total(tables: DatabaseManager) -> None:
    progress: list[tuple[int, int | None]] = []
    async with tables.get_session() as session:
        await bulk_insert(
            session,
            Thing,
            [{"name": "a"}] * 3,
            batch_size=2,
            on_progress=lambda *a: progress.append(a),
        )
    assert progress == [(2, 3), (3, 3)]


async def test_insert_path_reads_and_sends_large_batches_in_groups_of_1000(
    tables: DatabaseManager,
) -> None:
    # A 2,500-row batch used to be read, prepared and held whole before its INSERT: its
    # objects outlived the garbage collector's young generations, and full collections
    # made the INSERT path slower than plain insert(Model) at 1M rows (issue 17).
    read = 0

    def generate() -> Iterator[dict[str, Any]]:
        nonlocal read
        for i in range(2_500):
            read += 1
            yield {"name": f"n{i}"}

    read_at_insert: list[int] = []

    @event.listens_for(tables.engine.sync_engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT") and "bulk_things" in statement:
            read_at_insert.append(read)

    progress: list[int] = []
    async with tables.get_session() as session:
        count = await bulk_insert(
            session,
            Thing,
            generate(),
            method="insert",
            batch_size=2_000,
            on_progress=lambda sent, _total: progress.append(sent),
        )
    assert count == 2_500
    # at most one group (1000 rows) read ahead of what the INSERTs so far carry
    assert read_at_insert[0] <= 1_000
    assert all(n <= 1_000 * (i + 1) for i, n in enumerate(read_at_insert))
    # progress still comes per batch_size rows: a group never crosses a batch's end
    assert progress == [2_000, 2_500]
    assert await _count(tables) == 2_500


async def test_database_error_mid_way_leaves_nothing_of_the_call(
    tables: DatabaseManager,
) -> None:
    # The duplicate key is in the third batch: two batches are already in the table.
    taken = uuid.uuid4()
    rows = [{"name": f"n{i}"} for i in range(30)]
    rows[25]["id"] = taken
    async with tables.get_session() as session:
        session.add(Thing(name="before", id=taken))
        await session.flush()
        with pytest.raises(Exception, match=r"(?i)duplicate|unique"):
            await bulk_insert(session, Thing, rows, batch_size=10)
        # the caller's own work survives, and the session is usable
        session.add(Thing(name="after"))
    assert sorted(t.name for t in await _all(tables)) == ["after", "before"]


@pytest.mark.parametrize(
    ("row", "column", "shown"),
    [
        ({"name": "x", "nmae": "typo"}, "nmae", "Did you mean 'name'?"),
        ({"price": Decimal(1)}, "name", "NOT NULL and has no default"),
        ({"name": None}, "name", "sets 'name' to None"),
        ({"name": "x", "seen_at": dt.datetime(2026, 1, 1)}, "seen_at", "naive datetime"),
    ],
)
async def test_bad_row_is_named_before_anything_is_sent(
    tables: DatabaseManager, row: dict[str, Any], column: str, shown: str
) -> None:
    rows = [{"name": f"ok{i}"} for i in range(7)]
    rows.insert(5, row)
    statements = _statements(tables)
    async with tables.get_session() as session:
        with pytest.raises(BulkRowError, match=r"^row 5 of the Thing") as caught:
            await bulk_insert(session, Thing, rows)
    assert caught.value.row_index == 5
    assert caught.value.column == column
    assert shown in str(caught.value)
    assert not [s for s in statements if "bulk_things" in s]


@pytest.mark.parametrize("column", ["secret", "pin"])
async def test_sensitive_values_are_not_shown_in_errors(
    tables: DatabaseManager, column: str
) -> None:
    async with tables.get_session() as session:
        parent = Thing(name="p")
        session.add(parent)
        with pytest.raises(BulkRowError) as caught:
            await bulk_insert(
                session, Child, [{"thing_id": parent.id, "label": "x", column: 12345678}]
            )
    assert caught.value.column == column
    assert caught.value.value is None
    assert "12345678" not in str(caught.value)
    assert "hidden" in str(caught.value)


async def test_return_keys_gives_primary_keys_in_input_order(tables: DatabaseManager) -> None:
    async with tables.get_session() as session:
        parent = Thing(name="p")
        session.add(parent)
        rows = [{"thing_id": parent.id, "label": f"c{i}"} for i in range(12)]
        keys = await bulk_insert(session, Child, rows, batch_size=5, return_keys=True)
        labels = dict((await session.execute(select(Child.id, Child.label))).all())
    assert [labels[k] for k in keys] == [f"c{i}" for i in range(12)]


async def test_commit_every_commits_chunks_and_says_where_to_resume(
    tables: DatabaseManager,
) -> None:
    taken = uuid.uuid4()
    async with tables.get_session() as session:
        session.add(Thing(name="taken", id=taken))
    rows = [{"name": f"n{i}"} for i in range(10)]
    rows[7]["id"] = taken
    async with tables.get_session() as session:
        with pytest.raises(BulkLoadInterruptedError) as caught:
            await bulk_insert(session, Thing, rows, commit_every=3)
    assert caught.value.rows_committed == 6
    assert await _count(tables) == 7
    rows[7]["id"] = uuid.uuid4()
    async with tables.get_session() as session:
        rest = itertools.islice(rows, caught.value.rows_committed, None)
        assert await bulk_insert(session, Thing, rest, commit_every=3) == 4
    assert sorted(t.name for t in await _all(tables)) == sorted(
        ["taken", *(f"n{i}" for i in range(10))]
    )


async def test_method_copy_off_postgresql_is_refused(db: DatabaseManager, backend: str) -> None:
    if backend == "postgresql":
        return
    async with db.get_session() as session:
        with pytest.raises(ConfigurationError, match="COPY needs PostgreSQL through asyncpg"):
            await bulk_insert(session, Thing, [{"name": "x"}], method="copy")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 is invalid"),
        ({"commit_every": 0}, "commit_every=0 is invalid"),
        ({"method": "fast"}, "method='fast' is not one of"),
    ],
)
async def test_bad_arguments_are_refused(
    pg_tables: DatabaseManager, kwargs: dict[str, Any], message: str
) -> None:
    async with pg_tables.get_session() as session:
        with pytest.raises(ConfigurationError, match=message):
            await bulk_insert(session, Thing, [{"name": "x"}], **kwargs)
        with pytest.raises(ConfigurationError, match="single dict"):
            await bulk_insert(session, Thing, {"name": "x"})
        with pytest.raises(ConfigurationError, match="mapped model class"):
            await bulk_insert(session, dict, [{"name": "x"}])


async def test_upsert_inserts_new_rows_and_updates_existing_ones(
    tables: DatabaseManager,
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    async with tables.get_session() as session:
        await bulk_upsert(session, Thing, [{"id": first, "name": "one", "note": "keep"}])
    before = (await _all(tables))[0]
    await asyncio.sleep(0.01)  # SQLite's clock has millisecond steps
    async with tables.get_session() as session:
        count = await bulk_upsert(
            session,
            Thing,
            [{"id": first, "name": "one v2"}, {"id": second, "name": "two"}],
        )
    assert count == 2
    after = {t.id: t for t in await _all(tables)}
    assert after[first].name == "one v2"
    assert after[first].note == "keep"  # not among the updated columns
    assert after[first].version == before.version + 1 == 2
    assert after[first].created_at == before.created_at
    assert after[first].updated_at > before.updated_at
    assert (after[second].name, after[second].version) == ("two", 1)


async def test_upsert_on_a_unique_column_with_chosen_update_columns(
    tables: DatabaseManager,
) -> None:
    async with tables.get_session() as session:
        parent = Thing(name="p")
        session.add(parent)
        await bulk_insert(session, Child, [{"thing_id": parent.id, "label": "a"}])
        child_id = await session.scalar(select(Child.id))
        await bulk_upsert(
            session,
            Child,
            [{"id": child_id, "thing_id": parent.id, "label": "b", "secret": "s"}],
            conflict=["id"],
            update=["label"],
        )
        child = (await session.execute(select(Child.label, Child.secret))).one()
    assert tuple(child) == ("b", None)


async def test_upsert_refuses_unknown_conflict_columns(tables: DatabaseManager) -> None:
    async with tables.get_session() as session:
        with pytest.raises(ConfigurationError, match="'nmae', which is not a column"):
            await bulk_upsert(session, Thing, [{"name": "x"}], conflict=["nmae"])
        with pytest.raises(ConfigurationError, match="is a string"):
            await bulk_upsert(session, Thing, [{"name": "x"}], conflict="name")


async def test_upsert_gives_python_onupdate_columns_a_new_value(tables: DatabaseManager) -> None:
    async with tables.get_session() as session:
        await bulk_upsert(session, Note, [{"id": 1, "text": "a"}])
        before = (await session.execute(select(Note.created_at, Note.updated_at))).one()
    await asyncio.sleep(0.01)
    async with tables.get_session() as session:
        await bulk_upsert(session, Note, [{"id": 1, "text": "b"}, {"id": 2, "text": "c"}])
        rows = (
            await session.execute(
                select(Note.text, Note.created_at, Note.updated_at).order_by(Note.id)
            )
        ).all()
    assert [r.text for r in rows] == ["b", "c"]
    assert rows[0].created_at == before.created_at
    assert rows[0].updated_at > before.updated_at


async def test_copy_encrypts_like_session_add(pg_url: str, create_tables: CreateTables) -> None:
    # Defined here: encrypted columns register process-wide (forget_test_columns cleans up).
    class EncBase(DeclarativeBase):
        metadata = MetaData()

    class Card(EncBase):
        __tablename__ = "bulk_cards"

        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        number: Mapped[str] = mapped_column(EncryptedType(String(40)))
        extra: Mapped[dict[str, Any] | None] = mapped_column(EncryptedType(JSON), default=None)

    async with DatabaseManager(key_settings(pg_url)) as db:
        await create_tables(db, EncBase.metadata)
        async with db.get_session() as session:
            session.add(Card(id=1, number="4111-1111", extra={"exp": "12/30"}))
            await bulk_insert(
                session,
                Card,
                [{"id": 2, "number": "4111-1111", "extra": {"exp": "12/30"}}],
                method="copy",
            )
            await bulk_insert(
                session,
                Card,
                [{"id": 3, "number": "4111-1111", "extra": {"exp": "12/30"}}],
                method="insert",
            )
        async with db.get_session() as session:
            cards = list(await session.scalars(select(Card).order_by(Card.id)))
            stored = list(await session.scalars(text("SELECT number FROM bulk_cards")))
        assert [(c.number, c.extra) for c in cards] == [("4111-1111", {"exp": "12/30"})] * 3
        assert all(b"4111" not in bytes(s) for s in stored)
        assert len({bytes(s) for s in stored}) == 3  # a fresh nonce per value
        async with db.get_session() as session:
            with pytest.raises(BulkRowError) as caught:
                await bulk_insert(session, Card, [{"id": 4, "number": 4111111}], method="copy")
        assert "4111111" not in str(caught.value)


async def test_copy_refusal_in_a_later_batch_discards_the_whole_copy(
    pg_tables: DatabaseManager,
) -> None:
    # About 1.4 MB of rows (asyncpg sends every 512 KiB) reached the server before row
    # 700, in the second group of 500, is refused: COPY is aborted mid-way.
    rows: list[dict[str, Any]] = [{"name": f"n{i}", "note": "x" * 2000} for i in range(800)]
    rows[700]["seen_at"] = dt.datetime(2026, 1, 1)  # naive: refused
    async with pg_tables.get_session() as session:
        session.add(Thing(name="before"))
        await session.flush()
        with pytest.raises(BulkRowError, match=r"^row 700 of the Thing") as caught:
            await bulk_insert(session, Thing, rows, batch_size=10, method="copy")
        assert caught.value.column == "seen_at"
        # the aborted COPY left the connection usable, in the same transaction
        assert await session.scalar(select(func.count()).select_from(Thing)) == 1
        session.add(Thing(name="after"))
    assert sorted(t.name for t in await _all(pg_tables)) == ["after", "before"]


async def test_copy_starts_a_new_copy_when_a_batch_gives_other_columns(
    pg_tables: DatabaseManager,
) -> None:
    # `note` and `seen_at` have no default: a batch that gives them needs another column
    # list; rows that leave them out get NULL, as with an INSERT.
    rows: list[dict[str, Any]] = [{"name": f"a{i}"} for i in range(4)]
    rows += [{"name": f"b{i}", "note": "n", "seen_at": T0} for i in range(4)]
    rows += [{"name": f"c{i}"} for i in range(3)]
    progress: list[int] = []
    async with pg_tables.get_session() as session:
        count = await bulk_insert(
            session,
            Thing,
            rows,
            batch_size=4,
            method="copy",
            on_progress=lambda sent, _total: progress.append(sent),
        )
    assert count == 11
    assert progress == [4, 8, 11]
    got = {(t.name, t.note, t.seen_at) for t in await _all(pg_tables)}
    assert got == {(r["name"], r.get("note"), r.get("seen_at")) for r in rows}


@pytest.mark.parametrize("method", ["copy", "insert"])
async def test_commit_every_keeps_each_chunk_whole(pg_tables: DatabaseManager, method: str) -> None:
    # Chunks of 6 rows, sent in batches of 3: the duplicate in the second batch of the
    # second chunk must take that chunk's first batch with it. (A COPY run before the
    # transaction began would have committed on its own.)
    taken = uuid.uuid4()
    async with pg_tables.get_session() as session:
        session.add(Thing(name="taken", id=taken))
    rows: list[dict[str, Any]] = [{"name": f"n{i}"} for i in range(12)]
    rows[10]["id"] = taken
    async with pg_tables.get_session() as session:
        with pytest.raises(BulkLoadInterruptedError) as caught:
            await bulk_insert(
                session,
                Thing,
                rows,
                batch_size=3,
                commit_every=6,
                method=method,  # type: ignore[arg-type]
            )
    assert caught.value.rows_committed == 6
    assert sorted(t.name for t in await _all(pg_tables)) == sorted(
        ["taken", *(f"n{i}" for i in range(6))]
    )


@pytest.mark.parametrize("method", ["copy", "insert"])
async def test_cancelled_bulk_insert_leaves_nothing_and_returns_the_connection(
    pg_url: str, create_tables: CreateTables, method: str
) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=2, max_overflow=0)
    async with DatabaseManager(settings) as db:
        await create_tables(db, Base.metadata)
        pool = db.engine.pool
        halfway = asyncio.Event()
        keep = []  # referenced, so garbage collection cannot return the connection for us

        async def rows() -> AsyncIterator[dict[str, Any]]:
            for i in range(100):
                if i == 50:
                    halfway.set()
                    await asyncio.sleep(30)  # cancelled here, mid-load
                yield {"name": f"n{i}"}

        async def load() -> None:
            async with db.get_session() as session:
                keep.append(session)
                await bulk_insert(session, Thing, rows(), batch_size=10, method=method)  # type: ignore[arg-type]

        task = asyncio.create_task(load())
        await halfway.wait()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await _count(db) == 0
        async with db.get_session() as session:  # the pool's connections still work
            assert await bulk_insert(session, Thing, [{"name": "x"}], method=method) == 1  # type: ignore[arg-type]
        assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_cancelled_load_with_commit_every_keeps_the_committed_chunks(
    pg_url: str, create_tables: CreateTables
) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=2, max_overflow=0)
    async with DatabaseManager(settings) as db:
        await create_tables(db, Base.metadata)
        halfway = asyncio.Event()
        progress: list[int] = []

        async def rows() -> AsyncIterator[dict[str, Any]]:
            for i in range(100):
                if i == 45:
                    halfway.set()
                    await asyncio.sleep(30)
                yield {"name": f"n{i}"}

        async def load() -> None:
            async with db.get_session() as session:
                await bulk_insert(
                    session,
                    Thing,
                    rows(),
                    batch_size=10,
                    commit_every=20,
                    on_progress=lambda sent, _total: progress.append(sent),
                )

        task = asyncio.create_task(load())
        await halfway.wait()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
        assert "the first 40 rows of the input are committed" in "\n".join(caught.value.__notes__)
        # chunks [0, 20) and [20, 40) are committed; rows 40-44 of the third are not
        assert await _count(db) == 40
        assert progress[-1] == 40
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_copy_makes_uuid_keys_a_batch_at_a_time_like_the_default(
    pg_tables: DatabaseManager,
) -> None:
    given = uuid.uuid4()
    rows: list[dict[str, Any]] = [{"name": f"{i:05d}"} for i in range(1200)]
    rows[700]["id"] = given  # a given key is kept, the generated ones skip it
    async with pg_tables.get_session() as session:
        await bulk_insert(session, Thing, rows, method="copy", batch_size=400)
        await bulk_insert(session, PgRich, [{}] * 600, method="copy")
    things = sorted(await _all(pg_tables), key=lambda t: t.name)
    made = [t.id for t in things if t.id != given]
    assert things[700].id == given
    assert len(set(made)) == 1199
    assert {(u.version, u.variant) for u in made} == {(7, uuid.RFC_4122)}
    assert made == sorted(made)  # uuid7 keys follow the input order
    async with pg_tables.get_session() as session:
        v4 = list(await session.scalars(select(PgRich.id)))
    assert len(set(v4)) == 600
    assert {(u.version, u.variant) for u in v4} == {(4, uuid.RFC_4122)}


async def test_copy_is_not_started_for_a_refusal_in_the_first_group(
    pg_tables: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    started: list[str] = []
    real_copy = asyncpg.Connection.copy_records_to_table

    async def spy(self: Any, table_name: str, **kwargs: Any) -> Any:
        started.append(table_name)  # calls through: the real COPY still runs
        return await real_copy(self, table_name, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", spy)
    rows: list[dict[str, Any]] = [{"name": f"n{i}"} for i in range(100)]
    rows[60]["seen_at"] = dt.datetime(2026, 1, 1)  # naive: refused by UTCDateTime
    async with pg_tables.get_session() as session:
        with pytest.raises(BulkRowError, match=r"^row 60 of the Thing"):
            await bulk_insert(session, Thing, rows, method="copy")
    assert started == []
    async with pg_tables.get_session() as session:
        await bulk_insert(session, Thing, rows[:60], method="copy")
    assert started == ["bulk_things"]


async def test_copy_of_a_list_leaves_the_event_loop_free_and_honours_a_timeout(
    pg_tables: DatabaseManager,
) -> None:
    # asyncpg encodes a plain iterable without awaiting; dbkeel must still yield, or
    # every other task (and any timeout) would wait for the whole load.
    rows: list[dict[str, Any]] = [{"name": f"n{i}", "note": "x" * 50} for i in range(200_000)]
    gaps: list[float] = []
    loop = asyncio.get_running_loop()

    collecting = [0.0, 0.0]  # [thread CPU spent in the garbage collector, its start]

    def gc_timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[1] = time.thread_time()
        else:
            collecting[0] += time.thread_time() - collecting[1]

    async def ticker() -> None:
        # Gaps in this thread's CPU time, not wall time: a stall is the loop busy in
        # our code without yielding; a wall-clock gap can also be the OS running other
        # processes on a loaded CI machine, which no code of ours can prevent. The
        # garbage collector's full passes over the test's own 200k input rows (0.2-0.6
        # s each on a busy machine) are the interpreter's, not a missing yield: not counted.
        last, last_gc = time.thread_time(), collecting[0]
        while True:
            await asyncio.sleep(0.005)
            now, now_gc = time.thread_time(), collecting[0]
            gaps.append((now - last) - (now_gc - last_gc))
            last, last_gc = now, now_gc

    gc.callbacks.append(gc_timer)
    tick = asyncio.create_task(ticker())
    started = loop.time()
    try:
        async with pg_tables.get_session() as session:
            await bulk_insert(session, Thing, rows, method="copy")
    finally:
        took = loop.time() - started
        tick.cancel()
        gc.callbacks.remove(gc_timer)
    assert took > 0.5, f"the load took {took:.2f} s: too short to show a stall"
    assert max(gaps) < 0.1, (
        f"the event loop ran {max(gaps):.2f} s of CPU without yielding during a {took:.2f} s load"
    )

    async with pg_tables.get_session() as session:
        started = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await bulk_insert(session, Thing, rows, method="copy")
        assert loop.time() - started < 0.2 + 0.3  # the timeout lands within a group
        # the SAVEPOINT undid the interrupted load; the session carries on
        session.add(Thing(name="after"))
    names = [t.name for t in await _all(pg_tables) if not t.name.startswith("n")]
    assert names == ["after"]
    assert await _count(pg_tables) == 200_001


@pytest.mark.parametrize("method", ["copy", "insert"])
async def test_a_duplicate_key_raises_integrity_error_on_either_path(
    pg_tables: DatabaseManager, method: str
) -> None:
    taken = uuid.uuid4()
    async with pg_tables.get_session() as session:
        session.add(Thing(name="taken", id=taken))
    rows: list[dict[str, Any]] = [{"name": f"n{i}"} for i in range(30)]
    rows[20]["id"] = taken
    async with pg_tables.get_session() as session:
        with pytest.raises(sqlalchemy.exc.IntegrityError) as caught:
            await bulk_insert(session, Thing, rows, method=method)  # type: ignore[arg-type]
        assert caught.value.orig is not None
        assert "bulk_things_pkey" in str(caught.value.orig)
        if method == "copy":
            assert caught.value.statement is not None
            assert caught.value.statement.startswith("COPY bulk_things (")
        session.add(Thing(name="after"))  # the failed call left the session usable
    assert sorted(t.name for t in await _all(pg_tables)) == ["after", "taken"]


async def test_copy_reports_a_server_refusal_without_reading_all_the_input(
    pg_tables: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL answers a COPY only at its end: each COPY is capped so that a duplicate
    # key early in a long input is reported before the rest of the input is read.
    monkeypatch.setattr(dbkeel.bulk.copy, "_COPY_ROWS", 1000)
    taken = uuid.uuid4()
    async with pg_tables.get_session() as session:
        session.add(Thing(name="taken", id=taken))
    read = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal read
        for i in range(20_000):
            read += 1
            yield {"name": f"n{i}", **({"id": taken} if i == 5 else {})}

    async with pg_tables.get_session() as session:
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            await bulk_insert(session, Thing, rows(), method="copy")
    assert read <= 1000 + 2 * 500  # the capped COPY and the group read for the next one
    assert await _count(pg_tables) == 1


async def test_copy_keeps_generated_uuid7_keys_in_input_order_on_the_slow_path(
    pg_tables: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows that leave out a nullable column other rows of their group give are built
    # one by one (the slow path); their keys still come from the group's block.
    made: list[int] = []
    real = dbkeel.bulk.copy.uuid7_packed

    def counting(count: int) -> bytes:
        made.append(count)
        return real(count)

    monkeypatch.setattr(dbkeel.bulk.copy, "uuid7_packed", counting)
    rows: list[dict[str, Any]] = [
        {"name": f"{i:04d}", **({} if i % 3 == 0 else {"note": "n"})} for i in range(1200)
    ]
    async with pg_tables.get_session() as session:
        await bulk_insert(session, Thing, rows, method="copy")
    assert made == [500, 500, 200]  # one block per group of 500 rows
    things = sorted(await _all(pg_tables), key=lambda t: t.name)
    assert [t.note for t in things[:4]] == [None, "n", "n", None]
    ids = [t.id for t in things]
    assert ids == sorted(ids)


def _at_commit(session: Any, number: int, action: Callable[[Any], None]) -> None:
    """Run *action(sync_session)* just before the session's *number*-th COMMIT (a chunk's
    RELEASE SAVEPOINT also fires before_commit; it is not counted)."""
    commits = 0

    @event.listens_for(session.sync_session, "before_commit")
    def hook(sync_session: Any) -> None:
        nonlocal commits
        if sync_session.in_nested_transaction():
            return
        commits += 1
        if commits == number:
            action(sync_session)


async def test_lost_commit_in_a_commit_every_load_reports_the_rows_in_doubt(
    pg_tables: DatabaseManager,
) -> None:
    def lose_the_connection(sync_session: Any) -> None:
        sync_session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    async with pg_tables.get_session() as session:
        _at_commit(session, 2, lose_the_connection)  # the second chunk's COMMIT: no answer
        rows = [{"name": f"n{i}"} for i in range(50)]
        with pytest.raises(BulkLoadInterruptedError) as caught:
            await bulk_insert(session, Thing, rows, commit_every=20, method="copy")
    assert caught.value.rows_committed == 20
    assert caught.value.rows_in_doubt == 20
    assert "either the first 20 or the first 40 rows" in str(caught.value)
    assert await _count(pg_tables) == 20


async def test_an_error_from_the_input_mid_copy_is_raised_as_itself(
    pg_tables: DatabaseManager,
) -> None:
    def rows() -> Iterator[dict[str, Any]]:
        for i in range(3000):
            if i == 2000:
                raise ValueError("the feed broke")
            yield {"name": f"n{i}"}

    async with pg_tables.get_session() as session:
        with pytest.raises(ValueError, match="the feed broke") as caught:
            await bulk_insert(session, Thing, rows(), method="copy")
        assert caught.value.__cause__ is None
        session.add(Thing(name="after"))
    assert [t.name for t in await _all(pg_tables)] == ["after"]


async def test_a_connection_killed_mid_copy_is_dropped_from_the_pool(
    pg_url: str, create_tables: CreateTables
) -> None:
    settings = make_settings(pg_url, environment="production", pool_size=1, max_overflow=0)
    async with DatabaseManager(settings) as db:
        await create_tables(db, Base.metadata)
        pids: list[int] = []

        async def rows() -> AsyncIterator[dict[str, Any]]:
            for i in range(20_000):
                if i == 10_000:  # about 2 MB are streamed: kill the loading backend
                    async with DatabaseManager(make_settings(pg_url)) as admin:
                        async with admin.get_session() as other:
                            await other.execute(
                                text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]}
                            )
                yield {"name": f"n{i}", "note": "x" * 200}

        async with db.get_session() as session:
            pids.append(await session.scalar(text("SELECT pg_backend_pid()")))
            # dbkeel's one type for a lost connection, with SQLAlchemy's error behind it
            with pytest.raises(DatabaseUnavailableError) as translated:
                await bulk_insert(session, Thing, rows(), method="copy")
            caught = translated.value.__cause__
            assert isinstance(caught, sqlalchemy.exc.DBAPIError)
            assert caught.connection_invalidated
            assert caught.statement is not None
            assert caught.statement.startswith("COPY bulk_things")
            await session.rollback()  # as after any lost connection (SQLAlchemy's rule)
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # the pool's one connection was replaced: the next session works at once
        async with db.get_session() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) != pids[0]
            assert await session.scalar(select(func.count()).select_from(Thing)) == 0


async def test_a_commit_failure_that_is_not_a_lost_connection_leaves_nothing_in_doubt(
    pg_tables: DatabaseManager,
) -> None:
    def refuse(sync_session: Any) -> None:
        raise RuntimeError("a check before COMMIT refused it")

    async with pg_tables.get_session() as session:
        _at_commit(session, 2, refuse)
        with pytest.raises(BulkLoadInterruptedError) as caught:
            await bulk_insert(
                session, Thing, [{"name": f"n{i}"} for i in range(50)], commit_every=20
            )
    assert (caught.value.rows_committed, caught.value.rows_in_doubt) == (20, 0)
    assert "the first 20 rows of the input are committed" in str(caught.value)
    assert await _count(pg_tables) == 20


def test_constant_defaults_keep_copy_on_its_fast_path() -> None:
    from sqlalchemy import inspect as sa_inspect
    from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

    from dbkeel.bulk.prepare import RowPlan

    # Thing's defaults: uuid7, list, Mood.happy, Decimal("0.00"), False, 1
    assert RowPlan(sa_inspect(Thing), asyncpg_dialect()).plain_defaults
    # a default that reads the row's other values needs the general path
    assert not RowPlan(sa_inspect(Child), asyncpg_dialect()).plain_defaults


async def test_capped_copies_keep_order_progress_and_column_lists(
    pg_tables: DatabaseManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbkeel.bulk.copy, "_COPY_ROWS", 1000)
    copies: list[int] = []
    real_copy = dbkeel.bulk.copy.CopyWriter.write_all

    rows: list[dict[str, Any]] = [{"name": f"{i:05d}"} for i in range(3333)]
    for row in rows[1200:1500]:
        row["note"] = "given"  # another column list from row 1200 on (in groups of 500)
    progress: list[int] = []

    import asyncpg

    real = asyncpg.Connection.copy_records_to_table

    async def count_copies(self: Any, table_name: str, **kwargs: Any) -> Any:
        copies.append(len(kwargs["columns"]))
        return await real(self, table_name, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", count_copies)
    async with pg_tables.get_session() as session:
        count = await bulk_insert(
            session,
            Thing,
            rows,
            batch_size=300,
            method="copy",
            on_progress=lambda sent, _total: progress.append(sent),
        )
    assert real_copy is dbkeel.bulk.copy.CopyWriter.write_all
    assert count == 3333
    assert progress[-1] == 3333 and progress == sorted(set(progress))
    assert len(copies) >= 4  # capped at 1000 rows, and a new list at the note groups
    things = sorted(await _all(pg_tables), key=lambda t: t.name)
    assert [t.name for t in things] == [r["name"] for r in rows]
    assert [t.id for t in things] == sorted(t.id for t in things)  # uuid7 in input order
    assert [t.note for t in things].count("given") == 300


async def test_a_long_refused_value_is_shortened_in_the_message(tables: DatabaseManager) -> None:
    rows: list[dict[str, Any]] = [{"name": "ok"}, {"name": "bad", "seen_at": "x" * 20_000}]
    async with tables.get_session() as session:
        with pytest.raises(BulkRowError, match=r"^row 1 of the Thing") as caught:
            await bulk_insert(session, Thing, rows)
    assert len(str(caught.value)) < 1500
    assert "(20002 chars)" in str(caught.value)


async def test_copy_names_row_and_column_of_a_value_asyncpg_cannot_encode(
    pg_tables: DatabaseManager,
) -> None:
    # No bind processing for a plain Integer: asyncpg's encoder is the first to see "7".
    rows: list[dict[str, Any]] = [{"id": i, "text": f"t{i}"} for i in range(1200)]
    rows[900]["id"] = "900"
    async with pg_tables.get_session() as session:
        session.add(Note(id=-1, text="before"))
        with pytest.raises(BulkRowError, match=r"^row 900 of the Note bulk write") as caught:
            await bulk_insert(session, Note, rows, method="copy")
        assert caught.value.column == "id"
        assert "'900'" in str(caught.value)
        assert caught.value.__cause__ is None
    async with pg_tables.get_session() as session:
        assert list(await session.scalars(select(Note.text))) == ["before"]
