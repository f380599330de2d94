"""EncryptedType on real databases: round trips, what is stored, and every failure."""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbkeel import DatabaseManager, EncryptedType, JSONBType
from dbkeel.encryption import KeyRing, use_key_ring
from dbkeel.exceptions import (
    ConfigurationError,
    DecryptionError,
    EncryptedValueError,
    KeyRingError,
)
from tests import encryption_support as support
from tests.conftest import CreateTables, make_settings
from tests.encryption_support import B64, KEY1, KEY2, SECRET_TEXTS, SECRETS, key_settings

enc_db = support.enc_db
forget_test_columns = support.forget_test_columns

SECRET = "4111-1111-1111-1111"


def secrets_table() -> tuple[MetaData, Table]:
    md = MetaData()
    t = Table(
        "enc_secrets",
        md,
        Column("id", Integer, primary_key=True),
        Column("card", EncryptedType(String(40))),
        Column("other", EncryptedType(String(40))),
        Column("note", EncryptedType(Text)),
        Column("doc", EncryptedType(JSON)),
        Column("blob", EncryptedType(LargeBinary)),
    )
    return md, t


async def raw_value(db: DatabaseManager, name: str, row_id: int = 1) -> bytes:
    async with db.engine.connect() as conn:
        value = await conn.scalar(
            select(Column(name, LargeBinary))
            .select_from(Table("enc_secrets", MetaData()))
            .where(Column("id", Integer) == row_id)
        )
    return bytes(value)


async def write_raw(db: DatabaseManager, name: str, value: bytes, row_id: int = 1) -> None:
    t = Table("enc_secrets", MetaData(), Column("id", Integer), Column(name, LargeBinary))
    async with db.engine.begin() as conn:
        await conn.execute(update(t).where(t.c.id == row_id).values({name: value}))


async def test_values_round_trip_and_are_stored_encrypted(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    md, t = secrets_table()
    await create_tables(enc_db, md)
    values = {
        "card": SECRET,
        "note": "ünïcödé " * 100,
        "doc": {"a": [1, "b"], "n": None},
        "blob": b"\x00\xffbytes",
    }
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": 1, **values}, {"id": 2, **dict.fromkeys(values)}])
        rows = (await conn.execute(select(t).order_by(t.c.id))).mappings().all()
        raw = (await conn.exec_driver_sql("SELECT card, note, doc FROM enc_secrets")).all()
    assert {k: rows[0][k] for k in values} == values
    assert rows[1]["card"] is None and rows[1]["doc"] is None
    stored = bytes(raw[0][0])
    assert SECRET.encode() not in stored and b"4111" not in stored
    assert stored[:4] == b"\x01\x02k1"
    assert len(stored) == len(SECRET) + 30 + 2  # the documented size


async def test_equal_plaintexts_give_different_ciphertexts(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    md, t = secrets_table()
    await create_tables(enc_db, md)
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": 1, "card": SECRET}, {"id": 2, "card": SECRET}])
    assert await raw_value(enc_db, "card", 1) != await raw_value(enc_db, "card", 2)


async def test_ciphertext_copied_to_another_column_fails(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    md, t = secrets_table()
    await create_tables(enc_db, md)
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": 1, "card": SECRET, "other": "x"}])
    await write_raw(enc_db, "other", await raw_value(enc_db, "card"))
    with pytest.raises(DecryptionError, match=r"enc_secrets\.other with key id 'k1'") as info:
        async with enc_db.engine.connect() as conn:
            await conn.scalar(select(t.c.other))
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda v: v[:-1] + bytes([v[-1] ^ 1]), "authentication failed"),
        (lambda v: v[:20], "truncated"),
        (lambda v: b"\x07" + v[1:], "unsupported envelope format version 7"),
        (lambda v: v[:2] + b"k9" + v[4:], "key id 'k9', which is not on the key ring"),
    ],
    ids=["tampered", "truncated", "future-version", "unknown-key-id"],
)
async def test_damaged_ciphertext_raises_decryption_error(
    enc_db: DatabaseManager, create_tables: CreateTables, damage: object, message: str
) -> None:
    md, t = secrets_table()
    await create_tables(enc_db, md)
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": 1, "card": SECRET}])
    await write_raw(enc_db, "card", damage(await raw_value(enc_db, "card")))  # type: ignore[operator]
    with pytest.raises(DecryptionError, match=re.escape(message)) as info:
        async with enc_db.engine.connect() as conn:
            await conn.scalar(select(t.c.card))
    assert "enc_secrets.card" in str(info.value)
    assert not any(s in str(info.value) for s in [SECRET, *SECRET_TEXTS])


