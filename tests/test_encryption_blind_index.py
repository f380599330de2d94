"""Blind index: kept in sync on ORM and Core inserts and updates, searchable, keyed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager, EncryptedType, bulk_upsert
from dbkeel.encryption import BlindIndex, blind_match, reindex_blind_indexes
from dbkeel.exceptions import ConfigurationError
from tests import encryption_support as support
from tests.conftest import CreateTables, make_settings
from tests.conftest import run_cli as run_cli
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


async def _ids_matching(db: DatabaseManager, user: type, email: str) -> list[int]:
    async with db.get_session() as session:
        found = await session.scalars(
            select(user.id).where(blind_match(user.email_index, email)).order_by(user.id)  # type: ignore[attr-defined]
        )
        return list(found)


async def test_every_kind_of_update_keeps_the_index_in_sync(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    table = User.__table__  # type: ignore[attr-defined]
    async with enc_db.get_session() as session:
        session.add_all([User(id=i, email=f"u{i}@old.example") for i in range(1, 6)])

    # Core update(table).values()
    async with enc_db.engine.begin() as conn:
        await conn.execute(update(table).where(table.c.id == 1).values(email="one@new.example"))
        # executemany with bind parameters
        await conn.execute(
            update(table).where(table.c.id == bindparam("b_id")).values(email=bindparam("b_em")),
            [{"b_id": 2, "b_em": "two@new.example"}, {"b_id": 3, "b_em": "three@new.example"}],
        )
    async with enc_db.get_session() as session:
        # ORM-enabled UPDATE .. WHERE
        await session.execute(update(User).where(User.id == 4).values(email="four@new.example"))
        # ORM bulk UPDATE by primary key
        await session.execute(update(User), [{"id": 5, "email": "five@new.example"}])

    for i, word in enumerate(["one", "two", "three", "four", "five"], start=1):
        assert await _ids_matching(enc_db, User, f"{word}@NEW.example") == [i]
        assert await _ids_matching(enc_db, User, f"u{i}@old.example") == []


async def test_an_update_to_null_clears_the_index_and_an_explicit_index_is_kept(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    table = User.__table__  # type: ignore[attr-defined]
    async with enc_db.get_session() as session:
        session.add_all([User(id=1, email="a@example.com"), User(id=2, email="b@example.com")])
    async with enc_db.engine.begin() as conn:
        await conn.execute(update(table).where(table.c.id == 1).values(email=None))
        # the statement sets the index itself: left as given
        await conn.execute(
            update(table).where(table.c.id == 2).values(email="c@example.com", email_index="x")
        )
        assert await conn.scalar(select(table.c.email_index).where(table.c.id == 1)) is None
    assert await _ids_matching(enc_db, User, "x") == [2]
    assert await _ids_matching(enc_db, User, "c@example.com") == []


async def test_an_update_from_a_sql_expression_is_refused_with_what_to_do(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    table = User.__table__  # type: ignore[attr-defined]
    async with enc_db.get_session() as session:
        session.add(User(id=1, email="a@example.com"))
    with pytest.raises(
        ConfigurationError, match=r"bidx_users\.email to a SQL expression"
    ) as caught:
        async with enc_db.engine.begin() as conn:
            await conn.execute(update(table).values(email=func.lower(table.c.email)))
    assert "Set 'email_index' in the same .values()" in str(caught.value)
    assert await _ids_matching(enc_db, User, "a@example.com") == [1]


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
    base, _user = user_model()
    settings = make_settings(db_url, encryption_keys=f"k1:{B64['k1']}")
    manager = DatabaseManager(settings, metadata=base.metadata)  # its models: fail at startup
    with pytest.raises(
        ConfigurationError, match=r"blind-index columns \(bidx_users\.email_index\)"
    ):
        await manager.initialize()
    await manager.close()


def test_blind_match_refuses_a_column_that_is_not_a_blind_index() -> None:
    t = Table("bidx_plain", MetaData(), Column("id", Integer), Column("name", String(10)))
    with pytest.raises(ConfigurationError, match="needs a BlindIndex column"):
        blind_match(t.c.name, "x")


def test_only_an_engine_with_a_blind_index_key_watches_updates() -> None:
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    from dbkeel.encryption import KeyRing, use_key_ring
    from dbkeel.encryption.blind_index import _before_execute

    without = create_async_engine("sqlite+aiosqlite://")
    with_key = create_async_engine("sqlite+aiosqlite://")
    use_key_ring(without, KeyRing.parse(f"k1:{B64['k1']}"))
    use_key_ring(with_key, KeyRing.parse(f"k1:{B64['k1']}", index_key=B64["index"]))
    use_key_ring(with_key, KeyRing.parse(f"k1:{B64['k1']}", index_key=B64["index"]))  # again
    assert not event.contains(without.sync_engine, "before_execute", _before_execute)
    assert event.contains(with_key.sync_engine, "before_execute", _before_execute)
    assert len(with_key.sync_engine.dispatch.before_execute) == 1


def _new_index_key_settings(db_url: str) -> Any:
    # the same encryption key, another blind-index key
    return make_settings(
        db_url,
        encryption_keys=f"k1:{B64['k1']}",
        encryption_active_key="k1",
        blind_index_key=B64["k2"],
    )


async def test_reindex_recomputes_every_index_under_a_new_key(
    enc_db: DatabaseManager, db_url: str, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    table = User.__table__  # type: ignore[attr-defined]
    async with enc_db.get_session() as session:
        session.add_all([User(id=i, email=f"u{i}@example.com") for i in range(1, 8)])
    async with enc_db.engine.begin() as conn:  # a stale index beside a NULL source
        await conn.execute(update(table).where(table.c.id == 7).values(email=None, email_index="z"))

    async with DatabaseManager(_new_index_key_settings(db_url)) as db:
        assert await _ids_matching(db, User, "u1@example.com") == []  # old key's indexes
        seen: list[tuple[str, int]] = []
        report = await reindex_blind_indexes(
            db, batch_size=3, progress=lambda name, n: seen.append((name, n))
        )
        assert [(c.name, c.checked, c.rewritten) for c in report.columns] == [
            ("bidx_users.email_index", 7, 7)
        ]
        assert seen == [("bidx_users.email_index", n) for n in (3, 6, 7)]
        for i in range(1, 7):
            assert await _ids_matching(db, User, f"U{i}@example.com") == [i]
        async with db.engine.connect() as conn:
            assert await conn.scalar(select(table.c.email_index).where(table.c.id == 7)) is None
        again = await reindex_blind_indexes(db)  # nothing left to do: resumable
        assert again.rewritten == 0
    # under the old key nothing matches any more
    assert await _ids_matching(enc_db, User, "u1@example.com") == []


async def test_reindex_refuses_unknown_columns_and_a_ring_without_index_key(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, _ = user_model()
    await create_tables(enc_db, Base.metadata)
    with pytest.raises(ConfigurationError, match=r"'bidx_users\.nope' names no blind-index"):
        await reindex_blind_indexes(enc_db, columns=["bidx_users.nope"])
    from sqlalchemy.ext.asyncio import create_async_engine

    from dbkeel.encryption import KeyRing, use_key_ring

    engine = create_async_engine("sqlite+aiosqlite://")
    use_key_ring(engine, KeyRing.parse(f"k1:{B64['k1']}"))
    with pytest.raises(ConfigurationError, match="set DATABASE_BLIND_INDEX_KEY"):
        await reindex_blind_indexes(engine)
    await engine.dispose()


CLI_MODELS = """
from sqlalchemy import Column, Integer, MetaData, String, Table
from dbkeel import EncryptedType
from dbkeel.encryption import BlindIndex
metadata = MetaData()
users = Table("bidx_users", metadata, Column("id", Integer, primary_key=True),
              Column("email", EncryptedType(String(320))),
              Column("email_index", BlindIndex("email")))
