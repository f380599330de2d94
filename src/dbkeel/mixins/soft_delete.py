"""``SoftDeleteMixin``: rows are marked deleted, and every ORM query leaves them out.

Example::

    class Customer(SoftDeleteMixin, Base):
        __tablename__ = "customers"
        __table_args__ = (soft_delete_unique("email"),)
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(String(200))

    customer.soft_delete()                                   # UPDATE on flush
    await session.scalars(select(Customer))                  # deleted rows left out
    await session.scalars(select(Customer).execution_options(include_deleted=True))
    customer.restore()
    await session.delete(customer)                           # the explicit hard delete
    await purge_deleted(session, Customer, older_than=timedelta(days=30))

The filter is a ``do_orm_execute`` listener that adds
``with_loader_criteria(SoftDeleteMixin, is_deleted = false, include_aliases=True)`` to
every ORM statement, which reaches joins (in ON), aliases, subqueries, ``has()/any()``,
joined/selectin/lazy loads and ORM bulk UPDATE/DELETE. ``session.get()`` of an object
already in the identity map runs no SQL; :class:`~dbkeel.mixins.session.DbkeelSession`
(the manager's session class) checks that case.

Not covered: rows of a plain association ``Table`` used as ``relationship(secondary=...)``
(SQLAlchemy's criteria apply to mapped entities only, sqlalchemy #10245) - map the
association as a class with this mixin and go through it, and Core ``text()`` SQL.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Index, column, delete, event, false, text
from sqlalchemy.orm import Mapped, ORMExecuteState, Session, mapped_column, with_loader_criteria

from dbkeel.exceptions import ConfigurationError
from dbkeel.mixins._declare import add_columns
from dbkeel.types.datetime import UTCDateTime

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["INCLUDE_DELETED", "SoftDeleteMixin", "purge_deleted", "soft_delete_unique"]

#: The execution option that turns the filter off: ``.execution_options(include_deleted=True)``.
INCLUDE_DELETED = "include_deleted"


def _is_deleted(dataclass: bool) -> tuple[Any, Any]:
    extra: dict[str, Any] = {"init": False} if dataclass else {}
    column = mapped_column(
        Boolean(),
        default=False,
        server_default=false(),
        nullable=False,
        index=True,
        info={"dbkeel.soft_delete": True},
        **extra,
    )
    return Mapped[bool], column


def _deleted_at(dataclass: bool) -> tuple[Any, Any]:
    extra: dict[str, Any] = {"init": False} if dataclass else {}
    return Mapped[dt.datetime | None], mapped_column(
        UTCDateTime(), default=None, nullable=True, **extra
    )


class _MixinColumn:
    """``SoftDeleteMixin.is_deleted``, read only by with_loader_criteria().

    with_loader_criteria() runs its lambda once with the mixin itself to analyse it, so
    the mixin needs a comparable ``is_deleted``. A descriptor rather than a plain
    ``column()``: declarative would warn about a SQL expression in a mixin. Models have
    their own mapped column, which hides this one.
    """

    def __get__(self, obj: object, owner: type) -> Any:
        return column("is_deleted", Boolean())


class SoftDeleteMixin:
    """Adds ``is_deleted`` (indexed) and ``deleted_at``; deleted rows vanish from queries.

    Works with dataclass and plain declarative bases; list it before the base class.
    """

    if TYPE_CHECKING:
        is_deleted: Mapped[bool]
        deleted_at: Mapped[dt.datetime | None]
    else:
        is_deleted = _MixinColumn()

    def __init_subclass__(cls, **kw: Any) -> None:
        add_columns(cls, SoftDeleteMixin, {"is_deleted": _is_deleted, "deleted_at": _deleted_at})
        super().__init_subclass__(**kw)

    def soft_delete(self) -> None:
        """Mark the row deleted (now, UTC); written on the next flush."""
        if not self.is_deleted:
            self.is_deleted = True
            self.deleted_at = dt.datetime.now(dt.UTC)

    def restore(self) -> None:
        """Undo :meth:`soft_delete`; written on the next flush."""
        self.is_deleted = False
        self.deleted_at = None


def _live(cls: Any) -> Any:
    return cls.is_deleted == false()


# propagate_to_loaders stays True although the listener also covers lazy and selectin
# loads: without it joined eager loads return deleted children (sqlalchemy #7862;
# tests/test_mixins_soft_delete.py checks). It costs a little per loaded row.
_CRITERIA = with_loader_criteria(SoftDeleteMixin, _live, include_aliases=True)


@event.listens_for(Session, "do_orm_execute")
def _leave_out_deleted(state: ORMExecuteState) -> None:
    # Column loads are refreshes of one known row: filtering them would make a refresh
    # of a soft-deleted object fail with ObjectDeletedError instead of showing its state.
    if state.is_column_load or state.execution_options.get(INCLUDE_DELETED, False):
        return
    if state.is_select or state.is_update or state.is_delete:
        state.statement = state.statement.options(_CRITERIA)


def soft_delete_unique(*columns: str, name: str | None = None) -> Index:
    """A unique index over *columns* that ignores soft-deleted rows.

    A partial index (``WHERE is_deleted = false``) on PostgreSQL and SQLite. MariaDB
    has no partial indexes, so there the index is not created and uniqueness among
    live rows is not enforced by the database: check it in the application. In
    migrations write it as ``op.create_soft_delete_unique(...)``
    (:mod:`dbkeel.migrations.ops`; autogenerate does so with ``dbkeel migrations
    init``'s env.py), which follows ``create_all`` on each dialect. Recognisable
    from metadata by ``index.info["dbkeel.soft_delete_unique"]``.

    Example::

        __table_args__ = (soft_delete_unique("tenant_id", "email"),)
    """
    if not columns or not all(isinstance(c, str) and c for c in columns):
        raise ConfigurationError(
            f"soft_delete_unique() needs one or more column names, got {columns!r}."
        )
    index_name = name or f"uq_live_{'_'.join(columns)}"
    return Index(
        index_name,
        *columns,
        unique=True,
        postgresql_where=text("is_deleted = false"),
        sqlite_where=text("is_deleted = 0"),
        info={"dbkeel.soft_delete_unique": True},
    ).ddl_if(dialect=("postgresql", "sqlite"))  # type: ignore[arg-type]  # tuple is documented


async def purge_deleted(
    session: AsyncSession, model: type[SoftDeleteMixin], *, older_than: dt.timedelta
) -> int:
    """Hard-delete the rows of *model* soft-deleted more than *older_than* ago.

    Returns the number of rows removed. Runs in the session's transaction.

    Example::

        removed = await purge_deleted(session, Customer, older_than=timedelta(days=30))
    """
    if not (isinstance(model, type) and issubclass(model, SoftDeleteMixin)):
        raise ConfigurationError(
            f"purge_deleted() needs a model using SoftDeleteMixin, got {model!r}."
        )
    if not isinstance(older_than, dt.timedelta) or older_than < dt.timedelta(0):
        raise ConfigurationError(
            f"purge_deleted(older_than={older_than!r}) needs a timedelta >= 0, "
            f"e.g. timedelta(days=30)."
        )
    cutoff = dt.datetime.now(dt.UTC) - older_than
    m: Any = model
    result = await session.execute(
        delete(m).where(m.is_deleted == True, m.deleted_at < cutoff),  # noqa: E712
        execution_options={INCLUDE_DELETED: True, "synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0))
