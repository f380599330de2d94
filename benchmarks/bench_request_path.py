"""The request path: DatabaseManager.get_session() against hand-written SQLAlchemy on the
same engine, 8 concurrent tasks on PostgreSQL (issue 2; goal since issue 17: ratio <= 1.02).

Per request: open a session, get a row by primary key, commit; and insert a row, commit.
Many short rounds (21 x 800 requests per candidate): on a shared machine, the per-round
ratio of back-to-back runs is what stays steady (see ``compare``).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Integer, String, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from benchmarks._harness import PG_URL, compare, scaled
from dbkeel import DatabaseManager, DatabaseSettings

TASKS = 8
REQUESTS_PER_TASK = scaled(50, 2)
ROUNDS = 21


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "bench_request_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


async def fill_items(db: DatabaseManager) -> None:
    """The benchmark's table anew, with 1000 rows."""
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            text(
                "INSERT INTO bench_request_items (id, name) "
                "SELECT g, 'item ' || g FROM generate_series(1, 1000) g"
            )
        )


async def main() -> None:
    settings = DatabaseSettings(
        database_url=PG_URL,
        environment="production",
        pool_size=TASKS,
        max_overflow=0,
        app_name="dbkeel-bench",
    )
    async with DatabaseManager(settings) as db:
        await fill_items(db)
        # hand-written: the same engine, the same sessionmaker options, the usual idiom
        plain = async_sessionmaker(db.engine, expire_on_commit=False, class_=AsyncSession)
        next_id = iter(range(10_000, 10_000_000))

        async def dbkeel_requests() -> int:
            async def one_task(t: int) -> None:
                for i in range(REQUESTS_PER_TASK):
                    async with db.get_session() as session:
                        await session.get(Item, 1 + (t * REQUESTS_PER_TASK + i) % 1000)
                    async with db.get_session() as session:
                        session.add(Item(id=next(next_id), name="new"))

            await asyncio.gather(*(one_task(t) for t in range(TASKS)))
            return TASKS * REQUESTS_PER_TASK * 2

        async def plain_requests() -> int:
            async def one_task(t: int) -> None:
                for i in range(REQUESTS_PER_TASK):
                    async with plain() as session, session.begin():
                        await session.get(Item, 1 + (t * REQUESTS_PER_TASK + i) % 1000)
                    async with plain() as session, session.begin():
                        session.add(Item(id=next(next_id), name="new"))

            await asyncio.gather(*(one_task(t) for t in range(TASKS)))
            return TASKS * REQUESTS_PER_TASK * 2

        await compare(
            f"request path, {TASKS} concurrent tasks, PostgreSQL",
            {"hand-written SQLAlchemy": plain_requests, "dbkeel get_session": dbkeel_requests},
            baseline="hand-written SQLAlchemy",
            rounds=ROUNDS,
            goal="goal: dbkeel / hand-written <= 1.02",
        )
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
