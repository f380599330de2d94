"""SoftDeleteMixin: automatic filtering, each gap from pitfalls.md, opt-out, helpers.

Written on dbkeel's pytest plugin: the tables exist once per backend, each test runs in
its own transaction (``dbkeel_db``), rolled back at the end.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Column, ForeignKey, String, Table, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

from dbkeel import DatabaseManager
from dbkeel.mixins import SoftDeleteMixin, purge_deleted, soft_delete_unique
from tests.conftest import PLUGIN_METADATA

ALL = {"include_deleted": True}


class Base(DeclarativeBase):
    metadata = PLUGIN_METADATA


tags_posts = Table(
    "sd_post_tags",
    Base.metadata,
    Column("post_id", ForeignKey("sd_posts.id"), primary_key=True),
    Column("tag_id", ForeignKey("sd_tags.id"), primary_key=True),
)


class Author(SoftDeleteMixin, Base):
    __tablename__ = "sd_authors"
    __table_args__ = (soft_delete_unique("email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")


class Post(SoftDeleteMixin, Base):
    __tablename__ = "sd_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("sd_authors.id"))
    title: Mapped[str] = mapped_column(String(100))
    author: Mapped[Author] = relationship(back_populates="posts")
    tags: Mapped[list[Tag]] = relationship(secondary=tags_posts, order_by="Tag.id")


class Tag(SoftDeleteMixin, Base):
    __tablename__ = "sd_tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
async def blog(dbkeel_db: DatabaseManager) -> DatabaseManager:
    """Author 1 (live) with posts 1 (live) and 2 (deleted); author 2 deleted with post 3;
    post 1 tagged with tags 1 (live) and 2 (deleted)."""
    db = dbkeel_db
    async with db.get_session() as s:
        a1, a2 = Author(id=1, email="a@x"), Author(id=2, email="b@x")
        t1, t2 = Tag(id=1, name="live"), Tag(id=2, name="gone")
        p1 = Post(id=1, author=a1, title="kept", tags=[t1, t2])
        p2 = Post(id=2, author=a1, title="deleted")
        p3 = Post(id=3, author=a2, title="orphan")
        s.add_all([a1, a2, p1, p2, p3])
        await s.flush()
        for obj in (p2, a2, t2):
            obj.soft_delete()
    return db


async def test_select_leaves_deleted_rows_out_and_option_brings_them_back(
    blog: DatabaseManager,
) -> None:
    async with blog.get_session() as s:
        assert (await s.scalars(select(Post.id).order_by(Post.id))).all() == [1, 3]
        everything = select(Post.id).order_by(Post.id).execution_options(**ALL)
        assert (await s.scalars(everything)).all() == [1, 2, 3]


async def test_soft_delete_sets_deleted_at_aware_utc_and_restore_clears_it(
    blog: DatabaseManager,
) -> None:
    async with blog.get_session() as s:
        post = (await s.scalars(select(Post).where(Post.id == 2).execution_options(**ALL))).one()
        assert post.is_deleted and post.deleted_at is not None
        assert post.deleted_at.utcoffset() == dt.timedelta(0)
        post.restore()
    async with blog.get_session() as s:
        restored = await s.get(Post, 2)
        assert restored is not None and restored.deleted_at is None


async def test_get_of_soft_deleted_object_in_identity_map_returns_none(
    blog: DatabaseManager,
) -> None:
    async with blog.get_session() as s:
        post = await s.get(Post, 1)
        assert post is not None
        post.soft_delete()
        await s.flush()
        assert await s.get(Post, 1) is None  # same session: identity map hit, no SQL
        assert await s.get(Post, 1, execution_options=ALL) is post


async def test_get_of_soft_deleted_row_from_database_returns_none(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        assert await s.get(Post, 2) is None
        assert await s.get(Post, 2, execution_options=ALL) is not None


async def test_lazy_and_selectin_loads_leave_deleted_children_out(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        author = (await s.scalars(select(Author).options(selectinload(Author.posts)))).one()
        assert [p.id for p in author.posts] == [1]
    async with blog.get_session() as s:
        author = await s.get(Author, 1)
        assert author is not None
        posts = await s.run_sync(lambda _: author.posts)  # lazy load
        assert [p.id for p in posts] == [1]


async def test_joined_eager_load_leaves_deleted_children_out(blog: DatabaseManager) -> None:
    # sqlalchemy #7862: the criteria must reach the eager JOIN as well
    async with blog.get_session() as s:
        authors = (await s.scalars(select(Author).options(joinedload(Author.posts)))).unique().all()
        assert [(a.id, [p.id for p in a.posts]) for a in authors] == [(1, [1])]


async def test_many_to_many_leaves_deleted_targets_out(blog: DatabaseManager) -> None:
    # sqlalchemy #10245 concerns the secondary table; the soft-deleted *target* is filtered
    first_post = select(Post).where(Post.id == 1)
    async with blog.get_session() as s:
        post = (await s.scalars(first_post.options(selectinload(Post.tags)))).one()
        assert [t.id for t in post.tags] == [1]
    async with blog.get_session() as s:
        joined = (await s.scalars(first_post.options(joinedload(Post.tags)))).unique().one()
        assert [t.id for t in joined.tags] == [1]
    async with blog.get_session() as s:
        names = await s.scalars(select(Tag.name).select_from(Post).join(Post.tags))
        assert names.all() == ["live"]


async def test_has_and_any_ignore_deleted_rows(blog: DatabaseManager) -> None:
    # sqlalchemy #13070
    async with blog.get_session() as s:
        with_posts = select(Author.id).where(Author.posts.any(Post.title == "deleted"))
        assert (await s.scalars(with_posts)).all() == []
        with_author = select(Post.id).where(Post.author.has()).execution_options(**ALL)
        assert sorted((await s.scalars(with_author)).all()) == [1, 2, 3]
        assert (await s.scalars(select(Post.id).where(Post.author.has()))).all() == [1]


async def test_outer_join_keeps_parent_with_only_deleted_children(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        await s.execute(update(Post).where(Post.id == 1).values(is_deleted=True))
        rows = await s.execute(
            select(Author.id, Post.id).outerjoin(Author.posts).order_by(Author.id)
        )
        # criterion in ON: author 1 still comes back, with no post
        assert rows.all() == [(1, None)]


async def test_aliases_and_subqueries_are_filtered(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        p = aliased(Post)
        assert sorted((await s.scalars(select(p.id))).all()) == [1, 3]
        sub = select(Post.author_id).scalar_subquery()
        counted = select(func.count()).select_from(Author).where(Author.id.in_(sub))
        assert await s.scalar(counted.execution_options(**ALL)) == 2
        sub_q = select(Post.id).subquery()
        assert sorted((await s.scalars(select(sub_q.c.id))).all()) == [1, 3]


async def test_orm_bulk_update_skips_deleted_rows(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        await s.execute(update(Post).values(title="bulk"))
    async with blog.get_session() as s:
        gone = await s.get(Post, 2, execution_options=ALL)
        assert gone is not None and gone.title == "deleted"


async def test_session_delete_is_the_hard_delete(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        post = await s.get(Post, 2, execution_options=ALL)
        await s.delete(post)
    async with blog.get_session() as s:
        assert await s.get(Post, 2, execution_options=ALL) is None


async def test_purge_removes_only_rows_deleted_long_enough_ago(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        old = await s.get(Post, 2, execution_options=ALL)
        assert old is not None
        old.deleted_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    async with blog.get_session() as s:
        assert await purge_deleted(s, Post, older_than=dt.timedelta(days=30)) == 1
    async with blog.get_session() as s:
        ids = await s.scalars(select(Post.id).order_by(Post.id).execution_options(**ALL))
        assert ids.all() == [1, 3]


async def test_purge_rejects_a_negative_age(blog: DatabaseManager) -> None:
    async with blog.get_session() as s:
        with pytest.raises(ValueError, match="older_than"):
            await purge_deleted(s, Post, older_than=dt.timedelta(days=-1))


async def test_unique_helper_lets_a_deleted_value_be_reused(blog: DatabaseManager) -> None:
    # author 2 (b@x) is soft-deleted: a new live b@x is fine everywhere
    async with blog.get_session() as s:
        s.add(Author(id=3, email="b@x"))
    if blog.engine.dialect.name == "mysql":
        # MariaDB has no partial index: the helper creates none, duplicates are not caught
        async with blog.get_session() as s:
            s.add(Author(id=4, email="b@x"))
        return
    with pytest.raises(IntegrityError):
        async with blog.get_session() as s:
            s.add(Author(id=4, email="b@x"))


def test_marks_are_in_metadata() -> None:
    assert Post.__table__.c.is_deleted.info["dbkeel.soft_delete"] is True
    assert Post.__table__.c.is_deleted.index is True
    (index,) = (i for i in Author.__table__.indexes if i.info.get("dbkeel.soft_delete_unique"))
    assert index.unique and [c.name for c in index.columns] == ["email"]
