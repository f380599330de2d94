"""dbkeel's column types against SQLAlchemy's built-ins (issue 3; goal: ratio <= 1.10).

1. Bind + result processing per value, on the PostgreSQL (asyncpg) and SQLite dialects:
   the processors SQLAlchemy runs for each parameter and each fetched value.
2. A 10k-row insert + select on PostgreSQL through the same engine, one table per side.
3. Loading rows with a nested JSON document through the ORM on PostgreSQL: dbkeel's
   tracked ``JSONBType`` against ``MutableDict.as_mutable(JSONB)`` and plain ``JSONB``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, Uuid, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from benchmarks._harness import PG_URL, compare, scaled
from dbkeel.types import JSONBType, StringArray, UTCDateTime, UUIDType, uuid7

VALUES = scaled(20_000)
ROWS = scaled(10_000)
ORM_ROWS = scaled(2_000)
#: 50 keys, each holding nested dicts and lists (~3 kB of JSON)
NESTED_DOC = {f"k{i}": {"a": [1, 2, {"b": "c"}], "n": {"x": i, "y": [i, i]}} for i in range(50)}
NOW = dt.datetime.now(dt.UTC)
SAMPLES: dict[str, Any] = {
    "uuid": uuid7(),
    "json": {"theme": "dark", "n": [1, 2, 3], "nested": {"a": "b"}},
    "list": ["admin", "staff", "ops"],
    "datetime": NOW,
}


def processors(type_: TypeEngine[Any], dialect: Any, sample: Any) -> tuple[Any, Any, Any]:
    compiled = type_.dialect_impl(dialect)
    bind = type_._cached_bind_processor(dialect)
    bound = bind(sample) if bind else sample
    # asyncpg decodes JSON, arrays and UUIDs itself
    stored = sample if dialect.name == "postgresql" else bound
    result = type_._cached_result_processor(dialect, compiled)
    return bind, result, stored


def per_value(type_: TypeEngine[Any], dialect: Any, sample: Any) -> Any:
    bind, result, stored = processors(type_, dialect, sample)

    async def run() -> int:
        for _ in range(VALUES):
            if bind:
                bind(sample)
            if result:
                result(stored)
        return VALUES

    return run


async def main() -> None:
    pairs: dict[str, tuple[TypeEngine[Any], TypeEngine[Any]]] = {
        "uuid": (Uuid(as_uuid=True), UUIDType()),
        "datetime": (DateTime(timezone=True), UTCDateTime()),
    }
    for dialect in (postgresql.asyncpg.dialect(), sqlite.aiosqlite.dialect()):
        builtin_json = JSONB(none_as_null=True) if dialect.name == "postgresql" else JSON()
        rows = {
            **pairs,
            "json": (builtin_json, JSONBType()),
            "list": (ARRAY(String) if dialect.name == "postgresql" else JSON(), StringArray()),
        }
        for name, (builtin, ours) in rows.items():
            await compare(
                f"types: {name} bind+result per value, {dialect.name}",
                {
                    "SQLAlchemy built-in": per_value(builtin, dialect, SAMPLES[name]),
                    "dbkeel": per_value(ours, dialect, SAMPLES[name]),
                },
                baseline="SQLAlchemy built-in",
                goal="goal: dbkeel / built-in <= 1.10",
            )

    metadata = MetaData()
    builtin_table = Table(
        "bench_types_builtin",
        metadata,
        Column("pk", Integer, primary_key=True),
        Column("id", Uuid),
        Column("doc", JSONB),
        Column("tags", ARRAY(String)),
        Column("at", DateTime(timezone=True)),
    )
    dbkeel_table = Table(
        "bench_types_dbkeel",
        metadata,
        Column("pk", Integer, primary_key=True),
        Column("id", UUIDType),
        Column("doc", JSONBType),
        Column("tags", StringArray),
        Column("at", UTCDateTime),
    )
    engine = create_async_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    rows_data = [
        {"pk": i, "id": uuid.uuid4(), "doc": SAMPLES["json"], "tags": SAMPLES["list"], "at": NOW}
        for i in range(ROWS)
    ]

    def insert_select(table: Table) -> Any:
        async def run() -> int:
            async with engine.begin() as conn:
                await conn.execute(table.delete())
                await conn.execute(table.insert(), rows_data)
                fetched = (await conn.execute(select(table))).all()
            return len(fetched) * 2

        return run

    await compare(
        f"types: {ROWS} rows insert+select, PostgreSQL",
        {
            "SQLAlchemy built-in": insert_select(builtin_table),
            "dbkeel": insert_select(dbkeel_table),
        },
        baseline="SQLAlchemy built-in",
        rounds=5,
        goal="goal: dbkeel / built-in <= 1.10",
    )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
    await orm_load(engine)
    await engine.dispose()


class OrmBase(DeclarativeBase):
    pass


class PlainDoc(OrmBase):
    __tablename__ = "bench_types_orm_plain"
    pk: Mapped[int] = mapped_column(primary_key=True)
    doc: Mapped[dict[str, Any]] = mapped_column(JSONB)


class MutableDoc(OrmBase):
    __tablename__ = "bench_types_orm_mutable"
    pk: Mapped[int] = mapped_column(primary_key=True)
    doc: Mapped[dict[str, Any]] = mapped_column(MutableDict.as_mutable(JSONB))


class DbkeelDoc(OrmBase):
    __tablename__ = "bench_types_orm_dbkeel"
    pk: Mapped[int] = mapped_column(primary_key=True)
    doc: Mapped[dict[str, Any]] = mapped_column(JSONBType)


async def orm_load(engine: AsyncEngine) -> None:
    """Section 3: what in-place tracking costs when rows are only loaded."""
    models: dict[str, type[PlainDoc | MutableDoc | DbkeelDoc]] = {
        "plain JSONB": PlainDoc,
        "JSONB + MutableDict": MutableDoc,
        "dbkeel JSONBType": DbkeelDoc,
    }
    async with engine.begin() as conn:
        await conn.run_sync(OrmBase.metadata.drop_all)
        await conn.run_sync(OrmBase.metadata.create_all)
        for model in models.values():
            rows = [{"pk": i, "doc": NESTED_DOC} for i in range(ORM_ROWS)]
            await conn.execute(model.__table__.insert(), rows)  # type: ignore[attr-defined]

    def load(model: type[PlainDoc | MutableDoc | DbkeelDoc]) -> Any:
        async def run() -> int:
            async with AsyncSession(engine) as session:
                loaded = (await session.scalars(select(model))).all()
            return len(loaded)

        return run

    await compare(
        f"types: ORM load of {ORM_ROWS} rows with a 50-key nested JSON document, PostgreSQL",
        {name: load(model) for name, model in models.items()},
        baseline="plain JSONB",
        goal="dbkeel tracks nested in-place edits; MutableDict tracks the top level only",
    )
    async with engine.begin() as conn:
        await conn.run_sync(OrmBase.metadata.drop_all)
