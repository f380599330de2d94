"""The mixins on both kinds of declarative base, combined, and the Alembic operation."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from sqlalchemy import Connection, String, UniqueConstraint, select, text
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    declared_attr,
    mapped_column,
)

from dbkeel import (
    ConfigurationError,
    DatabaseManager,
    SoftDeleteMixin,
    TimestampMixin,
    VersionMixin,
)
from tests.conftest import CreateTables


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class PlainBase(DeclarativeBase):
    pass


class Customer(VersionMixin, SoftDeleteMixin, TimestampMixin, DataclassBase):
    __tablename__ = "dc_customers"
    __table_args__ = (UniqueConstraint("email"),)
    __mapper_args__ = {"confirm_deleted_rows": False}  # noqa: RUF012 - declarative reads it

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(String(50), default=None)


class Item(TimestampMixin, SoftDeleteMixin, PlainBase):
    __tablename__ = "plain_items"
    id: Mapped[int] = mapped_column(primary_key=True)


def test_dataclass_constructor_needs_only_the_models_own_fields() -> None:
    params = list(inspect.signature(Customer.__init__).parameters)
    assert params == ["self", "name", "email", "note"]
    customer = Customer(name="Ada", email="ada@x")
    assert customer.is_deleted is False and customer.note is None


def test_model_mapper_and_table_args_are_kept_and_merged() -> None:
    mapper = Customer.__mapper__
    assert mapper.version_id_col is Customer.__table__.c.version
    assert mapper.eager_defaults is True and mapper.confirm_deleted_rows is False
    assert any(isinstance(c, UniqueConstraint) for c in Customer.__table__.constraints)


def test_declared_attr_mapper_args_are_merged_in_any_mixin_order() -> None:
    class Base(DeclarativeBase):
        pass

    class Doc(SoftDeleteMixin, VersionMixin, TimestampMixin, Base):
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)

        @declared_attr.directive
        def __mapper_args__(cls) -> dict[str, Any]:
            return {"confirm_deleted_rows": False}

    class Doc2(TimestampMixin, SoftDeleteMixin, VersionMixin, Base):
        __tablename__ = "docs2"
        id: Mapped[int] = mapped_column(primary_key=True)

    for model in (Doc, Doc2):
        assert model.__mapper__.version_id_col is model.__table__.c.version
        assert model.__mapper__.eager_defaults is True
        assert {"created_at", "updated_at", "is_deleted", "deleted_at", "version"} <= set(
            model.__table__.c.keys()
        )
    assert Doc.__mapper__.confirm_deleted_rows is False


def test_mixin_after_the_base_is_refused() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match="Put mixins first"):

        class Late(Base, SoftDeleteMixin):
            __tablename__ = "late"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_model_declaring_a_mixin_column_itself_is_refused() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match="'version'"):

        class Clash(VersionMixin, Base):
            __tablename__ = "clash"
            id: Mapped[int] = mapped_column(primary_key=True)
            version: Mapped[int] = mapped_column()


def test_single_table_subclass_inherits_the_columns() -> None:
    class Base(DeclarativeBase):
        pass

    class Animal(SoftDeleteMixin, Base):
        __tablename__ = "animals"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(String(10))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}  # noqa: RUF012 - declarative reads it

    class Dog(Animal):
        __mapper_args__ = {"polymorphic_identity": "dog"}  # noqa: RUF012 - declarative reads it

    assert Dog.__table__ is Animal.__table__
    assert Dog.__mapper__.polymorphic_identity == "dog"


async def test_all_three_mixins_round_trip(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, DataclassBase.metadata)
    async with db.get_session() as s:
        c = Customer(name="Ada", email="ada@x")
        s.add(c)
    async with db.get_session() as s:
        s.add(c)
        c.soft_delete()
    assert c.version == 2 and c.updated_at >= c.created_at
    async with db.get_session() as s:
        assert (await s.scalars(select(Customer))).all() == []


async def test_alembic_operation_creates_and_drops_the_trigger(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    import dbkeel.mixins.alembic_ops  # noqa: F401 - registers the operations

    await create_tables(db, PlainBase.metadata)  # plain_items: no trigger
    async with db.get_session() as s:
        s.add(Item(id=1))

    def migrate(conn: Connection, name: str) -> None:
        getattr(Operations(MigrationContext.configure(conn)), name)("plain_items")

    async def raw_update_bumps() -> bool:
        async with db.get_session() as s:
            before = (await s.scalars(select(Item))).one().updated_at
        await asyncio.sleep(0.02)
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE plain_items SET is_deleted = is_deleted"))
        async with db.get_session() as s:
            return bool((await s.scalars(select(Item))).one().updated_at > before)

    async with db.engine.begin() as conn:
        await conn.run_sync(migrate, "create_updated_at_trigger")
    assert await raw_update_bumps()
    async with db.engine.begin() as conn:
        await conn.run_sync(migrate, "drop_updated_at_trigger")
    assert not await raw_update_bumps()