"""


async def test_keys_reindex_cli(
    enc_db: DatabaseManager, db_url: str, create_tables: CreateTables, tmp_path: Path
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    async with enc_db.get_session() as session:
        session.add_all([User(id=i, email=f"u{i}@example.com") for i in range(1, 4)])
    (tmp_path / "bidx_models.py").write_text(CLI_MODELS)
    env = {
        "PYTHONPATH": str(tmp_path),
        "DATABASE_URL": db_url,
        "ENVIRONMENT": "test",
        "DATABASE_ENCRYPTION_KEYS": f"k1:{B64['k1']}",
        "DATABASE_BLIND_INDEX_KEY": B64["k2"],
    }
    done = await asyncio.to_thread(
        run_cli, "keys", "reindex", "-m", "bidx_models", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "bidx_users.email_index" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == ["bidx_users.email_index", "3", "3"]
    assert B64["k2"] not in done.stdout + done.stderr
    async with DatabaseManager(_new_index_key_settings(db_url)) as db:
        assert await _ids_matching(db, User, "u2@example.com") == [2]


async def test_updates_the_hook_must_not_get_wrong(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    md = MetaData()
    t = Table(
        "bidx_more",
        md,
        Column("id", Integer, primary_key=True),
        Column("hits", Integer, default=0),
        Column("email", EncryptedType(String(320))),
        Column("email_index", BlindIndex("email")),
        Column("email_exact", BlindIndex("email", normalize=lambda s: s)),
    )
    await create_tables(enc_db, md)

    async def ids(index: Any, value: str) -> list[int]:
        async with enc_db.engine.connect() as conn:
            found = await conn.scalars(select(t.c.id).where(blind_match(index, value)))
            return sorted(found)

    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": i, "email": f"old{i}"} for i in range(1, 6)])
        # .values() for another column, the source in the execute parameters
        await conn.execute(
            update(t).where(t.c.id == bindparam("b")).values(hits=t.c.hits + 1),
            [{"b": 1, "email": "New1"}, {"b": 2, "email": "New2"}],
        )
        # execute parameters override the .values() default of the same bindparam
        await conn.execute(
            update(t)
            .where(t.c.id == bindparam("b"))
            .values(email=bindparam("m", "dflt", type_=t.c.email.type)),
            [{"b": 3, "m": "New3"}],
        )
        # ordered_values() statements stay valid
        await conn.execute(update(t).where(t.c.id == 4).ordered_values((t.c.email, "New4")))
    for i in range(1, 5):
        assert await ids(t.c.email_index, f"new{i}") == [i]
        assert await ids(t.c.email_exact, f"New{i}") == [i]  # each index its own normalize
        assert await ids(t.c.email_exact, f"new{i}") == []
    assert await ids(t.c.email_index, "dflt") == []


async def test_bulk_upsert_keeps_the_index_of_an_updated_source(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    Base, User = user_model()
    await create_tables(enc_db, Base.metadata)
    async with enc_db.get_session() as session:
        session.add_all([User(id=1, email="a@example.com"), User(id=2, email="b@example.com")])
    async with enc_db.get_session() as session:
        await bulk_upsert(
            session,
            User,
            [{"id": 1, "email": "c@example.com"}, {"id": 3, "email": "d@example.com"}],
        )
    assert await _ids_matching(enc_db, User, "c@example.com") == [1]
    assert await _ids_matching(enc_db, User, "a@example.com") == []
    assert await _ids_matching(enc_db, User, "d@example.com") == [3]


async def test_orm_bulk_update_of_a_joined_inheritance_model_keeps_the_base_index(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    from sqlalchemy import ForeignKey

    class Base(DeclarativeBase):
        pass

    class Emp(Base):
        __tablename__ = "bidx_emp"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(String(10))
        email: Mapped[str | None] = mapped_column(EncryptedType(String(320)))
        email_index: Mapped[bytes | None] = mapped_column(BlindIndex("email"))
        __mapper_args__: ClassVar[dict[str, Any]] = {
            "polymorphic_on": "kind",
            "polymorphic_identity": "emp",
        }

    class Mgr(Emp):
        __tablename__ = "bidx_mgr"
        id: Mapped[int] = mapped_column(ForeignKey("bidx_emp.id"), primary_key=True)
        level: Mapped[int] = mapped_column(default=1)
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "mgr"}

    await create_tables(enc_db, Base.metadata)
    async with enc_db.get_session() as session:
        session.add(Mgr(id=2, email="old@example.com"))
    async with enc_db.get_session() as session:
        # one UPDATE per table, each seen by the hook as update(Mgr)
        await session.execute(update(Mgr), [{"id": 2, "email": "new@example.com", "level": 3}])
    assert await _ids_matching(enc_db, Emp, "new@example.com") == [2]
    assert await _ids_matching(enc_db, Emp, "old@example.com") == []