async def test_wrong_key_raises_decryption_error_naming_key_id(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    md, t = secrets_table()
    await create_tables(enc_db, md)
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": 1, "card": SECRET}])
    use_key_ring(enc_db.engine, KeyRing({"k1": KEY2}, active="k1"))  # same id, other key
    with pytest.raises(DecryptionError, match="key id 'k1': authentication failed"):
        async with enc_db.engine.connect() as conn:
            await conn.scalar(select(t.c.card))


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("card", 12345, "a int, not a str"),
        ("card", "x" * 41, "41 characters, over the limit of 40"),
        ("doc", {"when": object()}, "not JSON-serializable"),
        ("blob", "text", "a str, not bytes"),
    ],
)
async def test_value_the_inner_type_cannot_take_names_the_column(
    enc_db: DatabaseManager, create_tables: CreateTables, column: str, value: object, why: str
) -> None:
    md, t = secrets_table()
    await create_tables(enc_db, md)
    with pytest.raises(EncryptedValueError, match=re.escape(why)) as info:
        async with enc_db.engine.begin() as conn:
            await conn.execute(insert(t), [{"id": 1, column: value}])
    assert f"enc_secrets.{column}" in str(info.value)
    assert str(value) not in str(info.value)  # never the plaintext, even in SQLAlchemy's wrapper
    async with enc_db.engine.connect() as conn:  # nothing half-written
        assert await conn.scalar(select(t.c.id)) is None


def test_unsupported_inner_type_is_refused_at_definition() -> None:
    with pytest.raises(ConfigurationError, match="cannot wrap Integer"):
        EncryptedType(Integer)


def test_one_instance_on_two_columns_is_refused() -> None:
    shared = EncryptedType(String(10))
    md = MetaData()
    with pytest.raises(ConfigurationError, match="two columns"):
        Table("enc_twice", md, Column("a", shared), Column("b", shared))


