"""Property: no sequence of create / soft-delete / restore shows a deleted row to a query,
a get() or a relationship load without the opt-out, and the opt-out always shows it."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import ForeignKey, delete, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from dbkeel import DatabaseManager, SoftDeleteMixin
from tests.conftest import make_settings

ALL = {"include_deleted": True}


class Base(DeclarativeBase):
    pass


class Shelf(Base):
    __tablename__ = "prop_shelves"
    id: Mapped[int] = mapped_column(primary_key=True)
    books: Mapped[list[Book]] = relationship(order_by="Book.id")


class Book(SoftDeleteMixin, Base):
    __tablename__ = "prop_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("prop_shelves.id"))


IDS = st.integers(min_value=1, max_value=6)
OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["create", "soft_delete", "restore", "get"]), IDS),
        st.tuples(st.sampled_from(["query", "load"]), st.just(0)),
    ),
    max_size=15,
)


async def _check(db: DatabaseManager, model: dict[int, bool], op: str, book_id: int) -> None:
    live = sorted(i for i, deleted in model.items() if not deleted)
    everything = sorted(model)
    async with db.get_session() as s:
        if op == "create" and book_id not in model:
            s.add(Book(id=book_id, shelf_id=1))
            model[book_id] = False
        elif op in ("soft_delete", "restore") and book_id in model:
            book = await s.get(Book, book_id, execution_options=ALL)
            assert book is not None
            book.soft_delete() if op == "soft_delete" else book.restore()
            await s.flush()
            model[book_id] = op == "soft_delete"
            # the same session, identity map: get() must agree with the new state
            assert (await s.get(Book, book_id) is None) == model[book_id]
        elif op == "get":
            found = await s.get(Book, book_id)
            assert (found is not None) == (book_id in live)
            assert (await s.get(Book, book_id, execution_options=ALL) is not None) == (
                book_id in everything
            )
        elif op == "query":
            assert list(await s.scalars(select(Book.id).order_by(Book.id))) == live
            opted = select(Book.id).order_by(Book.id).execution_options(**ALL)
            assert list(await s.scalars(opted)) == everything
        elif op == "load":
            shelf = (await s.scalars(select(Shelf).options(selectinload(Shelf.books)))).one()
            assert [b.id for b in shelf.books] == live


async def _run(url: str, ops: list[tuple[str, int]]) -> None:
    async with DatabaseManager(make_settings(url)) as db:
        async with db.get_session() as s:
            await s.execute(delete(Book).execution_options(**ALL))
            await s.execute(delete(Shelf))
            s.add(Shelf(id=1))
        model: dict[int, bool] = {}
        for op, book_id in [*ops, ("query", 0), ("load", 0)]:
            await _check(db, model, op, book_id)


async def _create(url: str) -> None:
    async with DatabaseManager(make_settings(url)) as db, db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)


async def _drop(url: str) -> None:
    async with DatabaseManager(make_settings(url)) as db, db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)


def test_deleted_rows_never_leak_and_opt_out_always_sees_them(db_url: str) -> None:
    asyncio.run(_create(db_url))

    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(ops=OPS)
    def check(ops: list[tuple[str, int]]) -> None:
        asyncio.run(_run(db_url, ops))

    try:
        check()
    finally:
        asyncio.run(_drop(db_url))
