"""Blind index: kept in sync on ORM inserts/updates and Core inserts, searchable, keyed."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager, EncryptedType
from dbkeel.encryption import BlindIndex, blind_match
from dbkeel.exceptions import ConfigurationError
from tests import encryption_support as support
from tests.conftest import CreateTables, make_settings
from tests.encryption_support import B64, INDEX_KEY

enc_db = support.enc_db
forget_test_columns = support.forget_test_columns


def user_model() -> tuple[type[DeclarativeBase], type]:
    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "bidx_users"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str | None] = mapped_column(EncryptedType(String(320)))
        email_index: Mapped[bytes | None] = mapped_column(BlindIndex("email"), index=True)

    return Base, User


async def test_orm_insert_and_update_keep_the_index_in_sync(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    async with enc_db.get_session() as session:
        session.add_all([User(id=1, email="Ada@Example.com"), User(id=2, email="bob@example.com")])
    async with enc_db.get_session() as session:
        found = await session.scalar(
            select(User).where(blind_match(User.email_index, " ada@EXAMPLE.com"))
        )
        assert found is not None and found.id == 1
        found.email = "ada@new.example"
    async with enc_db.get_session() as session:
        old = await session.scalar(
            select(User).where(blind_match(User.email_index, "ada@example.com"))
        )
        new = await session.scalar(
            select(User).where(blind_match(User.email_index, "ADA@new.example"))
        )
        assert old is None
        assert new is not None and new.id == 1
        new.email = None
    async with enc_db.get_session() as session:
        row = await session.get(User, 1)
        assert row is not None and row.email_index is None


async def test_core_insert_fills_the_index_from_the_source_column(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(User.__table__), [{"id": 7, "email": "core@example.com"}])
        found = await conn.scalar(
            select(User.__table__.c.id).where(
                blind_match(User.__table__.c.email_index, "Core@example.com")
            )
        )
    assert found == 7


async def test_index_is_hmac_of_normalized_value_under_the_index_key(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    async with enc_db.get_session() as session:
        session.add(User(id=1, email=" Ada@Example.COM "))
    async with enc_db.engine.connect() as conn:
        stored = await conn.scalar(select(User.__table__.c.email_index))
    expected = hmac.new(INDEX_KEY, b"bidx_users.email\x00ada@example.com", hashlib.sha256).digest()
    assert bytes(stored) == expected  # the index key, not an encryption key; bound to the column


async def test_startup_fails_with_blind_index_but_no_index_key(db_url: str) -> None:
    _models = user_model()
    settings = make_settings(db_url, encryption_keys=f"k1:{B64['k1']}")
    manager = DatabaseManager(settings)
    with pytest.raises(
        ConfigurationError, match=r"blind-index columns \(bidx_users\.email_index\)"
    ):
        await manager.initialize()
    await manager.close()


def test_blind_match_refuses_a_column_that_is_not_a_blind_index() -> None:
    t = Table("bidx_plain", MetaData(), Column("id", Integer), Column("name", String(10)))
    with pytest.raises(ConfigurationError, match="needs a BlindIndex column"):
        blind_match(t.c.name, "x")
