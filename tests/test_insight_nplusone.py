"""N+1 detection on the real async shapes (awaitable_attrs, run_sync, lazy="selectin" loops)
and its silence on the legitimate ones, on PostgreSQL, SQLite and MariaDB."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

from dbkeel import DatabaseManager, NPlusOneError
from dbkeel.insight import allow_nplusone, track
from dbkeel.mixins import DbkeelSession
from tests.conftest import CreateTables, make_settings

THRESHOLD = 3


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "np_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")
    # lazy="selectin": loaded with every Author query, one extra query per query.
    awards: Mapped[list[Award]] = relationship(lazy="selectin", order_by="Award.id")


class Book(Base):
    __tablename__ = "np_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("np_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")
    reviews: Mapped[list[Review]] = relationship(order_by="Review.id")


class Review(Base):
    __tablename__ = "np_reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("np_books.id"))


class Award(Base):
    __tablename__ = "np_awards"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("np_authors.id"))


AUTHORS = 5


async def _manager(
    db_url: str, create_tables: CreateTables, mode: str
) -> AsyncIterator[DatabaseManager]:
    settings = make_settings(db_url, nplusone=mode, nplusone_threshold=THRESHOLD)
    async with DatabaseManager(settings) as manager:
        await create_tables(manager, Base.metadata)
        async with manager.get_session() as session:
            for a in range(1, AUTHORS + 1):
                session.add(Author(id=a, name=f"a{a}", awards=[Award(id=a)]))
                await session.flush()
                session.add_all(Book(id=a * 10 + b, author_id=a) for b in range(2))
                await session.flush()
                session.add(Review(id=a, book_id=a * 10))
        yield manager


@pytest.fixture
async def ndb(db_url: str, create_tables: CreateTables) -> AsyncIterator[DatabaseManager]:
    async for manager in _manager(db_url, create_tables, "raise"):
        yield manager


@pytest.fixture
async def logdb(db_url: str, create_tables: CreateTables) -> AsyncIterator[DatabaseManager]:
    async for manager in _manager(db_url, create_tables, "log"):
        yield manager


# -- the N+1 shapes ----------------------------------------------------------------------


async def test_one_to_many_awaitable_attrs_raises(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        authors = (await session.scalars(select(Author).order_by(Author.id))).all()
        with pytest.raises(NPlusOneError) as err:
            for author in authors:
                await author.awaitable_attrs.books
    message = str(err.value)
    assert "Author.books was lazy-loaded once per row 3 times" in message
    assert "selectinload(Author.books)" in message
    # The application line that triggered the first load, not SQLAlchemy's.
    assert "test_insight_nplusone.py" in message
    assert "test_one_to_many_awaitable_attrs_raises" in message


async def test_many_to_one_awaitable_attrs_raises(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        books = (await session.scalars(select(Book).order_by(Book.id))).all()
        with pytest.raises(NPlusOneError, match=r"Book\.author"):
            for book in books:
                await book.awaitable_attrs.author


async def test_nested_raises_on_the_inner_relationship(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        stmt = select(Author).options(selectinload(Author.books)).order_by(Author.id)
        authors = (await session.scalars(stmt)).all()
        with pytest.raises(NPlusOneError, match=r"Book\.reviews"):
            for author in authors:
                for book in author.books:
                    await book.awaitable_attrs.reviews


async def test_sync_code_in_run_sync_raises(ndb: DatabaseManager) -> None:
    def titles(session: Session) -> int:
        authors = session.scalars(select(Author)).all()
        return sum(len(a.books) for a in authors)  # plain attribute access: lazy loads

    async with ndb.get_session() as session:
        with pytest.raises(NPlusOneError, match=r"Author\.books"):
            await session.run_sync(titles)


async def test_lazy_selectin_in_a_loop_of_queries_raises(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        with pytest.raises(NPlusOneError, match=r"Author\.awards was loaded by a separate"):
            for a in range(1, AUTHORS + 1):
                await session.scalar(select(Author).where(Author.id == a))


async def test_contexts_are_separate_per_track_block(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        books = (await session.scalars(select(Book).order_by(Book.id))).all()
    # Two requests with 2 loads each: below the threshold in each.
    for chunk in (books[0:4:2], books[4:8:2]):
        with track("GET /books"):
            async with ndb.get_session() as session:
                for book in chunk:
                    session.add(book)
                    await book.awaitable_attrs.author


# -- legitimate patterns stay silent ----------------------------------------------------


async def test_selectinload_and_joinedload_do_not_fire(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        stmt = select(Book).options(selectinload(Book.reviews), joinedload(Book.author))
        books = (await session.scalars(stmt)).all()
        assert len(books) == 2 * AUTHORS
        assert all(b.author is not None for b in books)


async def test_session_get_of_app_chosen_keys_does_not_fire(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        for key in (10, 11, 20, 21, 30, 31):
            assert await session.get(Book, key) is not None


async def test_loop_below_threshold_does_not_fire(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        authors = (await session.scalars(select(Author).order_by(Author.id))).all()
        for author in authors[: THRESHOLD - 1]:
            await author.awaitable_attrs.books


async def test_selectinload_over_many_batches_counts_once(
    ndb: DatabaseManager,
) -> None:
    # selectinload batches 500 keys per query: 1,600 parents give 4 batch queries,
    # all for one parent query, which is no N+1.
    async with ndb.get_session() as session:
        session.add_all(Book(id=10_000 + i, author_id=1) for i in range(1600))
    async with ndb.get_session() as session:
        stmt = select(Book).options(selectinload(Book.reviews))
        assert len((await session.scalars(stmt)).all()) == 1600 + 2 * AUTHORS


async def test_allow_nplusone_opts_out(ndb: DatabaseManager) -> None:
    async with ndb.get_session() as session:
        authors = (await session.scalars(select(Author))).all()
        with allow_nplusone():
            for author in authors:
                await author.awaitable_attrs.books


async def test_log_mode_warns_once(
    logdb: DatabaseManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dbkeel.insight")
    async with logdb.get_session() as session:
        authors = (await session.scalars(select(Author))).all()
        for author in authors:
            await author.awaitable_attrs.books
    reports = [r for r in caplog.records if r.name == "dbkeel.insight"]
    assert len(reports) == 1
    assert "N+1 queries: Author.books" in reports[0].getMessage()


async def test_off_attaches_no_listener(db_url: str) -> None:
    async with DatabaseManager(make_settings(db_url, nplusone="off")) as manager:
        assert manager.session_factory.kw["sync_session_class"] is DbkeelSession