async def test_orm_model_and_mixin_columns_are_bound_to_their_own_table(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    class Base(DeclarativeBase):
        pass

    class HasSecret:
        secret: Mapped[str | None] = mapped_column(EncryptedType(String(50)))

    class A(HasSecret, Base):
        __tablename__ = "enc_mixin_a"
        id: Mapped[int] = mapped_column(primary_key=True)

    class B(HasSecret, Base):
        __tablename__ = "enc_mixin_b"
        id: Mapped[int] = mapped_column(primary_key=True)

    await create_tables(enc_db, Base.metadata)
    async with enc_db.get_session() as session:
        session.add_all([A(id=1, secret="for a"), B(id=1, secret="for b")])
    async with enc_db.get_session() as session:
        assert (await session.get(A, 1)).secret == "for a"  # type: ignore[union-attr]
        assert (await session.get(B, 1)).secret == "for b"  # type: ignore[union-attr]
    assert A.__table__.c.secret.type._ident == b"enc_mixin_a.secret"  # type: ignore[attr-defined]
    assert B.__table__.c.secret.type._ident == b"enc_mixin_b.secret"  # type: ignore[attr-defined]


async def test_startup_fails_when_its_encrypted_columns_exist_without_keys(db_url: str) -> None:
    encrypted_md, _ = secrets_table()
    manager = DatabaseManager(make_settings(db_url), metadata=encrypted_md)
    with pytest.raises(ConfigurationError, match=r"encrypted columns \(enc_secrets\.blob"):
        await manager.initialize()
    assert not manager.is_initialized
    await manager.close()


async def test_manager_without_metadata_warns_about_other_models_and_starts(
    db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encrypted models register process-wide; a second manager with no keys and no
    metadata (a CLI command, a benchmark, another database) used to refuse to start.
    The warning is logged once per process, not at every manager's start."""
    from dbkeel.encryption import registry

    monkeypatch.setattr(registry, "_warned", set())
    _models = secrets_table()  # kept alive: dropped models no longer count
    caplog.set_level(logging.WARNING, "dbkeel.encryption.registry")
    async with DatabaseManager(make_settings(db_url)) as db:
        assert db.is_initialized
    assert "enc_secrets.blob" in caplog.text and "metadata=Base.metadata" in caplog.text
    caplog.clear()
    async with DatabaseManager(make_settings(db_url)) as db:
        assert db.is_initialized
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_manager_scoped_to_its_metadata_starts_without_other_models_keys(
    db_url: str,
) -> None:
    encrypted_md, _ = secrets_table()  # another database's encrypted model, loaded here
    plain_md = MetaData()
    Table("enc_plain", plain_md, Column("id", Integer, primary_key=True))
    async with DatabaseManager(make_settings(db_url), metadata=plain_md) as db:
        assert db.is_initialized
    # scoped to the encrypted model's own metadata it still insists on keys
    manager = DatabaseManager(make_settings(db_url), metadata=encrypted_md)
    with pytest.raises(ConfigurationError, match=r"encrypted columns \(enc_secrets\.blob"):
        await manager.initialize()
    await manager.close()


def test_manager_metadata_must_be_a_metadata_not_the_base_class() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=r"is not a MetaData.*Pass Base\.metadata"):
        DatabaseManager(metadata=Base)  # type: ignore[arg-type]


async def test_engine_without_key_ring_raises_key_ring_error(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    md, t = secrets_table()
    await create_tables(db, md)
    with pytest.raises(KeyRingError, match=r"enc_secrets\.card was used on an engine without"):
        async with db.engine.begin() as conn:
            await conn.execute(insert(t), [{"id": 1, "card": SECRET}])


async def test_key_provider_supplies_the_ring_once(
    db_url: str, create_tables: CreateTables
) -> None:
    calls = []

    class Provider:
        async def load_key_ring(self) -> KeyRing:
            calls.append(1)
            return KeyRing({"vault1": KEY1}, active="vault1")

    md, t = secrets_table()
    async with DatabaseManager(make_settings(db_url), key_provider=Provider()) as manager:
        await create_tables(manager, md)
        async with manager.engine.begin() as conn:
            await conn.execute(insert(t), [{"id": 1, "card": SECRET}, {"id": 2, "card": "b"}])
            assert (await conn.execute(select(t.c.card).order_by(t.c.id))).scalars().all() == [
                SECRET,
                "b",
            ]
    assert calls == [1]


# -- key material and plaintext never leak ---------------------------------------------


def _assert_clean(text: str) -> None:
    for secret in SECRET_TEXTS:
        assert secret not in text
    for secret in SECRETS:
        assert repr(secret) not in text and secret.hex() not in text


def test_statement_cache_key_holds_no_key_material(pg_url: str) -> None:
    _md, t = secrets_table()
    for stmt in (select(t).where(t.c.id == 1), insert(t).values(card=SECRET)):
        key = stmt._generate_cache_key()
        assert key is not None
        _assert_clean(repr(key))
        assert SECRET not in repr(key.key)  # bound values are kept apart from the key
    _assert_clean(repr(t.c.card.type._static_cache_key))


async def test_type_keeps_no_key_ring_after_use(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    md, t = secrets_table()
    await create_tables(enc_db, md)
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": 1, "card": SECRET}])
        await conn.execute(select(t))
    impl = t.c.card.type.dialect_impl(enc_db.engine.dialect)
    for type_ in (t.c.card.type, impl):
        for value in vars(type_).values():
            assert not isinstance(value, KeyRing)
            assert not isinstance(value, bytes) or value == b"enc_secrets.card"


def test_reprs_hold_no_key_material() -> None:
    settings = key_settings("postgresql+asyncpg://u:pw@h/db", keys="k1,k2", active="k2")
    ring = KeyRing.from_settings(settings)
    _md, t = secrets_table()
    for text in (repr(settings), str(settings), repr(ring), repr(t.c.card.type), repr(t)):
        _assert_clean(text)
    assert repr(ring) == "KeyRing(key_ids=['k1', 'k2'], active='k2')"
    assert repr(t.c.card.type) == "EncryptedType(String(length=40))"


async def test_sql_log_shows_ciphertext_only(
    db_url: str, create_tables: CreateTables, caplog: pytest.LogCaptureFixture
) -> None:
    md, t = secrets_table()
    async with DatabaseManager(key_settings(db_url, echo=True)) as manager:
        await create_tables(manager, md)
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            async with manager.engine.begin() as conn:
                await conn.execute(insert(t), [{"id": 1, "card": SECRET}])
                await conn.execute(select(t))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "INSERT INTO enc_secrets" in logged
    assert SECRET not in logged
    _assert_clean(logged)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("k1:" + B64["k1"][:22], "is 16 bytes long"),
        ("k1:correct horse battery staple", "looks like a passphrase"),
        ("hunter2", "has no 'ID:' prefix"),
        (f"k1:{B64['k1']},k1:{B64['k2']}", "names the key id 'k1' twice"),
    ],
)
def test_bad_keys_are_refused_pointing_at_keys_generate(keys: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        make_settings("sqlite+aiosqlite://", encryption_keys=keys)
    text = str(info.value)
    assert "dbkeel keys generate" in text or "twice" in text
    assert "horse" not in text and "hunter2" not in text and B64["k1"][:22] not in text


def test_several_keys_need_an_active_one() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_ENCRYPTION_ACTIVE_KEY is not set"):
        make_settings("sqlite+aiosqlite://", encryption_keys=f"k1:{B64['k1']},k2:{B64['k2']}")
    with pytest.raises(ConfigurationError, match="'k3' is not one of the ids"):
        key_settings("sqlite+aiosqlite://", keys="k1,k2", active="k3")


def test_blind_index_key_must_differ_from_encryption_keys() -> None:
    with pytest.raises(ConfigurationError, match="a key of its own"):
        make_settings(
            "sqlite+aiosqlite://", encryption_keys=f"k1:{B64['k1']}", blind_index_key=B64["k1"]
        )


async def test_jsonb_type_inner_round_trips_and_refuses_without_showing_value(
    enc_db: DatabaseManager, create_tables: CreateTables
) -> None:
    md = MetaData()
    t = Table(
        "enc_json",
        md,
        Column("id", Integer, primary_key=True),
        Column("doc", EncryptedType(JSONBType)),
    )
    await create_tables(enc_db, md)
    doc = {"roles": ["admin"], "score": 1.5, "name": "Zoë"}
    async with enc_db.engine.begin() as conn:
        await conn.execute(insert(t), [{"id": 1, "doc": doc}])
        assert await conn.scalar(select(t.c.doc)) == doc
        with pytest.raises(EncryptedValueError, match="refused by JSONBType") as info:
            await conn.execute(insert(t), [{"id": 2, "doc": {"x": float("nan")}}])
        assert "nan" not in str(info.value).lower().replace("nvalid", "")
        raw = await conn.scalar(
            select(Column("doc", LargeBinary)).select_from(Table("enc_json", MetaData()))
        )
    assert b"admin" not in bytes(raw)


def test_missing_cryptography_names_the_encryption_extra() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from dbkeel.encryption import KeyRing\n"
        "try:\n    KeyRing({'k1': bytes(32)}, active='k1')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("MissingDependencyError")
    assert "pip install 'dbkeel[encryption]'" in out.stdout


def test_alembic_renders_an_importable_encrypted_type() -> None:
    from types import SimpleNamespace

    from dbkeel.types.alembic import render_item

    ctx = SimpleNamespace(imports=set(), opts={"sqlalchemy_module_prefix": "sa."})
    assert render_item("type", EncryptedType(String(40)), ctx) == (
        "dbkeel.types.EncryptedType(sa.String(length=40))"
    )
    assert render_item("type", EncryptedType(JSONBType), ctx) == (
        "dbkeel.types.EncryptedType(dbkeel.types.JSONBType())"
    )
    assert ctx.imports == {"import dbkeel.types"}
