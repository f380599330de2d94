"""Bulk writes on PostgreSQL (issue 7): dbkeel COPY and INSERT paths against plain
SQLAlchemy and against raw asyncpg COPY with the same preprocessing (the floor), both
as 10,000-row COPYs and as one COPY streamed from an async generator; the goal is
measured against the faster of the two.

The model is what a dbkeel user writes: a uuid7 key, text, JSONB, an encrypted column
(dbkeel's EncryptedType, AES-256-GCM) and TimestampMixin. Every candidate does the same
work per row: a new uuid7, the JSON text, the ciphertext, the UTC timestamp.

Goals: dbkeel copy >= 0.8x the raw COPY throughput and >= 2.5x plain ``insert(Model)``
with a list; peak memory for 1M streamed rows within 200 MB of baseline.

Goal of issue 17: dbkeel's insert path >= 1.0x plain ``insert(Model)``'s throughput.

Sizes: DBKEEL_BENCH_BULK_ROWS (default "100000,1000000"). ``session.add_all`` runs at
100,000 rows at most: it is the slow reference, not a goal, and at 1M rows its ORM
objects took several minutes and gigabytes on their own, most of ``make bench``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy import String, Text, insert, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks._harness import PG_URL, SMOKE, Row, compare, console
from dbkeel import DatabaseManager, DatabaseSettings, EncryptedType, bulk_insert
from dbkeel.encryption import KeyRing, generate_key
from dbkeel.mixins import TimestampMixin
from dbkeel.types import JSONBType, UTCDateTime, UUIDType, uuid7

ADD_ALL_MAX_ROWS = 100_000
_KEY_ID, _KEY = generate_key("bench")
RING = KeyRing.parse(f"{_KEY_ID}:{_KEY}")


class Base(DeclarativeBase):
    pass


class Event(TimestampMixin, Base):
    __tablename__ = "bench_bulk_events"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    secret: Mapped[str] = mapped_column(EncryptedType(String(40)))
    happened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_COLUMN = b"bench_bulk_events.secret"  # the associated data EncryptedType binds to


# created_at / updated_at are left to their server default in the raw candidates
_COLUMNS = ["id", "name", "body", "payload", "secret", "happened_at"]


def _record(r: dict[str, Any]) -> tuple[Any, ...]:
    """The raw candidates' preprocessing: what dbkeel does per row, written by hand."""
    return (
        uuid7(),
        r["name"],
        r["body"],
        json.dumps(r["payload"]),
        RING.seal(r["secret"].encode(), _COLUMN),
        r["happened_at"].astimezone(dt.UTC),
    )


def rows(n: int) -> Iterator[dict[str, Any]]:
    """*n* realistic rows, generated lazily (the same work for every candidate)."""
    for i in range(n):
        yield {
            "name": f"event {i}",
            "body": "lorem ipsum dolor sit amet " * 3,
            "payload": {"n": i, "tags": ["a", "b"], "ok": True},
            "secret": f"card-{i:016d}",
            "happened_at": T0 + dt.timedelta(seconds=i),
        }


class _Keys:
    async def load_key_ring(self) -> KeyRing:
        return RING


def _manager() -> DatabaseManager:
    settings = DatabaseSettings(
        database_url=PG_URL,
        environment="production",
        app_name="dbkeel-bench-bulk",
        slow_query_threshold=0,  # a 100k-row statement is slow by design
        monitoring=False,  # a 4-minute add_all would trip the leak warning: not measured here
    )
    return DatabaseManager(settings, key_provider=_Keys())


