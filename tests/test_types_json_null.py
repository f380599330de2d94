"""JSON null vs SQL NULL, U+0000, hashability and StringArray's arguments (issue 17).

Regression tests: ``JSON.NULL`` used to be stored as a big integer (it is an ``int``
subclass) on all three databases; a U+0000 reached PostgreSQL and failed with a driver
error that printed every bound parameter; ``.unique()`` over JSON/array columns failed
with a bare ``TypeError``; ``StringArray(String)`` failed late and confusingly.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from sqlalchemy import JSON, Integer, String, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import ConfigurationError, DatabaseManager, InvalidValueError
from dbkeel.types import JSONBType, StringArray
from tests.conftest import PLUGIN_METADATA


class Base(DeclarativeBase):
    metadata = PLUGIN_METADATA  # dbkeel's pytest plugin creates the table once per run


class Doc(Base):
    __tablename__ = "json_null_docs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[Any] = mapped_column(JSONBType, nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(StringArray(20), nullable=True)
    secret: Mapped[str | None] = mapped_column(String(40), nullable=True)


async def test_json_null_is_stored_as_json_null_and_none_as_sql_null(
    dbkeel_db: DatabaseManager,
) -> None:
    db = dbkeel_db
    async with db.get_session() as session:
        session.add(Doc(id=1, body=JSON.NULL))
        session.add(Doc(id=2, body=None))
        session.add(Doc(id=3, body={"a": None}))
        await session.execute(insert(Doc), [{"id": 4, "body": JSON.NULL}])
    async with db.get_session() as session:
        sql_null = (await session.scalars(select(Doc.id).where(Doc.body.is_(None)))).all()
        json_null = (await session.scalars(select(Doc.id).where(Doc.body == JSON.NULL))).all()
        raw = (await session.execute(select(Doc.id, Doc.body).order_by(Doc.id))).all()
    assert sorted(sql_null) == [2]
    assert sorted(json_null) == [1, 4]
    assert [body for _, body in raw] == [None, None, {"a": None}, None]


@pytest.mark.parametrize(
    "value", ["a\x00b", {"k": "x\x00"}, {"ke\x00y": 1}, [1, ["deep\x00"]]], ids=repr
)
async def test_nul_character_is_refused_before_the_database_sees_it(
    dbkeel_db: DatabaseManager, value: Any
) -> None:
    db = dbkeel_db
    with pytest.raises(InvalidValueError, match=r"U\+0000") as info:
        async with db.get_session() as session:
            session.add(Doc(id=1, body={"v": value}, secret="tok-SECRET-other-param"))
    printed = "".join(traceback.format_exception(info.value))
    assert "tok-SECRET-other-param" not in printed  # no other bound parameter is shown
    assert "json_null_docs.body" in str(info.value) or "body" in str(info.value)
    async with db.get_session() as session:
        assert (await session.scalars(select(Doc))).all() == []  # nothing half-written


async def test_escaped_backslash_before_u0000_is_not_a_nul(dbkeel_db: DatabaseManager) -> None:
    db = dbkeel_db
    text = "C:\\u0000dir"  # a backslash, then the letters u0000: legal everywhere
    async with db.get_session() as session:
        session.add(Doc(id=1, body={"path": text}))
    async with db.get_session() as session:
        assert (await session.get_one(Doc, 1)).body == {"path": text}


async def test_unique_over_json_and_array_columns(dbkeel_db: DatabaseManager) -> None:
    import sqlalchemy.exc

    db = dbkeel_db
    async with db.get_session() as session:
        session.add(Doc(id=1, body={"a": [1]}, tags=["x"]))
        session.add(Doc(id=2, body={"a": [1]}, tags=["x"]))
    async with db.get_session() as session:
        # entities are made unique by identity: works with the JSON columns loaded
        docs = (await session.execute(select(Doc).order_by(Doc.id))).unique().scalars().all()
        assert [d.id for d in docs] == [1, 2]
        # bare documents cannot be hashed: SQLAlchemy says so clearly, naming the type
        # (it used to hash them and fail with a bare "unhashable type: 'dict'")
        result = await session.execute(select(Doc.body, Doc.tags))
        with pytest.raises(sqlalchemy.exc.InvalidRequestError, match="non-hashable"):
            result.unique().all()
        result = await session.execute(select(Doc.body, Doc.tags).order_by(Doc.id))
        rows = result.unique(lambda value: repr(value)).all()  # the documented way out
    assert [tuple(r) for r in rows] == [({"a": [1]}, ["x"])]


@pytest.mark.parametrize("bad", [String, String(10), 0, -3, True, "20"], ids=repr)
def test_string_array_refuses_bad_arguments_at_construction(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"StringArray\(length="):
        StringArray(bad)
