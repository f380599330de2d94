"""Every type written and read back on every database: edge values, then property tests."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, Table, delete, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from dbkeel import DatabaseManager, InvalidValueError
from dbkeel.types import ArrayType, JSONBType, StringArray, UTCDateTime, UUIDType, uuid7
from dbkeel.types.uuid import uuid4_packed, uuid7_packed
from tests import conftest
from tests.conftest import CreateTables, make_settings

metadata = MetaData()
things = Table(
    "types_things",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=False),
    Column("uid", UUIDType),
    Column("doc", JSONBType),
    Column("tags", StringArray),
    Column("nums", ArrayType(Integer)),
    Column("at", UTCDateTime),
)

EDGE_UUIDS = [
    uuid.UUID(int=0),
    uuid.UUID(int=2**128 - 1),
    uuid.UUID("00000000-0000-0000-0000-000000000001"),
    uuid.uuid4(),
    uuid7(),
]
DOCS: list[Any] = [
    {},
    [],
    {"ключ": "値 ✓ 🎉", "nested": {"a": [1, 2.5, True, None, {"b": "c"}]}},
    {"big": ["x" * 1000 for _ in range(300)]},  # ~300 kB
    [1, "two", {"three": 3}],
    "a bare string",
    42,
]
TAGS = [[], ["one"], ["ünïcödé", "日本語", "emoji 🎉", "", "with 'quote'"], ["t"] * 500]


async def roundtrip(db: DatabaseManager, **values: Any) -> Any:
    async with db.get_session() as session:
        await session.execute(delete(things))
        await session.execute(insert(things), [{"pk": 1, **values}])
    async with db.get_session() as session:
        return (await session.execute(select(things).where(things.c.pk == 1))).one()


async def test_none_is_sql_null_for_every_type(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, metadata)
    row = await roundtrip(db, uid=None, doc=None, tags=None, nums=None, at=None)
    assert tuple(row)[1:] == (None, None, None, None, None)
    async with db.get_session() as session:
        assert await session.scalar(select(things.c.pk).where(things.c.doc.is_(None))) == 1


async def test_edge_values_read_back_equal(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, metadata)
    for uid, doc, tags in zip(EDGE_UUIDS, DOCS, TAGS + TAGS, strict=False):
        at = dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=9)))
        row = await roundtrip(db, uid=uid, doc=doc, tags=tags, nums=[0, -1, 2**31 - 1], at=at)
        assert isinstance(row.uid, uuid.UUID)
        assert (row.uid, row.doc, row.tags, row.nums) == (uid, doc, tags, [0, -1, 2**31 - 1])
        assert row.at == at and row.at.tzinfo == dt.UTC
    async with db.get_session() as session:  # a UUID given as a string filters too
        found = await session.scalar(select(things.c.pk).where(things.c.uid == str(EDGE_UUIDS[-1])))
        assert found == 1


async def test_encoder_writes_datetimes_decimals_and_uuids(
    db: DatabaseManager, create_tables: CreateTables
) -> None:
    await create_tables(db, metadata)
    u = uuid7()
    doc = {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "price": decimal.Decimal("10.10"),
        "id": u,
    }
    row = await roundtrip(db, doc=doc)
    assert row.doc == {"when": "2024-01-02T03:04:05+00:00", "price": "10.10", "id": str(u)}


def _circular() -> dict[str, Any]:
    doc: dict[str, Any] = {"a": []}
    doc["a"].append(doc)
    return doc


@pytest.mark.parametrize(
    ("column", "value", "match"),
    [
        (
            "uid",
            "not-a-uuid",
            r"UUIDType column 'types_things.uid' got str 'not-a-uuid': not a UUID",
        ),
        ("uid", 12, r"UUIDType column 'types_things.uid' got int 12"),
        (
            "doc",
            {"x": float("nan")},
            r"JSONBType column 'types_things.doc'.*cannot be written as JSON",
        ),
        ("doc", {"x": object()}, r"JSONBType column 'types_things.doc'.*not JSON serializable"),
        (
            "doc",
            _circular(),
            r"JSONBType column 'types_things.doc'.*refers to itself \(a reference cycle\)",
        ),
        ("tags", "abc", r"StringArray column 'types_things.tags' got str 'abc': not a list"),
        ("tags", ["a", None], r"item 1 is NoneType None"),
        ("nums", [1, True], r"ArrayType column 'types_things.nums'.*item 1 is bool True"),
        ("at", dt.datetime(2024, 1, 1), r"UTCDateTime column 'types_things.at'.*naive"),
        ("at", "2024-01-01", r"UTCDateTime column 'types_things.at' got str"),
    ],
)
async def test_bad_value_raises_invalid_value_error_naming_the_column(
    db: DatabaseManager, create_tables: CreateTables, column: str, value: Any, match: str
) -> None:
    await create_tables(db, metadata)
    with pytest.raises(InvalidValueError, match=match) as info:
        await roundtrip(db, **{column: value})
    assert info.value.column == f"types_things.{column}"


async def test_contains_on_every_database(db: DatabaseManager, create_tables: CreateTables) -> None:
    await create_tables(db, metadata)
    rows = [
        {"pk": 1, "tags": ["a", "b"], "nums": [1, 2]},
        {"pk": 2, "tags": ["B", "c"], "nums": [3]},
        {"pk": 3, "tags": [], "nums": []},
        {"pk": 4, "tags": None, "nums": None},
    ]
    async with db.get_session() as session:
        await session.execute(insert(things), rows)

        async def pks(condition: Any) -> list[int]:
            return sorted((await session.scalars(select(things.c.pk).where(condition))).all())

        assert await pks(things.c.tags.contains_all(["a", "b", "a"])) == [1]
        assert await pks(things.c.tags.contains_all(["b"])) == [1]  # case-sensitive
        assert await pks(things.c.tags.contains_any(["c", "zz"])) == [2]
        assert await pks(things.c.tags.contains_all([])) == [1, 2, 3]
        assert await pks(things.c.tags.contains_any([])) == []
        assert await pks(things.c.nums.contains_any([2, 3])) == [1, 2]
        assert await pks(things.c.nums.contains_all([1, 3])) == []


@pytest.mark.parametrize("version", [(10, 6, 21), (10, 11, 9)], ids=["10.6", "10.11"])
async def test_contains_any_on_mariadb_before_and_after_json_overlaps(
    mariadb_url: str, create_tables: CreateTables, version: tuple[int, ...]
) -> None:
    # JSON_OVERLAPS exists from MariaDB 10.9; dbkeel supports 10.6. The 10.11 test
    # server runs the SQL compiled for each version: a fresh engine per version, as the
    # compiled cache is keyed by statement, not by server version.
    async with DatabaseManager(make_settings(mariadb_url)) as db:
        await create_tables(db, metadata)
        db.engine.dialect.server_version_info = version
        condition = things.c.tags.contains_any(["c", "1", "zz"])
        sql = str(select(things.c.pk).where(condition).compile(dialect=db.engine.dialect))
        assert ("JSON_OVERLAPS" in sql) is (version >= (10, 9))
        assert ("JSON_TABLE" in sql) is (version < (10, 9))
        rows = [
            {"pk": 1, "tags": ["a", "b"], "nums": [1, 2]},
            {"pk": 2, "tags": ["B", "c"], "nums": [3]},
            {"pk": 3, "tags": [], "nums": []},
            {"pk": 4, "tags": None, "nums": None},
            {"pk": 5, "tags": ["1"], "nums": [10]},
        ]
        async with db.get_session() as session:
            await session.execute(insert(things), rows)

            async def pks(condition: Any) -> list[int]:
                found = await session.scalars(select(things.c.pk).where(condition))
                return sorted(found.all())

            assert await pks(condition) == [2, 5]
            assert await pks(things.c.tags.contains_any(["zz"])) == []
            assert await pks(things.c.nums.contains_any([2, 3])) == [1, 2]
            assert await pks(things.c.nums.contains_any([1])) == [1]  # not 10, not "1"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(
    doc=json_values,
    tags=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20), max_size=8
    ),
)
async def test_any_json_document_and_string_list_round_trips(
    db: DatabaseManager, create_tables: CreateTables, doc: Any, tags: list[str]
) -> None:
    await create_tables(db, metadata)
    if doc is None:
        doc = {"null": None}  # Python None is SQL NULL, tested above
    row = await roundtrip(db, doc=doc, tags=tags)
    assert (row.doc, row.tags) == (doc, tags)


@PROPERTY
@given(doc=json_values | st.floats(allow_nan=False, allow_infinity=False))
def test_json_is_written_as_json_dumps_writes_it(doc: Any) -> None:
    # JSONBType reuses one C encoder instead of json.dumps building one per value
    bind = JSONBType()._cached_bind_processor(postgresql.asyncpg.dialect())
    if doc is not None:
        assert bind(doc) == json.dumps(doc, allow_nan=False)
        assert bind({"k": [doc, dt.date(2024, 1, 2)]}) == json.dumps(
            {"k": [doc, "2024-01-02"]}, allow_nan=False
        )


@pytest.mark.parametrize("dialect", [postgresql.asyncpg.dialect(), sqlite.aiosqlite.dialect()])
def test_list_bind_fast_path_accepts_and_refuses_what_the_full_check_does(dialect: Any) -> None:
    table = Table("types_short", MetaData(), Column("tags", StringArray(3)))
    bind = table.c.tags.type._cached_bind_processor(dialect)

    class Tag(str):
        pass

    for good in (["a", "abc"], [], ("a", "b"), [Tag("x")]):
        assert bind(good) is not None
    for bad, match in (
        (["a", "abcd"], r"'types_short.tags'.*item 1 is str 'abcd'.*at most 3"),
        (["a", 1], r"'types_short.tags'.*item 1 is int"),
        (["a", None], r"item 1 is NoneType"),
        ("abc", r"not a list"),
    ):
        with pytest.raises(InvalidValueError, match=match):
            bind(bad)


async def test_sqlite_datetimes_written_by_other_programs_read_as_utc(
    test_databases: conftest.TestDatabases, create_tables: CreateTables
) -> None:
    # SQLite keeps datetimes as text; other writers may add a zone or a "T"
    async with DatabaseManager(make_settings(test_databases.url("sqlite"))) as db:
        await create_tables(db, metadata)
        written = [
            "2024-05-06 07:08:09.123456",  # dbkeel's / SQLAlchemy's own form
            "2024-05-06 07:08:09",
            "2024-05-06T09:08:09+02:00",
            "2024-05-06T07:08:09Z",
        ]
        async with db.get_session() as session:
            for pk, text_value in enumerate(written):
                await session.execute(
                    text("INSERT INTO types_things (pk, at) VALUES (:pk, :at)"),
                    {"pk": pk, "at": text_value},
                )
            found = (await session.scalars(select(things.c.at).order_by(things.c.pk))).all()
    expected = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    assert found == [expected.replace(microsecond=123456), expected, expected, expected]
    assert all(value.tzinfo is dt.UTC for value in found)


def test_uuid7_values_are_version_7_and_ordered_across_single_and_packed_calls() -> None:
    before = [uuid7() for _ in range(3)]
    raw = uuid7_packed(5000)  # more than 4096: runs the stamp ahead of the clock
    packed = [uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]
    after = uuid7()
    made = [*before, *packed, after]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert {(u.version, u.variant) for u in made} == {(7, uuid.RFC_4122)}
    assert uuid7_packed(0) == b""
    assert uuid.UUID(str(after)) == after and hash(after) == hash(uuid.UUID(int=after.int))


def test_uuid4_packed_values_are_random_version_4() -> None:
    raw = uuid4_packed(2000)
    made = [uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)]
    assert len(made) == 2000
    assert len(set(made)) == 2000
    assert {(u.version, u.variant) for u in made} == {(4, uuid.RFC_4122)}
