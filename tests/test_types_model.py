"""The design's User model on all three databases, and writes that must not half-happen."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy.exc
from sqlalchemy import String, func, insert, select
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


def test_statement_errors_keep_the_invalid_value_error() -> None:
    assert issubclass(InvalidValueError, ValueError)
    assert not issubclass(InvalidValueError, sqlalchemy.exc.StatementError)
