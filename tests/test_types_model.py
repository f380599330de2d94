"""The design's User model on all three databases, and writes that must not half-happen."""

from __future__ import annotations

import datetime as dt
import traceback
import uuid
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import String, event, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from dbkeel import DatabaseManager, InvalidValueError
from dbkeel.types import JSONBType, StringArray, UTCDateTime, UUIDType, uuid7
from tests.conftest import CreateTables


class Base(MappedAsDataclass, DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "types_users"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    tags: Mapped[list[str]] = mapped_column(StringArray)
    created: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default_factory=lambda: dt.datetime.now(dt.UTC)
    )


async def test_user_model_insert_query_update_in_place_filter(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    ada_id = uuid7()
    async with db.get_session() as session:
        session.add(User(id=ada_id, name="ada", settings={"theme": "dark"}, tags=["admin"]))
        session.add(User(id=uuid7(), name="bob", settings={}, tags=["staff", "ops"]))

    async with db.get_session() as session:
        ada = (await session.execute(select(User).where(User.id == ada_id))).scalar_one()
        assert ada.settings == {"theme": "dark"}
        ada.settings["theme"] = "light"
        ada.settings.setdefault("nested", {})["deep"] = [1]
        ada.tags.append("staff")

    async with db.get_session() as session:
        ada = await session.get_one(User, ada_id)
        assert ada.settings == {"theme": "light", "nested": {"deep": [1]}}
        assert ada.tags == ["admin", "staff"]
        ada.settings["nested"]["deep"].append(2)  # two levels down

    async with db.get_session() as session:
        ada = await session.get_one(User, ada_id)
        assert ada.settings["nested"]["deep"] == [1, 2]
        staff = (
            await session.scalars(select(User.name).where(User.tags.contains_all(["staff"])))
        ).all()
        assert sorted(staff) == ["ada", "bob"]
        both = await session.scalars(
            select(User.name).where(User.tags.contains_all(["staff", "admin"]))
        )
        assert both.all() == ["ada"]
        anyof = await session.scalars(select(User.name).where(User.tags.contains_any(["ops", "x"])))
        assert anyof.all() == ["bob"]


async def test_bad_row_in_a_batch_writes_nothing(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    rows = [
        {
            "id": uuid7(),
            "name": f"u{i}",
            "settings": {},
            "tags": [],
            "created": dt.datetime.now(dt.UTC),
        }
        for i in range(5)
    ]
    rows[3]["settings"] = {"when": object()}  # cannot be written as JSON
    with pytest.raises(InvalidValueError, match=r"'types_users.settings'") as info:
        async with db.get_session() as session:
            await session.execute(insert(User), rows)
    assert isinstance(info.value, InvalidValueError)
    async with db.get_session() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 0


async def test_returning_many_rows_matches_uuid_keys(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    # insertmanyvalues sorts RETURNING rows back to parameter order by the key values
    await create_tables(db, Base.metadata)
    ids = [uuid7() for _ in range(30)]
    async with db.get_session() as session:
        result = await session.scalars(
            insert(User).returning(User.id, sort_by_parameter_order=True),
            [
                {
                    "id": i,
                    "name": "n",
                    "settings": {},
                    "tags": [],
                    "created": dt.datetime.now(dt.UTC),
                }
                for i in ids
            ],
        )
        assert result.all() == ids


def test_assigning_a_bad_value_fails_on_that_line_naming_the_column() -> None:
    user = User(id=uuid7(), name="x", settings={}, tags=[])
    with pytest.raises(InvalidValueError, match=r"'types_users.id'.*'nope'"):
        user.id = "nope"  # type: ignore[assignment]
    with pytest.raises(InvalidValueError, match=r"'types_users.tags'.*item 1 is int"):
        user.tags = ["a", 2]  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match=r"'types_users.created'.*naive"):
        user.created = dt.datetime(2024, 1, 1)
    user.id = "0190b6a4-7c3e-7d4a-9f1e-3c2b1a0d9e8f"  # type: ignore[assignment]
    assert user.id == uuid.UUID("0190b6a4-7c3e-7d4a-9f1e-3c2b1a0d9e8f")


async def test_a_value_refused_at_flush_raises_invalid_value_error_itself(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    # SQLAlchemy wraps errors of bind processors in StatementError, whose message lists
    # every parameter of the statement; the session hands back the InvalidValueError (a
    # ValueError) without that context, so a logged traceback shows no other column.
    await create_tables(db, Base.metadata)
    other_value = "tok-3f9a-other-column-value"
    with pytest.raises(ValueError, match=r"'types_users.settings'.*not JSON serializable") as info:
        async with db.get_session() as session:
            session.add(User(id=uuid7(), name=other_value, settings={"when": object()}, tags=[]))
    assert type(info.value) is InvalidValueError
    assert info.value.column == "types_users.settings"
    assert info.value.__cause__ is None
    assert other_value not in "".join(traceback.format_exception(info.value))


def _user_row(name: str, **values: Any) -> dict[str, Any]:
    row = {"id": uuid7(), "name": name, "settings": {}, "tags": [], "created": NOW}
    row.update(values)
    return row


NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("problem", ["duplicate key", "not null"])
async def test_database_rejecting_a_row_in_a_later_batch_leaves_the_table_unchanged(
    db: DatabaseManager, create_tables: CreateTables, problem: str
) -> None:
    # insertmanyvalues sends 1000 rows a statement: the first batch reaches the database
    # and succeeds before the database refuses row 1500; the transaction must undo it.
    await create_tables(db, Base.metadata)
    existing = _user_row("existing")
    async with db.get_session() as session:
        await session.execute(insert(User), [existing])
    rows = [_user_row(f"u{i}") for i in range(1600)]
    if problem == "duplicate key":
        rows[1500]["id"] = existing["id"]
    else:
        rows[1500]["name"] = None
    inserts: list[int] = []

    def count_inserts(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            inserts.append(len(params) if isinstance(params, list) else 1)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count_inserts)
    # IntegrityError; MariaDB reports a missing NOT NULL value as OperationalError 1364
    with pytest.raises(sqlalchemy.exc.DBAPIError, match=r"types_users|name|Duplicate|UNIQUE"):
        async with db.get_session() as session:
            await session.execute(insert(User), rows)
    event.remove(db.engine.sync_engine, "before_cursor_execute", count_inserts)
    assert sum(inserts) >= 1000, inserts  # the rows before the bad one were sent
    async with db.get_session() as session:
        names = (await session.scalars(select(User.name))).all()
    assert names == ["existing"]


async def test_nested_edits_of_a_lazily_wrapped_document_are_saved(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    doc = {"a": {"b": {"c": [1, {"d": 1}]}}, "rows": [{"x": 1}, [1]], "m": {"k": {"v": 1}}}
    user = _user_row("ada", settings=doc, tags=["t"])
    async with db.get_session() as session:
        await session.execute(insert(User), [user])

    async with db.get_session() as session:
        ada = await session.get_one(User, user["id"])
        assert type(dict.__getitem__(ada.settings, "a")) is dict  # not wrapped until read
        ada.settings["a"]["b"]["c"][1]["d"] = 2  # four levels down, each wrapped on access
        for item in ada.settings["rows"]:  # through iteration
            if isinstance(item, dict):
                item["x"] = 2
            else:
                item.append(2)
        for inner in ada.settings.get("m", {}).values():  # through .get and .values()
            inner["v"] = 2

    async with db.get_session() as session:
        ada = await session.get_one(User, user["id"])
        assert ada.settings == {
            "a": {"b": {"c": [1, {"d": 2}]}},
            "rows": [{"x": 2}, [1, 2]],
            "m": {"k": {"v": 2}},
        }


async def test_a_loaded_document_that_is_only_read_is_not_written_back(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, Base.metadata)
    user = _user_row("ada", settings={"a": {"b": [1, {"c": 2}]}}, tags=["t", "u"])
    async with db.get_session() as session:
        await session.execute(insert(User), [user])
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    async with db.get_session() as session:
        ada = await session.get_one(User, user["id"])
        assert ada.settings["a"]["b"][1]["c"] == 2  # reading wraps lazily ...
        assert [list(v) for v in ada.settings.values()] == [["b"]]
        assert list(ada.tags) == ["t", "u"]
        assert not session.is_modified(ada)  # ... and is not a change
    event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    assert statements
    assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE")]


def test_metadata_with_json_columns_still_pickles_after_use() -> None:
    # Tools (multiprocessing, Alembic helpers, caches) pickle MetaData; a cached closure
    # on the type would break that after the first value is encoded.
    import pickle

    from sqlalchemy import Column, Integer, MetaData, Table
    from sqlalchemy.dialects import postgresql

    from dbkeel.types import JSONBType

    md = MetaData()
    table = Table("pickled", md, Column("id", Integer, primary_key=True), Column("doc", JSONBType))
    doc_type = table.c.doc.type
    assert doc_type.encode({"a": 1}) == '{"a": 1}'
    assert doc_type.bind_processor(postgresql.dialect())({"a": [1]}) == '{"a": [1]}'
    copied = pickle.loads(pickle.dumps(md))
    assert copied.tables["pickled"].c.doc.type.encode({"b": 2}) == '{"b": 2}'
