"""UUIDType: literal rendering (offline Alembic SQL) and peers' CHAR(32) hex rows (issue 17).

Regression tests: ``literal_binds`` failed on SQLite and MariaDB with ``CompileError ...
BLOB``; a row written as 32 hex characters raised ``bytes is not a 16-char string``
without naming the column.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text

from dbkeel import DatabaseManager, InvalidValueError
from dbkeel.types import UUIDType
from tests import conftest
from tests.conftest import CreateTables, make_settings

metadata = MetaData()
things = Table(
    "uuid_literal_things",
    metadata,
    Column("id", UUIDType, primary_key=True),
    Column("name", String(20)),
)


async def test_comparison_renders_with_literal_binds_and_finds_the_row(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, metadata)
    key = uuid.uuid4()
    async with db.get_session() as session:
        await session.execute(things.insert().values(id=key, name="one"))
    query = select(things.c.name).where(things.c.id == key)
    sql = str(query.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
    assert key.hex in sql.replace("-", "")
    async with db.get_session() as session:
        assert (await session.execute(text(sql))).scalar_one() == "one"


peer = MetaData()
peer_things = Table(
    "uuid_peer_things",
    peer,
    Column("n", Integer, primary_key=True),
    Column("id", String(36)),
)
read_back = Table(
    "uuid_peer_things",
    MetaData(),
    Column("n", Integer, primary_key=True),
    Column("id", UUIDType),
)


# PostgreSQL peers store the native uuid type, which asyncpg returns as UUID already;
# the hex form is the non-binary mode of SQLite and MariaDB.
@pytest.fixture(params=["sqlite", "mariadb"])
def hex_backend_url(request: pytest.FixtureRequest, test_databases: conftest.TestDatabases) -> str:
    return test_databases.url(str(request.param))


async def test_reads_peers_hex_uuid_rows_and_names_the_column_for_garbage(
    hex_backend_url: str, create_tables: CreateTables
) -> None:
    async with DatabaseManager(make_settings(hex_backend_url)) as db:
        await _read_peer_rows(db, create_tables)


async def _read_peer_rows(db: DatabaseManager, create_tables: CreateTables) -> None:
    await create_tables(db, peer)
    key = uuid.uuid4()
    async with db.get_session() as session:
        await session.execute(
            peer_things.insert(),
            [{"n": 1, "id": key.hex}, {"n": 2, "id": str(key)}, {"n": 3, "id": "not-a-uuid"}],
        )
    async with db.get_session() as session:
        got = (await session.execute(select(read_back.c.id).where(read_back.c.n < 3))).scalars()
        assert list(got) == [key, key]
        with pytest.raises(InvalidValueError, match=r"uuid_peer_things\.id|'id'") as info:
            (await session.execute(select(read_back.c.id).where(read_back.c.n == 3))).all()
    assert "neither 16 bytes" in str(info.value)
