"""Bulk writes on PostgreSQL (issue 7): dbkeel COPY and INSERT paths against plain
SQLAlchemy and against raw asyncpg COPY with the same preprocessing (the floor).

Goals: dbkeel copy >= 0.8x the raw COPY throughput (time ratio <= 1.25) and >= 2.5x plain
``insert(Model)`` with a list; peak memory for 1M streamed rows within 200 MB of baseline.

Sizes: DBKEEL_BENCH_BULK_ROWS (default "100000,1000000"). The slow candidates
(``session.add_all`` and both INSERT paths) run at 1M rows only with DBKEEL_BENCH_BULK_FULL=1.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import LargeBinary, String, Text, insert, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from benchmarks._harness import PG_URL, compare, console
from dbkeel import DatabaseManager, DatabaseSettings, bulk_insert
from dbkeel.types import JSONBType, UTCDateTime, UUIDType

_KEY = AESGCM(b"k" * 32)


def _encrypt(value: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + _KEY.encrypt(nonce, value.encode(), None)


class BenchEncrypted(TypeDecorator[str]):
    """AES-GCM stand-in for dbkeel's EncryptedType until it lands on main."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else _encrypt(value)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "bench_bulk_events"

    id: Mapped[uuid.UUID] = mapped_column(UUIDType, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONBType)
    secret: Mapped[str] = mapped_column(BenchEncrypted)
    happened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=_now, onupdate=_now)


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


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


def _settings() -> DatabaseSettings:
    return DatabaseSettings(
        database_url=PG_URL, environment="production", app_name="dbkeel-bench-bulk"
    )


async def main() -> None:
    sizes = [int(s) for s in os.environ.get("DBKEEL_BENCH_BULK_ROWS", "100000,1000000").split(",")]
    full = os.environ.get("DBKEEL_BENCH_BULK_FULL") == "1"
    async with DatabaseManager(_settings()) as db:
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
                    columns = [c.name for c in Event.__table__.columns]
                    batch: list[tuple[Any, ...]] = []
                    for r in rows(n):
                        now = _now()
                        batch.append(
                            (
                                uuid.uuid4(),
                                r["name"],
                                r["body"],
                                json.dumps(r["payload"]),
                                _encrypt(r["secret"]),
                                r["happened_at"].astimezone(dt.UTC),
                                now,
                                now,
                            )
                        )
                        if len(batch) == 10_000:
                            await raw.copy_records_to_table(
                                "bench_bulk_events", records=batch, columns=columns
                            )
                            batch = []
                    if batch:
                        await raw.copy_records_to_table(
                            "bench_bulk_events", records=batch, columns=columns
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

            found: dict[str, Any] = {"raw asyncpg COPY": raw_copy, "dbkeel copy": dbkeel_copy}
            if full or n <= 100_000:
                found.update(
                    {
                        "plain insert(Model) list": plain_insert,
                        "dbkeel insert": dbkeel_insert,
                        "session.add_all": add_all,
                    }
                )
            return found

        for n in sizes:
            big = n > 100_000
            await compare(
                f"bulk insert, {n:,} rows, PostgreSQL",
                candidates(n),
                baseline="raw asyncpg COPY",
                rounds=1 if big else 3,
                warmup=0 if big else 1,
                goal="goal: dbkeel copy ratio <= 1.25 (>= 0.8x raw COPY) and <= 0.4x "
                "plain insert(Model) list",
            )
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    _memory_report(max(sizes))


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
    async with DatabaseManager(_settings()) as db:
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
