"""Encrypted columns (issue 4): per-value cost of dbkeel's EncryptedType against raw AESGCM
(the floor), advanced-alchemy's EncryptedString (its default Fernet backend) and
sqlalchemy-utils' StringEncryptedType(..., AesGcmEngine); then 100k rows inserted and read
back on PostgreSQL with one encrypted column; then what the blind-index UPDATE hook (on an
engine whose key ring has a blind-index key) costs the statements of a request.

Goals: dbkeel / raw AESGCM <= 1.5 per value; each library / dbkeel >= 3; the UPDATE hook
<= 1.02 on a request's statements.
Run: ``python -m benchmarks encryption``.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.dialects import postgresql

from benchmarks._harness import PG_URL, compare, scaled
from dbkeel import DatabaseManager, DatabaseSettings, EncryptedType
from dbkeel.encryption import KeyRing, generate_key, registry

VALUES = [f"user{i}@example.com" for i in range(scaled(10_000))]
ROWS = scaled(100_000)


def _types() -> tuple[MetaData, dict[str, Table]]:
    from advanced_alchemy.types import EncryptedString
    from sqlalchemy_utils import StringEncryptedType
    from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine

    key = os.urandom(32)
    md = MetaData()
    kinds = {
        "plain String": String(320),
        "dbkeel EncryptedType": EncryptedType(String(320)),
        "advanced-alchemy EncryptedString": EncryptedString(key=key),
        "sqlalchemy-utils AesGcmEngine": StringEncryptedType(String, key, AesGcmEngine),
    }
    tables = {
        name: Table(
            f"bench_enc_{i}", md, Column("id", Integer, primary_key=True), Column("secret", type_)
        )
        for i, (name, type_) in enumerate(kinds.items())
    }
    return md, tables


async def per_value(tables: dict[str, Table], ring: KeyRing) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    dialect = postgresql.asyncpg.dialect()  # type: ignore[attr-defined]
    setattr(dialect, registry.RING_ATTRIBUTE, ring)  # what use_key_ring(engine) does
    raw = AESGCM(os.urandom(32))
    ad = b"users.email"

    def raw_encrypt(v: str, dialect: object) -> bytes:
        nonce = os.urandom(12)
        return nonce + raw.encrypt(nonce, v.encode(), ad)

    def raw_decrypt(b: bytes, dialect: object) -> str:
        return raw.decrypt(b[:12], b[12:], ad).decode()

    # every candidate is called as SQLAlchemy calls process_bind_param: (value, dialect)
    pairs: dict[str, tuple[Any, Any]] = {"raw AESGCM": (raw_encrypt, raw_decrypt)}
    for name in (
        "dbkeel EncryptedType",
        "advanced-alchemy EncryptedString",
        "sqlalchemy-utils AesGcmEngine",
    ):
        type_ = tables[name].c.secret.type
        # what SQLAlchemy's bind / result processors call for every value
        pairs[name] = (
            type_.process_bind_param,
            type_.process_result_value,
        )

    for direction in ("encrypt", "decrypt"):
        candidates = {}
        for name, (enc, dec) in pairs.items():
            sealed = [enc(v, dialect) for v in VALUES]
            assert [dec(s, dialect) for s in sealed[:3]] == VALUES[:3]

            async def run(enc=enc, dec=dec, sealed=sealed, direction=direction) -> int:
                if direction == "encrypt":
                    for v in VALUES:
                        enc(v, dialect)
                else:
                    for s in sealed:
                        dec(s, dialect)
                return len(VALUES)

            candidates[name] = run
        await compare(
            f"encrypted column: {direction} one value (30-char string)",
            candidates,
            baseline="raw AESGCM",
            rounds=15,  # short runs on a shared machine: more rounds, steadier medians
            goal="goal: dbkeel <= 1.5x raw AESGCM; libraries >= 3x dbkeel",
        )


async def bulk(tables: dict[str, Table], md: MetaData, db: DatabaseManager) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(md.drop_all)
        await conn.run_sync(md.create_all)
    rows = [{"id": i, "secret": VALUES[i % len(VALUES)]} for i in range(ROWS)]
    candidates = {}
    for name, table in tables.items():

        async def run(table: Table = table) -> int:
            async with db.engine.begin() as conn:
                await conn.execute(table.delete())
                await conn.execute(insert(table), rows)
            async with db.engine.connect() as conn:
                got = (await conn.execute(select(table.c.secret))).scalars().all()
            assert len(got) == ROWS
            return ROWS

        candidates[name] = run
    await compare(
        f"{ROWS:,} rows insert + select, one encrypted column, PostgreSQL",
        candidates,
        baseline="plain String",
        rounds=3,
        warmup=0,
        goal="the encryption share of a real round trip",
    )
    async with db.engine.begin() as conn:
        await conn.run_sync(md.drop_all)


async def main() -> None:
    key_id, key = generate_key("bench")
    ring = KeyRing.parse(f"{key_id}:{key}")
    md, tables = _types()
    await per_value(tables, ring)
    settings = DatabaseSettings(
        database_url=PG_URL, environment="production", app_name="dbkeel-bench"
    )

    class Keys:
        async def load_key_ring(self) -> KeyRing:
            return ring

    async with DatabaseManager(settings, key_provider=Keys()) as db:
        await bulk(tables, md, db)
    await update_hook(settings, key_id, key)


async def update_hook(settings: DatabaseSettings, key_id: str, key: str) -> None:
    """Statements on two managers that differ only in the blind-index key of their ring."""
    _, index_key = generate_key("index")
    rings = {
        "no blind-index key": KeyRing.parse(f"{key_id}:{key}"),
        "with blind-index key (UPDATE hook)": KeyRing.parse(f"{key_id}:{key}", index_key=index_key),
    }
    md = MetaData()
    table = Table(
        "bench_enc_hook",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(50)),
    )
    candidates = {}
    managers = []
    for name, ring in rings.items():

        class Keys:
            async def load_key_ring(self, ring: KeyRing = ring) -> KeyRing:
                return ring

        db = DatabaseManager(settings, key_provider=Keys())
        await db.initialize()
        managers.append(db)

        async def run(db: DatabaseManager = db) -> int:
            for i in range(scaled(500)):  # a request's statements: reads and a write
                async with db.engine.begin() as conn:
                    await conn.scalar(select(table.c.name).where(table.c.id == 1))
                    await conn.execute(table.update().where(table.c.id == 1).values(name=f"n{i}"))
            return 1000

        candidates[name] = run
    try:
        async with managers[0].engine.begin() as conn:
            await conn.run_sync(md.drop_all)
            await conn.run_sync(md.create_all)
            await conn.execute(insert(table).values(id=1, name="n"))
        await compare(
            "select + update by primary key, PostgreSQL (a table without blind index)",
            candidates,
            baseline="no blind-index key",
            rounds=7,
            goal="goal: ratio <= 1.02",
        )
        async with managers[0].engine.begin() as conn:
            await conn.run_sync(md.drop_all)
    finally:
        for db in managers:
            await db.close()
