"""Mixins on PostgreSQL (issue 5).

1. Select 1,000 live rows of 2,000 (half soft-deleted): the automatic soft-delete filter
   vs the same query with a hand-written ``WHERE is_deleted = false`` and the filter
   turned off. Goal: automatic / hand-written <= 1.05.
2. Update one row 200 times, with VersionMixin's version check vs a model without it,
   counting statements: the check must add no round trip (goal: same statement count).
3. 500 statements in a session holding 300 clean objects, each preceded by autoflush:
   DbkeelSession (which looks for VersionMixin objects before each flush) vs a plain
   Session. Goal: DbkeelSession / plain <= 1.05.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, event, false, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from benchmarks._harness import PG_URL, compare, console, scaled
from dbkeel import DatabaseManager, DatabaseSettings, SoftDeleteMixin, VersionMixin
from dbkeel.mixins.session import DbkeelSession

ROWS = scaled(2_000, 20)
SELECTS = scaled(20, 1)
UPDATES = scaled(200)
CLEAN = scaled(300)
STATEMENTS = scaled(500)


class Base(DeclarativeBase):
    pass


class Doc(SoftDeleteMixin, Base):
    __tablename__ = "bench_mixins_docs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(50))


class Versioned(VersionMixin, Base):
    __tablename__ = "bench_mixins_versioned"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


class Unversioned(Base):
    __tablename__ = "bench_mixins_unversioned"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


async def main() -> None:
    settings = DatabaseSettings(
        database_url=PG_URL, environment="production", pool_size=2, app_name="dbkeel-bench"
    )
    async with DatabaseManager(settings) as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
            await conn.execute(
                text(
                    f"INSERT INTO bench_mixins_docs (id, title, is_deleted) SELECT g, "
                    f"'doc ' || g, g % 2 = 0 FROM generate_series(1, {ROWS}) g"
                )
            )
            await conn.execute(text("INSERT INTO bench_mixins_versioned VALUES (1, 0, 1)"))
            await conn.execute(text("INSERT INTO bench_mixins_unversioned VALUES (1, 0)"))

        async def automatic() -> int:
            async with db.get_session() as s:
                for _ in range(SELECTS):
                    docs = (await s.scalars(select(Doc))).all()
                    assert len(docs) == ROWS // 2
                    s.expunge_all()
            return SELECTS

        async def hand_written() -> int:
            query = (
                select(Doc).where(Doc.is_deleted == false()).execution_options(include_deleted=True)
            )
            async with db.get_session() as s:
                for _ in range(SELECTS):
                    docs = (await s.scalars(query)).all()
                    assert len(docs) == ROWS // 2
                    s.expunge_all()
            return SELECTS

        await compare(
            f"select {ROWS // 2} live rows of {ROWS}, PostgreSQL",
            {"hand-written WHERE": hand_written, "automatic soft-delete filter": automatic},
            baseline="hand-written WHERE",
            goal="goal: automatic / hand-written <= 1.05",
        )

        counts: dict[str, int] = {}

        def updater(model: type[Versioned] | type[Unversioned], name: str):  # type: ignore[no-untyped-def]
            async def run() -> int:
                statements = 0

                def count(*args: object) -> None:
                    nonlocal statements
                    statements += 1

                async with db.get_session() as s:
                    row = await s.get(model, 1)
                    assert row is not None
                    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
                    try:
                        for _ in range(UPDATES):
                            row.value += 1
                            await s.flush()
                    finally:
                        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
                counts[name] = statements
                return UPDATES

            return run

        await compare(
            f"{UPDATES} ORM updates of one row, PostgreSQL",
            {
                "without version check": updater(Unversioned, "without version check"),
                "VersionMixin": updater(Versioned, "VersionMixin"),
            },
            baseline="without version check",
            goal="goal: the version check adds no round trip (see statement counts)",
        )
        console.print(
            f"statements per {UPDATES} updates: "
            + ", ".join(f"{name} {n}" for name, n in counts.items())
        )

        def flusher(session_class: type[Session]):  # type: ignore[no-untyped-def]
            factory = async_sessionmaker(
                db.engine, sync_session_class=session_class, expire_on_commit=False
            )

            async def run() -> int:
                async with factory() as s:
                    docs = (await s.scalars(select(Doc).limit(CLEAN))).all()
                    assert len(docs) == CLEAN
                    for _ in range(STATEMENTS):  # each one autoflushes first
                        await s.execute(text("SELECT 1"))
                return STATEMENTS

            return run

        await compare(
            f"{STATEMENTS} statements (autoflush each) with {CLEAN} clean objects loaded",
            {"plain Session": flusher(Session), "DbkeelSession": flusher(DbkeelSession)},
            baseline="plain Session",
            goal="goal: DbkeelSession / plain <= 1.05",
        )
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