async def main() -> None:
    sizes = [
        int(s)
        for s in os.environ.get(
            "DBKEEL_BENCH_BULK_ROWS", "2000" if SMOKE else "100000,1000000"
        ).split(",")
    ]
    async with _manager() as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)

        async def truncate() -> None:
            async with db.engine.begin() as conn:
                await conn.execute(text("TRUNCATE bench_bulk_events"))

        def candidates(n: int) -> dict[str, Any]:
            async def raw_copy() -> int:
                await truncate()
                async with db.get_session() as session:
                    conn = await session.connection()
                    raw = (await conn.get_raw_connection()).driver_connection
                    batch: list[tuple[Any, ...]] = []
                    for r in rows(n):
                        batch.append(_record(r))
                        if len(batch) == 10_000:
                            await raw.copy_records_to_table(
                                "bench_bulk_events", records=batch, columns=_COLUMNS
                            )
                            batch = []
                    if batch:
                        await raw.copy_records_to_table(
                            "bench_bulk_events", records=batch, columns=_COLUMNS
                        )
                return n

            async def raw_copy_streamed() -> int:
                # one COPY fed by an async generator: PostgreSQL stores while Python prepares
                await truncate()

                async def records() -> AsyncIterator[tuple[Any, ...]]:
                    for r in rows(n):
                        yield _record(r)

                async with db.get_session() as session:
                    conn = await session.connection()
                    raw = (await conn.get_raw_connection()).driver_connection
                    await raw.copy_records_to_table(
                        "bench_bulk_events", records=records(), columns=_COLUMNS
                    )
                return n

            async def dbkeel_copy() -> int:
                await truncate()
                async with db.get_session() as session:
                    return await bulk_insert(session, Event, rows(n), method="copy")

            async def dbkeel_insert() -> int:
                await truncate()
                async with db.get_session() as session:
                    return await bulk_insert(session, Event, rows(n), method="insert")

            async def plain_insert() -> int:
                await truncate()
                async with db.get_session() as session:
                    await session.execute(insert(Event), list(rows(n)))
                return n

            async def add_all() -> int:
                await truncate()
                async with db.get_session() as session:
                    session.add_all([Event(**r) for r in rows(n)])
                return n

            chosen = {
                "raw asyncpg COPY": raw_copy,
                "raw asyncpg COPY, streamed": raw_copy_streamed,
                "dbkeel copy": dbkeel_copy,
                "plain insert(Model) list": plain_insert,
                "dbkeel insert": dbkeel_insert,
            }
            if n <= ADD_ALL_MAX_ROWS:
                chosen["session.add_all"] = add_all
            return chosen

        for n in sizes:
            big = n > 100_000
            result = await compare(
                f"bulk insert, {n:,} rows, PostgreSQL",
                candidates(n),
                baseline="raw asyncpg COPY",
                rounds=1 if big else 3,
                warmup=0 if big else 1,
                goal="goal: dbkeel copy ratio <= 1.25 (>= 0.8x raw COPY) and <= 0.4x "
                "plain insert(Model) list",
            )
            _summary(result)
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    _memory_report(max(sizes))


def _summary(result: list[Row]) -> None:
    speed = {row.name: row.ops_per_s for row in result}
    copy = speed["dbkeel copy"]
    floor = max(speed["raw asyncpg COPY"], speed["raw asyncpg COPY, streamed"])
    console.print(
        f"dbkeel copy: {copy / floor:.2f}x the faster raw COPY's throughput (goal >= "
        f"0.8), {copy / speed['plain insert(Model) list']:.2f}x plain insert(Model) (goal >= "
        f"2.5); dbkeel insert: {speed['dbkeel insert'] / speed['plain insert(Model) list']:.2f}x"
        f" plain insert(Model) (goal >= 1.0)"
    )


def _memory_report(n: int) -> None:
    # A fresh process, so that the peak (VmHWM) belongs to this load alone.
    code = (
        "import asyncio; from benchmarks.bench_bulk import memory_probe; "
        f"asyncio.run(memory_probe({n}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    console.print(out.stdout.strip())


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) // 1024
    return 0


async def memory_probe(n: int) -> None:
    """Load *n* streamed rows with dbkeel copy; print baseline and peak RSS in MB."""
    async with _manager() as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        async with db.get_session() as session:
            await bulk_insert(session, Event, rows(10), method="copy")  # warm every path
        baseline = _status("VmRSS:")
        async with db.get_session() as session:
            await bulk_insert(session, Event, rows(n), method="copy")
        peak = _status("VmHWM:")
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    print(
        f"memory, dbkeel copy of {n:,} streamed rows: baseline {baseline} MB, peak {peak} MB, "
        f"growth {peak - baseline} MB (goal: <= 200 MB)"
    )
